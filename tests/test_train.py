"""One run through pipeline.train: the study's loss in the config, evaluation, resume, artifacts,
isolation of mmengine's global state, and the mmseg configs (embedded default and paper-scale)."""
from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from pipeline.measures import METRICS
from pipeline.train import (
    Placement,
    PretrainedWeightsError,
    RunSpec,
    build_config,
    ensure_pretrained,
    load_train_params,
    read_summary,
    run,
)
from pipeline.train.engine import isolated_mmengine_state

ROOT = Path(__file__).resolve().parents[1]
TINY_VOC = "mmseg_configs/fcn_r18-tiny-d8_1xb4-160_synthetic-voc-128x128.py"
PAPER_CONFIGS = sorted((ROOT / "mmseg_configs").glob("deeplabv3plus_*.py"))
CE = {"type": "CrossEntropyLoss", "loss_weight": 1.0}
PIXIOU = {"type": "LovaszPixIoULoss", "loss_weight": 1.0}


def tiny_run(work_dir, tiny_data, **overrides) -> tuple[RunSpec, Placement]:
    """A 4-iteration CE + 0.5 PixIoU run of the tiny config (with `overrides`), placed in
    `work_dir` over the tiny data."""
    values = dict(config=TINY_VOC, loss="ce_pixiou", terms=[CE, dict(PIXIOU, loss_weight=0.5)],
                  seed=0, iterations=4, val_interval=2, overlays=2, threads=1)
    return RunSpec(**{**values, **overrides}), Placement(str(work_dir), str(tiny_data))


def managers():
    from pipeline.train.engine import _manager_classes

    return {cls: set(cls._instance_dict) for cls in _manager_classes() if cls._instance_dict}


def test_a_tiny_run_trains_evaluates_resumes_and_leaves_its_artifacts(tmp_path, tiny_data):
    before = managers()
    work = tmp_path / "run"
    first = run(*tiny_run(work, tiny_data))
    assert [r["iteration"] for r in first.history] == [2, 4]
    assert first.iterations == 4 and first.resumed_from == 0 and first.world_size == 1
    assert 0 <= first.metrics["mIoU"] <= 100
    assert first.metrics["mIoU"] == first.history[-1]["mIoU"]
    assert first.history[0]["loss"] > 0
    assert len([k for k in first.per_class if k.startswith("IoU.")]) == 21
    written = read_summary(work)  # summary.json
    assert (written.metrics, written.history) == (first.metrics, first.history)
    assert "LovaszPixIoULoss" in (work / "config.py").read_text()
    with Image.open(work / "confusion_matrix.png") as png:
        assert png.size[0] > 200 and len(set(png.convert("L").getdata())) > 10  # not blank
    confusion = json.loads((work / "confusion_matrix.json").read_text())
    assert len(confusion["matrix"]) == 21
    assert sum(map(sum, confusion["matrix"])) > 0
    overlays = sorted((work / "overlays").glob("*.png"))
    assert len(overlays) == 2
    with Image.open(overlays[0]) as panel:
        assert panel.size == (3 * 64, 64)  # image | ground truth | prediction
    # mmengine's loggers/visualizers of the run are gone: a second run cannot write into them
    assert managers() == before

    again = run(*tiny_run(work, tiny_data, iterations=6))
    assert again.resumed_from == 4
    assert [r["iteration"] for r in again.history] == [2, 4, 6]
    assert again.history[:2] == first.history
    logs = sorted(p for p in work.glob("*/*.log") if p.parent.name != "logs")
    assert len(logs) == 2
    assert "Auto resumed from the latest checkpoint" in logs[1].read_text()
    assert "Iter(train) [4/4]" not in logs[1].read_text()  # each run logs only itself
    # both attempts' logs are kept with the run's files (RESULT_FILES: logs/)
    assert sorted(p.name for p in (work / "logs").iterdir()) == [p.name for p in logs]
    assert (work / "logs" / logs[1].name).read_text() == logs[1].read_text()


def test_runs_are_deterministic_for_a_seed(tmp_path, tiny_data):
    one = run(*tiny_run(tmp_path / "a", tiny_data, loss="ce", terms=[CE], iterations=2,
                        overlays=0))
    two = run(*tiny_run(tmp_path / "b", tiny_data, loss="ce", terms=[CE], iterations=2,
                        overlays=0))
    other = run(*tiny_run(tmp_path / "c", tiny_data, loss="ce", terms=[CE], iterations=2,
                          overlays=0, seed=1))
    # the measures and the loss, bit for bit (not the timings and memory a run also reports)
    def measured(history):
        return [{k: r[k] for k in ("iteration", *METRICS, "loss")} for r in history]

    assert measured(one.history) == measured(two.history)
    assert one.history[0]["s_per_iter"] > 0 and "lr" in one.history[0]
    assert one.history[0]["loss"] != other.history[0]["loss"]


@pytest.mark.parametrize("loss", list(load_train_params(ROOT / "params.yaml").losses))
def test_the_study_loss_goes_on_the_decode_and_auxiliary_heads(loss):
    params = load_train_params(ROOT / "params.yaml")
    terms = params.terms_of(loss, "test")
    cfg = build_config(RunSpec(config=str(PAPER_CONFIGS[0]), loss=loss, terms=terms, seed=0),
                       Placement("unused"))
    decode = cfg.model.decode_head.loss_decode
    aux = cfg.model.auxiliary_head.loss_decode
    declared = params.losses[loss].terms
    assert [d["type"] for d in decode] == [t["type"] for t in declared]
    weights = [t.get("loss_weight", 1.0) for t in declared]
    assert [d["loss_weight"] for d in decode] == weights
    assert [d["loss_weight"] for d in aux] == pytest.approx([0.4 * w for w in weights])
    # every other option of a term reaches mmseg as written (per_image, use_sigmoid, ...)
    for built, term in zip(decode, declared, strict=True):
        assert {k: v for k, v in built.items() if k != "loss_weight"} == \
            {k: v for k, v in term.items() if k != "loss_weight"}


def test_a_per_image_study_loss_builds_a_per_image_module():
    from mmseg.registry import MODELS

    params = load_train_params(ROOT / "params.yaml")
    params.check_losses(list(params.losses))  # every study loss builds in mmseg
    for key, per_image in (("lovasz", False), ("lovasz_img", True), ("pixiou_img", True)):
        (term,) = params.terms_of(key, "test")
        assert MODELS.build(term).per_image is per_image


def test_overrides_reach_the_config(tiny_data):
    cfg = build_config(RunSpec(config=TINY_VOC, loss="ce", terms=[CE], seed=7, lr=0.5,
                               iterations=50, val_interval=10, batch_size=2),
                       Placement("w", "/shared/data"), world_size=2, on_gpu=False)
    # mmengine gets only the seed: its `deterministic` raises on CUDA (pipeline/determinism.py)
    assert cfg.randomness == dict(seed=7, deterministic=False)
    assert cfg.env_cfg.cudnn_benchmark is False
    assert cfg.train_cfg.max_iters == 50 and cfg.train_cfg.val_interval == 10
    assert cfg.default_hooks.checkpoint.interval == 10
    assert all(s["end"] <= 50 for s in cfg.param_scheduler)
    assert cfg.optim_wrapper.optimizer.lr == 0.5
    assert cfg.param_scheduler[-1]["eta_min"] == pytest.approx(0.5 * 1e-4 / 1e-2)
    assert cfg.train_dataloader.batch_size == 2
    assert cfg.train_dataloader.dataset.data_root == "/shared/data/synthetic_voc/VOCdevkit/VOC2012"
    assert cfg.val_dataloader.dataset.data_root.startswith("/shared/data/")
    assert cfg.launcher == "pytorch"
    assert cfg.model_wrapper_cfg["device_ids"] is None  # CPU DDP (STACK.md trap 5)


def test_ddp_on_gpu_wraps_the_model_on_the_device_ray_chose():
    """Ray Train sets each worker's CUDA device; it need not be cuda:LOCAL_RANK."""
    cfg = build_config(RunSpec(config=str(PAPER_CONFIGS[0]), loss="ce", terms=[CE],
                               seed=0), Placement("w"), world_size=4, on_gpu=True,
                       device_index=2)
    assert cfg.launcher == "pytorch"
    assert cfg.model_wrapper_cfg["device_ids"] == [2]
    assert cfg.model_wrapper_cfg["broadcast_buffers"] is False


NAME = re.compile(r"(?P<model>[^_]+)_(?P<backbone>[^_]+)_(?P<gpus>\d+)xb(?P<batch>\d+)-"
                  r"(?P<iters>\d+k?)_(?P<dataset>[^-]+(?:-[a-z]+)?)-(?P<crop>\d+x\d+)")


@pytest.mark.parametrize("path", PAPER_CONFIGS + sorted((ROOT / "mmseg_configs").glob("fcn_*")),
                         ids=lambda p: p.stem)
def test_config_names_say_what_the_configs_hold(path):
    from mmengine.config import Config

    match = NAME.fullmatch(path.stem)
    assert match, f"{path.name} does not follow <model>_<backbone>_<gpus>xb<batch>-<iters>_..."
    cfg = Config.fromfile(str(path))
    iters = match["iters"]
    assert cfg.train_cfg.max_iters == (int(iters[:-1]) * 1000 if iters.endswith("k")
                                       else int(iters))
    assert cfg.train_dataloader.batch_size == int(match["batch"])
    height, width = map(int, match["crop"].split("x"))
    assert tuple(cfg.crop_size) == (height, width)
    assert cfg.val_evaluator["type"] == "PixIoUMetric"
    classes = 21 if "voc" in match["dataset"] else 19
    assert cfg.model.decode_head.num_classes == classes
    if match["model"] == "deeplabv3plus":
        assert cfg.model.pretrained == "open-mmlab://resnet101_v1c"
        assert cfg.model.backbone.depth == 101


def test_a_missing_pretrained_backbone_is_a_clear_error_not_a_random_init(tmp_path,
                                                                           monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/resnet101_v1c-e67eebb6.pth"
    with pytest.raises(PretrainedWeightsError) as error:
        ensure_pretrained({"pretrained": url, "backbone": {"type": "ResNetV1c"}})
    message = str(error.value)
    assert url in message and str(tmp_path / "torch") in message and "random" in message
    # once the file is where the message says, the run can start
    cached = tmp_path / "torch" / "hub" / "checkpoints" / "resnet101_v1c-e67eebb6.pth"
    cached.write_bytes(b"weights")
    assert ensure_pretrained({"pretrained": url}) == [str(cached)]
    with pytest.raises(PretrainedWeightsError, match="does not exist"):
        ensure_pretrained({"backbone": {"init_cfg": {"type": "Pretrained",
                                                     "checkpoint": str(tmp_path / "no.pth")}}})


@pytest.mark.parametrize("config", PAPER_CONFIGS, ids=lambda p: p.stem)
def test_paper_configs_ask_for_the_model_zoo_backbone(config):
    """Each paper config's model starts from the ImageNet ResNet-101 (V1c) of mmseg's model
    zoo, which mmengine resolves to a download URL (never a random init)."""
    from mmengine.config import Config

    from pipeline.train.weights import _pretrained_sources, _resolve_url

    (source,) = set(_pretrained_sources(Config.fromfile(str(config)).model.to_dict()))
    assert source == "open-mmlab://resnet101_v1c"
    url = _resolve_url(source)
    assert url.startswith("https://") and url.endswith(".pth")


def test_isolation_removes_what_a_run_registered():
    from mmengine.logging import MMLogger

    before = managers()
    with isolated_mmengine_state():
        logger = MMLogger.get_instance("isolation-test", log_file=None)
        assert "isolation-test" in MMLogger._instance_dict
    assert "isolation-test" not in MMLogger._instance_dict
    assert not logger.handlers
    assert managers() == before


def test_cli_names_an_unknown_loss_and_runs_a_known_one(tmp_path, tiny_data):
    base = [sys.executable, "-m", "pipeline.train", TINY_VOC, "--data-root", str(tiny_data),
            "--iterations", "2", "--val-interval", "2", "--work-dir", str(tmp_path / "cli")]
    bad = subprocess.run(base + ["--loss", "focal"], cwd=ROOT, capture_output=True, text=True)
    assert bad.returncode == 2
    assert "unknown loss 'focal'" in bad.stderr and "ce_pixiou" in bad.stderr
    # a per-image study loss trains like any other, and the run reports both measures
    good = subprocess.run(base + ["--loss", "lovasz_img", "--seed", "3"], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert good.returncode == 0, good.stderr[-2000:]
    final = json.loads(good.stdout.strip().splitlines()[-1])
    assert final["iterations"] == 2 and 0 <= final["mIoU"] <= 100
    assert 0 <= final["image-mIoU"] <= 100 and final["image-mIoU"] != final["mIoU"]
    config = (tmp_path / "cli" / "config.py").read_text()
    assert "per_image=True" in config
