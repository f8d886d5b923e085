"""Shared fixtures: a small generated dataset built by the data stage, and study params that
point every output (work dirs, MLflow store, results) into a temporary folder."""
from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
TINY_DATA = dict(seed=0, train=16, val=8, height=64, width=64, objects_per_image=[3, 8])


def study_params(tmp_path: Path, data_root: Path, **sections) -> Path:
    """The repository's params.yaml with a tiny schedule and every output under tmp_path.

    `sections` update params sections key by key, e.g. sweep=dict(losses=["ce"]).
    """
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["study"]["datasets"] = ["synthetic_voc"]
    params["data"]["root"] = str(data_root)
    params["train"].update(iterations=4, val_interval=2, overlays=2)
    params["sweep"].update(losses=["ce", "pixiou"], seeds=[0],
                           storage=str(tmp_path / "sweeps"))
    params["tracking"].update(uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
                              artifacts=str(tmp_path / "mlartifacts"))
    for section, values in sections.items():
        params[section] = {**copy.deepcopy(params.get(section, {})), **values}
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """data/synthetic_voc with 16 train and 8 val images of 64x64, built by the data stage."""
    from pipeline.data.__main__ import run

    tmp = tmp_path_factory.mktemp("tiny_data")
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["data"]["root"] = str(tmp / "data")
    params["datasets"]["synthetic_voc"].update(TINY_DATA)
    (tmp / "params.yaml").write_text(yaml.safe_dump(params))
    run("synthetic_voc", tmp / "params.yaml")
    return tmp / "data"
