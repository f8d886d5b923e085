"""The sweep's driver: Ray Tune over the pending trials, MLflow from Tune's callbacks, and the
results from what Ray reported and the storage holds.

Only the driver writes to MLflow (a sqlite store never sees two writers). A failed MLflow write
never stops the sweep: it is logged, and the reconciliation at the end (and at every rerun)
logs whatever a run lacks, keyed by the trial, so nothing is logged twice.
"""
from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

from ..measures import METRICS
from ..plan import check_budget
from ..pretrain import MODEL
from ..progress import Progress
from ..study_losses import canonical
from ..tracking import DatasetRecord, Tracker, live_metrics
from ..train import RESULT_FILES
from .cluster import (
    check_cluster_resources,
    check_local_resources,
    concurrency,
    in_job,
    init_ray,
    on_cluster,
)
from .plan import Study, Trial, load_study, plan_trials, sweep_key
from .results import RESULTS_DIR, trial_record, write_results
from .storage import FINAL
from .trial import STORAGE_MARKER, pretrain_folder, trains_in_trial, trial_driver

#: Attempts of the final reconciliation with MLflow, and the first wait between two.
RECONCILE_ATTEMPTS = 6
RECONCILE_BACKOFF_S = 2.0


def _log(message: str) -> None:
    print(f"[sweep] {message}", flush=True)


def _said(error: Exception) -> str:
    """An error in one line, for a log line."""
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0][:200] if text else ''}"


class SweepTracking:
    """The sweep's MLflow runs: its parent, a child per trial, each evaluation once."""

    def __init__(self, tracker: Tracker, study: Study, trials: list[Trial]):
        self.tracker = tracker
        self.study = study
        self.parent_id = tracker.parent_run(
            sweep_key(trials), f"sweep-{study.dataset}",
            params={"dataset": study.dataset, "config": Path(study.config).stem,
                    "losses": ",".join(study.sweep.losses),
                    "seeds": ",".join(map(str, study.sweep.seeds)),
                    "workers_per_trial": study.sweep.workers, "use_gpu": study.sweep.use_gpu,
                    "lr_search.samples": study.sweep.lr_search.samples,
                    "convergence.losses": ",".join(study.sweep.convergence.losses),
                    "protocol": study.start.protocol,
                    "init_checkpoint_sha256": study.start.sha256},
            tags={"dataset": study.dataset, "data_hash": study.data_hash,
                  "storage": study.storage.uri_of(study.dataset)})
        self.behind = False  # a write failed: the reconciliation makes up for it

    def child(self, trial: Trial) -> str:
        spec, batch = trial.spec, trial.batch
        params = {"dataset": self.study.dataset, "loss": spec.loss, "seed": spec.seed,
                  "lr": batch.lr, "base_lr": batch.base_lr, "lr_scaled": batch.scaled,
                  "config": Path(spec.config).stem, "iterations": spec.iterations,
                  "batch_size": batch.batch_per_worker, "workers": self.study.sweep.workers,
                  "effective_batch_size": batch.effective_batch,
                  "loss_name": self.study.train.losses[spec.loss].name,
                  "loss_terms": canonical(spec.terms),
                  "arm": trial.arm, "schedule": spec.schedule,
                  "val_interval": spec.val_interval,
                  "checkpoint_interval": spec.checkpoint_interval or spec.val_interval,
                  "amp": spec.amp or "fp32", "deterministic": spec.deterministic,
                  "gpus_per_trial": self.study.sweep.gpus_per_trial,
                  "protocol": trial.start.protocol,
                  "init_checkpoint_sha256": trial.start.sha256,
                  "init_checkpoint_mIoU": trial.start.mIoU}
        # The arm is a tag too: the UI's search (tags.arm = 'convergence') separates the arms
        tags = {"dataset": self.study.dataset, "data_hash": self.study.data_hash,
                "trial": trial.name, "arm": trial.arm,
                "storage": self.study.storage.uri_of(*trial.folder)}
        return self.tracker.child_run(self.parent_id, trial.key, trial.name, params, tags,
                                      self.description(trial), self.dataset_record())

    def description(self, trial: Trial) -> str:
        spec, batch = trial.spec, trial.batch
        name = self.study.train.losses[spec.loss].name
        return (f"Loss {name} ({spec.loss}: {canonical(spec.terms)}), seed {spec.seed}, "
                f"lr {batch.lr:g}, "
                f"{spec.iterations or 'the config schedule of'} iterations of "
                f"{Path(spec.config).stem} on {self.study.dataset} (data "
                f"{self.study.data_hash[:12]}); {trial.arm} arm, {trial.start.describe()}.")

    def dataset_record(self) -> DatasetRecord:
        data = self.study.data
        where = (f"{data.remote.get('url')} (DVC {data.dvc_md5})" if data.source == "dvc"
                 else str(Path(data.path) / data.dataset))
        return DatasetRecord(data.dataset, data.content_sha256, where,
                             "dvc" if data.source == "dvc" else "local")

    def safely(self, what: str, write) -> None:
        """One write; a failure is logged and left to the reconciliation."""
        try:
            write()
        except Exception as error:  # noqa: BLE001 - any failure of the store: go on training
            self.behind = True
            _log(f"warning: MLflow {what} failed ({_said(error)}); the sweep goes on and logs "
                 "it later")

    def finish(self, trial: Trial, summary: dict) -> None:
        """The finished trial's metrics and artifacts, read from its final checkpoint (its
        files, not its weights), once."""
        run_id = self.child(trial)
        if self.tracker.final_logged(run_id):
            return
        with tempfile.TemporaryDirectory() as local:
            files = self.study.storage.download(Path(local), *trial.folder, FINAL,
                                                names=RESULT_FILES)
            self.tracker.finish_trial(run_id, summary, files)

    def reconcile(self, trial: Trial, record: dict) -> None:
        """Make the trial's child run say what its record says (idempotent). A finished
        trial's record holds its summary's values."""
        run_id = self.child(trial)
        if record["status"] == "finished":
            self.finish(trial, record)
            return
        self.tracker.log_evaluations(run_id, record["history"])
        if record["status"] == "stopped":
            self.tracker.end_trial(run_id, "KILLED", "stopped early by ASHA")
        else:
            self.tracker.end_trial(run_id, "FAILED", record["error"])


def _tune_callback(tracking: SweepTracking, trials: dict[str, Trial], progress: Progress):
    from ray import tune

    storage = tracking.study.storage

    class TrackingCallback(tune.Callback):
        """Logs each trial event, and writes it to MLflow as it comes."""

        def __init__(self):
            self.errors: dict[str, str] = {}  # trial key -> the error it failed with
            self.nodes: dict[str, list[str]] = {}  # trial key -> the Ray nodes of its workers
            self.history: dict[str, list[dict]] = {}  # trial key -> its evaluations

        def _trial(self, tune_trial) -> Trial:
            return trials[tune_trial.config["trial"]["key"]]

        def on_trial_start(self, iteration, trials, trial, **info):
            ours = self._trial(trial)
            _log(f"start  {ours.name}")
            progress.trial_started()
            tracking.safely("child run", lambda: tracking.child(ours))

        def on_trial_result(self, iteration, trials, trial, result, **info):
            ours = self._trial(trial)
            if result.get("nodes") and ours.key not in self.nodes:
                self.nodes[ours.key] = result["nodes"].split(",")
                tracking.safely("tags", lambda: tracking.tracker.set_tags(
                    tracking.child(ours), {"nodes": result["nodes"]}))
            if "mIoU" not in result:
                return
            record = {"iteration": result.get("iteration"), "world_size": result.get("world_size"),
                      **{k: result.get(k) for k in (*METRICS, "loss")}, **live_metrics(result)}
            history = self.history.setdefault(ours.key, [])
            history[:] = [h for h in history if h["iteration"] != record["iteration"]]
            history.append(record)
            tracking.safely("metrics", lambda: tracking.tracker.log_evaluations(
                tracking.child(ours), [record]))
            if not result.get("final"):
                _log(f"eval   {ours.name} iter {record['iteration']}: {_measures(record)} "
                     f"(world size {record['world_size']})")

        def on_trial_complete(self, iteration, trials, trial, **info):
            ours = self._trial(trial)
            summary = ours.summary(storage)
            progress.trial_ended()
            if summary is not None:
                tracking.safely("final values", lambda: tracking.finish(ours, summary))
                _log(f"done   {ours.name}: {_measures(summary)}")
                return
            # stopped by the scheduler before the end of its schedule
            last = {k: trial.last_result.get(k) for k in ("iteration", *METRICS)}
            storage.write_json({**last, "history": self.history.get(ours.key, [])},
                               *ours.folder, "stopped.json")
            tracking.safely("end of run", lambda: tracking.tracker.end_trial(
                tracking.child(ours), "KILLED", "stopped early by ASHA"))
            _log(f"stop   {ours.name} at iteration {last['iteration']} (ASHA)")

        def on_trial_error(self, iteration, trials, trial, **info):
            ours = self._trial(trial)
            error = _trial_error(trial)
            progress.trial_ended()
            self.errors[ours.key] = error
            tracking.safely("end of run", lambda: tracking.tracker.end_trial(
                tracking.child(ours), "FAILED", error))
            _log(f"FAILED {ours.name}: {error.splitlines()[0] if error else 'unknown error'}")

    return TrackingCallback()


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
    """What the Tune trial itself holds: its one worker's CPUs when it trains itself; when it
    only launches a TorchTrainer, whose workers hold the CPUs and GPUs, a token memory request
    that keeps it from taking a CPU a worker needs."""
    sweep = study.sweep
    if trains_in_trial(sweep.workers, sweep.use_gpu):
        return {"CPU": sweep.cpus_per_worker}
    return {"memory": 1}


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


def _reconcile(tracking: SweepTracking, trials: list[Trial], records: list[dict]) -> bool:
    """Every trial's child run as its record says, retried while the store does not answer;
    False if it still does not."""
    wait = RECONCILE_BACKOFF_S
    for attempt in range(1, RECONCILE_ATTEMPTS + 1):
        try:
            for trial, record in zip(trials, records, strict=True):
                tracking.reconcile(trial, record)
            return True
        except Exception as error:  # noqa: BLE001 - the store's failures vary
            _log(f"MLflow reconciliation, attempt {attempt}/{RECONCILE_ATTEMPTS}: "
                 f"{_said(error)}")
            if attempt < RECONCILE_ATTEMPTS:
                time.sleep(wait)
                wait *= 2
    return False


def run_sweep(dataset: str, params_file: Path | str = "params.yaml",
              results_dir: Path = RESULTS_DIR) -> dict:
    check_budget(dataset, params_file)  # before data, storage, MLflow or Ray
    study = load_study(dataset, params_file, on_cluster=on_cluster())
    if not on_cluster():
        check_local_resources(study.sweep)
    trials = plan_trials(study)
    tracker = Tracker(study.tracking)
    tracker.check(in_ray_job=in_job())
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
        _share_starting_weights(study)
    callback = _run_tuner(study, pending, tracking) if pending else None
    for trial in pending:
        summaries[trial.key] = trial.summary(study.storage)
        stopped[trial.key] = None if summaries[trial.key] else trial.stopped(study.storage)

    records = [trial_record(
        study, trial, summary=summaries[trial.key], stopped=stopped.get(trial.key),
        error=callback.errors.get(trial.key) if callback else None,
        history=callback.history.get(trial.key, []) if callback else [],
        nodes=callback.nodes.get(trial.key) if callback else None,
        run_id=None) for trial in trials]
    if tracking.behind:
        _log("MLflow missed writes during the sweep: logging them now")
    logged = _reconcile(tracking, trials, records)
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
