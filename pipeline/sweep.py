"""DVC stage `sweep@<dataset>`: every (loss, seed[, lr]) trial of the study through Ray Tune.

    python -m pipeline.sweep synthetic_voc [--params params.yaml]

Ray Tune's `Tuner` runs one trial per grid point; each trial is a Ray Train `TorchTrainer`
with `sweep.gpus_per_trial` GPU workers (or `sweep.cpu_workers_per_trial` gloo workers), each
running `pipeline.train.run` under DDP. Locally Ray starts on this machine; with RAY_ADDRESS set
(or inside `ray job submit`) the sweep joins that cluster.

Trials are keyed by everything their numbers depend on (the run spec, the training code and
configs, the dataset's content hash), and each keeps its work dir under `sweep.storage`. A trial
whose work dir holds a summary is finished and is never trained again, whether the sweep was
killed or params.yaml changed something else; an unfinished one resumes from its checkpoint.

Writes `results/<dataset>.json`: one record per trial, finished, stopped or failed.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from .determinism import determinism
from .params import ParamsError, load_params, lookup, parse_section
from .scaling import BatchPlan, plan_batch
from .tracking import Tracker, TrackingError, TrackingParams
from .train import HISTORY, RunSpec, TrainParams, read_summary

RESULTS_DIR = Path("results")
STOPPED = "stopped.json"
#: Files whose content decides a trial's numbers (with the configs and the dataset's hash).
TRAINING_CODE = ("pipeline/train.py", "pipeline/artifacts.py", "pipeline/metrics.py",
                 "pipeline/determinism.py", "pipeline/losses")
CONFIGS = "mmseg_configs"


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

    def validate(self, where: str) -> None:
        if self.samples < 0:
            raise ParamsError(f"params.yaml: {where}.samples must be >= 0, got {self.samples}")
        if not 0 < self.low < self.high:
            raise ParamsError(f"params.yaml: {where}: need 0 < low < high, got "
                              f"low={self.low}, high={self.high}")
        if self.grace_period < 1 or self.reduction_factor < 2:
            raise ParamsError(f"params.yaml: {where}: grace_period must be >= 1 and "
                              "reduction_factor >= 2")

    def rates(self) -> list[float | None]:
        if self.samples == 0:
            return [None]
        import numpy as np

        draws = np.random.default_rng(self.seed).uniform(math.log(self.low),
                                                         math.log(self.high), self.samples)
        return [float(f"{math.exp(x):.3g}") for x in draws]


@dataclass
class SweepParams:
    """params.yaml: sweep."""

    losses: list[str]
    seeds: list[int]
    gpus_per_trial: int = 0
    cpu_workers_per_trial: int = 1
    cpus_per_worker: int = 1
    max_concurrent_trials: int | None = None
    max_failures: int = 1
    scale_lr: bool = False
    storage: str = "work_dirs/sweeps"
    data_root: str | None = None
    lr_search: LRSearchParams = field(default_factory=LRSearchParams)

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
        if self.gpus_per_trial < 0:
            raise ParamsError(f"params.yaml: {where}.gpus_per_trial must be >= 0")
        if self.max_failures < -1:
            raise ParamsError(f"params.yaml: {where}.max_failures must be >= 0, or -1 to retry "
                              f"a crashed trial forever (Tune's convention), got "
                              f"{self.max_failures}")
        for key in ("cpu_workers_per_trial", "cpus_per_worker"):
            if getattr(self, key) < 1:
                raise ParamsError(f"params.yaml: {where}.{key} must be >= 1")
        if self.max_concurrent_trials is not None and self.max_concurrent_trials < 1:
            raise ParamsError(f"params.yaml: {where}.max_concurrent_trials must be >= 1 or null")

    @property
    def workers(self) -> int:
        return self.gpus_per_trial or self.cpu_workers_per_trial

    @property
    def use_gpu(self) -> bool:
        return self.gpus_per_trial > 0

    def resources_per_trial(self) -> dict[str, int]:
        """What a trial's workers hold, all on one node (STRICT_PACK)."""
        return {"CPU": self.workers * self.cpus_per_worker, "GPU": self.gpus_per_trial}


@dataclass(frozen=True)
class Trial:
    dataset: str
    key: str
    name: str
    spec: RunSpec
    batch: BatchPlan

    @property
    def work_dir(self) -> Path:
        return Path(self.spec.work_dir)

    def state(self) -> str:
        """finished / stopped (by ASHA) / pending, from what the work dir holds."""
        if read_summary(self.work_dir) is not None:
            return "finished"
        return "stopped" if (self.work_dir / STOPPED).is_file() else "pending"


@dataclass
class Study:
    """Everything the stage reads from params.yaml, checked before Ray or MLflow start."""

    dataset: str
    train: TrainParams
    sweep: SweepParams
    tracking: TrackingParams
    config: str
    data_dir: Path
    data_hash: str
    config_batch: int  # train_dataloader.batch_size of the config
    config_lr: float  # optim_wrapper.optimizer.lr of the config


def load_study(dataset: str, params_file: Path | str = "params.yaml") -> Study:
    params = load_params(params_file)
    datasets = lookup(params, "study.datasets")
    if dataset not in datasets:
        raise ParamsError(f"unknown dataset '{dataset}': params.yaml study.datasets is "
                          f"{datasets}")
    train = parse_section(TrainParams, lookup(params, "train"), "train")
    sweep = parse_section(SweepParams, lookup(params, "sweep"), "sweep")
    tracking = parse_section(TrackingParams, params.get("tracking", {}), "tracking")
    for i, loss in enumerate(sweep.losses):
        train.terms_of(loss, f"params.yaml: sweep.losses[{i}]")
    config = train.config_for(dataset)
    data_root = Path(lookup(params, "data.root"))
    manifest = data_root / dataset / "manifest.json"
    if not manifest.is_file():
        raise ParamsError(f"{manifest} is missing: build the dataset first "
                          f"(dvc repro data@{dataset})")
    data_hash = json.loads(manifest.read_text())["content_sha256"]
    return Study(dataset, train, sweep, tracking, config, data_root / dataset, data_hash,
                 *config_batch_and_lr(config))


def config_batch_and_lr(config: str) -> tuple[int, float]:
    """The batch per GPU and the learning rate an mmseg config trains with."""
    from mmengine.config import Config

    cfg = Config.fromfile(config, import_custom_modules=False)
    return int(cfg.train_dataloader.batch_size), float(cfg.optim_wrapper.optimizer.lr)


def check_local_resources(sweep: SweepParams) -> None:
    """gpus_per_trial / workers larger than this machine fail before Ray starts."""
    if sweep.use_gpu:
        import torch  # only to count GPUs: CPU sweeps skip the import

        if sweep.gpus_per_trial > torch.cuda.device_count():
            raise ParamsError(f"params.yaml: sweep.gpus_per_trial is {sweep.gpus_per_trial} "
                              f"but this machine has {torch.cuda.device_count()} GPU(s); set "
                              "it to 0 for CPU trials or set RAY_ADDRESS to a cluster")
    cpus = os.cpu_count() or 1
    needed = sweep.workers * sweep.cpus_per_worker
    if needed > cpus:
        raise ParamsError(f"params.yaml: sweep.cpu_workers_per_trial x sweep.cpus_per_worker = "
                          f"{needed} CPUs per trial, but this machine has {cpus}")


def _holds(resources: dict, needed: dict[str, int]) -> bool:
    return all(resources.get(name, 0) >= amount for name, amount in needed.items() if amount)


def check_cluster_resources(sweep: SweepParams, log=None) -> None:
    """Fail only when no node of the cluster could ever hold one trial (its workers share a
    node: STRICT_PACK). On an autoscaling cluster the node types count, not the nodes up now: a
    trial that fits a node type waits for the autoscaler, with a warning."""
    import ray
    from ray._private.state import state

    needed = sweep.resources_per_trial()
    what = ", ".join(f"{n:g} {name}" for name, n in needed.items() if n)
    nodes = [node["Resources"] for node in ray.nodes() if node.get("Alive")]
    if any(_holds(resources, needed) for resources in nodes):
        return
    config = state.get_cluster_config()  # set by an autoscaler: its node types
    node_types = [dict(group.resources) for group in getattr(config, "node_group_configs", [])
                  if group.max_count != 0]
    if any(_holds(resources, needed) for resources in node_types):
        (log or print)(f"warning: no node up now holds a trial ({what} on one node); the "
                       f"trials wait for the autoscaler to add one")
        return
    largest = max(nodes + node_types, key=lambda r: (r.get("GPU", 0), r.get("CPU", 0)),
                  default={})
    key = "gpus_per_trial" if sweep.use_gpu else "cpu_workers_per_trial"
    raise ParamsError(f"params.yaml: sweep.{key}: a trial needs {what} on one node (its DDP "
                      f"workers are packed on one node), but no node "
                      f"{'type ' if node_types else ''}of the Ray cluster has that much (the "
                      f"largest has {largest.get('CPU', 0):g} CPU, {largest.get('GPU', 0):g} GPU)")


def _fingerprint(paths: list[Path]) -> str:
    digest = hashlib.sha256()
    for path in sorted(paths):
        digest.update(str(path).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def code_fingerprint() -> str:
    files = []
    for entry in (*TRAINING_CODE, CONFIGS):
        path = Path(entry)
        files.extend(sorted(path.rglob("*.py")) if path.is_dir() else [path])
    return _fingerprint(files)


def plan_trials(study: Study) -> list[Trial]:
    """The grid: losses x seeds x learning rates, each with its key and work dir."""
    code = code_fingerprint()
    # Workers run in a copy of the repository (Ray's working_dir), so everything outside the
    # code is passed as an absolute path: on a cluster, a path every node sees.
    storage = Path(study.sweep.storage).resolve() / study.dataset
    data_root = str(Path(study.sweep.data_root or study.data_dir.parent).resolve())
    trials = []
    for loss in study.sweep.losses:
        for seed in study.sweep.seeds:
            for sampled in study.sweep.lr_search.rates():
                lr = sampled if sampled is not None else study.train.lr
                batch = plan_batch(study.config, study.config_batch, study.config_lr,
                                   study.sweep.workers, study.train.batch_size, lr,
                                   study.sweep.scale_lr)
                spec = RunSpec(
                    config=study.config, loss=loss, terms=study.train.losses[loss], seed=seed,
                    work_dir="", data_root=data_root, lr=batch.lr if batch.scaled else lr,
                    iterations=study.train.iterations, val_interval=study.train.val_interval,
                    batch_size=study.train.batch_size, deterministic=study.train.deterministic,
                    overlays=study.train.overlays,
                    threads=None if study.sweep.use_gpu else study.sweep.cpus_per_worker)
                identity = {**spec.to_dict(), "work_dir": None, "data_root": None,
                            "workers": study.sweep.workers, "gpu": study.sweep.use_gpu,
                            "data": study.data_hash, "code": code}
                key = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()
                searched = f"_lr{sampled:g}" if sampled is not None else ""
                name = f"{loss}_seed{seed}{searched}_{key[:8]}"
                spec = RunSpec(**{**spec.to_dict(), "work_dir": str(storage / name)})
                trials.append(Trial(study.dataset, key, name, spec, batch))
    return trials


def sweep_key(trials: list[Trial]) -> str:
    return hashlib.sha256(" ".join(t.key for t in trials).encode()).hexdigest()


# --- inside Ray -------------------------------------------------------------------------------

def _train_worker(config: dict) -> None:
    """Ray Train worker: one DDP rank of one trial."""
    import ray.train

    from .train import run

    spec = RunSpec(**config["spec"])
    _injected_fault(config["key"])
    # Tune and Train move workers' working directories; configs are relative to this checkout
    # (the one Ray shipped as working_dir), which is where this package was imported from.
    checkout = Path(__file__).resolve().parents[1]
    spec = RunSpec(**{**spec.to_dict(), "config": str(checkout / spec.config)})
    nodes = _worker_nodes()

    def report(metrics: dict) -> None:
        # A string: Tune's TensorBoard logger skips it, where it warns about a list.
        ray.train.report({**metrics, "nodes": ",".join(nodes)})

    run(spec, report=report)


def _worker_nodes() -> list[str]:
    """The Ray node ids that this trial's workers run on (every rank asks every rank)."""
    import ray
    import torch.distributed as dist

    node = ray.get_runtime_context().get_node_id()
    if not (dist.is_available() and dist.is_initialized()):
        return [node]
    everyone = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, node)
    return sorted(set(everyone))


#: Fault injection for the reliability tests: a folder; the first attempt of every trial fails
#: (leaving a marker there), so the retry path runs for real. Unset in normal use.
FAULT_ENV = "PIXIOU_FAIL_FIRST_ATTEMPT"


def _injected_fault(key: str) -> None:
    folder = os.environ.get(FAULT_ENV)
    if folder:
        marker = Path(folder) / key
        if not marker.exists():
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.touch()
            raise RuntimeError(f"injected fault ({FAULT_ENV}): first attempt of trial {key[:8]}")


def scaling_config(workers: int, use_gpu: bool, cpus_per_worker: int):
    """A trial's workers, all on one node: DDP across nodes would run at network speed."""
    import ray.train

    return ray.train.ScalingConfig(
        num_workers=workers, use_gpu=use_gpu, placement_strategy="STRICT_PACK",
        resources_per_worker={"CPU": cpus_per_worker, **({"GPU": 1} if use_gpu else {})})


def _trial_driver(config: dict) -> None:
    """Ray Tune trial: a TorchTrainer with the sweep's workers around `_train_worker`."""
    import ray.train
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    trial = config["trial"]
    trainer = TorchTrainer(
        _train_worker,
        train_loop_config={"spec": trial["spec"], "key": trial["key"]},
        scaling_config=scaling_config(trial["workers"], trial["use_gpu"],
                                      trial["cpus_per_worker"]),
        run_config=ray.train.RunConfig(
            name=f"{trial['name']}-{time.strftime('%Y%m%d-%H%M%S')}",
            storage_path=trial["ray_storage"], callbacks=[TuneReportCallback()],
            failure_config=ray.train.FailureConfig(max_failures=0)))  # Tune retries trials
    trainer.fit()


def _tracking_callback(tracker: Tracker, parent_id: str, trials: dict[str, Trial],
                       child_params, child_tags, log):
    from ray import tune

    class TrackingCallback(tune.Callback):
        """MLflow from the driver: a child per trial, its evaluations as they come, its end."""

        def __init__(self):
            self.errors: dict[str, str] = {}  # trial key -> the error it failed with
            self.nodes: dict[str, list[str]] = {}  # trial key -> the Ray nodes of its workers

        def _trial(self, tune_trial) -> Trial:
            return trials[tune_trial.config["trial"]["key"]]

        def _run_id(self, trial: Trial) -> str:  # found once, then cached by the tracker
            return tracker.child_run(parent_id, trial.key, trial.name, child_params(trial),
                                     child_tags(trial))

        def on_trial_start(self, iteration, trials, trial, **info):
            log(f"start  {self._trial(trial).name}")
            self._run_id(self._trial(trial))

        def on_trial_result(self, iteration, trials, trial, result, **info):
            ours = self._trial(trial)
            if result.get("nodes") and ours.key not in self.nodes:
                self.nodes[ours.key] = result["nodes"].split(",")
                tracker.set_tags(self._run_id(ours), {"nodes": result["nodes"]})
            if "mIoU" in result:
                tracker.log_evaluations(self._run_id(ours), [result])
                log(f"eval   {ours.name} iter {result['iteration']}: mIoU {result['mIoU']:.2f} "
                    f"mPixIoU {result['mPixIoU']:.2f} (world size {result['world_size']})")

        def on_trial_complete(self, iteration, trials, trial, **info):
            ours = self._trial(trial)
            summary = read_summary(ours.work_dir)
            if summary is not None:
                tracker.finish_trial(self._run_id(ours), summary, ours.work_dir)
                log(f"done   {ours.name}: mIoU {summary['mIoU']:.2f} "
                    f"mPixIoU {summary['mPixIoU']:.2f}")
            else:  # stopped by the scheduler before the end of its schedule
                last = {k: trial.last_result.get(k) for k in ("iteration", "mIoU", "mPixIoU")}
                (ours.work_dir / STOPPED).write_text(json.dumps(last) + "\n")
                tracker.end_trial(self._run_id(ours), "KILLED", "stopped early by ASHA")
                log(f"stop   {ours.name} at iteration {last['iteration']} (ASHA)")

        def on_trial_error(self, iteration, trials, trial, **info):
            ours = self._trial(trial)
            error = _trial_error(trial)
            self.errors[ours.key] = error
            tracker.end_trial(self._run_id(ours), "FAILED", error)
            log(f"FAILED {ours.name}: {error.splitlines()[0] if error else 'unknown error'}")

    return TrackingCallback()


def _trial_error(tune_trial) -> str:
    path = getattr(tune_trial, "error_file", None) or ""
    try:
        text = Path(path).read_text() if path else ""
    except OSError:
        text = ""
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return "\n".join(lines[-5:]) or "trial failed (no error file)"


# --- the stage --------------------------------------------------------------------------------

def _log(message: str) -> None:
    print(f"[sweep] {message}", flush=True)


def worker_env(sweep: SweepParams, deterministic: bool) -> dict[str, str]:
    """Environment variables the sweep gives its Ray workers."""
    # Ray Train polls its workers every 2 s by default, which adds seconds to every short trial.
    env_vars = {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S":
                os.environ.get("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")}
    # cuBLAS reads its workspace setting when a process makes its first handle: set it before.
    env_vars.update(determinism(deterministic, on_gpu=sweep.use_gpu).env)
    if os.environ.get(FAULT_ENV):
        env_vars[FAULT_ENV] = os.environ[FAULT_ENV]
    return env_vars


def _in_job() -> bool:
    return "RAY_JOB_CONFIG_JSON_ENV_VAR" in os.environ


def on_cluster() -> bool:
    """RAY_ADDRESS names a cluster, or this is a `ray job submit` job: the sweep joins it."""
    return bool(os.environ.get("RAY_ADDRESS")) or _in_job()


def _init_ray(sweep: SweepParams, deterministic: bool) -> None:
    import ray

    if ray.is_initialized():
        return
    env_vars = worker_env(sweep, deterministic)
    os.environ.update(env_vars)
    # Inside `ray job submit` the job's runtime env (its working dir) applies already; otherwise
    # ship this checkout the same way (git-ignored data, .venv and outputs stay here).
    runtime_env = None if _in_job() else {"working_dir": ".", "env_vars": env_vars}
    if on_cluster():
        ray.init(address=os.environ.get("RAY_ADDRESS") or "auto", runtime_env=runtime_env,
                 log_to_driver=False)
    else:
        # A Ray of its own on this machine, even when another one runs here (`ray start`, a
        # second study): plain ray.init() would join that one. Dashboard off, 127.0.0.1 only.
        ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False,
                 dashboard_host="127.0.0.1", runtime_env=runtime_env, log_to_driver=False)


def run_sweep(dataset: str, params_file: Path | str = "params.yaml",
              results_dir: Path = RESULTS_DIR) -> dict:
    study = load_study(dataset, params_file)
    if not on_cluster():
        check_local_resources(study.sweep)
    trials = plan_trials(study)
    tracker = Tracker(study.tracking)
    tracker.check()
    by_key = {t.key: t for t in trials}
    states = {t.key: t.state() for t in trials}
    pending = [t for t in trials if states[t.key] == "pending"]
    _log(f"{dataset}: {len(trials)} trials, {len(trials) - len(pending)} already done, "
         f"{len(pending)} to run ({study.sweep.workers} worker(s) each, "
         f"{'GPU' if study.sweep.use_gpu else 'CPU'})")

    parent_id = tracker.parent_run(
        sweep_key(trials), f"sweep-{dataset}",
        params={"dataset": dataset, "config": Path(study.config).stem,
                "losses": ",".join(study.sweep.losses),
                "seeds": ",".join(map(str, study.sweep.seeds)),
                "workers_per_trial": study.sweep.workers, "use_gpu": study.sweep.use_gpu,
                "lr_search.samples": study.sweep.lr_search.samples},
        tags={"dataset": dataset, "data_hash": study.data_hash})

    def child_params(trial: Trial) -> dict:
        spec = trial.spec
        batch = trial.batch
        return {"dataset": dataset, "loss": spec.loss, "seed": spec.seed, "lr": batch.lr,
                "base_lr": batch.base_lr, "lr_scaled": batch.scaled,
                "config": Path(spec.config).stem, "iterations": spec.iterations,
                "batch_size": batch.batch_per_worker, "workers": study.sweep.workers,
                "effective_batch_size": batch.effective_batch,
                "loss_terms": ",".join(f"{k}={v:g}" for k, v in spec.terms.items())}

    def child_tags(trial: Trial) -> dict:
        return {"dataset": dataset, "data_hash": study.data_hash, "trial": trial.name,
                "work_dir": str(trial.work_dir)}

    # Trials finished earlier (even by a killed sweep) are logged once, now, if they were not.
    for trial in trials:
        if states[trial.key] == "finished":
            run_id = tracker.child_run(parent_id, trial.key, trial.name, child_params(trial),
                                       child_tags(trial))
            tracker.finish_trial(run_id, read_summary(trial.work_dir), trial.work_dir)

    errors: dict[str, str] = {}
    nodes: dict[str, list[str]] = {}
    if pending:
        errors, nodes = _run_tuner(study, pending, by_key, tracker, parent_id, child_params,
                                   child_tags)
    results = _collect(study, trials, errors, nodes, tracker, parent_id)
    counts = {status: sum(r["status"] == status for r in results["trials"])
              for status in ("finished", "stopped", "failed")}
    tracker.end_parent(parent_id, counts)
    results_dir.mkdir(parents=True, exist_ok=True)
    out = results_dir / f"{dataset}.json"
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    tmp.replace(out)
    _log(f"{dataset}: {counts['finished']} finished, {counts['stopped']} stopped, "
         f"{counts['failed']} failed -> {out}")
    return results


def _concurrency(sweep: SweepParams, pending: int) -> int | None:
    """How many trials Tune runs at once; None: no limit.

    A Ray of the sweep's own (this machine) never grows: as many trials as it holds. On a
    cluster, `sweep.max_concurrent_trials` or no limit: a trial that finds no free node waits,
    its Ray Train workers retrying their placement, which is also the demand an autoscaler
    answers; nodes that join later take the waiting trials.
    """
    import ray

    if on_cluster():
        return min(sweep.max_concurrent_trials, pending) if sweep.max_concurrent_trials \
            else None
    fits = int(min(ray.cluster_resources().get(r, 0) // n
                   for r, n in sweep.resources_per_trial().items() if n))
    return max(1, min(sweep.max_concurrent_trials or fits, fits, pending))


def _run_tuner(study, pending, by_key, tracker, parent_id, child_params, child_tags):
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    _init_ray(study.sweep, study.train.deterministic)
    try:
        check_cluster_resources(study.sweep, _log)
        storage = Path(study.sweep.storage).resolve()
        grid = [{"key": t.key, "name": t.name, "spec": t.spec.to_dict(),
                 "workers": study.sweep.workers, "use_gpu": study.sweep.use_gpu,
                 "cpus_per_worker": study.sweep.cpus_per_worker,
                 "ray_storage": str(storage / "_ray_train")} for t in pending]
        concurrent = _concurrency(study.sweep, len(pending))
        scheduler = None
        if study.sweep.lr_search.samples:
            search = study.sweep.lr_search
            scheduler = ASHAScheduler(time_attr="iteration", metric="mIoU", mode="max",
                                      grace_period=search.grace_period,
                                      reduction_factor=search.reduction_factor,
                                      max_t=10 ** 9)
        callback = _tracking_callback(tracker, parent_id, by_key, child_params, child_tags,
                                      _log)
        tuner = tune.Tuner(
            # The trial itself only launches the TorchTrainer, whose workers hold the CPUs and
            # GPUs; a token memory request keeps it from taking a CPU a worker needs.
            tune.with_resources(_trial_driver, {"memory": 1}),
            param_space={"trial": tune.grid_search(grid)},
            tune_config=tune.TuneConfig(max_concurrent_trials=concurrent, scheduler=scheduler),
            run_config=tune.RunConfig(
                name=f"{study.dataset}-{time.strftime('%Y%m%d-%H%M%S')}",
                storage_path=str(storage / "_ray_tune"),
                failure_config=tune.FailureConfig(max_failures=study.sweep.max_failures),
                callbacks=[callback], verbose=1))
        _log(f"running {len(pending)} trials, " + (f"{concurrent} at a time" if concurrent
             else "each as soon as the cluster has a node for it"))
        tuner.fit()
        return callback.errors, callback.nodes
    finally:
        if not on_cluster():
            ray.shutdown()


def _collect(study: Study, trials: list[Trial], errors: dict[str, str],
             nodes: dict[str, list[str]], tracker: Tracker, parent_id: str) -> dict:
    records = []
    for trial in trials:
        spec = trial.spec
        record = {"trial": trial.name, "key": trial.key, "dataset": study.dataset,
                  "loss": spec.loss, "loss_terms": spec.terms, "seed": spec.seed, "lr": spec.lr,
                  "config": Path(spec.config).stem, "iterations": spec.iterations,
                  "batch_size": spec.batch_size, "workers": study.sweep.workers,
                  "effective_batch_size": trial.batch.effective_batch,
                  "effective_lr": trial.batch.lr, "nodes": nodes.get(trial.key),
                  "work_dir": str(trial.work_dir), "mlflow_run_id": None}
        record["mlflow_run_id"] = tracker.child_run_id(parent_id, trial.key)
        summary = read_summary(trial.work_dir)
        if summary is not None:
            record.update(status="finished", error=None, mIoU=summary["mIoU"],
                          mPixIoU=summary["mPixIoU"], per_class=summary["per_class"],
                          history=summary["history"], iterations=summary["iterations"],
                          world_size=summary["world_size"],
                          wall_time_s=summary["wall_time_s"])
        elif (trial.work_dir / STOPPED).is_file():
            last = json.loads((trial.work_dir / STOPPED).read_text())
            record.update(status="stopped", error=None, mIoU=last.get("mIoU"),
                          mPixIoU=last.get("mPixIoU"), per_class=None,
                          history=_history(trial.work_dir), world_size=None, wall_time_s=None)
        else:
            record.update(status="failed", error=errors.get(trial.key, "did not finish"),
                          mIoU=None, mPixIoU=None, per_class=None,
                          history=_history(trial.work_dir), world_size=None, wall_time_s=None)
        records.append(record)
    return {"dataset": study.dataset, "config": Path(study.config).stem,
            "data_hash": study.data_hash, "mlflow_parent_run_id": parent_id,
            "trials": records}


def _history(work_dir: Path) -> list[dict]:
    path = work_dir / HISTORY
    if not path.is_file():
        return []
    return [{k: v for k, v in json.loads(line).items() if k != "per_class"}
            for line in path.read_text().splitlines() if line.strip()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.sweep", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset", help="a key of params.yaml study.datasets")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--results-dir", default=str(RESULTS_DIR))
    args = parser.parse_args(argv)
    try:
        results = run_sweep(args.dataset, args.params, Path(args.results_dir))
    except (ParamsError, TrackingError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    finished = sum(r["status"] == "finished" for r in results["trials"])
    return 0 if finished else 1


if __name__ == "__main__":
    sys.exit(main())
