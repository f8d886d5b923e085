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


def _leaves(node, path=()):
    """Every (dotted path, value) of params.yaml whose value is not a mapping."""
    if isinstance(node, dict) and node:
        for key, value in node.items():
            yield from _leaves(value, (*path, str(key)))
    else:
        yield ".".join(path), node


def _hydra(value) -> str:
    """A value as Hydra's override grammar writes it (what `dvc exp run -S` parses)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    if isinstance(value, list):
        return "[" + ",".join(map(_hydra, value)) + "]"
    return "{" + ",".join(f"{k}:{_hydra(v)}" for k, v in value.items()) + "}"


def _another(value):
    """A different value of the same kind."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int | float):
        return value + 1
    if isinstance(value, str):
        return value + "-x"
    if isinstance(value, list):
        return value[::-1] if len(set(map(repr, value))) > 1 else [*value, *value] or [1]
    return 7  # null


def _set(params: dict, dotted: str, value) -> None:
    *parents, last = dotted.split(".")
    node = params
    for key in parents:
        node = node[key]
    node[last] = value


LEAVES = list(_leaves(PARAMS))


@pytest.mark.parametrize("key", [key for key, _ in LEAVES])
def test_every_key_of_params_yaml_can_be_set_with_dvc_exp_run_s(tmp_path, key):
    """Each kind of key (number, string, path, bool, null, list, list of mappings, a mapping's
    entry) is reachable by `dvc exp run -S key=value` and changes only that key."""
    from dvc.utils.hydra import apply_overrides

    params = tmp_path / "params.yaml"
    shutil.copy(ROOT / "params.yaml", params)
    value = dict(LEAVES)[key]
    apply_overrides(params, [f"{key}={_hydra(_another(value))}"])
    expected = yaml.safe_load((ROOT / "params.yaml").read_text())
    _set(expected, key, _another(value))
    assert yaml.safe_load(params.read_text()) == expected
