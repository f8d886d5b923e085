"""The sweep through a real Ray runtime and a real MLflow store: results, tracking, DDP, crash
recovery, and bad study parameters failing before Ray starts (`ray job submit`, S3 storage and
a tracking server: tests/test_cluster_storage.py)."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from tests.conftest import ROOT, build_tiny_data, free_port, study_params, sweep


def stage_main(params: Path, tmp_path: Path, dataset: str = "synthetic_voc") -> int:
    """`python -m pipeline.sweep <dataset>` in this process: for errors found before Ray."""
    from pipeline.sweep.__main__ import main

    return main([dataset, "--params", str(params), "--results-dir", str(tmp_path / "results")])

STUDY_LOSSES = yaml.safe_load((ROOT / "params.yaml").read_text())["train"]["losses"]

SECRET = "s3cr3t-Pa55word-for-the-test"


def runs(tmp_path: Path):
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("pixiou-study")
    found = client.search_runs([experiment.experiment_id], max_results=1000)
    parents = [r for r in found if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in found if "mlflow.parentRunId" in r.data.tags]
    return client, parents, children


@pytest.mark.slow
def test_a_sweep_of_two_losses_fills_results_and_mlflow(tmp_path, tiny_data):
    params = study_params(tmp_path, tiny_data, report=dict(
        results_dir=str(tmp_path / "results"), output=str(tmp_path / "reports")))
    done = sweep(params, tmp_path, env={"CITYSCAPES_PASSWORD": SECRET, "HF_TOKEN": SECRET},
                 command=True)  # Tune's table, as the command prints it
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    # Tune's table names the trials as the study does, with the columns a person compares;
    # where the sweep stands, as it goes
    assert "trial_driver_" not in done.stdout
    assert re.search(r"\| ce_seed0_\w{8} +\| TERMINATED .*\| ce +\| +0 \|", done.stdout)
    assert re.search(r"\| Trial name +\| status +\| loc +\| loss +\| +seed \| +iter \| +mIoU \| "
                     r"+image-mIoU \| +mPixIoU \|", done.stdout)
    assert "sweep@synthetic_voc: 1/2 done, 1 running, 0 waiting" in done.stdout or \
        "sweep@synthetic_voc: 1/2 done, 0 running, 1 waiting" in done.stdout
    assert re.search(r"sweep@synthetic_voc: 1/2 done, .* elapsed, about \d+m?\d*s left",
                     done.stdout)
    assert "sweep@synthetic_voc: 2/2 done, 0 running, 0 waiting" in done.stdout
    results = json.loads((tmp_path / "results" / "synthetic_voc.json").read_text())
    trials = results["trials"]
    assert sorted(t["loss"] for t in trials) == ["ce", "pixiou"]
    for trial in trials:
        assert trial["status"] == "finished" and trial["error"] is None
        assert trial["seed"] == 0 and trial["world_size"] == 1 and trial["iterations"] == 4
        assert 0 <= trial["mIoU"] <= 100 and trial["mPixIoU"] <= 100
        assert [h["iteration"] for h in trial["history"]] == [2, 4]
        assert len([k for k in trial["per_class"] if k.startswith("PixIoU.")]) == 21
        assert trial["wall_time_s"] > 0

    client, parents, children = runs(tmp_path)
    assert len(parents) == 1 and len(children) == 2
    parent = parents[0]
    assert results["mlflow_parent_run_id"] == parent.info.run_id
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["mlflow.source.git.commit"]
    assert parent.data.tags["data_hash"] == results["data_hash"]
    assert "version.torch" in parent.data.tags
    for child in children:
        trial = next(t for t in trials if t["mlflow_run_id"] == child.info.run_id)
        assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert child.info.status == "FINISHED"
        assert child.data.params["loss"] == trial["loss"]
        assert child.data.params["seed"] == "0" and child.data.params["dataset"] == "synthetic_voc"
        assert child.data.metrics["final.mIoU"] == pytest.approx(trial["mIoU"])
        history = client.get_metric_history(child.info.run_id, "mIoU")
        assert sorted(m.step for m in history) == [2, 4]  # every evaluation, once
        artifacts = {a.path for a in client.list_artifacts(child.info.run_id)}
        assert {"config.py", "confusion_matrix.png", "overlays", "logs"} <= artifacts
        # a trial you can watch: mmengine's log, and at each evaluation the run's lr, timings,
        # memory and MLflow's system metrics (the UI's "System metrics" tab)
        (log,) = client.list_artifacts(child.info.run_id, "logs")
        assert log.path.endswith(".log") and log.file_size > 0
        for key in ("lr", "s_per_iter", "data_time_s", "peak_memory_mb",
                    "system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"):
            steps = sorted(m.step for m in client.get_metric_history(child.info.run_id, key))
            assert steps == [2, 4], key
        assert child.data.metrics["lr"] > 0 and child.data.metrics["s_per_iter"] > 0
        assert child.data.params["amp"] == "fp32" and child.data.params["deterministic"] == "True"
        # what the UI shows: a description, and the dataset with its digest
        name = STUDY_LOSSES[trial["loss"]]["name"]
        assert child.data.params["loss_name"] == name
        note = child.data.tags["mlflow.note.content"]
        assert note.startswith(f"Loss {name} ({trial['loss']}: [{{")  # its mmseg loss configs
        assert "}]), seed 0, lr 0.01, 4 iterations of " in note
        (used,) = child.inputs.dataset_inputs
        assert used.dataset.name == "synthetic_voc"
        assert used.dataset.digest == results["data_hash"][:16]
    # no secret of the environment reached params, tags or the logged files
    for run in [parent, *children]:
        assert SECRET not in json.dumps([run.data.params, run.data.tags])
    for path in (tmp_path / "mlartifacts").rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes()

    # the report stage attaches the tables and figures to the sweep's parent run
    report = subprocess.run([sys.executable, "-m", "pipeline.report", "--params", str(params)],
                            cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert report.returncode == 0, report.stdout[-3000:] + report.stderr[-3000:]
    assert f"synthetic_voc (run {parent.info.run_id})" in report.stdout
    attached = {a.path for a in client.list_artifacts(parent.info.run_id, "report")}
    assert {"report/tables.md", "report/figures"} <= attached
    assert client.list_artifacts(parent.info.run_id, "report/figures")

    # a second run of the stage trains nothing and logs nothing twice
    again = sweep(params, tmp_path)
    assert again.returncode == 0
    assert "2 already done, 0 to run" in again.stdout
    _, parents, children = runs(tmp_path)
    assert len(parents) == 1 and len(children) == 2


@pytest.fixture(scope="module")
def odd_val_data(tmp_path_factory) -> Path:
    """7 validation images: split over 2 ranks, mmengine's sampler pads one rank with a repeat."""
    return build_tiny_data(tmp_path_factory.mktemp("odd_val"), val=7)


@pytest.mark.slow
def test_a_two_worker_trial_evaluates_the_whole_validation_set(tmp_path, odd_val_data):
    """The confusion matrix and overlays of a 2-rank gloo trial are those of one process
    evaluating its final checkpoint over the whole validation set."""
    import numpy as np
    from PIL import Image

    from pipeline.data.layouts import IGNORE_INDEX, VOC_AUG
    from pipeline.train import Placement, RunSpec, evaluate

    params = study_params(tmp_path, odd_val_data, train=dict(batch_size=2, overlays=3),
                          sweep=dict(losses=["ce_lovasz"], cpu_workers_per_trial=2))
    done = sweep(params, tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (trial,) = json.loads((tmp_path / "results" / "synthetic_voc.json").read_text())["trials"]
    assert trial["status"] == "finished" and trial["workers"] == 2
    assert trial["world_size"] == 2  # what the model's process group reported
    assert all(h["world_size"] == 2 for h in trial["history"])
    assert "world size 2" in done.stdout
    assert trial["effective_batch_size"] == 4  # 2 workers x 2 = the config's 1xb4

    work = Path(trial["storage"]) / "final"  # the trial's final checkpoint
    two_ranks = json.loads((work / "confusion_matrix.json").read_text())
    one = evaluate(RunSpec(config="mmseg_configs/fcn_r18-tiny-d8_1xb4-160_synthetic-voc-128x128"
                                  ".py", loss=trial["loss"], terms=trial["loss_terms"], seed=0,
                           overlays=3, threads=1),
                   Placement(str(tmp_path / "evaluation"), str(odd_val_data)),
                   str(work / "iter_4.pth"))
    assert two_ranks["images"] == 7
    assert two_ranks["matrix"] == one["confusion"]
    assert one["metrics"]["mIoU"] == pytest.approx(trial["mIoU"])
    # image-mIoU gathered over the 2 gloo ranks (7 images: the sampler pads one) = one process
    assert one["metrics"]["image-mIoU"] == pytest.approx(trial["image-mIoU"])
    labelled = sum(int((np.asarray(Image.open(label)) != IGNORE_INDEX).sum())
                   for _, label in VOC_AUG.pairs(odd_val_data / "synthetic_voc", "val"))
    assert np.sum(two_ranks["matrix"]) == labelled  # every labelled pixel, each once
    first_three = [image.stem for image, _ in VOC_AUG.pairs(odd_val_data / "synthetic_voc",
                                                           "val")[:3]]
    assert sorted(p.name for p in (work / "overlays").iterdir()) == one["overlays"] == \
        [f"{i:02d}_{stem}.png" for i, stem in enumerate(first_three)]

    _, _, (child,) = runs(tmp_path)
    assert child.data.params["effective_batch_size"] == "4"
    assert child.data.params["workers"] == "2" and child.data.params["batch_size"] == "2"
    assert float(child.data.params["lr"]) == pytest.approx(0.01)


@pytest.mark.slow
@pytest.mark.parametrize("retries", [1, 0])  # -1: tests/test_failures.py, retry forever
def test_a_crashing_trial_is_retried_or_recorded_as_failed(tmp_path, tiny_data, retries):
    params = study_params(tmp_path, tiny_data, sweep=dict(losses=["ce"], max_failures=retries))
    faults = tmp_path / "faults"
    done = sweep(params, tmp_path, env={"PIXIOU_FAIL_FIRST_ATTEMPT": str(faults)})
    (trial,) = json.loads((tmp_path / "results" / "synthetic_voc.json").read_text())["trials"]
    assert [p.name for p in faults.iterdir()] == [trial["key"]]  # the first attempt crashed
    _, parents, children = runs(tmp_path)
    assert len(children) == 1
    if retries:
        assert done.returncode == 0
        assert trial["status"] == "finished" and children[0].info.status == "FINISHED"
    else:
        assert done.returncode == 1  # nothing finished: the stage fails
        assert trial["status"] == "failed" and "injected fault" in trial["error"], \
            done.stdout[-3000:] + done.stderr[-3000:]
        assert children[0].info.status == "FAILED"
        assert "injected fault" in children[0].data.tags["pixiou.note"]
        assert f"FAILED {trial['trial']}" in done.stdout


@pytest.mark.slow
def test_a_learning_rate_search_runs_under_asha(tmp_path, tiny_data):
    from pipeline.sweep import LRSearchParams

    search = dict(samples=3, low=1e-3, high=3e-2, seed=0, grace_period=2, reduction_factor=2)
    params = study_params(tmp_path, tiny_data, train=dict(iterations=6, val_interval=2),
                          sweep=dict(losses=["ce"], lr_search=search))
    done = sweep(params, tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    trials = json.loads((tmp_path / "results" / "synthetic_voc.json").read_text())["trials"]
    assert sorted(t["lr"] for t in trials) == sorted(LRSearchParams(**search).rates())
    assert {t["status"] for t in trials} <= {"finished", "stopped"}
    assert any(t["status"] == "finished" for t in trials)
    _, _, children = runs(tmp_path)
    status = {c.info.run_id: c.info.status for c in children}
    for trial in trials:
        assert status[trial["mlflow_run_id"]] == ("FINISHED" if trial["status"] == "finished"
                                                  else "KILLED")


@pytest.mark.parametrize("sections,message", [
    (dict(sweep=dict(losses=["ce", "focal"])), "sweep.losses[1]: unknown loss 'focal'"),
    (dict(sweep=dict(seeds=[0, -1])), "sweep.seeds[1] must be >= 0"),
    (dict(sweep=dict(gpus_per_trial=64)), "sweep.gpus_per_trial"),
    (dict(sweep=dict(cpu_workers_per_trial=512)), "sweep.cpu_workers_per_trial"),
    (dict(sweep=dict(max_failure=3)), "unknown key 'sweep.max_failure'"),
    (dict(sweep=dict(max_failures=-2)), "sweep.max_failures must be >= 0, or -1"),
    (dict(sweep=dict(cpu_workers_per_trial=2)), "effective batch of 2 worker(s) x 4 = 8"),
    (dict(train=dict(losses={**STUDY_LOSSES, "ce": {"name": "CE", "terms": [{"type": "Focal"}]}})),
     "train.losses.ce.terms[0]: 'Focal' is not a loss in mmseg's MODELS registry"),
    (dict(train=dict(losses={**STUDY_LOSSES, "ce": {"name": "CE", "terms": [
        {"type": "CrossEntropyLoss", "use_sigmod": True}]}})),
     "train.losses.ce.terms[0]: CrossEntropyLoss does not accept this config"),
    (dict(train=dict(iterations=-5)), "train.iterations must be > 0"),
])
def test_bad_study_parameters_fail_before_ray_starts(tmp_path, tiny_data, sections, message,
                                                    capsys):
    """The stage's command line, in this process (what `dvc repro` runs: the reliability
    suite runs one bad params.yaml through it end to end)."""
    assert stage_main(study_params(tmp_path, tiny_data, **sections), tmp_path) == 2
    said = capsys.readouterr()
    assert message in said.err
    assert "Started a local Ray instance" not in said.out + said.err
    assert not (tmp_path / "sweeps").exists()  # nothing written


def test_an_unknown_dataset_is_named(tmp_path, tiny_data, capsys):
    assert stage_main(study_params(tmp_path, tiny_data), tmp_path, "imagenet") == 2
    said = capsys.readouterr().err
    assert "unknown dataset 'imagenet'" in said and "synthetic_voc" in said


def test_an_unreachable_tracking_server_fails_before_training(tmp_path, tiny_data, capsys,
                                                              monkeypatch):
    url = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")  # the check sets it: restored after
    assert stage_main(study_params(tmp_path, tiny_data), tmp_path) == 2
    said = capsys.readouterr().err
    assert f"MLflow tracking store {url} is not usable" in said
    assert "unset MLFLOW_TRACKING_URI" in said
    assert not (tmp_path / "sweeps").exists()


def test_the_study_changes_only_the_trials_it_touches(tmp_path, tiny_data):
    """Changing one loss weight keeps every other trial's key (and so its finished run)."""
    from pipeline.sweep import load_study, plan_trials

    base = study_params(tmp_path, tiny_data, sweep=dict(losses=["ce", "ce_pixiou"]))
    keys = {t.spec.loss: t.key for t in plan_trials(load_study("synthetic_voc", base))}
    changed = study_params(tmp_path, tiny_data, sweep=dict(losses=["ce", "ce_pixiou"]),
                           train=dict(losses={**STUDY_LOSSES, "ce_pixiou": {
                               "name": "CE + Lovász-PixIoU", "terms": [
                                   {"type": "CrossEntropyLoss", "loss_weight": 1.0},
                                   {"type": "LovaszPixIoULoss", "loss_weight": 0.5}]}}))
    again = {t.spec.loss: t.key for t in plan_trials(load_study("synthetic_voc", changed))}
    assert again["ce"] == keys["ce"] and again["ce_pixiou"] != keys["ce_pixiou"]


def test_lr_search_draws_reproducible_rates_in_range():
    from pipeline.sweep import LRSearchParams

    search = LRSearchParams(samples=4, low=1e-4, high=1e-2, seed=3)
    rates = search.rates()
    assert rates == search.rates() and len(set(rates)) == 4
    assert all(1e-4 <= r <= 1e-2 for r in rates)
    assert LRSearchParams().rates() == [None]



def test_a_trial_resumes_from_its_last_whole_checkpoint_only(tmp_path):
    """A single-worker trial writes each checkpoint's marker file last; one that a kill cut
    short (no marker) is passed over when the trial starts again."""
    from pipeline.sweep.storage import Storage
    from pipeline.sweep.trial import TuneTrialReporter
    from pipeline.train import RunSummary

    root = tmp_path / "storage"
    folder = root / "synthetic_voc" / "ce_seed0_abcd1234"
    for name, files in (("iter_4", ["iter_4.pth", "eval_history.jsonl"]),
                        ("iter_6", ["iter_6.pth"]),  # cut short: no history yet
                        ("final", ["iter_8.pth", "config.py"])):  # cut short: no summary
        (folder / name).mkdir(parents=True)
        for file in files:
            (folder / name / file).write_text(file)
    storage = Storage.parse(str(root))
    work = tmp_path / "work"
    work.mkdir()
    reporter = TuneTrialReporter(work, ["node"], storage, ("synthetic_voc", "ce_seed0_abcd1234"))
    assert reporter.restore(work) is None  # not finished: it resumes
    assert (work / "last_checkpoint").read_text() == str(work / "iter_4.pth")
    assert not (work / "iter_6.pth").exists()

    finished = RunSummary(iterations=8, world_size=1, wall_time_s=1.0,
                          metrics={"mIoU": 1.0, "image-mIoU": 2.0, "mPixIoU": 3.0},
                          per_class={"IoU.background": 1.0}, history=[{"iteration": 8}])
    (folder / "final" / "summary.json").write_text(json.dumps(finished.to_dict()))  # whole now
    again = tmp_path / "again"
    again.mkdir()
    assert reporter.restore(again) == finished
