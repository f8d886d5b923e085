"""MLflow tracking of a sweep: one parent run per sweep, one nested child run per trial.

Only the sweep's driver writes (Ray Tune callbacks run there), so a sqlite store never sees two
writers; on a cluster the store is a tracking server (docs/cluster.md). Every write is
idempotent, keyed by tags: a rerun after a crash finds the parent by its sweep key and each
child by its trial key, logs only the evaluations the run does not have yet, and finishes a
trial once. The store is `tracking.uri` of params.yaml (sqlite:///mlflow.db, with artifacts
under `tracking.artifacts`) unless MLFLOW_TRACKING_URI points elsewhere.

Nothing from the environment is logged except what is named here, and every value is checked
against the environment's secrets (variables named like *PASSWORD*, *TOKEN*, *SECRET*, *KEY*)
before it leaves, so credentials never reach params, tags or error messages.
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

from .measures import METRICS
from .params import ParamsError, in_project
from .provenance import GIT_COMMIT, git_commit, package_versions
from .secret_names import environment_secrets, redact
from .train import RESULT_FILES, RunSummary
from .watch import RUN_METRICS, SYSTEM_PREFIX

SWEEP_KEY = "pixiou.sweep_key"
TRIAL_KEY = "pixiou.trial_key"
FINAL_LOGGED = "pixiou.final_logged"
RUN_MADE = "pixiou.run_made"  # a trial's run has its params and dataset
PARENT = "mlflow.parentRunId"
LIVE_METRICS = (*METRICS, "loss", *RUN_METRICS)


def live_metrics(record: dict) -> dict[str, float]:
    """What MLflow logs of an evaluation record: the measures, the training loss, the run's
    lr, timings and memory, and its system metrics (system/...), where present."""
    return {k: float(v) for k, v in record.items() if v is not None and k != "iteration"
            and (k in LIVE_METRICS or k.startswith(SYSTEM_PREFIX))}
NOTE = "mlflow.note.content"  # what the UI shows as a run's description


@dataclass(frozen=True)
class DatasetRecord:
    """A run's dataset as MLflow records it: name, digest (of the content hash), where."""

    name: str
    content_sha256: str
    source: str  # a path or URI
    source_type: str  # 'local', 'dvc', ...

    def input(self):
        import json

        from mlflow.entities import Dataset, DatasetInput, InputTag

        dataset = Dataset(name=self.name, digest=self.content_sha256[:16],
                          source_type=self.source_type,
                          source=json.dumps({"uri": self.source}),
                          profile=json.dumps({"content_sha256": self.content_sha256}))
        return DatasetInput(dataset, tags=[InputTag("mlflow.data.context", "training")])


@dataclass
class TrackingParams:
    """params.yaml: tracking."""

    experiment: str = "pixiou-study"
    uri: str = "sqlite:///mlflow.db"
    artifacts: str = "mlartifacts"  # artifact root of a local (sqlite/file) store
    timeout_seconds: float = 10.0  # per request to a tracking server

    def validate(self, where: str) -> None:
        if not self.experiment.strip():
            raise ParamsError(f"params.yaml: {where}.experiment must not be empty")
        if self.timeout_seconds <= 0:
            raise ParamsError(f"params.yaml: {where}.timeout_seconds must be > 0")


class TrackingError(RuntimeError):
    """The tracking store cannot be used; raised before any training starts."""


def tracking_uri(params: TrackingParams) -> str:
    """MLFLOW_TRACKING_URI, else tracking.uri; a relative sqlite file from the project's root
    (pipeline.params.in_project: a queued DVC experiment logs to the repository's store)."""
    uri = os.environ.get("MLFLOW_TRACKING_URI") or params.uri
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri[len(prefix):].startswith("/"):
        uri = prefix + str(in_project(uri[len(prefix):]).resolve())
    return uri


def one_run(client, experiment_id: str, filters: str, newest: bool):
    """The experiment's first (or, `newest`, latest) run that matches `filters`, or None."""
    runs = client.search_runs([experiment_id], filter_string=filters, max_results=1,
                              order_by=[f"attributes.start_time {'DESC' if newest else 'ASC'}"])
    return runs[0] if runs else None


class Tracker:
    """The sweep's writer; every method is safe to call again after a crash."""

    def __init__(self, params: TrackingParams):
        from mlflow.tracking import MlflowClient

        self.params = params
        self.uri = tracking_uri(params)
        self.secrets = environment_secrets()
        with self._first_use():  # MLflow opens (and creates, migrates) the store here
            self.client = MlflowClient(self.uri)
        self._experiment_id: str | None = None
        self._children: dict[tuple[str, str], str] = {}  # (parent, trial key) -> run id
        self._made: set[str] = set()  # trial runs with their params and dataset logged

    @property
    def is_local(self) -> bool:
        return self.uri.startswith(("sqlite:", "file:")) or "://" not in self.uri

    # -- set-up --------------------------------------------------------------------------------

    def check(self, in_ray_job: bool = False) -> None:
        """Fail now, with the store's address, if it cannot be written.

        One quick try: a server that does not answer now fails the stage before training. Later
        writes get MLflow's usual retries (MLFLOW_HTTP_REQUEST_MAX_RETRIES).
        """
        if in_ray_job and self.is_local:
            raise TrackingError(
                f"MLflow tracking store {redact(self.uri, self.secrets)} is a local file, but "
                "this sweep runs inside a Ray job, whose files are lost when it ends: start a "
                "tracking server (`mlflow server --backend-store-uri postgresql://... "
                "--artifacts-destination s3://...`, see docs/cluster.md) and submit with "
                "`--runtime-env-json '{\"env_vars\": {\"MLFLOW_TRACKING_URI\": "
                "\"http://<server>:5000\"}}'`")
        saved_retries = os.environ.get("MLFLOW_HTTP_REQUEST_MAX_RETRIES")
        if self.uri.startswith(("http://", "https://")):
            # MLflow reads whole seconds; every request of the sweep waits at most this long
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT",
                                  str(math.ceil(self.params.timeout_seconds)))
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        try:
            with self._first_use():
                self.experiment_id()
        except Exception as error:  # noqa: BLE001 - any failure: the store cannot be used
            hint = ("start it (e.g. `make ui`) or unset MLFLOW_TRACKING_URI to log to "
                    f"{self.params.uri}") if "MLFLOW_TRACKING_URI" in os.environ else \
                "check params.yaml tracking.uri"
            message = redact(f"{type(error).__name__}: {error}", self.secrets).splitlines()[0]
            raise TrackingError(f"MLflow tracking store {redact(self.uri, self.secrets)} is "
                                f"not usable: {message[:300]}; {hint}") from None
        finally:
            if saved_retries is None:
                os.environ.pop("MLFLOW_HTTP_REQUEST_MAX_RETRIES", None)

    def _first_use(self):
        """A file lock beside a sqlite store while it is opened and its experiment created: two
        drivers started at once (a double submit) would both migrate a new database."""
        import contextlib

        from filelock import FileLock

        if not self.uri.startswith("sqlite:///"):
            return contextlib.nullcontext()
        database = Path(self.uri.removeprefix("sqlite:///"))
        database.parent.mkdir(parents=True, exist_ok=True)
        return FileLock(str(database) + ".lock")

    def experiment_id(self) -> str:
        if self._experiment_id is None:
            experiment = self.client.get_experiment_by_name(self.params.experiment)
            if experiment is not None:
                self._experiment_id = experiment.experiment_id
            else:
                location = (in_project(self.params.artifacts).resolve().as_uri()
                            if self.is_local else None)
                self._experiment_id = self.client.create_experiment(
                    self.params.experiment, artifact_location=location)
        return self._experiment_id

    def _find(self, filters: str) -> str | None:
        run = one_run(self.client, self.experiment_id(), filters, newest=False)
        return run.info.run_id if run else None

    def _clean(self, values: dict) -> dict[str, str]:
        return {k: redact(str(v), self.secrets)[:5000] for k, v in values.items()
                if v is not None}

    def _log_params(self, run_id: str, params: dict) -> None:
        from mlflow.entities import Param

        logged = self.client.get_run(run_id).data.params
        new = [Param(k, v) for k, v in self._clean(params).items() if k not in logged]
        if new:
            self.client.log_batch(run_id, params=new)

    def set_tags(self, run_id: str, tags: dict) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(run_id, tags=[RunTag(k, v) for k, v in self._clean(tags).items()])

    # -- runs ----------------------------------------------------------------------------------

    def parent_run(self, sweep_key: str, name: str, params: dict, tags: dict) -> str:
        return self.keyed_run(SWEEP_KEY, sweep_key, name, params, tags)

    def keyed_run(self, tag: str, key: str, name: str, params: dict, tags: dict) -> str:
        """A top-level run, found again by its `tag` = `key` (made once, then reopened)."""
        run_id = self._find(f"tags.`{tag}` = '{key}'")
        if run_id is None:
            run = self.client.create_run(self.experiment_id(), run_name=name,
                                         tags=self._clean({tag: key}))
            run_id = run.info.run_id
        else:
            self.client.update_run(run_id, status="RUNNING")
        self._log_params(run_id, params)
        self.set_tags(run_id, {GIT_COMMIT: git_commit(), **package_versions(), **tags})
        return run_id

    def child_run_id(self, parent_id: str, trial_key: str) -> str | None:
        if (parent_id, trial_key) not in self._children:
            run_id = self._find(f"tags.`{TRIAL_KEY}` = '{trial_key}' and "
                                f"tags.`{PARENT}` = '{parent_id}'")
            if run_id is None:
                return None
            self._children[parent_id, trial_key] = run_id
        return self._children[parent_id, trial_key]

    def child_run(self, parent_id: str, trial_key: str, name: str, params: dict,
                  tags: dict, description: str | None = None,
                  dataset: DatasetRecord | None = None) -> str:
        """The trial's run, made once: its params, tags, a one-line description (the UI's
        Description) and the dataset it trained on (the UI's Datasets column).

        Its tags come with the call that makes it; a run a killed driver left without its
        params or dataset (no RUN_MADE tag) gets them from the next driver that finds it."""
        run_id = self.child_run_id(parent_id, trial_key)
        if run_id is None:
            run = self.client.create_run(
                self.experiment_id(), run_name=name,
                tags=self._clean({PARENT: parent_id, TRIAL_KEY: trial_key,
                                  GIT_COMMIT: git_commit(), NOTE: description, **tags}))
            run_id = self._children[parent_id, trial_key] = run.info.run_id
        elif run_id in self._made or \
                self.client.get_run(run_id).data.tags.get(RUN_MADE) == "1":
            self._made.add(run_id)
            return run_id
        self._log_params(run_id, params)  # (those already logged are left as they are)
        if dataset is not None:
            self.client.log_inputs(run_id, datasets=[dataset.input()])
        self.set_tags(run_id, {RUN_MADE: "1"})
        self._made.add(run_id)
        return run_id

    def log_evaluations(self, run_id: str, records: list[dict]) -> None:
        """The measures and the training loss at each record's iteration, each step once."""
        from mlflow.entities import Metric

        values = [(int(record["iteration"]), live_metrics(record)) for record in records]
        keys = {key for _, logged in values for key in logged}
        logged = {key: {m.step for m in self.client.get_metric_history(run_id, key)}
                  for key in keys}
        now = int(time.time() * 1000)
        metrics = [Metric(key, value, now, step) for step, logged_now in values
                   for key, value in logged_now.items() if step not in logged[key]]
        if metrics:
            self.client.log_batch(run_id, metrics=metrics)

    def final_logged(self, run_id: str) -> bool:
        """finish_trial has logged this run's final values and artifacts."""
        return self.client.get_run(run_id).data.tags.get(FINAL_LOGGED) == "1"

    def finish_trial(self, run_id: str, summary: RunSummary, work_dir: Path) -> None:
        """Final and per-class values, the history and the run's artifacts; once."""
        from mlflow.entities import Metric

        if self.final_logged(run_id):
            return
        self.log_evaluations(run_id, summary.history)
        now = int(time.time() * 1000)
        step = int(summary.iterations)
        finals = {**{f"final.{m}": v for m, v in summary.metrics.items()},
                  "wall_time_s": summary.wall_time_s, **summary.per_class}
        self.client.log_batch(run_id, metrics=[Metric(k, float(v), now, step)
                                               for k, v in finals.items()])
        for name in RESULT_FILES:
            path = work_dir / name
            if path.is_dir():
                self.client.log_artifacts(run_id, str(path), name)
            elif path.is_file():
                self.client.log_artifact(run_id, str(path))
        self.set_tags(run_id, {FINAL_LOGGED: "1", "world_size": summary.world_size})
        self.client.set_terminated(run_id, "FINISHED")

    def end_trial(self, run_id: str, status: str, note: str | None = None) -> None:
        """A trial that did not finish: FAILED (with its error) or KILLED (stopped early)."""
        if note:
            self.set_tags(run_id, {"pixiou.note": note[:2000]})
        self.client.set_terminated(run_id, status)

    def end_parent(self, run_id: str, counts: dict[str, int]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(run_id, metrics=[Metric(f"trials.{k}", float(v), now, 0)
                                               for k, v in counts.items()])
        self.client.set_terminated(run_id, "FINISHED" if counts.get("failed", 0) == 0
                                   else "FAILED")

    def attach_report(self, run_id: str, tables: Path, figures: Path) -> None:
        """The report's tables and figures as artifacts (`report/`) of a sweep's parent run."""
        self.client.get_run(run_id)  # a run the store does not have: an error, not a new run
        self.client.log_artifact(run_id, str(tables), "report")
        self.client.log_artifacts(run_id, str(figures), "report/figures")


class StudyRuns:
    """The read side of the study's MLflow runs (`make status`): it never creates a run, an
    experiment or a store (a sqlite file that is not there is not made)."""

    def __init__(self, params: TrackingParams):
        from mlflow.tracking import MlflowClient

        self.params = params
        self.uri = tracking_uri(params)
        local = self.uri.removeprefix("sqlite:///")
        self.exists = not self.uri.startswith("sqlite:///") or Path(local).is_file()
        self.client = MlflowClient(self.uri) if self.exists else None

    def latest(self, dataset: str, key_tag: str):
        """The dataset's latest run that carries `key_tag` (a stage's key), or None."""
        if self.client is None:
            return None
        experiment = self.client.get_experiment_by_name(self.params.experiment)
        return None if experiment is None else one_run(
            self.client, experiment.experiment_id,
            f"tags.dataset = '{dataset}' and tags.`{key_tag}` != ''", newest=True)

    def history(self, run_id: str, metric: str) -> list:
        return self.client.get_metric_history(run_id, metric)

    def children(self, parent) -> list:
        """The trials' runs of a sweep's parent run."""
        return self.client.search_runs(
            [parent.info.experiment_id], max_results=10000,
            filter_string=f"tags.`{PARENT}` = '{parent.info.run_id}'")
