"""`make status` / `python -m pipeline.status` on a real MLflow store in the states a study
passes through: nothing yet, a sweep under way, a sweep done."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml

from pipeline.progress import duration, standing
from tests.conftest import ROOT


def status(params: Path) -> str:
    done = subprocess.run([sys.executable, "-m", "pipeline.status", "--params", str(params)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_the_standing_and_the_time_left_at_the_pace_so_far():
    assert standing(3, 2, 15, 90) == ("3/15 done, 2 running, 10 waiting; 1m30s elapsed, "
                                      "about 6m00s left")  # 90 s per 3 trials, 12 to go
    assert standing(0, 2, 15, 5) == "0/15 done, 2 running, 13 waiting; 5s elapsed"
    assert standing(15, 0, 15, 3725) == "15/15 done, 0 running, 0 waiting; 1h02m05s elapsed"
    assert duration(59.6) == "1m00s"


def test_status_reads_a_running_and_a_finished_sweep_from_mlflow(tmp_path):
    from pipeline.tracking import Tracker, TrackingParams

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["study"]["datasets"] = ["synthetic_voc", "synthetic_cityscapes"]
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    params["tracking"]["uri"] = uri
    params["report"]["results_dir"] = str(tmp_path / "results")
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    assert "synthetic_voc         no MLflow store yet" in status(path)
    assert not (tmp_path / "mlflow.db").exists()  # status only reads

    # a sweep of 2 losses x 3 seeds under way: 2 trials ended, 1 running, 3 not started
    tracker = Tracker(TrackingParams(uri=uri))
    parent = tracker.parent_run("key-voc", "sweep-synthetic_voc", tags={"dataset": "synthetic_voc"},
                                params={"losses": "ce,pixiou", "seeds": "0,1,2",
                                        "lr_search.samples": 0})
    for i, state in enumerate(["FINISHED", "FAILED", "RUNNING"]):
        child = tracker.child_run(parent, f"trial-{i}", f"t{i}", {}, {})
        if state != "RUNNING":
            tracker.client.set_terminated(child, state)
    out = status(path)
    assert "synthetic_voc         sweep RUNNING: 2/6 done, 1 running, 3 waiting; " in out
    assert "synthetic_cityscapes  no sweep has started" in out
    assert "pretrain" not in out

    # the other dataset's CE pre-training under way
    from pipeline.pretrain import PRETRAIN_KEY

    run = tracker.keyed_run(PRETRAIN_KEY, "key-pre", "pretrain-synthetic_cityscapes",
                            params={"iterations": 3000}, tags={"dataset": "synthetic_cityscapes"})
    tracker.log_evaluations(run, [{"iteration": 500, "mIoU": 35.34},
                                  {"iteration": 1000, "mIoU": 44.72}])
    out = status(path)
    assert ("synthetic_cityscapes  pretrain RUNNING: iteration 1000 of 3000, mIoU 44.72\n"
            "                      no sweep has started") in out
    assert f"{tmp_path / 'results' / 'synthetic_voc.json'}: not written yet" in out

    tracker.end_parent(parent, {"finished": 5, "stopped": 0, "failed": 1})
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "synthetic_voc.json").write_text(json.dumps({"trials": [
        {"status": "finished"}] * 5 + [{"status": "failed"}]}))
    out = status(path)
    assert "sweep FAILED " in out and ": 1 failed, 5 finished, 0 stopped" in out
    assert "synthetic_voc.json: 1 failed, 5 finished" in out


def test_the_planned_trials_count_the_convergence_arm():
    from pipeline.status import planned_trials

    params = {"losses": "ce,lovasz,pixiou", "seeds": "0,1,2,3,4", "lr_search.samples": "0",
              "convergence.losses": "ce,lovasz"}
    assert planned_trials(params) == 5 * 3 + 5 * 2
    assert planned_trials({**params, "convergence.losses": ""}) == 15
