"""The run's mmengine config: the mmseg config with the study's loss, schedule, data root,
precision and seed applied."""
from __future__ import annotations

import uuid
from pathlib import Path

from ..determinism import determinism
from ..precision import apply_amp
from ..schedules import constant_lr, evaluate_subset
from ..study_losses import scaled_terms
from .spec import DEFAULT_AUX_WEIGHT, Placement, RunSpec


def _aux_weight(head: dict) -> float:
    losses = head.get("loss_decode", {})
    losses = losses if isinstance(losses, (list, tuple)) else [losses]
    return float(sum(loss.get("loss_weight", 1.0) for loss in losses)) or DEFAULT_AUX_WEIGHT


def apply_loss(model: dict, terms: list[dict]) -> None:
    """The study's loss on the decode head and, at their configured weight, the aux heads."""
    model["decode_head"]["loss_decode"] = scaled_terms(terms)
    aux = model.get("auxiliary_head")
    for head in (aux if isinstance(aux, (list, tuple)) else [aux] if aux else []):
        head["loss_decode"] = scaled_terms(terms, _aux_weight(head))


def set_iterations(cfg, iterations: int, val_interval: int | None,
                   checkpoint_interval: int | None = None) -> None:
    """Change the schedule's length; schedulers that ended with it end with the new one. The
    checkpoints come at `checkpoint_interval` (default: every evaluation), and at the end."""
    old = cfg.train_cfg.max_iters
    cfg.train_cfg.max_iters = iterations
    for scheduler in cfg.get("param_scheduler") or []:
        if scheduler.get("end") == old or scheduler.get("end", 0) > iterations:
            scheduler["end"] = iterations
        if scheduler.get("begin", 0) >= iterations:
            scheduler["begin"] = 0
    interval = val_interval or min(cfg.train_cfg.get("val_interval", iterations), iterations)
    cfg.train_cfg.val_interval = interval
    cfg.default_hooks.checkpoint.interval = min(checkpoint_interval or interval, iterations)


def hold_out(cfg, every: int) -> None:
    """Train on the training set without every `every`-th image, validate on those (with the
    validation pipeline); the test loader, the validation set, is scored at the end."""
    import copy

    train = cfg.train_dataloader.dataset
    if "datasets" in train or "dataset" in train:
        raise ValueError(f"sweep.lr_search.holdout_every: the training set of this config is a "
                         f"{train.get('type')} of several datasets; the held-out split needs "
                         "one dataset")
    cfg.train_dataloader.dataset = dict(type="EveryKthSplit", dataset=copy.deepcopy(train),
                                        every=every, part="train")
    cfg.val_dataloader = dict(cfg.val_dataloader, dataset=dict(
        type="EveryKthSplit", dataset=copy.deepcopy(train), every=every, part="heldout",
        pipeline=copy.deepcopy(cfg.val_dataloader.dataset.pipeline)))


def _reroot(path: str, data_root: str) -> str:
    parts = Path(path).parts
    return str(Path(data_root, *parts[1:])) if parts and parts[0] == "data" else path


def build_config(spec: RunSpec, placement: Placement, world_size: int = 1, on_gpu: bool = False,
                 device_index: int | None = None):
    """The mmengine Config of one run: the leaf config plus the spec's overrides, placed.

    `device_index` is the CUDA device this process trains on (the one Ray Train set); DDP on GPU
    wraps the model on that device rather than on cuda:LOCAL_RANK, which Ray need not match.
    """
    from mmengine.config import Config
    from mmengine.utils import import_modules_from_strings

    cfg = Config.fromfile(spec.config)
    # Not formatted with yapf: mmengine formats the text for each of the 8 logs and dumps of a
    # run, 2 s in all. fromfile (mmengine 0.10.7) drops its own format_python_code argument.
    object.__setattr__(cfg, "_format_python_code", False)
    if spec.custom_imports:  # registers the user's losses in this process (each DDP worker)
        import_modules_from_strings(list(spec.custom_imports))
        cfg.custom_imports = dict(cfg.get("custom_imports") or dict(imports=[]))
        cfg.custom_imports["imports"] = [*cfg.custom_imports["imports"], *spec.custom_imports]
    apply_loss(cfg.model, spec.terms)
    # Only the seed goes to mmengine: its `deterministic` would make torch raise at the first
    # CUDA backward of DeepLabV3+. pipeline/determinism.py applies the study's settings instead.
    cfg.randomness = dict(seed=spec.seed, deterministic=False)
    if not determinism(spec.deterministic, on_gpu).cudnn_benchmark and "env_cfg" in cfg:
        cfg.env_cfg.cudnn_benchmark = False  # mmseg's runtime turns benchmarking on
    if spec.iterations is not None or spec.val_interval is not None or \
            spec.checkpoint_interval is not None:
        set_iterations(cfg, spec.iterations or cfg.train_cfg.max_iters, spec.val_interval,
                       spec.checkpoint_interval)
    apply_amp(cfg, spec.amp, on_gpu)
    if spec.schedule == "constant":
        constant_lr(cfg, min(spec.warmup, cfg.train_cfg.max_iters))
    if spec.lr is not None:
        optimizer = cfg.optim_wrapper.optimizer
        scale = spec.lr / optimizer.lr
        optimizer.lr = spec.lr
        for scheduler in cfg.get("param_scheduler") or []:
            if "eta_min" in scheduler:
                scheduler["eta_min"] *= scale
    if spec.batch_size is not None:
        cfg.train_dataloader.batch_size = spec.batch_size

    if placement.data_root is not None:
        for loader in ("train_dataloader", "val_dataloader", "test_dataloader"):
            dataset = cfg.get(loader, {}).get("dataset", {})
            if "data_root" in dataset:
                dataset["data_root"] = _reroot(dataset["data_root"], placement.data_root)
    if spec.holdout:
        hold_out(cfg, spec.holdout)
    elif spec.val_subset:
        evaluate_subset(cfg, spec.val_subset)
    cfg.work_dir = placement.work_dir
    cfg.default_hooks.checkpoint.max_keep_ckpts = 1  # a node's disk holds one per run
    cfg.resume = True  # from the work dir's last checkpoint, when there is one
    cfg.load_from = None
    # One name per run: mmengine keys its global logger and visualizer by it.
    cfg.experiment_name = f"{Path(placement.work_dir).name}-{uuid.uuid4().hex[:8]}"
    if world_size > 1:
        # Ray Train has already made the process group; mmengine sees it and wraps the model.
        cfg.launcher = "pytorch"
        # On CPU DDP takes no device ids (STACK.md trap 5); on GPU the device Ray Train chose.
        device_ids = [device_index if device_index is not None else 0] if on_gpu else None
        cfg.model_wrapper_cfg = dict(type="MMDistributedDataParallel", device_ids=device_ids,
                                     broadcast_buffers=False,
                                     find_unused_parameters=cfg.get("find_unused_parameters",
                                                                    False))
    return cfg
