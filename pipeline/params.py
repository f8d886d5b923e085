"""params.yaml, read section by section into typed dataclasses with errors that name the key.

Every stage reads only its own section (and declares it as a DVC param dependency); a typo in a
key, a wrong type or a missing key fails the stage before any work, naming the key's full path.
"""
from __future__ import annotations

import dataclasses
import os
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

PARAMS_FILE = Path("params.yaml")
#: The study's sections; each is read by the stages that declare it in dvc.yaml.
SECTIONS = ("study", "data", "datasets", "pretrain", "train", "sweep", "tracking", "report",
            "plan")
#: What `train.schedules.<dataset>` may change, and the section each key belongs to.
SCHEDULE_KEYS = {"iterations": "train", "val_interval": "train",
                 "checkpoint_interval": "train", "val_subset": "train", "batch_size": "train",
                 "lr": "train", "warmup": "train", "schedule": "train", "amp": "train",
                 "gpus_per_trial": "sweep", "convergence": "sweep"}
T = TypeVar("T")


class ParamsError(ValueError):
    """A params.yaml section that does not fit its schema."""


def load_params(path: Path | str = PARAMS_FILE) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"{path}: not found (run from the repository root)")
    try:
        params = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ParamsError(f"{path}: not valid YAML ({error})") from None
    if not isinstance(params, dict):
        raise ParamsError(f"{path}: the top level must be a mapping")
    # A misspelt section would otherwise be ignored by every stage, and its values never used.
    unknown = sorted(set(params) - set(SECTIONS))
    if unknown:
        raise ParamsError(f"{path}: unknown section '{unknown[0]}' "
                          f"(the sections are: {', '.join(SECTIONS)})")
    return params


def lookup(params: dict, dotted: str, source: str = "params.yaml") -> Any:
    node = params
    for depth, key in enumerate(dotted.split(".")):
        if not isinstance(node, dict) or key not in node:
            where = ".".join(dotted.split(".")[:depth]) or "the top level"
            raise ParamsError(f"{source}: missing key '{dotted}' ({where} has no '{key}')")
        node = node[key]
    return node


def _check_type(value: Any, annotation: Any, where: str) -> Any:
    """value checked against annotation; where is its dotted path (e.g. sweep.seeds[1])."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(annotation):
            try:
                return _check_type(value, option, where)
            except ParamsError:
                continue
        raise ParamsError(f"params.yaml: {where}: {value!r} is not a {annotation}")
    if annotation is type(None):
        if value is not None:
            raise ParamsError(f"params.yaml: {where}: expected null, got {value!r}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, list):
            raise ParamsError(f"params.yaml: {where}: expected a list, got {value!r}")
        (item,) = typing.get_args(annotation)[:1] or (Any,)
        return [_check_type(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ParamsError(f"params.yaml: {where}: expected a mapping, got {value!r}")
        _, item = typing.get_args(annotation)
        return {k: _check_type(v, item, f"{where}.{k}") for k, v in value.items()}
    if annotation is Any:
        return value
    if dataclasses.is_dataclass(annotation):
        return parse_section(annotation, value, where)
    if annotation is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, annotation) or (annotation is int and isinstance(value, bool)):
        raise ParamsError(f"params.yaml: {where}: expected {annotation.__name__}, got {value!r}")
    return value


def parse_section(cls: type[T], data: Any, where: str) -> T:
    """Build dataclass `cls` from a params mapping; `where` is its dotted path for errors."""
    if not isinstance(data, dict):
        raise ParamsError(f"params.yaml: {where} must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ParamsError(f"params.yaml: unknown key '{where}.{unknown[0]}' "
                          f"(known keys of {where}: {', '.join(fields)})")
    values = {}
    for name, field in fields.items():
        if name not in data:
            if field.default is dataclasses.MISSING and \
                    field.default_factory is dataclasses.MISSING:
                raise ParamsError(f"params.yaml: missing key '{where}.{name}'")
            continue
        values[name] = _check_type(data[name], hints[name], f"{where}.{name}")
    instance = cls(**values)
    check = getattr(instance, "validate", None)
    if check is not None:
        check(where)
    return instance


def check_schedule(section: Any, where: str) -> None:
    """A section's `iterations` and `val_interval` (both >= 1, the interval within the length)
    and its optional `lr` (> 0 or null)."""
    for key in ("iterations", "val_interval"):
        if getattr(section, key) < 1:
            raise ParamsError(f"params.yaml: {where}.{key} must be >= 1, got "
                              f"{getattr(section, key)}")
    if section.val_interval > section.iterations:
        raise ParamsError(f"params.yaml: {where}.val_interval ({section.val_interval}) is "
                          f"longer than {where}.iterations ({section.iterations})")
    if section.lr is not None and not section.lr > 0:
        raise ParamsError(f"params.yaml: {where}.lr must be > 0 or null, got {section.lr}")


def for_dataset(params: dict, dataset: str) -> dict:
    """params with `train.schedules.<dataset>` applied: the keys it sets replace those of
    `train` (and `sweep.gpus_per_trial`; `convergence` those of `sweep.convergence`), so each
    dataset trains at its own scale. The other datasets' schedules play no part."""
    train = dict(lookup(params, "train"))
    schedules = train.pop("schedules", None) or {}
    if not isinstance(schedules, dict):
        raise ParamsError(f"params.yaml: train.schedules must be a mapping of dataset keys, "
                          f"got {schedules!r}")
    schedule = schedules.get(dataset) or {}
    if not isinstance(schedule, dict):
        raise ParamsError(f"params.yaml: train.schedules.{dataset} must be a mapping, got "
                          f"{schedule!r}")
    unknown = sorted(set(schedule) - set(SCHEDULE_KEYS))
    if unknown:
        raise ParamsError(f"params.yaml: unknown key 'train.schedules.{dataset}.{unknown[0]}' "
                          f"(a dataset's schedule may set: {', '.join(SCHEDULE_KEYS)})")
    sweep = dict(params.get("sweep") or {})
    for key, value in schedule.items():
        if key == "convergence":
            if not isinstance(value, dict):
                raise ParamsError(f"params.yaml: train.schedules.{dataset}.convergence must be "
                                  f"a mapping, got {value!r}")
            sweep["convergence"] = {**(sweep.get("convergence") or {}), **value}
        else:
            (train if SCHEDULE_KEYS[key] == "train" else sweep)[key] = value
    return {**params, "train": train, "sweep": sweep}


def in_project(path: str | Path) -> Path:
    """A relative path of params.yaml (a store, a folder), from the project's root.

    That is the DVC repository a stage runs for (`DVC_ROOT`, which DVC sets for every stage
    command): the checkout itself under `dvc repro`, and, under `dvc queue start`, the
    repository the experiment was queued in rather than the temporary copy it runs in. So
    queued variants of the study share the sweep's storage (finished trials are reused) and
    MLflow's store (no run is lost with the copy). Elsewhere, the working directory.
    """
    path = Path(path).expanduser()
    return path if path.is_absolute() else Path(os.environ.get("DVC_ROOT") or ".") / path
