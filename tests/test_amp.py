"""Mixed precision (`train.amp`): the GPU config it builds, the Lovász losses under autocast,
and a CPU run under bf16 autocast."""
from __future__ import annotations

import pytest
import torch

from pipeline.losses.modules import LovaszPixIoULoss, LovaszSoftmaxLoss
from pipeline.precision import CPU_WRAPPER, PrecisionError
from pipeline.train import Placement, RunSpec, build_config, run
from tests.test_train import TINY_VOC

PAPER_VOC = "mmseg_configs/deeplabv3plus_r101-d8_4xb4-20k_voc12aug-512x512.py"
LOSSES = [LovaszSoftmaxLoss(), LovaszPixIoULoss(), LovaszSoftmaxLoss(per_image=True),
          LovaszPixIoULoss(per_image=True)]
IDS = ["lovasz", "pixiou", "lovasz_img", "pixiou_img"]


def spec(**fields) -> RunSpec:
    return RunSpec(config=PAPER_VOC, loss="ce", terms=[{"type": "CrossEntropyLoss"}], seed=0,
                   **fields)


@pytest.mark.parametrize("amp, dtype", [("fp16", "float16"), ("bf16", "bfloat16")])
def test_the_gpu_config_trains_under_mmengines_amp_wrapper(tmp_path, amp, dtype):
    cfg = build_config(spec(amp=amp), Placement(str(tmp_path)), world_size=4, on_gpu=True,
                       device_index=0)
    wrapper = cfg.optim_wrapper
    assert wrapper.type == "AmpOptimWrapper" and wrapper.dtype == dtype
    assert wrapper.loss_scale == "dynamic"
    assert wrapper.optimizer.type == "SGD"  # the config's optimizer, kept
    # evaluation stays fp32: no loop autocasts
    assert not cfg.val_cfg.get("fp16") and not cfg.test_cfg.get("fp16")
    fp32 = build_config(spec(), Placement(str(tmp_path)), world_size=4, on_gpu=True,
                        device_index=0)
    assert fp32.optim_wrapper.type == "OptimWrapper"


def test_fp16_on_cpu_is_a_clear_error(tmp_path):
    with pytest.raises(PrecisionError, match="fp16 needs a GPU.*On CPU use bf16"):
        build_config(spec(amp="fp16"), Placement(str(tmp_path)), on_gpu=False)


def scores(seed: int, shape=(2, 5, 48, 48)) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(shape, generator=generator) * 3
    labels = torch.randint(0, shape[1], (shape[0], *shape[2:]), generator=generator)
    labels[:, :4] = 255
    return logits, labels


def value_and_grad(loss, logits, labels):
    logits = logits.detach().requires_grad_(True)
    value = loss(logits, labels)
    value.backward()
    return value.detach().float(), logits.grad.float()


@pytest.mark.parametrize("loss", LOSSES, ids=IDS)
def test_the_lovasz_losses_under_cpu_bf16_autocast_match_fp32(loss):
    """Inside autocast, on the fp32 logits and on the bf16 logits a model under autocast hands
    them, the loss and its gradient are those of fp32 to 1e-3."""
    for seed in range(3):
        logits, labels = scores(seed)
        value, grad = value_and_grad(loss, logits, labels)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            auto_value, auto_grad = value_and_grad(loss, logits, labels)
        assert abs(auto_value - value) <= 1e-3
        assert (auto_grad - grad).abs().max() <= 1e-3
        # logits as a bf16 model produces them: compared with fp32 on the same values
        half = logits.to(torch.bfloat16)
        ref_value, ref_grad = value_and_grad(loss, half.float(), labels)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            half_value, half_grad = value_and_grad(loss, half, labels)
        assert abs(half_value - ref_value) <= 1e-3
        assert (half_grad - ref_grad).abs().max() <= 1e-3


def test_a_cpu_run_under_bf16_autocast_finishes(tmp_path, tiny_data):
    summary = run(RunSpec(config=TINY_VOC, loss="pixiou",
                          terms=[{"type": "CrossEntropyLoss"},
                                 {"type": "LovaszPixIoULoss", "loss_weight": 1.0}],
                          seed=0, iterations=2, val_interval=2, overlays=0, threads=1,
                          amp="bf16"), Placement(str(tmp_path / "run"), str(tiny_data)))
    assert summary.iterations == 2 and summary.spec["amp"] == "bf16"
    assert all(torch.isfinite(torch.tensor(summary.metrics[m])) for m in ("mIoU", "mPixIoU"))
    config = (tmp_path / "run" / "config.py").read_text()
    assert CPU_WRAPPER in config and "bfloat16" in config
