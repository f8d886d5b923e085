"""The batch a trial really trains with, against the batch its config's learning rate was tuned for.

MMSegmentation names a config by its schedule's world: `deeplabv3plus_r101-d8_4xb4-20k_...` was
trained on 4 GPUs x 4 images, an effective batch of 16, and its learning rate belongs to that
batch. A trial's effective batch is its DDP workers x the batch per worker (`train.batch_size`,
or the config's own). When the two differ the learning rate no longer fits:

- by default that is an error that says how to make them agree;
- with `sweep.scale_lr: true` the learning rate is scaled linearly, lr x effective / named
  (Goyal et al. 2017, "Accurate, Large Minibatch SGD"), and the trial records both numbers.

A config whose name carries no `<gpus>xb<batch>` is taken as it is.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from .params import ParamsError

CONFIG_WORLD = re.compile(r"_(?P<gpus>\d+)xb(?P<batch>\d+)-")


def named_world(config: str) -> tuple[int, int] | None:
    """(GPUs, batch per GPU) from a config's file name, e.g. `..._4xb2-80k_...` -> (4, 2)."""
    match = CONFIG_WORLD.search(Path(config).stem)
    return (int(match["gpus"]), int(match["batch"])) if match else None


@dataclass(frozen=True)
class BatchPlan:
    """What one trial trains with: the batch and the learning rate, and where they came from."""

    config: str
    workers: int
    batch_per_worker: int
    named_batch: int | None  # <gpus> x <batch> of the config's name; None if it names none
    base_lr: float  # the config's, or the one params.yaml / the lr search set
    lr: float  # what the optimizer gets
    scaled: bool

    @property
    def effective_batch(self) -> int:
        return self.workers * self.batch_per_worker


def plan_batch(config: str, config_batch: int, config_lr: float, workers: int,
               batch_per_worker: int | None, lr: float | None, scale_lr: bool) -> BatchPlan:
    """The batch/learning-rate rule: a mismatch is an error unless `scale_lr` scales lr linearly.

    `config_batch` and `config_lr` are what the config itself sets (train_dataloader.batch_size
    and optim_wrapper.optimizer.lr); `batch_per_worker` and `lr` are the study's overrides.
    """
    per_worker = batch_per_worker or config_batch
    base_lr = lr if lr is not None else config_lr
    world = named_world(config)
    named = world[0] * world[1] if world else None
    effective = workers * per_worker
    if named is None or effective == named:
        return BatchPlan(config, workers, per_worker, named, base_lr, base_lr, scaled=False)
    if not scale_lr:
        gpus, batch = world
        raise ParamsError(
            f"params.yaml: a trial would train {Path(config).name} with an effective batch of "
            f"{workers} worker(s) x {per_worker} = {effective}, but the config is named for "
            f"{gpus}x{batch} = {named}, the batch its learning rate ({config_lr:g}) was tuned "
            f"for. Make them agree (sweep.gpus_per_trial or sweep.cpu_workers_per_trial, and "
            f"train.batch_size, the batch per worker), or set sweep.scale_lr: true to scale the "
            f"learning rate linearly (to {base_lr * effective / named:.4g}).")
    return BatchPlan(config, workers, per_worker, named, base_lr,
                     base_lr * effective / named, scaled=True)
