"""The fine-tuning protocol: the pretrain stage (trained, or a published checkpoint checked by
hash), trials that start from exactly its weights, and the split the learning rate is chosen
on. The stage under `dvc repro` (and what reruns it): tests/test_documented_commands.py."""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from tests.conftest import ROOT, TINY_DATA, study_params, sweep


def pretrain(params: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline.pretrain", "synthetic_voc",
                           "--params", str(params)], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory, tiny_data):
    """The tiny study's pretrain stage run once: (tmp folder, params, its summary)."""
    tmp = tmp_path_factory.mktemp("pretrained")
    params = study_params(tmp, tiny_data, study=dict(protocol="finetune"),
                          report=dict(results_dir=str(tmp / "results")))
    done = pretrain(params)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = json.loads((tmp / "models/pretrain/synthetic_voc/summary.json").read_text())
    return tmp, params, summary


def test_the_pretrain_stage_writes_a_checked_ce_model_and_its_mlflow_run(pretrained):
    tmp, _, summary = pretrained
    model = tmp / "models/pretrain/synthetic_voc/model.pth"
    assert summary["sha256"] == hashlib.sha256(model.read_bytes()).hexdigest()
    assert summary["protocol"] == "finetune" and summary["source"] == "trained"
    assert summary["iterations"] == 4 and [h["iteration"] for h in summary["history"]] == [2, 4]
    assert summary["mIoU"] == summary["history"][-1]["mIoU"]
    import torch

    weights = torch.load(model, map_location="cpu")  # weights only: loads without pickles
    assert set(weights) == {"state_dict", "meta"} and weights["meta"]["iterations"] == 4
    # the early weights (pretrain.early_iteration: 2), the convergence arm's start, beside it
    early = tmp / "models/pretrain/synthetic_voc/early.pth"
    assert summary["early"] == {"iteration": 2, "mIoU": summary["history"][0]["mIoU"],
                                "sha256": hashlib.sha256(early.read_bytes()).hexdigest()}
    early_weights = torch.load(early, map_location="cpu")
    assert early_weights["meta"]["iterations"] == 2
    assert any(not torch.equal(early_weights["state_dict"][k], weights["state_dict"][k])
               for k in weights["state_dict"])
    # its work dir is gone once the model is in the output
    assert not any((tmp / "work_dirs/pretrain").rglob("*.pth"))
    client = MlflowClient(f"sqlite:///{tmp / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("pixiou-study")
    (run,) = client.search_runs([experiment.experiment_id],
                                f"tags.`pixiou.pretrain_key` = '{summary['key']}'")
    assert run.info.status == "FINISHED" and run.info.run_name == "pretrain-synthetic_voc"
    assert run.data.tags["resumed_from"] == "0"
    # The output says what the model is, nothing about this run: a rerun gives the same bytes
    assert not {"wall_time_s", "resumed_from", "mlflow_run_id"} & set(summary)
    assert run.data.params["loss"] == "ce" and run.data.metrics["final.mIoU"] == summary["mIoU"]
    assert [m.step for m in client.get_metric_history(run.info.run_id, "mIoU")] == [2, 4]


def test_a_pretraining_killed_before_it_copied_its_early_weights_still_finishes(
        tiny_data, tmp_path, monkeypatch, capsys):
    """A kill after the early evaluation was recorded, before its weights were copied: the
    resumed run does not evaluate that iteration again, and takes them from the checkpoint it
    resumes from."""
    import torch

    from pipeline import pretrain as stage

    class Killed(BaseException):
        """What a `kill -9` leaves: no handler runs past it."""

    copy = stage.save_weights

    def killed_at_the_early_copy(checkpoint, target, *args):
        if target.name == "early.pth":
            raise Killed
        copy(checkpoint, target, *args)

    params = study_params(tmp_path, tiny_data, study=dict(protocol="finetune"))
    monkeypatch.setattr(stage, "save_weights", killed_at_the_early_copy)
    with pytest.raises(Killed):
        stage.run_stage("synthetic_voc", params)
    (checkpoint,) = (tmp_path / "work_dirs/pretrain/synthetic_voc").glob("*/iter_2.pth")
    at_2 = torch.load(checkpoint, map_location="cpu", weights_only=False)["state_dict"]
    monkeypatch.setattr(stage, "save_weights", copy)
    summary = stage.run_stage("synthetic_voc", params)
    assert "the early weights (iteration 2) copied from the checkpoint" in capsys.readouterr().out
    early = torch.load(tmp_path / "models/pretrain/synthetic_voc/early.pth", map_location="cpu")
    assert early["meta"]["iterations"] == 2 and set(early["state_dict"]) == set(at_2)
    assert all(torch.equal(early["state_dict"][k], at_2[k]) for k in at_2)
    assert summary["early"]["mIoU"] == summary["history"][0]["mIoU"]
    assert summary["iterations"] == 4


def test_a_finetuning_run_starts_from_exactly_the_pretrained_weights(pretrained):
    from pipeline.train import Placement, RunSpec, run

    tmp, _, summary = pretrained
    model = tmp / "models/pretrain/synthetic_voc/model.pth"
    config = ROOT / "mmseg_configs/fcn_r18-tiny-d8_1xb4-160_synthetic-voc-128x128.py"
    spec = RunSpec(config=str(config), loss="lovasz", terms=[{"type": "LovaszSoftmaxLoss"}],
                   seed=3, iterations=2, val_interval=2, overlays=1)
    data_root = yaml.safe_load((tmp / "params.yaml").read_text())["data"]["root"]
    history = run(spec, Placement(str(tmp / "finetune"), data_root, str(model))).history
    # Evaluated before its first step, on the same validation set: the pretrain's final numbers
    assert history[0]["iteration"] == 0
    for measure in ("mIoU", "image-mIoU", "mPixIoU"):
        assert history[0][measure] == summary[measure], measure
    assert history[-1]["iteration"] == 2  # then it trains


def test_a_finetuning_sweep_keys_its_trials_by_the_starting_checkpoint(pretrained):
    from pipeline.sweep.plan import load_study, plan_trials

    tmp, params, summary = pretrained
    done = sweep(params, tmp)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = json.loads((tmp / "results/synthetic_voc.json").read_text())
    assert results["start"] == {"protocol": "finetune", "sha256": summary["sha256"],
                                "mIoU": summary["mIoU"], "source": "trained"}
    for trial in results["trials"]:
        assert trial["history"][0]["iteration"] == 0
        assert trial["history"][0]["mIoU"] == summary["mIoU"]
    client = MlflowClient(f"sqlite:///{tmp / 'mlflow.db'}")
    child = client.get_run(results["trials"][0]["mlflow_run_id"])
    assert child.data.params["protocol"] == "finetune"
    assert child.data.params["init_checkpoint_sha256"] == summary["sha256"]
    assert "fine-tuned from the CE checkpoint " + summary["sha256"][:12] in \
        child.data.tags["mlflow.note.content"]
    # Another starting checkpoint, or none, is another set of trials
    finetune = {t.key for t in plan_trials(load_study("synthetic_voc", params))}
    summary_file = tmp / "models/pretrain/synthetic_voc/summary.json"
    original = summary_file.read_text()
    try:
        summary_file.write_text(json.dumps({**summary, "sha256": "0" * 64}))
        other = {t.key for t in plan_trials(load_study("synthetic_voc", params))}
    finally:
        summary_file.write_text(original)
    scratch = params.parent / "scratch.yaml"
    edited = yaml.safe_load(params.read_text())
    edited["study"]["protocol"] = "scratch"
    scratch.write_text(yaml.safe_dump(edited))
    from_scratch = {t.key for t in plan_trials(load_study("synthetic_voc", scratch))}
    assert finetune.isdisjoint(other) and finetune.isdisjoint(from_scratch)


@pytest.mark.slow
def test_finetuning_without_the_pretrain_model_says_which_stage_to_run(tmp_path, tiny_data):
    params = study_params(tmp_path, tiny_data, study=dict(protocol="finetune"))
    done = sweep(params, tmp_path)
    assert done.returncode != 0
    assert "dvc repro pretrain@synthetic_voc" in done.stderr, done.stderr[-2000:]


@pytest.mark.parametrize("section, values, message", [
    ("pretrain", dict(iterations=0), "pretrain.iterations must be >= 1"),
    ("pretrain", dict(val_interval=9), "pretrain.val_interval (9) is longer than"),
    ("pretrain", dict(lr=-1.0), "pretrain.lr must be > 0"),
    ("pretrain", dict(published={"synthetic_voc": dict(url="ftp://x/y.pth", sha256="c7ff3d56",
                                                       mIoU=1.0)}),
     "pretrain.published.synthetic_voc.url must be an http(s) URL"),
    ("pretrain", dict(published={"voc": dict(url="https://x/y.pth", sha256="C7FF", mIoU=1.0)}),
     "pretrain.published.voc.sha256 must be the file's sha256 or its first 8"),
    ("study", dict(protocol="finetuned"), "study.protocol must be one of"),
    ("pretrain", dict(early_iteration=3), "pretrain.early_iteration must be a multiple of "
                                          "pretrain.val_interval (2) below pretrain.iterations"),
], ids=["iterations", "val_interval", "lr", "url", "sha256", "protocol", "early"])
def test_bad_pretrain_params_fail_naming_the_key(tmp_path, tiny_data, section, values, message):
    params = study_params(tmp_path, tiny_data, tracking_store=False, **{section: values},
                          **({} if section == "study" else {"study": dict(protocol="finetune")}))
    done = pretrain(params)
    assert done.returncode == 2
    assert message in done.stderr, done.stderr
    assert not (tmp_path / "models").exists() and not (tmp_path / "mlflow.db").exists()


# --- a published checkpoint --------------------------------------------------------------------

@pytest.fixture
def checkpoint_server():
    """127.0.0.1 serving /model.pth (some bytes); stopped after the test."""
    body = b"a model-zoo checkpoint" * 1000

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            self.send_response(200 if self.path == "/model.pth" else 404)
            self.send_header("Content-Length", str(len(body) if self.path == "/model.pth" else 0))
            self.end_headers()
            if self.path == "/model.pth":
                self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/model.pth", body
    server.shutdown()
    server.server_close()


def test_a_published_checkpoint_is_downloaded_once_and_checked(tmp_path, checkpoint_server):
    from pipeline.data.download import DownloadError
    from pipeline.pretrain import PublishedCheckpoint, fetch_published

    url, body = checkpoint_server
    sha = hashlib.sha256(body).hexdigest()
    staging = tmp_path / "out"
    staging.mkdir()
    result = fetch_published("voc", PublishedCheckpoint(url, sha[:8], 77.22), tmp_path / "dl",
                             staging, retries=0, backoff=0)
    assert (staging / "model.pth").read_bytes() == body
    assert result["source"] == "published" and result["mIoU"] == 77.22
    # A file whose hash is not the published one is deleted and named
    wrong = "0" * 8 if not sha.startswith("0" * 8) else "1" * 8
    (tmp_path / "dl/checkpoints/model.pth").unlink()
    with pytest.raises(DownloadError, match=f"has sha256 {sha[:16]}.*not {wrong}"):
        fetch_published("voc", PublishedCheckpoint(url, wrong, 77.22), tmp_path / "dl",
                        staging, retries=0, backoff=0)
    assert not (tmp_path / "dl/checkpoints/model.pth").exists()
    # Offline: where to put the file by hand
    with pytest.raises(DownloadError, match="Offline, put the file at .*dl/checkpoints/gone.pth"):
        fetch_published("voc", PublishedCheckpoint(url.replace("model.pth", "gone.pth"), sha,
                                                   77.22), tmp_path / "dl", staging,
                        retries=0, backoff=0)


def test_the_paper_configs_name_published_checkpoints_that_fit_them():
    from pipeline.params import load_params, parse_section
    from pipeline.pretrain import PretrainParams

    params = load_params(ROOT / "params.yaml")
    published = parse_section(PretrainParams, params["pretrain"], "pretrain").published
    for dataset, checkpoint in published.items():
        config = Path(params["train"]["configs"][dataset]).stem  # e.g. ..._4xb4-20k_voc12aug-...
        name = Path(checkpoint.url).name  # e.g. deeplabv3plus_r101-d8_512x512_20k_voc12aug_...
        model, schedule = config.split("_")[0], config.split("-")[2].split("_")[0]
        crop = config.split("-")[-1]
        assert name.startswith(model + "_r101-d8_") and f"_{schedule}_" in name, (config, name)
        assert f"_{crop}_" in name, (config, name)
        assert name.removesuffix(".pth").endswith(checkpoint.sha256)  # the zoo's hash prefix


# --- the held-out split ------------------------------------------------------------------------

def test_the_lr_search_split_never_overlaps_the_validation_set(tiny_data):
    from mmengine.registry import init_default_scope
    from mmseg.registry import DATASETS

    import pipeline.splits  # noqa: F401 - registers EveryKthSplit
    from pipeline.train import Placement, RunSpec, build_config

    init_default_scope("mmseg")
    config = ROOT / "mmseg_configs/fcn_r18-tiny-d8_1xb4-160_synthetic-voc-128x128.py"
    cfg = build_config(RunSpec(config=str(config), loss="ce",
                               terms=[{"type": "CrossEntropyLoss"}], seed=0, holdout=4),
                       Placement("unused", str(tiny_data)))

    def images(loader):
        dataset = DATASETS.build(loader.dataset)
        return [dataset.get_data_info(i)["img_path"] for i in range(len(dataset))]

    train, held_out, validation = (images(cfg[f"{part}_dataloader"])
                                   for part in ("train", "val", "test"))
    assert len(held_out) == TINY_DATA["train"] // 4 and len(train) == TINY_DATA["train"] * 3 // 4
    assert not set(train) & set(held_out)
    assert not (set(train) | set(held_out)) & set(validation)
    assert len(validation) == TINY_DATA["val"]
    # held-out images are evaluated as validation images are: no augmentation
    assert cfg.val_dataloader.dataset.pipeline == cfg.test_dataloader.dataset.pipeline


def test_the_report_chooses_each_seeds_lr_on_the_held_out_split_only():
    from pipeline.report.results import FINISHED, LossResults, TrialResult

    def trial(lr, val, held_out):
        return TrialResult("ce", 0, FINISHED, {"mIoU": val, "mPixIoU": val - 1},
                           {"IoU.a": val}, [], lr=lr, selection_mIoU=held_out)

    # The lr with the better validation mIoU loses on the held-out split: it is not chosen
    losses = LossResults("ce", "CE", [{"type": "CrossEntropyLoss"}],
                         [trial(0.01, 70.0, 50.0), trial(0.001, 60.0, 55.0)])
    assert losses.values("mIoU") == {0: 60.0}
    assert losses.finished_per_class() == [{"IoU.a": 60.0}]  # the per-class table follows
