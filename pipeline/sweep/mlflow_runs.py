"""The sweep's MLflow runs: a parent per sweep, a child per trial, each evaluation once.

Only the driver writes to MLflow (a sqlite store never sees two writers). A failed MLflow write
never stops the sweep: it is logged, and the reconciliation at the end (and at every rerun)
logs whatever a run lacks, keyed by the trial, so nothing is logged twice.
"""
from __future__ import annotations

import queue
import tempfile
import threading
import time
from pathlib import Path

from ..retry import with_backoff
from ..study_losses import canonical
from ..tracking import DatasetRecord, Tracker
from ..train import RESULT_FILES, RunSummary
from .logline import log, said
from .plan import Study, Trial, sweep_key
from .storage import FINAL

#: Attempts of the final reconciliation with MLflow, and the first wait between two.
RECONCILE_ATTEMPTS = 6
RECONCILE_BACKOFF_S = 2.0
#: Writes waiting for MLflow at most (a sweep of 1,000 trials makes about 5 per evaluation)
WRITE_QUEUE = 10_000
#: How long the end of the sweep waits for the queued writes before reconciling.
FLUSH_TIMEOUT_S = 600.0


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
        self.writes = WriteQueue(self.safely)

    def later(self, what: str, write) -> None:
        """A write that a Tune callback asks for, made in the background (WriteQueue)."""
        if not self.writes.put(what, write):
            self.behind = True

    def flush(self) -> None:
        """The queued writes made (or, after FLUSH_TIMEOUT_S, left to the reconciliation)."""
        if not self.writes.flush():
            self.behind = True
            log(f"warning: MLflow has not taken the sweep's writes within "
                f"{FLUSH_TIMEOUT_S:g} s; the reconciliation makes them")

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
            log(f"warning: MLflow {what} failed ({said(error)}); the sweep goes on and logs "
                 "it later")

    def finish(self, trial: Trial, summary: RunSummary) -> None:
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
            self.finish(trial, RunSummary.from_dict(record))
            return
        self.tracker.log_evaluations(run_id, record["history"])
        if record["status"] == "stopped":
            self.tracker.end_trial(run_id, "KILLED", "stopped early by ASHA")
        else:
            self.tracker.end_trial(run_id, "FAILED", record["error"])



class WriteQueue:
    """Writes made by one background thread, in the order they were asked for.

    Tune runs its callbacks in its own event loop (Ray #35721): a slow or unreachable tracking
    server there would hold every trial's results. The callbacks only queue their writes. A full
    queue refuses one (the reconciliation at the end makes it)."""

    def __init__(self, write_safely, size: int = WRITE_QUEUE):
        self._write_safely = write_safely  # (what, write) -> None, never raises
        self._queue: queue.Queue = queue.Queue(maxsize=size)
        self._thread: threading.Thread | None = None

    def __getstate__(self) -> dict:
        # Tune pickles its callbacks into the experiment's state: the writes stay here
        return {"_write_safely": self._write_safely, "size": self._queue.maxsize}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["_write_safely"], state["size"])

    def put(self, what: str, write) -> bool:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="mlflow-writes",
                                            daemon=True)
            self._thread.start()
        try:
            self._queue.put_nowait((what, write))
        except queue.Full:
            return False
        return True

    def _run(self) -> None:
        while True:
            what, write = self._queue.get()
            if write is None:
                return
            self._write_safely(what, write)

    def flush(self, timeout_s: float = FLUSH_TIMEOUT_S) -> bool:
        """Wait at most `timeout_s` for what is queued; False if writes are left. The thread
        ends (a later put starts another)."""
        if self._thread is None:
            return True
        thread, self._thread = self._thread, None
        started = time.monotonic()
        try:
            self._queue.put((None, None), timeout=timeout_s)  # after everything queued before
        except queue.Full:
            return False
        thread.join(max(0.0, timeout_s - (time.monotonic() - started)))
        return not thread.is_alive()


def reconcile(tracking: SweepTracking, trials: list[Trial], records: list[dict]) -> bool:
    """Every trial's child run as its record says, retried while the store does not answer
    (2, 4, ... 32 s); False if it still does not."""
    def everyone() -> None:
        for trial, record in zip(trials, records, strict=True):
            tracking.reconcile(trial, record)

    try:
        with_backoff(everyone, "MLflow reconciliation", attempts=RECONCILE_ATTEMPTS,
                     first_wait_s=RECONCILE_BACKOFF_S, retry_on=(Exception,), log=log)
    except Exception as error:  # noqa: BLE001 - the store's failures vary
        log(f"MLflow reconciliation gave up: {said(error)}")
        return False
    return True
