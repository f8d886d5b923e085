"""params.yaml: sweep. The section's schema, read by the sweep stage and by what plans it
(`pipeline.plan`, `pipeline.status`) without importing the stage.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from .params import ParamsError, check_schedule

#: Where a trial reads its dataset: a folder every node sees, or a DVC remote.
SOURCES = ("path", "dvc")
#: Where the convergence arm starts: the pre-training's early weights, or the config's init.
CONVERGENCE_STARTS = ("early", "scratch")


@dataclass
class DataSourceParams:
    """params.yaml: sweep.data."""

    source: str = "path"
    path: str | None = None  # source 'path': a folder holding <dataset>/; null: data.root
    remote: str | None = None  # source 'dvc': a remote of .dvc/config; null: its default
    cache: str = "~/.cache/pixiou-repro/datasets"  # source 'dvc': node-local

    def validate(self, where: str) -> None:
        if self.source not in SOURCES:
            raise ParamsError(f"params.yaml: {where}.source must be one of {SOURCES}, got "
                              f"'{self.source}'")


@dataclass
class LRSearchParams:
    """params.yaml: sweep.lr_search. samples > 0 adds that many log-uniform learning rates per
    (loss, seed), and ASHA stops the trials that fall behind on mIoU."""

    samples: int = 0
    low: float = 1.0e-3
    high: float = 3.0e-2
    seed: int = 0
    grace_period: int = 100
    reduction_factor: int = 3
    # the lr is chosen (and ASHA stops trials) on every k-th training image, held out of
    # training; the validation set the tables report is scored only at the end
    holdout_every: int = 5

    def validate(self, where: str) -> None:
        if self.samples < 0:
            raise ParamsError(f"params.yaml: {where}.samples must be >= 0, got {self.samples}")
        if not 0 < self.low < self.high:
            raise ParamsError(f"params.yaml: {where}: need 0 < low < high, got "
                              f"low={self.low}, high={self.high}")
        if self.grace_period < 1 or self.reduction_factor < 2:
            raise ParamsError(f"params.yaml: {where}: grace_period must be >= 1 and "
                              "reduction_factor >= 2")
        if self.holdout_every < 2:
            raise ParamsError(f"params.yaml: {where}.holdout_every must be >= 2 (every k-th "
                              f"training image is held out), got {self.holdout_every}")

    def rates(self) -> list[float | None]:
        if self.samples == 0:
            return [None]
        import numpy as np

        draws = np.random.default_rng(self.seed).uniform(math.log(self.low),
                                                         math.log(self.high), self.samples)
        return [float(f"{math.exp(x):.3g}") for x in draws]


@dataclass
class ConvergenceParams:
    """params.yaml: sweep.convergence. The convergence arm (Yu et al. 2021: learning over IoU
    converges more slowly): its losses, each for every seed of sweep.seeds, trained from an
    under-trained start with frequent evaluations, at a constant learning rate."""

    losses: list[str] = field(default_factory=list)  # [] leaves the arm out
    start: str = "early"  # early: the pre-training's weights at pretrain.early_iteration
    iterations: int = 100
    val_interval: int = 10
    lr: float | None = None  # null: the config's (what the pre-training trains with)

    def checkpoint_interval(self, finetune_interval: int | None) -> int | None:
        """The arm's checkpoint interval: the fine-tuning's, cut to a multiple of the arm's
        evaluations (None: at every evaluation)."""
        if finetune_interval is None:
            return None
        return max(self.val_interval, finetune_interval // self.val_interval * self.val_interval)

    def validate(self, where: str) -> None:
        if self.start not in CONVERGENCE_STARTS:
            raise ParamsError(f"params.yaml: {where}.start must be one of "
                              f"{', '.join(CONVERGENCE_STARTS)}, got '{self.start}'")
        if len(set(self.losses)) != len(self.losses):
            raise ParamsError(f"params.yaml: {where}.losses has duplicates: {self.losses}")
        check_schedule(self, where)


@dataclass
class SweepParams:
    """params.yaml: sweep (with the dataset's `train.schedules.<dataset>` applied)."""

    losses: list[str]
    seeds: list[int]
    # > 1: that many DDP workers, one GPU each; a fraction < 1: one worker on that share of a
    # GPU (trials small enough to share one); 0: CPU trials
    gpus_per_trial: int | float = 0
    cpu_workers_per_trial: int = 1
    cpus_per_worker: int = 1
    max_concurrent_trials: int | None = None
    max_failures: int = 1
    # the same error at the same iteration this many attempts in a row: the trial fails for
    # good, whatever max_failures says (an error no retry mends)
    max_repeated_failures: int = 3
    # a DDP collective (all-reduce, barrier) that waits longer fails the trial, which is then
    # retried: a hung rank costs this, not torch's default 30 minutes
    collective_timeout_s: int = 300
    scale_lr: bool = False
    # the sweep refuses to start when its plan (pipeline.plan) estimates more; null: no cap
    max_gpu_hours: float | None = None
    storage: str = "work_dirs/sweeps"  # a path, or an object store URI (s3://bucket/prefix)
    data: DataSourceParams = field(default_factory=DataSourceParams)
    lr_search: LRSearchParams = field(default_factory=LRSearchParams)
    convergence: ConvergenceParams = field(default_factory=ConvergenceParams)

    def validate(self, where: str) -> None:
        if not self.losses:
            raise ParamsError(f"params.yaml: {where}.losses is empty")
        if len(set(self.losses)) != len(self.losses):
            raise ParamsError(f"params.yaml: {where}.losses has duplicates: {self.losses}")
        if not self.seeds:
            raise ParamsError(f"params.yaml: {where}.seeds is empty")
        for i, seed in enumerate(self.seeds):
            if seed < 0:
                raise ParamsError(f"params.yaml: {where}.seeds[{i}] must be >= 0, got {seed}")
        if len(set(self.seeds)) != len(self.seeds):
            raise ParamsError(f"params.yaml: {where}.seeds has duplicates: {self.seeds}")
        gpus = self.gpus_per_trial
        if gpus < 0 or (gpus > 1 and gpus != int(gpus)):
            raise ParamsError(f"params.yaml: {where}.gpus_per_trial must be 0 (CPU trials), a "
                              f"fraction of one GPU (0.5: two trials share a GPU) or a whole "
                              f"number of GPUs, got {gpus}")
        if self.max_failures < -1:
            raise ParamsError(f"params.yaml: {where}.max_failures must be >= 0, or -1 to retry "
                              f"a crashed trial forever (Tune's convention), got "
                              f"{self.max_failures}")
        for key in ("cpu_workers_per_trial", "cpus_per_worker", "max_repeated_failures"):
            if getattr(self, key) < 1:
                raise ParamsError(f"params.yaml: {where}.{key} must be >= 1")
        if self.collective_timeout_s < 10:
            raise ParamsError(f"params.yaml: {where}.collective_timeout_s must be >= 10 "
                              f"(seconds), got {self.collective_timeout_s}")
        if self.max_concurrent_trials is not None and self.max_concurrent_trials < 1:
            raise ParamsError(f"params.yaml: {where}.max_concurrent_trials must be >= 1 or null")
        if self.max_gpu_hours is not None and not self.max_gpu_hours > 0:
            raise ParamsError(f"params.yaml: {where}.max_gpu_hours must be > 0 or null (no "
                              f"cap), got {self.max_gpu_hours}")

    @property
    def workers(self) -> int:
        """DDP workers of a trial: one per whole GPU, one on a shared GPU, or the CPU ones."""
        if self.use_gpu:
            return max(1, int(self.gpus_per_trial))
        return self.cpu_workers_per_trial

    @property
    def use_gpu(self) -> bool:
        return self.gpus_per_trial > 0

    @property
    def gpus_per_worker(self) -> float:
        """1, or the share of one GPU that a trial on a shared GPU holds."""
        return min(1, self.gpus_per_trial) if self.use_gpu else 0

    def resources_per_trial(self) -> dict[str, float]:
        """What a trial's workers hold, all on one node (STRICT_PACK)."""
        return {"CPU": self.workers * self.cpus_per_worker, "GPU": self.gpus_per_trial}

    def trials(self) -> int:
        """How many trials the sweep plans: both arms, every seed (and sampled lr)."""
        return (len(self.losses) * len(self.lr_search.rates()) + len(self.convergence.losses)) \
            * len(self.seeds)
