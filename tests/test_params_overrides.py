"""`dvc exp run -S key=value` parses its overrides with Hydra's grammar, where a key is made of
letters, digits, '_' and '-': every study loss of params.yaml must be a key it can reach."""
from __future__ import annotations

import shutil

import pytest
import yaml

from tests.conftest import ROOT

PARAMS = yaml.safe_load((ROOT / "params.yaml").read_text())


@pytest.mark.parametrize("loss", list(PARAMS["train"]["losses"]))
def test_every_loss_weight_can_be_set_with_dvc_exp_run_s(tmp_path, loss):
    from dvc.utils.hydra import apply_overrides  # what `dvc exp run -S` applies

    params = tmp_path / "params.yaml"
    shutil.copy(ROOT / "params.yaml", params)
    term = next(iter(PARAMS["train"]["losses"][loss]))
    apply_overrides(params, [f"train.losses.{loss}.{term}=0.25"])
    changed = yaml.safe_load(params.read_text())
    assert changed["train"]["losses"][loss][term] == 0.25
    changed["train"]["losses"][loss][term] = PARAMS["train"]["losses"][loss][term]
    assert changed == PARAMS  # nothing else moved


def test_a_key_with_a_plus_cannot_be_set(tmp_path):
    """Why the combined losses are named ce_lovasz and ce_pixiou, not ce+lovasz."""
    from dvc.exceptions import InvalidArgumentError
    from dvc.utils.hydra import apply_overrides

    params = tmp_path / "params.yaml"
    params.write_text("train:\n  losses:\n    ce+pixiou: {ce: 1.0, pixiou: 1.0}\n")
    with pytest.raises(InvalidArgumentError):
        apply_overrides(params, ["train.losses.ce+pixiou.pixiou=0.5"])
