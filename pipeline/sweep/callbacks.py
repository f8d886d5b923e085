"""The sweep's Tune callback: each trial event to the driver's log and, as it comes, to MLflow
(through pipeline/sweep/mlflow_runs.py's queue). No handler raises: a failure of the storage
or of MLflow there would make Tune stop every trial; the end of the sweep reads the storage
again and reconciles MLflow."""
from __future__ import annotations

from pathlib import Path

from ..measures import METRICS
from ..progress import Progress
from ..tracking import live_metrics
from .failures import fatal_verdict
from .logline import log, said
from .mlflow_runs import SweepTracking
from .plan import Study, Trial


def guarded_handler(handler):
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
            log(f"warning: {handler.__name__} failed ({said(error)}); the trials go on, and "
                 "the end of the sweep reads the storage again")
    return guarded


def tune_callback(tracking: SweepTracking, trials: dict[str, Trial], progress: Progress):
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

        @guarded_handler
        def on_trial_start(self, iteration, trials, trial, **info):
            ours = self._trial(trial)
            log(f"start  {ours.name}")
            if ours.key not in self.running:
                self.running.add(ours.key)
                progress.trial_started()
            tracking.later("child run", lambda: tracking.child(ours))

        @guarded_handler
        def on_trial_recover(self, iteration, trials, trial, **info):
            """A failed attempt that Tune retries (sweep.max_failures): still one trial."""
            log(f"retry  {self._trial(trial).name}: {trial_error(trial).splitlines()[-1]}")

        @guarded_handler
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
                    log(f"saved  {ours.name} at iteration {result.get('iteration')}: its "
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
                log(f"eval   {ours.name} iter {record['iteration']}: {measures_line(record)} "
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

        @guarded_handler
        def on_trial_complete(self, iteration, trials, trial, **info):
            ours = self._trial(trial)
            self.running.discard(ours.key)
            progress.trial_ended()
            summary = ours.summary(storage)
            if summary is not None:
                tracking.later("final values", lambda: tracking.finish(ours, summary))
                log(f"done   {ours.name}: {measures_line(summary.metrics)}")
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
            log(f"stop   {ours.name} at iteration {last['iteration']} (ASHA)")

        @guarded_handler
        def on_trial_error(self, iteration, trials, trial, **info):
            ours = self._trial(trial)
            self.running.discard(ours.key)
            progress.trial_ended()
            self._failed(ours, trial_error(trial))

        def _failed(self, ours: Trial, error: str) -> None:
            self.errors[ours.key] = error
            tracking.later("end of run", lambda: tracking.tracker.end_trial(
                tracking.child(ours), "FAILED", error))
            log(f"FAILED {ours.name}: {error.splitlines()[0] if error else 'unknown error'}")

    return TrackingCallback()


def trial_failure(callback, study: Study, trial: Trial) -> str | None:
    """What a trial of this run failed with: as Tune said, or its verdict in the storage."""
    said = callback.errors.get(trial.key) if callback else None
    verdict = None if said else fatal_verdict(study.storage, trial.folder)
    return said or (f"{verdict['error']} ({verdict['why']}; not retried)" if verdict else None)


def measures_line(record: dict) -> str:
    """'mIoU 71.20 image-mIoU 64.03 mPixIoU 65.10'; a measure an older record lacks is left out."""
    return " ".join(f"{m} {record[m]:.2f}" for m in METRICS if record.get(m) is not None)


def trial_error(tune_trial) -> str:
    """The last lines of the trial's error trace, which Tune writes on the driver first (and
    syncs to the storage later)."""
    path = getattr(tune_trial, "error_file", None)
    try:
        text = Path(path).read_text() if path else ""
    except OSError:
        text = ""
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return "\n".join(lines[-5:]) or "trial failed (no error recorded)"
