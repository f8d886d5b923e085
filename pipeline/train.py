"""One training run: an mmseg config with the study's loss, seed and overrides, on mmengine.

    python -m pipeline.train mmseg_configs/fcn_r18-tiny-d8_1xb4-160_synthetic-voc-128x128.py \\
        --loss pixiou --seed 0 [--iterations 50] [--work-dir work_dirs/debug]

The same `run()` is the body of every Ray trial (pipeline/sweep/trial.py), where it runs on
each DDP worker. A run evaluates mIoU, image-mIoU and mPixIoU every `val_interval` iterations,
checkpoints at the same interval and, restarted with the same work dir, resumes from its last
checkpoint. When it ends, rank 0 writes `summary.json` (the final and per-class values and the
validation history), a confusion matrix and a few prediction overlays into the work dir. A
`Reporter`
carries each evaluation, checkpoint and the final files beyond the work dir (the Ray trial's
sends them through `ray.train.report` to the sweep's storage) and restores the run from there.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from .determinism import check_mode, determinism
from .measures import METRICS, PER_CLASS
from .params import ParamsError, load_params, lookup, parse_section
from .precision import AMP_DTYPES, PrecisionError, apply_amp, check_amp
from .schedules import SCHEDULES, constant_lr, evaluate_subset
from .study_losses import StudyLoss, check_registered, scaled_terms
from .watch import RunWatch, keep_log

SUMMARY = "summary.json"
HISTORY = "eval_history.jsonl"
#: What a finished run leaves for the study (besides its last checkpoint), written by rank 0.
RESULT_FILES = (SUMMARY, HISTORY, "config.py", "confusion_matrix.png", "confusion_matrix.json",
                "overlays", "logs")
#: mmengine's text logs of the run (one per attempt), kept in the work dir under this folder.
LOGS = "logs"
#: Iterations between two questions to the reporter whether the node is being preempted.
PREEMPTION_POLL = 10
#: Auxiliary heads keep mmseg's relative weight (0.4 in the model zoo) for the study's loss.
DEFAULT_AUX_WEIGHT = 0.4
#: What decides a run's numbers besides its spec and data: this code and the configs. A run's
#: key (a sweep trial's, the pre-training's) hashes their content.
TRAINING_CODE = ("pipeline/train.py", "pipeline/artifacts.py", "pipeline/metrics.py",
                 "pipeline/measures.py", "pipeline/study_losses.py", "pipeline/determinism.py",
                 "pipeline/splits.py", "pipeline/schedules.py", "pipeline/precision.py",
                 "pipeline/watch.py", "pipeline/losses", "mmseg_configs")


@dataclass
class TrainParams:
    """params.yaml: train. One run; the sweep varies the loss, the seed and, if searched, lr."""

    configs: dict[str, str]
    losses: dict[str, StudyLoss]
    # modules that register more losses in mmseg's MODELS (imported by every run, like the
    # configs' custom_imports): a user's loss enters the study as a term of train.losses
    custom_imports: list[str] = field(default_factory=list)
    iterations: int | None = None
    val_interval: int | None = None
    # a full resume checkpoint every this many iterations (a multiple of val_interval; null:
    # at every evaluation). On GPU each is ~0.5 GB uploaded: evaluate often, checkpoint less
    checkpoint_interval: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    # constant: the lr after a warmup of `warmup` iterations, to the end (fine-tuning, so the
    # plateau test can see whether a curve has settled); config: the config's own schedule
    schedule: str = "config"
    warmup: int = 10
    val_subset: int | None = None  # evaluations while training score this many val images
    # true: seeded (on CPU also deterministic kernels: bit-identical runs); strict: the
    # deterministic kernels on GPU too, without cuDNN benchmarking (pipeline/determinism.py)
    deterministic: bool | str = True
    amp: str | None = None  # mixed precision: null, fp16 or bf16 (pipeline/precision.py)
    overlays: int = 4
    # train.schedules.<dataset>: what each dataset changes of the values above (applied by
    # pipeline.params.for_dataset where a stage reads one dataset's section)
    schedules: dict[str, dict] = field(default_factory=dict)

    def validate(self, where: str) -> None:
        if not self.losses:
            raise ParamsError(f"params.yaml: {where}.losses is empty")
        if self.schedule not in SCHEDULES:
            raise ParamsError(f"params.yaml: {where}.schedule must be one of "
                              f"{', '.join(SCHEDULES)}, got '{self.schedule}'")
        if self.warmup < 0:
            raise ParamsError(f"params.yaml: {where}.warmup must be >= 0, got {self.warmup}")
        for key in ("iterations", "val_interval", "checkpoint_interval", "batch_size", "lr",
                    "val_subset"):
            value = getattr(self, key)
            if value is not None and not value > 0:
                raise ParamsError(f"params.yaml: {where}.{key} must be > 0 or null, got {value}")
        if self.overlays < 0:
            raise ParamsError(f"params.yaml: {where}.overlays must be >= 0, got {self.overlays}")
        if self.checkpoint_interval is not None and self.val_interval is not None \
                and self.checkpoint_interval % self.val_interval:
            raise ParamsError(f"params.yaml: {where}.checkpoint_interval "
                              f"({self.checkpoint_interval}) must be a multiple of "
                              f"{where}.val_interval ({self.val_interval}): a checkpoint is the "
                              "state an evaluation saw")
        for check, key in ((check_mode, "deterministic"), (check_amp, "amp")):
            try:
                check(getattr(self, key), f"{where}.{key}")
            except ValueError as error:
                raise ParamsError(str(error)) from None

    def config_for(self, dataset: str) -> str:
        if dataset not in self.configs:
            raise ParamsError(f"params.yaml: train.configs has no config for dataset "
                              f"'{dataset}' (it has: {', '.join(self.configs)})")
        path = self.configs[dataset]
        if not Path(path).is_file():
            raise ParamsError(f"params.yaml: train.configs.{dataset}: {path} does not exist")
        return path

    def terms_of(self, loss: str, where: str) -> list[dict]:
        """The mmseg loss configs of study loss `loss`."""
        if loss not in self.losses:
            raise ParamsError(f"{where}: unknown loss '{loss}' (train.losses defines: "
                              f"{', '.join(self.losses)})")
        return scaled_terms(self.losses[loss].terms)

    def check_losses(self, keys: list[str]) -> None:
        """The study losses `keys` build in mmseg (types registered, options accepted)."""
        check_registered({k: self.losses[k] for k in keys}, self.custom_imports)


def load_train_params(params_file: Path | str = "params.yaml") -> TrainParams:
    return parse_section(TrainParams, lookup(load_params(params_file), "train"), "train")


@dataclass(frozen=True)
class RunSpec:
    """Everything one run depends on; the sweep hashes it (plus code and data) into a trial key."""

    config: str
    loss: str
    terms: list[dict]  # mmseg loss configs (pipeline.study_losses)
    seed: int
    work_dir: str
    data_root: str | None = None  # re-roots the config's 'data/...' dataset paths
    lr: float | None = None
    iterations: int | None = None
    val_interval: int | None = None
    checkpoint_interval: int | None = None  # None: at every evaluation
    batch_size: int | None = None
    deterministic: bool | str = True  # pipeline/determinism.py
    amp: str | None = None  # pipeline/precision.py
    overlays: int = 4
    threads: int | None = None  # torch intra-op threads; None leaves torch's default
    # Fine-tuning: the weights a fresh run starts from (a checkpoint file on this node). The
    # run evaluates them before its first step; resumed, it continues from its own checkpoint.
    init_checkpoint: str | None = None
    # k > 0 (the lr search): train without every k-th training image and evaluate on those
    # while training (what ASHA and the lr choice read); score the validation set at the end.
    holdout: int = 0
    custom_imports: tuple[str, ...] = ()  # modules that register the terms' types
    schedule: str = "config"  # pipeline.schedules.SCHEDULES
    warmup: int = 0  # iterations of the constant schedule's warmup
    val_subset: int | None = None  # evaluations while training score this many val images

    def to_dict(self) -> dict:
        return asdict(self)


def code_fingerprint() -> str:
    """sha256 over the path and content of every file of TRAINING_CODE (from the checkout)."""
    files = []
    for entry in map(Path, TRAINING_CODE):
        files.extend(sorted(entry.rglob("*.py")) if entry.is_dir() else [entry])
    digest = hashlib.sha256()
    for path in sorted(files):
        digest.update(str(path).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


# --- the config -------------------------------------------------------------------------------

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


def build_config(spec: RunSpec, world_size: int = 1, on_gpu: bool = False,
                 device_index: int | None = None):
    """The mmengine Config of one run: the leaf config plus the spec's overrides.

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

    if spec.data_root is not None:
        for loader in ("train_dataloader", "val_dataloader", "test_dataloader"):
            dataset = cfg.get(loader, {}).get("dataset", {})
            if "data_root" in dataset:
                dataset["data_root"] = _reroot(dataset["data_root"], spec.data_root)
    if spec.holdout:
        hold_out(cfg, spec.holdout)
    elif spec.val_subset:
        evaluate_subset(cfg, spec.val_subset)
    cfg.work_dir = spec.work_dir
    cfg.default_hooks.checkpoint.max_keep_ckpts = 1  # a node's disk holds one per run
    cfg.resume = True  # from the work dir's last checkpoint, when there is one
    cfg.load_from = None
    # One name per run: mmengine keys its global logger and visualizer by it.
    cfg.experiment_name = f"{Path(spec.work_dir).name}-{uuid.uuid4().hex[:8]}"
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


# --- pretrained weights -------------------------------------------------------------------------

class PretrainedWeightsError(RuntimeError):
    """A config asks for pretrained weights that are neither cached nor downloadable."""


def _pretrained_sources(node) -> Iterator[str]:
    if isinstance(node, dict):
        if isinstance(node.get("pretrained"), str):
            yield node["pretrained"]
        if node.get("type") == "Pretrained" and isinstance(node.get("checkpoint"), str):
            yield node["checkpoint"]
        for value in node.values():
            yield from _pretrained_sources(value)
    elif isinstance(node, (list, tuple)):
        for value in node:
            yield from _pretrained_sources(value)


def _resolve_url(source: str) -> str | None:
    """The http(s) URL mmengine would fetch `source` from, or None for a local file."""
    from mmengine.runner.checkpoint import get_external_models, get_mmcls_models

    if source.startswith(("http://", "https://")):
        return source
    for prefix, table in (("open-mmlab://", get_external_models), ("mmcls://", get_mmcls_models)):
        if source.startswith(prefix):
            name = source[len(prefix):]
            urls = table()
            if name not in urls:
                raise PretrainedWeightsError(f"{source}: mmengine knows no such model")
            return urls[name]
    if source.startswith("torchvision://"):
        raise PretrainedWeightsError(f"{source}: torchvision weights need torchvision, which "
                                     "this project does not install; use a local file")
    return None


def ensure_pretrained(model_cfg: dict) -> list[str]:
    """Make every pretrained checkpoint of the model available before training starts.

    A URL is fetched into torch's hub cache (where mmengine looks) unless it is there already;
    a checkpoint that cannot be had is a PretrainedWeightsError, never a silent random init.
    Returns the local paths.
    """
    import torch.hub

    paths = []
    for source in dict.fromkeys(_pretrained_sources(model_cfg)):
        url = _resolve_url(source)
        if url is None:
            if not Path(source).is_file():
                raise PretrainedWeightsError(f"pretrained checkpoint {source} does not exist")
            paths.append(source)
            continue
        cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(url).path).name
        if not cached.is_file():
            cached.parent.mkdir(parents=True, exist_ok=True)
            try:
                torch.hub.download_url_to_file(url, str(cached), progress=True)
            except Exception as error:  # noqa: BLE001 - any failure means the same to the user
                raise PretrainedWeightsError(
                    f"the config's pretrained backbone {source} is not cached at {cached} and "
                    f"could not be downloaded from {url} ({type(error).__name__}: {error}). "
                    f"Download it on a machine with network access and copy it to {cached} "
                    f"(or set TORCH_HOME); training from random weights would not reproduce "
                    f"the paper.") from error
        paths.append(str(cached))
    return paths


# --- mmengine state and checkpoints ---------------------------------------------------------

def _manager_classes():
    from mmengine.utils import ManagerMixin

    stack, seen = [ManagerMixin], []
    while stack:
        cls = stack.pop()
        seen.append(cls)
        stack.extend(cls.__subclasses__())
    return seen


@contextmanager
def isolated_mmengine_state() -> Iterator[None]:
    """Drop the loggers, visualizers, message hubs and scopes a run created when it ends.

    mmengine keeps them in process-wide registries (ManagerMixin); several runs in one process
    (tests, a Ray worker reused) would otherwise write to each other's log files.
    """
    before = {cls: dict(cls._instance_dict) for cls in _manager_classes()}
    try:
        yield
    finally:
        import logging

        for cls in _manager_classes():
            kept = before.get(cls, {})
            for name in [n for n in cls._instance_dict if n not in kept]:
                instance = cls._instance_dict.pop(name)
                if isinstance(instance, logging.Logger):
                    for handler in list(instance.handlers):
                        handler.close()
                        instance.removeHandler(handler)


@contextmanager
def trusted_checkpoint_loading() -> Iterator[None]:
    """torch 2.13 loads with weights_only=True, which mmengine's resume checkpoints (message hub,
    history buffers) do not pass (STACK.md trap 4). Allow full unpickling only here, around the
    loading of this run's own checkpoints from its own work dir."""
    previous = os.environ.get("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD")
    os.environ["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] = "1"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", None)
        else:
            os.environ["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] = previous


def _runner_class():
    from mmengine.runner import Runner

    class StudyRunner(Runner):
        def load_or_resume(self) -> None:
            with trusted_checkpoint_loading():
                super().load_or_resume()

    return StudyRunner


# --- where a run reports -------------------------------------------------------------------------

class Reporter:
    """Where a run's evaluations, checkpoints and final files go beyond its work dir.

    This one keeps them in the work dir (a run from the command line). Every rank calls every
    method, in the same order; only rank 0 is given files.
    """

    def restore(self, work_dir: Path) -> dict | None:
        """Put the run's last checkpoint into `work_dir` (mmengine resumes from it); return the
        summary instead if the run had already finished. Here the work dir holds both."""
        return None

    def evaluation(self, record: dict, checkpoint: Path | None) -> None:
        """An evaluation before the last; `checkpoint`: the weights it evaluated (rank 0)."""

    def finished(self, summary: dict, work_dir: Path | None) -> None:
        """The final evaluation and the run's files (`RESULT_FILES` and `last_checkpoint`
        under `work_dir`, rank 0); None when the run had finished before (restored)."""

    def preempted(self) -> bool:
        """Is the machine about to be taken back (a spot node drained)? Asked of every rank at
        the same iterations (every PREEMPTION_POLL); True once is enough."""
        return False

    def checkpointed(self, iteration: int, checkpoint: Path | None) -> None:
        """A checkpoint saved between evaluations (before a preemption); rank 0 has it."""


def last_checkpoint(work_dir: Path) -> Path | None:
    """The checkpoint mmengine saved last in `work_dir` (its `last_checkpoint` pointer)."""
    pointer = work_dir / "last_checkpoint"
    return Path(pointer.read_text().strip()) if pointer.is_file() else None


# --- the hook that reports evaluations --------------------------------------------------------

def _study_hook_class():
    from mmengine.dist import broadcast, get_world_size, is_distributed, is_main_process
    from mmengine.hooks import Hook

    class StudyHook(Hook):
        """Keeps the validation history (resumable, in the work dir) and reports every
        evaluation before the last one (the run reports that one, with its files): iteration,
        the measures (pipeline.measures), the mean training loss since the last one and the world
        size the model trains in, with the checkpoint it evaluated. Its artifacts (confusion
        matrix, overlays) cover the whole validation set, whatever the number of ranks it is
        split over.

        `training=False` (an evaluation of a checkpoint) keeps artifacts and reports nothing.
        """

        # Before mmengine's NORMAL hooks: the buffers are rank 0's before anything reads them.
        priority = "ABOVE_NORMAL"

        def __init__(self, work_dir: str, reporter: Reporter | None, overlays: int,
                     training: bool = True, evaluate_start: bool = False):
            self.work_dir = Path(work_dir)
            self.evaluate_start = evaluate_start
            self.history_file = self.work_dir / HISTORY
            self.reporter = reporter
            self.overlays = overlays
            self.training = training
            self.artifacts = None  # of the latest validation (or test) pass
            self.test_record = None  # the test pass's, with a held-out validation split
            self.history: list[dict] = []
            self._loss_sum = 0.0
            self._loss_count = 0
            self._saved_for_preemption = False
            # lr, timings, memory and (rank 0) system metrics of each evaluation
            self.watch = RunWatch(sample_system=training and is_main_process())

        def before_train(self, runner) -> None:
            # After a resume, keep the evaluations up to the checkpoint the run resumed from.
            if self.history_file.is_file():
                lines = self.history_file.read_text().splitlines()
                self.history = [r for r in map(json.loads, lines) if r["iteration"] <= runner.iter]
            if is_main_process():
                self._write_history()
            self.watch.start(runner.iter)
            if self.evaluate_start and runner.iter == 0 and not self.history:
                # The weights it starts from, on the data it is evaluated on: iteration 0 of
                # a fine-tuning run (and of its curves) is where the pre-training ended.
                runner.val_loop.run()

        def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
            if outputs and "loss" in outputs:
                self._loss_sum += float(outputs["loss"])
                self._loss_count += 1
            if self.reporter is not None and not self._saved_for_preemption and \
                    runner.iter % PREEMPTION_POLL == 0 and runner.iter < runner.max_iters and \
                    self.reporter.preempted():
                # The node is being taken back: a checkpoint now, so the retry on another node
                # repeats none of the iterations since the last one
                self._saved_for_preemption = True
                name = f"iter_{runner.iter}.pth"
                saved = None
                if not (self.work_dir / name).is_file():
                    runner.save_checkpoint(str(self.work_dir), name)  # rank 0 writes it
                if is_main_process():
                    saved = self.work_dir / name
                    (self.work_dir / "last_checkpoint").write_text(str(saved))
                    self._write_history()
                    keep_log(runner, self.work_dir, LOGS)
                self.reporter.checkpointed(runner.iter, saved)

        def before_val_epoch(self, runner) -> None:
            self._begin_pass(runner, runner.val_dataloader.dataset)

        def before_test_epoch(self, runner) -> None:
            self._begin_pass(runner, runner.test_dataloader.dataset)

        def _begin_pass(self, runner, dataset) -> None:
            from .artifacts import EvaluationArtifacts

            if is_distributed():
                # Without SyncBN (CPU), each rank's BN statistics drift apart in training. Every
                # rank evaluates rank 0's model: the one its checkpoint holds.
                for buffer in runner.model.buffers():
                    broadcast(buffer, src=0)
            meta = dataset.metainfo
            # The same images whatever the world size: the first ones of the validation set.
            fixed = [dataset.get_data_info(i)["img_path"]
                     for i in range(min(self.overlays, len(dataset)))]
            self.artifacts = EvaluationArtifacts(meta["classes"], meta["palette"], fixed)

        def after_val_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
            if outputs is not None:
                self.artifacts.add(outputs)

        after_test_iter = after_val_iter

        def after_test_epoch(self, runner, metrics=None) -> None:
            """The final score of a run that validated on a held-out split."""
            self.artifacts.gather()
            self.test_record = self._record(runner, metrics)

        def after_val_epoch(self, runner, metrics=None) -> None:
            self.artifacts.gather()  # every rank takes part; rank 0 holds the whole set
            if not metrics or not self.training:
                return
            record = self._record(runner, metrics)
            self._loss_sum, self._loss_count = 0.0, 0
            self.history = [r for r in self.history if r["iteration"] != record["iteration"]]
            self.history.append(record)
            if is_main_process():
                self._write_history()
            if self.reporter is not None and runner.iter < runner.max_iters:
                # mmengine saved a checkpoint just before validating when this iteration is a
                # checkpoint's (train.checkpoint_interval); the others report values only
                saved = last_checkpoint(self.work_dir) if is_main_process() else None
                if saved is not None and saved.stem != f"iter_{runner.iter}":
                    saved = None
                elif saved is not None:
                    keep_log(runner, self.work_dir, LOGS)  # travels with the checkpoint
                self.reporter.evaluation(self.record(), saved)

        def after_train(self, runner) -> None:
            self.watch.stop()

        def _record(self, runner, metrics: dict) -> dict:
            return {
                "iteration": runner.iter,
                **{m: float(metrics[m]) for m in METRICS},
                "loss": self._loss_sum / self._loss_count if self._loss_count else None,
                "world_size": get_world_size(),
                **(self.watch.run_metrics(runner) if runner.iter else {}),
                **self.watch.system(),
                "per_class": {k: float(v) for k, v in metrics.items()
                              if k.split(".", 1)[0] in PER_CLASS.values()},
            }

        def record(self) -> dict:
            """The latest evaluation, without its per-class values."""
            return {k: v for k, v in self.history[-1].items() if k != "per_class"}

        def _write_history(self) -> None:
            self.history_file.parent.mkdir(parents=True, exist_ok=True)
            text = "".join(json.dumps(r) + "\n" for r in self.history)
            tmp = self.history_file.with_suffix(".tmp")
            tmp.write_text(text)
            tmp.replace(self.history_file)

    return StudyHook


# --- one run ------------------------------------------------------------------------------------

def run(spec: RunSpec, reporter: Reporter | None = None) -> dict:
    """Train (or resume) one run and return its summary (also written to work_dir on rank 0).

    `reporter` (every rank has one) restores the run, and gets every evaluation and the final
    files; the default keeps them in the work dir.
    """
    from mmengine.dist import get_world_size, is_distributed, is_main_process

    reporter = reporter or Reporter()
    world_size = get_world_size() if is_distributed() else 1
    work_dir = Path(spec.work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    done = reporter.restore(work_dir)
    if done is not None:  # finished by an earlier attempt that did not live to say so
        reporter.finished(done, None)
        return done
    cfg = _prepare(spec, world_size)
    starts_from_init = spec.init_checkpoint is not None and last_checkpoint(work_dir) is None
    if starts_from_init:  # weights only: the optimizer, schedule and iteration start afresh
        cfg.load_from, cfg.resume = spec.init_checkpoint, False
    started = time.time()
    with isolated_mmengine_state():
        runner = _runner_class().from_cfg(cfg)
        hook = _study_hook_class()(spec.work_dir, reporter, spec.overlays,
                                   evaluate_start=starts_from_init)
        runner.register_hook(hook)
        resumed_from = _latest_iteration(work_dir)
        runner.train()
        if hook.artifacts is None or hook.history[-1]["iteration"] != runner.iter:
            # Resumed at the end of the schedule (killed after the last checkpoint): the final
            # evaluation, and the artifacts drawn from it, happen now.
            runner.val_loop.run()
        final = hook.history[-1]
        if spec.holdout or spec.val_subset:
            # the history scored the held-out split or a part of the validation set; the
            # result is the whole validation set's
            runner.test()
            final = hook.test_record
        summary = {
            "spec": spec.to_dict(),
            "config_name": Path(spec.config).stem,
            "iterations": runner.iter,
            "resumed_from": resumed_from,
            "world_size": world_size,
            "wall_time_s": round(time.time() - started, 2),
            **{k: final[k] for k in (*METRICS, "per_class")},
            "history": [{k: v for k, v in r.items() if k != "per_class"}
                        for r in hook.history],
        }
        if spec.holdout:
            summary["selection"] = {"split": f"every {spec.holdout}th training image",
                                    **{k: hook.history[-1][k] for k in METRICS}}
        if is_main_process():
            cfg.dump(str(work_dir / "config.py"))
            keep_log(runner, work_dir, LOGS)
            hook.artifacts.write(work_dir)  # from the final evaluation
            tmp = work_dir / (SUMMARY + ".tmp")
            tmp.write_text(json.dumps(summary, indent=2) + "\n")
            tmp.replace(work_dir / SUMMARY)  # written last: its presence means "finished"
        reporter.finished(summary, work_dir if is_main_process() else None)
    return summary


def _prepare(spec: RunSpec, world_size: int):
    """This process set up for the spec (threads, determinism) and the run's config."""
    import torch

    if spec.threads:
        torch.set_num_threads(spec.threads)
    on_gpu = torch.cuda.is_available()
    determinism(spec.deterministic, on_gpu).apply()  # before the first CUDA matrix product
    cfg = build_config(spec, world_size, on_gpu,
                       torch.cuda.current_device() if on_gpu else None)
    ensure_pretrained(cfg.model)
    return cfg


def evaluate(spec: RunSpec, checkpoint: str) -> dict:
    """One process evaluates `checkpoint` on the spec's whole validation set.

    Returns the metrics and the confusion matrix ([classes, classes] list, rows: ground truth);
    logs go to spec.work_dir.
    """
    cfg = _prepare(spec, world_size=1)
    cfg.load_from, cfg.resume = checkpoint, False
    Path(spec.work_dir).mkdir(parents=True, exist_ok=True)
    with isolated_mmengine_state():  # StudyRunner loads the checkpoint as a trusted one
        runner = _runner_class().from_cfg(cfg)
        hook = _study_hook_class()(spec.work_dir, None, spec.overlays, training=False)
        runner.register_hook(hook)
        metrics = runner.val()
    return {"metrics": dict(metrics), "confusion": hook.artifacts.matrix().tolist(),
            "overlays": [name for name, _ in hook.artifacts.overlays()]}


def _latest_iteration(work_dir: Path) -> int:
    checkpoint = last_checkpoint(work_dir)
    name = checkpoint.stem if checkpoint else ""  # iter_<n>
    return int(name.split("_")[-1]) if name.startswith("iter_") else 0


def read_summary(work_dir: Path | str) -> dict | None:
    path = Path(work_dir) / SUMMARY
    return json.loads(path.read_text()) if path.is_file() else None


# --- the command line ---------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", help="an mmseg config, e.g. mmseg_configs/<leaf>.py")
    parser.add_argument("--loss", default="ce", help="a study loss of params.yaml train.losses")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work-dir", help="default: work_dirs/<config>/<loss>_seed<seed>")
    parser.add_argument("--iterations", type=int)
    parser.add_argument("--val-interval", type=int)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--lr", type=float)
    parser.add_argument("--data-root", help="folder holding the datasets (default: data)")
    parser.add_argument("--init-checkpoint", help="weights to fine-tune (e.g. the pretrain "
                        "stage's models/pretrain/<dataset>/model.pth)")
    parser.add_argument("--schedule", choices=SCHEDULES, default="config",
                        help="constant: --warmup iterations, then --lr held")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--val-subset", type=int, help="evaluate the first N validation "
                        "images while training, all of them at the end")
    parser.add_argument("--checkpoint-interval", type=int,
                        help="a multiple of --val-interval (default: every evaluation)")
    parser.add_argument("--amp", choices=AMP_DTYPES, help="mixed precision (GPU: fp16 or "
                        "bf16; CPU: bf16 under CPU autocast); default: params.yaml train.amp")
    parser.add_argument("--params", default="params.yaml",
                        help="for train.losses, train.amp and train.deterministic")
    args = parser.parse_args(argv)
    try:
        params = load_train_params(args.params)
        params.terms_of(args.loss, "--loss")
        params.check_losses([args.loss])
        if not Path(args.config).is_file():
            raise ParamsError(f"{args.config}: config not found")
        if args.seed < 0:
            raise ParamsError(f"--seed must be >= 0, got {args.seed}")
        if args.checkpoint_interval and args.val_interval and \
                args.checkpoint_interval % args.val_interval:
            raise ParamsError(f"--checkpoint-interval ({args.checkpoint_interval}) must be a "
                              f"multiple of --val-interval ({args.val_interval})")
        spec = RunSpec(
            config=args.config, loss=args.loss, terms=params.terms_of(args.loss, "--loss"),
            seed=args.seed, data_root=args.data_root, lr=args.lr, iterations=args.iterations,
            val_interval=args.val_interval, checkpoint_interval=args.checkpoint_interval,
            batch_size=args.batch_size, amp=args.amp or params.amp,
            deterministic=params.deterministic, overlays=params.overlays,
            init_checkpoint=args.init_checkpoint, custom_imports=tuple(params.custom_imports),
            schedule=args.schedule, warmup=args.warmup, val_subset=args.val_subset,
            work_dir=args.work_dir or f"work_dirs/{Path(args.config).stem}/"
                                      f"{args.loss}_seed{args.seed}")
        summary = run(spec)
    except (ParamsError, PretrainedWeightsError, PrecisionError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(json.dumps({**{k: summary[k] for k in (*METRICS, "iterations", "wall_time_s")},
                      "curve": [[r["iteration"], r["mIoU"]] for r in summary["history"]]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
