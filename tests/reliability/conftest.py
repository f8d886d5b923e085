"""The reliability and security suite: the whole pipeline (`dvc repro` of a reduced study, same
code path as the default one) in a copy of this project, with faults injected and bad inputs.

Each test records what it verified; the suite prints the count at the end of the run.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import TINY_DATA, dvc, project_copy

SECRET = "s3cr3t-Pa55word-for-the-reliability-suite"
#: Environment secrets a user may have set; none may reach MLflow, results or reports.
SECRET_ENV = {"CITYSCAPES_PASSWORD": SECRET, "HF_TOKEN": SECRET,
              "AWS_SECRET_ACCESS_KEY": SECRET, "MLFLOW_TRACKING_PASSWORD": SECRET}



def reduced_study(iterations: int = 4, pretrain_iterations: int = 6, **sweep):
    """The default study cut to what CI affords: one generated dataset (tiny), a short CE
    pre-training, 2 losses x 2 seeds fine-tuned for a few iterations, no convergence arm
    unless `convergence` says. Everything else, the stages and their code, is the default's."""
    def edit(params):
        params["study"]["datasets"] = ["synthetic_voc"]
        params["datasets"]["synthetic_voc"].update(TINY_DATA)
        params["pretrain"].update(iterations=pretrain_iterations,
                                  val_interval=pretrain_iterations // 2,
                                  early_iteration=pretrain_iterations // 2)
        params["train"].update(iterations=iterations, val_interval=iterations // 2, overlays=1)
        params["sweep"].update(losses=["ce", "pixiou"], seeds=[0, 1],
                               **{"convergence": {"losses": []}, **sweep})
    return edit


def summaries(repo: Path) -> dict[Path, int]:
    """Each finished trial's summary.json (in its final checkpoint) and its modification time
    (ns)."""
    return {p: p.stat().st_mtime_ns
            for p in (repo / "work_dirs/sweeps").glob("*/*/final/summary.json")}


def results(repo: Path) -> dict:
    return json.loads((repo / "results/synthetic_voc.json").read_text())


@pytest.fixture(scope="session")
def study(tmp_path_factory) -> Path:
    """A project copy whose reduced study `dvc repro` ran to the end, with secrets in the
    environment. Tests that change it put it back as it was."""
    repo = project_copy(tmp_path_factory.mktemp("study") / "repo", reduced_study())
    dvc(repo, "repro", env=SECRET_ENV, check=True)
    return repo
