"""`kill -9` of `dvc repro` in the middle of the pre-training, then of the sweep, then `dvc
repro` again."""
from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import STAGE_ENV, dvc, project_copy, reduced_study, results, summaries

pytestmark = pytest.mark.slow


def settled(repo: Path, quiet: float = 5.0) -> dict[Path, int]:
    """The finished trials once none has appeared for `quiet` seconds: a trial's process (a Ray
    worker) can outlive the kill of its driver long enough to write its final checkpoint."""
    seen, still = summaries(repo), time.time() + quiet
    while time.time() < still:
        time.sleep(0.5)
        now = summaries(repo)
        if now != seen:
            seen, still = now, time.time() + quiet
    return seen


def _repro_in_background(repo: Path, log: Path) -> subprocess.Popen:
    with log.open("w") as output:  # what it said, should it end before its kill
        return subprocess.Popen([str(Path(sys.executable).parent / "dvc"), "repro"], cwd=repo,
                                env=STAGE_ENV, stdout=output, stderr=subprocess.STDOUT,
                                start_new_session=True)


def _kill_9_once(repo: Path, happened, what: str, log: Path) -> None:
    """`dvc repro` in the background (its output in `log`), and `kill -9` of it and everything
    it started once `happened()`."""
    run = _repro_in_background(repo, log)
    deadline = time.time() + 600
    while not happened():
        assert run.poll() is None, f"dvc repro ended before {what}:\n{log.read_text()[-4000:]}"
        assert time.time() < deadline, f"not {what} in 10 minutes"
        time.sleep(0.1)
    os.killpg(run.pid, signal.SIGKILL)
    run.wait()


@pytest.mark.longest
def test_kill_9_of_dvc_repro_in_the_pretraining_then_among_the_trials(tmp_path, covered):
    """`kill -9` of dvc repro in the middle of the pre-training; the rerun resumes it from its
    checkpoint, and is killed in turn among the convergence arm's trials (one at a time). The
    last rerun keeps the finished trials of both arms and trains the rest; MLflow holds the
    pre-training once, one parent and one child per trial, each tagged with its arm."""
    arm = {"losses": ["ce", "pixiou"], "iterations": 40, "val_interval": 10}
    repo = project_copy(tmp_path / "repo", reduced_study(
        pretrain_iterations=200, seeds=[0], max_concurrent_trials=1, convergence=arm))
    work_dirs = repo / "work_dirs/pretrain/synthetic_voc"

    def pretrained_to_100() -> bool:  # its checkpoint saved and evaluated
        return any('"iteration": 100' in path.read_text()
                   for path in work_dirs.glob("*/eval_history.jsonl"))

    _kill_9_once(repo, pretrained_to_100, "the pre-training's first evaluation",
                 tmp_path / "repro-1.log")
    assert not (repo / "models/pretrain/synthetic_voc/summary.json").exists()
    _kill_9_once(repo, lambda: any("convergence_" in str(p) for p in summaries(repo)),
                 "a convergence trial finished", tmp_path / "repro-2.log")
    finished_before = settled(repo)
    assert sum("convergence_" in str(p) for p in finished_before) == 1  # of 2, one at a time
    assert not (repo / "results/synthetic_voc.json").exists()

    again = dvc(repo, "repro", check=True)
    assert f"4 trials, {len(finished_before)} already done" in again.stdout
    after = summaries(repo)
    assert len(after) == 4
    assert all(after[p] == stamp for p, stamp in finished_before.items())  # not retrained
    trials = results(repo)["trials"]
    assert sorted(t["arm"] for t in trials) == ["convergence"] * 2 + ["finetune"] * 2
    assert all(t["status"] == "finished" for t in trials)

    # the pre-training: resumed, whole, evaluated once each time, where the trials start
    summary = json.loads((repo / "models/pretrain/synthetic_voc/summary.json").read_text())
    assert summary["iterations"] == 200
    assert [h["iteration"] for h in summary["history"]] == [100, 200]
    assert all(t["history"][0]["mIoU"] == summary["mIoU"] for t in trials
               if t["arm"] == "finetune")
    client = MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("pixiou-study")
    (pretrain,) = client.search_runs([experiment.experiment_id],
                                     "tags.`pixiou.pretrain_key` LIKE '%'")  # one run, reopened
    assert pretrain.info.status == "FINISHED"
    assert pretrain.data.tags["resumed_from"] in ("100", "200")  # the kill's checkpoint
    # (200: the kill landed after the last checkpoint, and the run only finished)
    assert [m.step for m in client.get_metric_history(pretrain.info.run_id, "mIoU")] == \
        [100, 200]  # each evaluation once

    runs = client.search_runs([experiment.experiment_id], max_results=100)
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert sum("pixiou.sweep_key" in r.data.tags for r in runs) == 1  # one parent
    assert sorted(c.data.tags["pixiou.trial_key"] for c in children) == \
        sorted(t["key"] for t in trials)  # one child per trial, none twice
    assert all(c.info.status == "FINISHED" for c in children)
    tagged = client.search_runs([experiment.experiment_id], "tags.arm = 'convergence'")
    assert sorted(r.data.tags["pixiou.trial_key"] for r in tagged) == \
        sorted(t["key"] for t in trials if t["arm"] == "convergence")

    # results/ and reports/ tell the same story.
    assert "how fast the losses learn (convergence arm)" in \
        (repo / "reports/tables.md").read_text()
    metrics = json.loads((repo / "reports/metrics.json").read_text())
    # the fine-tuning arm's count (the convergence arm has a table of its own)
    assert metrics["trials"] == {"finished": 2, "failed": 0, "stopped": 0, "missing": 0}
    with (repo / "reports/results.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["arm"] for r in rows) == ["convergence"] * 2 + ["finetune"] * 2
    assert sorted(r["mlflow_run_id"] for r in rows) == sorted(t["mlflow_run_id"] for t in trials)
    for row in rows:
        trial = next(t for t in trials if t["mlflow_run_id"] == row["mlflow_run_id"])
        assert float(row["mIoU"]) == trial["mIoU"]
    assert "up to date" in dvc(repo, "status").stdout
    covered("faults injected", "kill -9 of dvc repro during the pre-training")
    covered("faults injected", f"kill -9 of dvc repro after {len(finished_before)} of 4 "
                               "trials, among the convergence arm's")
