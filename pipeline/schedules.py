"""How a run's learning rate moves and what its evaluations score while it trains.

Fine-tuning from a converged CE model, the study holds the learning rate constant (after a
short warmup) instead of the config's decay: a rate that decays to 0 flattens any curve,
converged or not, so the plateau test (`pipeline.stats.plateau`) could not tell. Evaluations
during training may score the first `val_subset` validation images only (what the curves and
the plateau test read, often and cheaply); the run then scores the whole validation set once at
the end, and that is its result. docs/study.md, "Fine-tuning length and schedule".
"""
from __future__ import annotations

import copy

#: train.schedule: the config's own schedule (stretched to the run's length), or constant.
SCHEDULES = ("config", "constant")
#: The constant schedule's warmup starts at this fraction of the learning rate.
WARMUP_START = 0.1


def constant_lr(cfg, warmup: int) -> None:
    """The learning rate rises linearly from a tenth of itself over `warmup` iterations (the
    pre-training ended a tenth or less below it), then stays constant to the end."""
    cfg.param_scheduler = [dict(type="LinearLR", start_factor=WARMUP_START, begin=0,
                                end=warmup, by_epoch=False)] if warmup else []


def evaluate_subset(cfg, images: int) -> None:
    """Evaluations while training score the first `images` validation images; the test loader
    and evaluator keep the whole validation set, which the run scores once at the end."""
    cfg.test_dataloader = copy.deepcopy(cfg.val_dataloader)
    cfg.test_evaluator = copy.deepcopy(cfg.val_evaluator)
    cfg.val_dataloader.dataset.indices = images
