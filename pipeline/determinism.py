"""What `train.deterministic` means on CPU and on GPU, as settings a run applies and a test reads.

mmengine's own `randomness.deterministic=True` calls `torch.use_deterministic_algorithms(True)`,
which raises at the first backward pass of DeepLabV3+ on CUDA: bilinear upsampling and adaptive
average pooling have no deterministic CUDA backward. So the study never hands determinism to
mmengine (it passes only the seed) and applies these settings itself:

- cuDNN picks deterministic algorithms and no benchmarking (`cudnn.deterministic`, no
  `cudnn.benchmark`, which mmseg's runtime would otherwise switch on);
- `use_deterministic_algorithms(True, warn_only=True)`: every op with a deterministic kernel
  uses it; the few without one warn once and run, instead of failing the run;
- `CUBLAS_WORKSPACE_CONFIG=:4096:8`, which cuBLAS needs for reproducible matrix products on
  CUDA >= 10.2. It must be in the environment before the first cuBLAS call, so the sweep also
  passes it to its Ray workers.

What that guarantees: on CPU, the same seed, data, code and worker count give bit-identical
runs (tested). On GPU the remaining non-deterministic ops (the backward of bilinear upsampling
and adaptive pooling, which accumulate with atomics) make runs differ in the last bits, which
can grow over thousands of iterations: a seed fixes the data order, augmentation and
initialisation, not every float. So on GPU `train.deterministic: true` stops at the seed and
lets cuDNN benchmark its kernels; `strict` applies everything above there too.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

CUBLAS_WORKSPACE = {"CUBLAS_WORKSPACE_CONFIG": ":4096:8"}


#: train.deterministic: False (torch's and mmseg's defaults), True (seeded; on CPU also the
#: deterministic kernels, which cost nothing there) or "strict" (also on GPU: every setting above,
#: paid for in throughput).
STRICT = "strict"


def check_mode(mode: bool | str, where: str = "train.deterministic") -> None:
    if not (mode is True or mode is False or mode == STRICT):
        raise ValueError(f"params.yaml: {where} must be true, false or {STRICT}, got {mode!r}")


@dataclass(frozen=True)
class Determinism:
    """The settings one run applies; `deterministic=False` leaves torch's and mmseg's defaults
    (the seed is always set: mmengine's `randomness.seed`)."""

    deterministic: bool  # deterministic kernels and no cuDNN benchmarking
    warn_only: bool = True  # an op with no deterministic kernel warns, never raises
    env: dict[str, str] = field(default_factory=dict)

    @property
    def cudnn_deterministic(self) -> bool:
        return self.deterministic

    @property
    def cudnn_benchmark(self) -> bool:
        """False when deterministic: benchmarking picks kernels by timing, run to run."""
        return not self.deterministic

    @property
    def torch_algorithms(self) -> bool:  # torch.use_deterministic_algorithms(...)
        return self.deterministic

    def apply(self) -> None:
        """Set them in this process (before the model's first CUDA matrix product)."""
        import torch

        for name, value in self.env.items():
            os.environ.setdefault(name, value)
        if not self.deterministic:
            return
        torch.backends.cudnn.deterministic = self.cudnn_deterministic
        torch.backends.cudnn.benchmark = self.cudnn_benchmark
        torch.use_deterministic_algorithms(self.torch_algorithms, warn_only=self.warn_only)


def determinism(mode: bool | str, on_gpu: bool) -> Determinism:
    """The settings for a run of `train.deterministic: mode` on CPU or on GPU.

    On GPU, `true` keeps the seed and leaves cuDNN benchmarking on: the deterministic kernels
    would not make GPU runs bit-identical anyway (see above) and cost throughput; `strict`
    asks for them all the same. On CPU `true` and `strict` are the same: bit-identical runs.
    """
    check_mode(mode)
    kernels = mode == STRICT if on_gpu else bool(mode)
    return Determinism(kernels, env=dict(CUBLAS_WORKSPACE) if kernels and on_gpu else {})
