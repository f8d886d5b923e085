"""The sweep's driver: Ray Tune over the pending trials (their events to the log and MLflow in
pipeline/sweep/callbacks.py), and the results from what Ray reported and the storage holds.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

from ..contracts import MODEL
from ..measures import METRICS
from ..plan import check_budget
from ..progress import Progress
from ..tracking import Tracker
from .callbacks import trial_failure, tune_callback
from .cluster import (
    check_cluster_resources,
    check_local_resources,
    concurrency,
    in_job,
    init_ray,
    on_cluster,
)
from .failures import clear as clear_failures
from .lock import DriverLock
from .logline import log as _log
from .mlflow_runs import SweepTracking, reconcile
from .plan import Study, Trial, load_study, plan_trials, sweep_key
from .results import RESULTS_DIR, trial_record, write_results
from .trial import STORAGE_MARKER, pretrain_folder, trains_in_trial, trial_driver

#: A resource only the head node of a Ray cluster has (a local Ray's one node included).
HEAD_NODE = "node:__internal_head__"


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
        callback = tune_callback(tracking, {t.key: t for t in pending}, progress)
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
        error=trial_failure(callback, study, trial) if trial in pending else None,
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
