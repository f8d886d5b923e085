"""`dvc exp run -S key=value` parses its overrides with Hydra's grammar, where a key is made of
letters, digits, '_' and '-': every study loss of params.yaml must be a key it can reach."""
from __future__ import annotations

import shutil

import pytest
import yaml

from tests.conftest import ROOT

PARAMS = yaml.safe_load((ROOT / "params.yaml").read_text())


@pytest.mark.parametrize("loss", list(PARAMS["train"]["losses"]))
def test_every_term_weight_and_option_can_be_set_with_dvc_exp_run_s(tmp_path, loss):
    """A term is reached by its index in the loss's list: terms.<i>.loss_weight; an option the
    term does not spell out yet takes Hydra's '+' (`-S '+train.losses.lovasz.terms.0.per_image=
    true'`)."""
    from dvc.utils.hydra import apply_overrides  # what `dvc exp run -S` applies

    params = tmp_path / "params.yaml"
    shutil.copy(ROOT / "params.yaml", params)
    last = len(PARAMS["train"]["losses"][loss]["terms"]) - 1
    term = PARAMS["train"]["losses"][loss]["terms"][last]
    option = ("" if "per_image" in term else "+") + f"train.losses.{loss}.terms.{last}.per_image"
    apply_overrides(params, [f"train.losses.{loss}.terms.{last}.loss_weight=0.25",
                             f"{option}=true"])
    changed = yaml.safe_load(params.read_text())
    term = changed["train"]["losses"][loss]["terms"][last]
    assert term["loss_weight"] == 0.25 and term["per_image"] is True
    changed["train"]["losses"][loss]["terms"][last] = PARAMS["train"]["losses"][loss]["terms"][last]
    assert changed == PARAMS  # nothing else moved


def test_a_key_with_a_plus_cannot_be_set(tmp_path):
    """Why the combined losses are named ce_lovasz and ce_pixiou, not ce+lovasz."""
    from dvc.exceptions import InvalidArgumentError
    from dvc.utils.hydra import apply_overrides

    params = tmp_path / "params.yaml"
    params.write_text("train:\n  losses:\n    ce+pixiou: {name: x, terms: [{type: A}]}\n")
    with pytest.raises(InvalidArgumentError):
        apply_overrides(params, ["train.losses.ce+pixiou.name=y"])


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
