"""The sweep's driver: Ray Tune over the pending trials, MLflow from Tune's callbacks
(pipeline/sweep/mlflow_runs.py), and the results from what Ray reported and the storage holds.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

from ..contracts import MODEL
from ..measures import METRICS
from ..plan import check_budget
from ..progress import Progress
from ..tracking import Tracker, live_metrics
from .cluster import (
    check_cluster_resources,
    check_local_resources,
    concurrency,
    in_job,
    init_ray,
    on_cluster,
)
from .failures import clear as clear_failures
from .failures import fatal_verdict
from .lock import DriverLock
from .logline import log as _log
from .logline import said as _said
from .mlflow_runs import SweepTracking, reconcile
from .plan import Study, Trial, load_study, plan_trials, sweep_key
from .results import RESULTS_DIR, trial_record, write_results
from .trial import STORAGE_MARKER, pretrain_folder, trains_in_trial, trial_driver

#: A resource only the head node of a Ray cluster has (a local Ray's one node included).
HEAD_NODE = "node:__internal_head__"


def _guarded(handler):
    """A Tune callback's handler that never raises: an error of the storage or of MLflow there
    would make Tune stop every trial and the sweep write no results. It is logged; the results
    and the MLflow reconciliation at the end read the storage again."""
    import functools

    @functools.wraps(handler)
    def guarded(self, *args, **kwargs):
        try:
            return handler(self, *args, **kwargs)
        except Exception as error:  # noqa: BLE001 - any failure: the trials go on
            self.tracking.behind = True
            _log(f"warning: {handler.__name__} failed ({_said(error)}); the trials go on, and "
                 "the end of the sweep reads the storage again")
    return guarded


def _tune_callback(tracking: SweepTracking, trials: dict[str, Trial], progress: Progress):
    from ray import tune

    storage = tracking.study.storage

    class TrackingCallback(tune.Callback):
        """Logs each trial event, and writes it to MLflow as it comes. No handler raises."""

        def __init__(self):
            self.tracking = tracking
            self.errors: dict[str, str] = {}  # trial key -> the error it failed with
            # trial key -> the Ray nodes its workers ran on, over every attempt
            self.nodes: dict[str, list[str]] = {}
            self.history: dict[str, list[dict]] = {}  # trial key -> its evaluations
            # trial key -> evaluations that no checkpoint covers yet: a retry would redo them,
            # so MLflow gets them once a checkpoint does (each step once, the kept attempt's)
            self.uncovered: dict[str, list[dict]] = {}
            self.running: set[str] = set()  # a retried trial is one trial running

        def _trial(self, tune_trial) -> Trial:
            return trials[tune_trial.config["trial"]["key"]]

        @_guarded
        def on_trial_start(self, iteration, trials, trial, **info):
            ours = self._trial(trial)
            _log(f"start  {ours.name}")
            if ours.key not in self.running:
                self.running.add(ours.key)
                progress.trial_started()
            tracking.later("child run", lambda: tracking.child(ours))

        @_guarded
        def on_trial_recover(self, iteration, trials, trial, **info):
            """A failed attempt that Tune retries (sweep.max_failures): still one trial."""
            _log(f"retry  {self._trial(trial).name}: {_trial_error(trial).splitlines()[-1]}")

        @_guarded
        def on_trial_result(self, iteration, trials, trial, result, **info):
            ours = self._trial(trial)
            nodes = sorted(set(self.nodes.get(ours.key, [])) |
                           set(filter(None, result.get("nodes", "").split(","))))
            if nodes != self.nodes.get(ours.key, []):
                self.nodes[ours.key] = nodes
                tracking.later("tags", lambda: tracking.tracker.set_tags(
                    tracking.child(ours), {"nodes": ",".join(nodes)}))
            if "mIoU" not in result:
                if result.get("preempted"):
                    _log(f"saved  {ours.name} at iteration {result.get('iteration')}: its "
                         "node is being taken back")
                    self._covered(ours, result)
                return
            record = {"iteration": result.get("iteration"), "world_size": result.get("world_size"),
                      **{k: result.get(k) for k in (*METRICS, "loss")}, **live_metrics(result)}
            # a retry's evaluation replaces the dead attempt's at that step and after it
            history = self.history.setdefault(ours.key, [])
            history[:] = [h for h in history if h["iteration"] < record["iteration"]]
            history.append(record)
            uncovered = self.uncovered.setdefault(ours.key, [])
            uncovered[:] = [h for h in uncovered if h["iteration"] < record["iteration"]]
            uncovered.append(record)
            self._covered(ours, result)
            if not result.get("final"):
                _log(f"eval   {ours.name} iter {record['iteration']}: {_measures(record)} "
                     f"(world size {record['world_size']})")

        def _covered(self, ours: Trial, result: dict) -> None:
            """With a checkpoint in the storage, the evaluations up to it are never redone:
            MLflow gets them now."""
            uncovered = self.uncovered.get(ours.key, [])
            if not result.get("checkpoint_name") or not uncovered:
                return
            covered, uncovered[:] = list(uncovered), []
            tracking.later("metrics", lambda: tracking.tracker.log_evaluations(
                tracking.child(ours), covered))

        @_guarded
        def on_trial_complete(self, iteration, trials, trial, **info):
            ours = self._trial(trial)
            self.running.discard(ours.key)
            progress.trial_ended()
            summary = ours.summary(storage)
            if summary is not None:
                tracking.later("final values", lambda: tracking.finish(ours, summary))
                _log(f"done   {ours.name}: {_measures(summary)}")
                return
            verdict = fatal_verdict(storage, ours.folder)
            if verdict is not None:  # failed for good: retrying could not mend it
                self._failed(ours, f"{verdict['error']} ({verdict['why']}; not retried)")
                return
            # stopped by the scheduler before the end of its schedule
            last = {k: trial.last_result.get(k) for k in ("iteration", *METRICS)}
            storage.write_json({**last, "history": self.history.get(ours.key, [])},
                               *ours.folder, "stopped.json")
            tracking.later("end of run", lambda: tracking.tracker.end_trial(
                tracking.child(ours), "KILLED", "stopped early by ASHA"))
            _log(f"stop   {ours.name} at iteration {last['iteration']} (ASHA)")

        @_guarded
        def on_trial_error(self, iteration, trials, trial, **info):
            ours = self._trial(trial)
            self.running.discard(ours.key)
            progress.trial_ended()
            self._failed(ours, _trial_error(trial))

        def _failed(self, ours: Trial, error: str) -> None:
            self.errors[ours.key] = error
            tracking.later("end of run", lambda: tracking.tracker.end_trial(
                tracking.child(ours), "FAILED", error))
            _log(f"FAILED {ours.name}: {error.splitlines()[0] if error else 'unknown error'}")

    return TrackingCallback()


def _error(callback, study: Study, trial: Trial) -> str | None:
    """What a trial of this run failed with: as Tune said, or its verdict in the storage."""
    said = callback.errors.get(trial.key) if callback else None
    verdict = None if said else fatal_verdict(study.storage, trial.folder)
    return said or (f"{verdict['error']} ({verdict['why']}; not retried)" if verdict else None)


def _measures(record: dict) -> str:
    """'mIoU 71.20 image-mIoU 64.03 mPixIoU 65.10'; a measure an older record lacks is left out."""
    return " ".join(f"{m} {record[m]:.2f}" for m in METRICS if record.get(m) is not None)


def _trial_error(tune_trial) -> str:
    """The last lines of the trial's error trace, which Tune writes on the driver first (and
    syncs to the storage later)."""
    path = getattr(tune_trial, "error_file", None)
    try:
        text = Path(path).read_text() if path else ""
    except OSError:
        text = ""
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return "\n".join(lines[-5:]) or "trial failed (no error recorded)"


def _trial_name(tune_trial) -> str:
    """Tune's name (and folder) of a trial: the study's, e.g. ce_seed0_1a2b3c4d."""
    return tune_trial.config["trial"]["name"]


def _status_table(lr_searched: bool):
    """Tune's status table with the columns a person compares (Tune's classic reporter: the
    newer one shows each trial's whole config)."""
    from ray import tune

    columns = {"trial/loss": "loss", "trial/seed": "seed"}
    if lr_searched:
        columns["trial/lr"] = "lr"
    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"  # read when the Tuner starts
    return tune.CLIReporter(parameter_columns=columns, metric_columns={
        "iteration": "iter", **{m: m for m in METRICS}}, max_report_frequency=60,
        sort_by_metric=False, max_progress_rows=40)


def _trial_resources(study: Study) -> dict:
    """What the Tune trial itself holds: its one worker's CPUs when it trains itself. When it
    only launches a TorchTrainer, whose workers hold the CPUs and GPUs: a token memory request
    that keeps it from taking a CPU a worker needs, on the head node. Ray Train starts the
    run's controller on the node of the process that calls fit() (this trial's); on a spot
    worker node, its preemption would take the controller with the workers, and the placement
    group could outlive it (Ray #54305), starving the retry."""
    sweep = study.sweep
    if trains_in_trial(sweep.workers, sweep.use_gpu):
        return {"CPU": sweep.cpus_per_worker}
    return {"memory": 1, HEAD_NODE: 0.001}


def _run_tuner(study: Study, pending: list[Trial], tracking: SweepTracking):
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    init_ray(study.sweep, study.train.deterministic)
    try:
        check_cluster_resources(study.sweep, _log)
        grid = [{"key": t.key, "name": t.name, "loss": t.spec.loss, "seed": t.spec.seed,
                 "lr": t.batch.lr, "spec": t.spec.to_dict(), "dataset": study.dataset,
                 "data": study.data.to_dict(), "storage": study.storage.uri,
                 "workers": study.sweep.workers, "use_gpu": study.sweep.use_gpu,
                 "cpus_per_worker": study.sweep.cpus_per_worker,
                 "gpus_per_worker": study.sweep.gpus_per_worker,
                 "collective_timeout_s": study.sweep.collective_timeout_s,
                 "max_repeated_failures": study.sweep.max_repeated_failures,
                 "start": t.start.identity()} for t in pending]
        concurrent = concurrency(study.sweep, len(pending))
        scheduler = None
        if study.sweep.lr_search.samples:
            search = study.sweep.lr_search
            scheduler = ASHAScheduler(time_attr="iteration", metric="mIoU", mode="max",
                                      grace_period=search.grace_period,
                                      reduction_factor=search.reduction_factor,
                                      max_t=10 ** 9)
        progress = Progress(f"sweep@{study.dataset}", len(pending), _log)
        callback = _tune_callback(tracking, {t.key: t for t in pending}, progress)
        tuner = tune.Tuner(
            tune.with_resources(trial_driver, _trial_resources(study)),
            param_space={"trial": tune.grid_search(grid)},
            tune_config=tune.TuneConfig(max_concurrent_trials=concurrent, scheduler=scheduler,
                                        trial_name_creator=_trial_name,
                                        trial_dirname_creator=_trial_name,
                                        # a trial that trains in its own process hands that
                                        # process, torch and mmseg imported, to the next one
                                        # (each run isolates mmengine's global state)
                                        reuse_actors=trains_in_trial(study.sweep.workers,
                                                                     study.sweep.use_gpu)),
            run_config=tune.RunConfig(
                name=f"{study.dataset}-{time.strftime('%Y%m%d-%H%M%S')}",
                storage_path=study.storage.path("_ray_tune"),
                storage_filesystem=study.storage.fs,
                failure_config=tune.FailureConfig(max_failures=study.sweep.max_failures),
                callbacks=[callback], verbose=1,
                progress_reporter=_status_table(bool(study.sweep.lr_search.samples))))
        _log(f"running {len(pending)} trials, " + (f"{concurrent} at a time" if concurrent
             else "each as soon as the cluster has a node for it"))
        try:
            tuner.fit()
        finally:
            progress.close()
        return callback
    finally:
        if not on_cluster():
            ray.shutdown()


def _share_starting_weights(study: Study) -> None:
    """The checkpoints the trials start from, into the sweep's storage, where every node finds
    them (once per checkpoint: its folder is named by its hash)."""
    for start in study.starts():
        folder = pretrain_folder(study.dataset, start.sha256)
        if not study.storage.exists(*folder, MODEL):
            study.storage.put(Path(start.path), *folder, MODEL)


def run_sweep(dataset: str, params_file: Path | str = "params.yaml",
              results_dir: Path = RESULTS_DIR, force_lock: bool = False) -> dict:
    """The sweep of `dataset`; `force_lock` takes over another driver's lock at once."""
    check_budget(dataset, params_file)  # before data, storage, MLflow or Ray
    study = load_study(dataset, params_file, on_cluster=on_cluster())
    if not on_cluster():
        check_local_resources(study.sweep)
    trials = plan_trials(study)
    tracker = Tracker(study.tracking)
    tracker.check(in_ray_job=in_job())  # before any file: a bad store loses nothing
    with DriverLock(study.storage, dataset, force=force_lock):  # one driver per storage
        return _sweep(study, trials, tracker, results_dir)


def _sweep(study: Study, trials: list[Trial], tracker: Tracker, results_dir: Path) -> dict:
    dataset = study.dataset
    # What the storage holds, read once per trial (and again for those this run trains)
    summaries = {t.key: t.summary(study.storage) for t in trials}
    stopped = {t.key: t.stopped(study.storage) for t in trials if summaries[t.key] is None}
    pending = [t for t in trials if summaries[t.key] is None and stopped[t.key] is None]
    _log(f"{dataset}: {len(trials)} trials, {len(trials) - len(pending)} already done, "
         f"{len(pending)} to run ({study.sweep.workers} worker(s) each, "
         f"{'GPU' if study.sweep.use_gpu else 'CPU'}), storage {study.storage.uri_of(dataset)}")
    tracking = SweepTracking(tracker, study, trials)
    study.storage.write_json({"sweep_key": sweep_key(trials), "started": time.time()},
                             dataset, STORAGE_MARKER)
    if pending:
        for trial in pending:  # a trial that failed for good last time is tried again
            clear_failures(study.storage, trial.folder)
        _share_starting_weights(study)
    callback = _run_tuner(study, pending, tracking) if pending else None
    for trial in pending:
        summaries[trial.key] = trial.summary(study.storage)
        stopped[trial.key] = None if summaries[trial.key] else trial.stopped(study.storage)

    records = [trial_record(
        study, trial, summary=summaries[trial.key], stopped=stopped.get(trial.key),
        error=_error(callback, study, trial) if trial in pending else None,
        history=callback.history.get(trial.key, []) if callback else [],
        nodes=callback.nodes.get(trial.key) if callback else None,
        run_id=None) for trial in trials]
    tracking.flush()
    if tracking.behind:
        _log("MLflow missed writes during the sweep: logging them now")
    logged = reconcile(tracking, trials, records)
    counts = {status: sum(r["status"] == status for r in records)
              for status in ("finished", "stopped", "failed")}
    if logged:
        for record, trial in zip(records, trials, strict=True):
            record["mlflow_run_id"] = tracker.child_run_id(tracking.parent_id, trial.key)
        tracking.safely("end of the sweep", lambda: tracker.end_parent(tracking.parent_id,
                                                                       counts))
    results = write_results(study, records, tracking.parent_id, results_dir)
    _log(f"{dataset}: {counts['finished']} finished, {counts['stopped']} stopped, "
         f"{counts['failed']} failed -> {results_dir / (dataset + '.json')}")
    if not logged:
        _log(f"warning: MLflow ({tracker.uri}) did not answer: the results are saved, but its "
             "runs lack some trials. Run the stage again (`dvc repro -f sweep@" + dataset +
             "`): it trains nothing and logs what is missing")
    return {**results, "mlflow_complete": logged}
