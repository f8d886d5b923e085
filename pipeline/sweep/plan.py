"""The sweep's plan: params.yaml's `sweep` section, the study it describes and its trials.

Each trial is keyed by everything its numbers depend on (the run spec, the training code and
configs, the dataset's content hash); its folder in the sweep's storage is named after it, so a
trial that finished there is never trained again, whether the sweep was killed or params.yaml
changed something else.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from ..contracts import (
    DataParams,
    MissingPretrain,
    StartingPoint,
    early_point,
    identity_key,
    pretrain_output,
    starting_point,
)
from ..params import ParamsError, for_dataset, load_params, lookup, parse_section
from ..scaling import BatchPlan, plan_batch
from ..sweep_params import (  # noqa: F401 - the section's schema, where the sweep's code finds it
    CONVERGENCE_STARTS,
    ConvergenceParams,
    DataSourceParams,
    LRSearchParams,
    SweepParams,
)
from ..tracking import TrackingParams
from ..train import SUMMARY, RunSpec, RunSummary, TrainParams, code_fingerprint
from .datasets import (
    DatasetVersion,
    locked_output,
    manifest_hash,
    remote_settings,
)
from .storage import FINAL, Storage

STOPPED = "stopped.json"
#: The study's arms: fine-tuning a converged CE model (the papers' protocol, the claims on final
#: values), and training from an under-trained start (how fast each loss learns).
FINETUNE, CONVERGENCE = "finetune", "convergence"


@dataclass(frozen=True)
class Trial:
    dataset: str
    key: str
    name: str
    spec: RunSpec
    batch: BatchPlan
    arm: str = FINETUNE
    start: StartingPoint | None = None  # the weights it starts from

    @property
    def folder(self) -> tuple[str, str]:
        """Its folder in the sweep's storage (Ray Train's run folder of the trial)."""
        return (self.dataset, self.name)

    def summary(self, storage: Storage) -> RunSummary | None:
        """The final summary, once the trial has finished."""
        summary = storage.read_json(*self.folder, FINAL, SUMMARY)
        return None if summary is None else RunSummary.from_dict(summary)

    def stopped(self, storage: Storage) -> dict | None:
        """What the trial had reached when ASHA stopped it."""
        return storage.read_json(*self.folder, STOPPED)


@dataclass
class Study:
    """Everything the stage reads from params.yaml, checked before Ray or MLflow start."""

    dataset: str
    train: TrainParams
    sweep: SweepParams
    tracking: TrackingParams
    config: str
    data: DatasetVersion
    storage: Storage
    config_batch: int  # train_dataloader.batch_size of the config
    config_lr: float  # optim_wrapper.optimizer.lr of the config
    start: StartingPoint  # study.protocol and, fine-tuning, the pretrain stage's checkpoint
    # the convergence arm's start (None without the arm)
    convergence_start: StartingPoint | None = None

    def starts(self) -> list[StartingPoint]:
        """The distinct checkpoints its trials start from."""
        points = [self.start, self.convergence_start]
        return list({p.sha256: p for p in points if p is not None and p.sha256}.values())

    @property
    def data_hash(self) -> str:
        return self.data.content_sha256


def load_study(dataset: str, params_file: Path | str = "params.yaml",
               on_cluster: bool = False) -> Study:
    params = load_params(params_file)
    datasets = lookup(params, "study.datasets")
    if dataset not in datasets:
        raise ParamsError(f"unknown dataset '{dataset}': params.yaml study.datasets is "
                          f"{datasets}")
    params = for_dataset(params, dataset)  # its own schedule (train.schedules.<dataset>)
    train = parse_section(TrainParams, lookup(params, "train"), "train")
    sweep = parse_section(SweepParams, lookup(params, "sweep"), "sweep")
    check_length(dataset, train, params)
    tracking = parse_section(TrackingParams, params.get("tracking", {}), "tracking")
    for where, losses in (("sweep.losses", sweep.losses),
                          ("sweep.convergence.losses", sweep.convergence.losses)):
        for i, loss in enumerate(losses):
            train.terms_of(loss, f"params.yaml: {where}[{i}]")
    train.check_losses(list(dict.fromkeys(sweep.losses + sweep.convergence.losses)))
    config = train.config_for(dataset)
    storage = Storage.parse(sweep.storage, on_cluster)
    data = dataset_version(dataset, parse_section(DataParams, lookup(params, "data"), "data").root,
                           sweep.data)
    start, folder = study_start(dataset, params, sweep.data)
    convergence = None
    if sweep.convergence.losses:
        convergence = StartingPoint("scratch") if sweep.convergence.start == "scratch" else \
            early_point(dataset, folder or pretrain_output(dataset, params))
    return Study(dataset, train, sweep, tracking, config, data, storage,
                 *config_batch_and_lr(config), start, convergence)


def check_length(dataset: str, train: TrainParams, params: dict) -> None:
    """A published model fine-tuned for `iterations: null` would rerun the config's whole
    schedule (20k/80k iterations) in every trial: say what to set instead."""
    published = (params.get("pretrain") or {}).get("published") or {}
    protocol = (params.get("study") or {}).get("protocol", "finetune")
    if train.iterations is None and protocol == "finetune" and dataset in published:
        raise ParamsError(
            f"params.yaml: train.schedules.{dataset}.iterations is null, so every trial would "
            f"fine-tune the published {dataset} model for the config's whole schedule again. "
            f"Set train.schedules.{dataset}.iterations (and val_interval, checkpoint_interval) "
            "to the fine-tuning's length: docs/real-data.md, 'Schedules'")


def study_start(dataset: str, params: dict,
                source: DataSourceParams) -> tuple[StartingPoint, Path | None]:
    """The trials' starting point and the pretrain folder it is in; with the 'dvc' source and
    no pretrain model here (a driver inside `ray job submit`), the version dvc.lock names,
    pulled from the DVC remote."""
    try:
        return starting_point(dataset, params), None
    except MissingPretrain:
        if source.source != "dvc":
            raise
    from .datasets import pull_locked

    output = pretrain_output(dataset, params)
    md5 = locked_output(f"pretrain@{dataset}", output)
    folder = pull_locked(f"pretrain-{dataset}", md5, remote_settings(source.remote),
                         source.cache)
    return starting_point(dataset, params, folder), folder


def dataset_version(dataset: str, data_root: str, source: DataSourceParams) -> DatasetVersion:
    """The dataset version the trials are keyed for and where the nodes find it.

    The content hash comes from the data stage's manifest on this machine; with the 'dvc'
    source and no local copy (a driver inside `ray job submit`), from this node's pull of the
    version dvc.lock names.
    """
    from .datasets import stage_from_remote

    if source.source == "path":
        folder = Path(source.path or data_root).expanduser().resolve()
        content = manifest_hash(folder / dataset)
        if content is None:
            hint = (f"build the dataset first (dvc repro data@{dataset})" if source.path is None
                    else "sweep.data.path must hold the datasets the data stage built")
            raise ParamsError(f"{folder / dataset / 'manifest.json'} is missing: {hint}")
        return DatasetVersion(dataset, content, "path", path=str(folder))
    version = DatasetVersion(dataset, "", "dvc",
                             dvc_md5=locked_output(f"data@{dataset}", Path(data_root) / dataset),
                             remote=remote_settings(source.remote), cache=source.cache)
    content = manifest_hash(Path(data_root) / dataset) or \
        manifest_hash(stage_from_remote(version))
    return DatasetVersion(**{**version.to_dict(), "content_sha256": content})


def config_batch_and_lr(config: str) -> tuple[int, float]:
    """The batch per GPU and the learning rate an mmseg config trains with."""
    from mmengine.config import Config

    cfg = Config.fromfile(config, import_custom_modules=False)
    return int(cfg.train_dataloader.batch_size), float(cfg.optim_wrapper.optimizer.lr)



def plan_trials(study: Study) -> list[Trial]:
    """The grid: losses x seeds x learning rates, then the convergence arm's losses x seeds,
    each with its key and name.

    The spec's work dir and data root are the node's: the trial sets them where it runs."""
    train, sweep = study.train, study.sweep
    code = code_fingerprint(train.custom_imports)
    trials = []

    def add(arm: str, loss: str, seed: int, lr: float | None, start: StartingPoint,
            prefix: str, **schedule) -> None:
        batch = plan_batch(study.config, study.config_batch, study.config_lr, sweep.workers,
                           train.batch_size, lr, sweep.scale_lr)
        spec = RunSpec.from_params(
            train, config=study.config, loss=loss, terms=train.terms_of(loss, "sweep"),
            seed=seed, lr=batch.lr if batch.scaled else lr,
            threads=None if sweep.use_gpu else sweep.cpus_per_worker, **schedule)
        key = identity_key({**spec.to_dict(), "workers": sweep.workers, "gpu": sweep.use_gpu,
                            "data": study.data_hash, "code": code, "start": start.identity(),
                            "arm": arm})
        trials.append(Trial(study.dataset, key, f"{prefix}_{key[:8]}", spec, batch, arm, start))

    for loss in sweep.losses:
        for seed in sweep.seeds:
            for sampled in sweep.lr_search.rates():
                searched = f"_lr{sampled:g}" if sampled is not None else ""
                add(FINETUNE, loss, seed, sampled if sampled is not None else train.lr,
                    study.start, f"{loss}_seed{seed}{searched}", iterations=train.iterations,
                    val_interval=train.val_interval, schedule=train.schedule,
                    checkpoint_interval=train.checkpoint_interval,
                    holdout=sweep.lr_search.holdout_every if sampled is not None else 0)
    arm = sweep.convergence
    for loss in arm.losses:
        for seed in sweep.seeds:
            add(CONVERGENCE, loss, seed, arm.lr, study.convergence_start,
                f"convergence_{loss}_seed{seed}", iterations=arm.iterations,
                val_interval=arm.val_interval, schedule="constant",
                checkpoint_interval=arm.checkpoint_interval(train.checkpoint_interval))
    return trials


def sweep_key(trials: list[Trial]) -> str:
    return hashlib.sha256(" ".join(t.key for t in trials).encode()).hexdigest()


