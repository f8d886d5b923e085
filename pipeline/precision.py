"""Mixed precision: `train.amp` (null, fp16 or bf16) as the optimizer wrapper of a run's config.

- On GPU, mmengine's `AmpOptimWrapper`: the forward pass and the loss under
  `torch.autocast(dtype)`, the backward through a dynamic `GradScaler` (fp16 needs it; with
  bf16 it never has to scale). mmseg ships the same for DeepLabV3+ (`*-amp-*` configs).
- On CPU, bf16 runs under CPU autocast (`CPUAutocastOptimWrapper` below, no scaler: bf16 has
  fp32's range). It is there so that a CPU machine can run, and the tests can check, what a GPU
  run does under autocast; it is rarely faster on a CPU. fp16 on CPU is an error: CPU autocast
  has no loss scaler for it.

Evaluation stays in fp32 either way (mmengine's loops autocast only when their `fp16` is set),
so a run's numbers are comparable whatever its training precision. The study's Lovász losses
cast the logits to fp32 inside (pipeline/losses), so their sort and cumulative sums never run
in half precision.
"""
from __future__ import annotations

from contextlib import contextmanager

#: train.amp -> the autocast dtype's name in torch.
AMP_DTYPES = {"fp16": "float16", "bf16": "bfloat16"}
CPU_WRAPPER = "CPUAutocastOptimWrapper"


class PrecisionError(ValueError):
    """A precision this device cannot train in."""


def check_amp(amp: str | None, where: str = "train.amp") -> None:
    if amp is not None and amp not in AMP_DTYPES:
        raise PrecisionError(f"params.yaml: {where} must be null, {' or '.join(AMP_DTYPES)}, "
                             f"got {amp!r}")


def apply_amp(cfg, amp: str | None, on_gpu: bool) -> None:
    """Make `cfg.optim_wrapper` train in `amp` on this device (None: leave it fp32)."""
    check_amp(amp)
    if amp is None:
        return
    if not on_gpu and amp != "bf16":
        raise PrecisionError(f"train.amp: {amp} needs a GPU (a loss scaler under CUDA "
                             "autocast); this process has none. On CPU use bf16 (CPU "
                             "autocast) or null")
    wrapper = cfg.optim_wrapper
    if wrapper.get("type", "OptimWrapper") not in ("OptimWrapper", "AmpOptimWrapper",
                                                    CPU_WRAPPER):
        raise PrecisionError(f"train.amp: the config's optimizer wrapper is "
                             f"{wrapper['type']}, which mixed precision would replace")
    if on_gpu:
        wrapper.update(type="AmpOptimWrapper", dtype=AMP_DTYPES[amp], loss_scale="dynamic")
    else:
        register_cpu_autocast()
        wrapper.update(type=CPU_WRAPPER, dtype=AMP_DTYPES[amp])
        wrapper.pop("loss_scale", None)


def register_cpu_autocast() -> None:
    """Register CPUAutocastOptimWrapper in mmengine's OPTIM_WRAPPERS (once per process)."""
    import torch
    from mmengine.optim import OptimWrapper
    from mmengine.registry import OPTIM_WRAPPERS

    if OPTIM_WRAPPERS.get(CPU_WRAPPER) is not None:
        return

    @OPTIM_WRAPPERS.register_module(name=CPU_WRAPPER)
    class CPUAutocastOptimWrapper(OptimWrapper):
        """OptimWrapper whose forward pass and loss run under CPU autocast."""

        def __init__(self, dtype: str = "bfloat16", **kwargs):
            super().__init__(**kwargs)
            self.cast_dtype = getattr(torch, dtype)

        @contextmanager
        def optim_context(self, model):
            with super().optim_context(model), \
                    torch.autocast(device_type="cpu", dtype=self.cast_dtype):
                yield
