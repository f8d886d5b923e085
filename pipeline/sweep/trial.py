"""What runs inside Ray: one Tune trial launches one Ray Train `TorchTrainer` whose workers are
the DDP ranks of `pipeline.train.run`; a single-worker CPU trial is that rank itself.

Nothing here reads or writes a path that only the driver sees. Each rank trains in a node-local
work dir; the trial's state travels through Ray Train: every evaluation is a `ray.train.report`,
rank 0 attaching the checkpoint it evaluated, and the last report carries the run's summary,
artifacts and weights as the checkpoint `final`. Ray Train persists them in the sweep's storage
(`<storage>/<dataset>/<trial>/`) and hands the latest back through `ray.train.get_checkpoint()`
when a trial starts again: after a crash, a retry, or a new sweep over the same storage.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from ..retry import with_backoff
from ..train import (
    HISTORY,
    LOGS,
    RESULT_FILES,
    Placement,
    Reporter,
    RunSpec,
    RunSummary,
    last_checkpoint,
    read_summary,
)
from .checkpoints import check_ray_snapshot, iteration_of, latest_whole, marker
from .datasets import DatasetVersion, dataset_folder, node_use
from .failures import ATTEMPTS_FILE, record_failure
from .lock import process_alive
from .storage import FINAL, Storage, retrying

#: Written by the driver into `<storage>/<dataset>/` before any trial starts: a rank that does
#: not find it does not share the driver's storage (a local path on a cluster).
STORAGE_MARKER = "sweep.json"
#: The file in a trial's node-local work dir that names the process using it.
OWNER = "owner.pid"
#: Each node's copy of the checkpoints that fine-tuning trials start from, by sha256.
WEIGHTS_CACHE = Path(tempfile.gettempdir()) / "pixiou-pretrain"
#: Fault injection for the reliability tests: a folder; the first attempt of every trial fails
#: (leaving a marker there), so the retry path runs for real. Unset in normal use.
FAULT_ENV = "PIXIOU_FAIL_FIRST_ATTEMPT"
#: "<trial name or its prefix>@<iteration>" (ce_seed0@4): every attempt of that trial fails at
#: that evaluation, before its checkpoint is saved; the other trials train.
FAIL_AT_ENV = "PIXIOU_FAIL_AT"


class TrialReporter(Reporter):
    """A run's reports, to the trial's folder in the sweep's storage: every evaluation with the
    checkpoint it evaluated (named iter_<n>), and at the end the checkpoint `final` holding the
    summary, the artifacts and the weights. Subclasses say how a checkpoint gets there and back.
    """

    def __init__(self, work_dir: Path, nodes: list[str], storage: Storage,
                 folder: tuple[str, str]):
        self.work_dir = work_dir
        self.nodes = ",".join(nodes)  # a string: Tune's loggers skip it, where lists warn
        self.storage = storage
        self.folder = folder  # the trial's, in the storage

    def evaluation(self, record: dict, checkpoint: Path | None) -> None:
        trial, _, at = os.environ.get(FAIL_AT_ENV, "").partition("@")
        if trial and self.folder[1].startswith(trial) and at == str(record["iteration"]):
            raise RuntimeError(f"injected fault ({FAIL_AT_ENV}) at iteration "
                               f"{record['iteration']}")
        logs = self.work_dir / LOGS  # the attempts' mmengine logs travel with the checkpoint
        files = [checkpoint, *([logs] if logs.is_dir() else []), self.work_dir / HISTORY] \
            if checkpoint else []
        self._report(record, files, checkpoint.stem if checkpoint else None)

    def checkpointed(self, iteration: int, checkpoint: Path | None) -> None:
        self.evaluation({"iteration": iteration, "preempted": True}, checkpoint)

    def finished(self, summary: RunSummary, work_dir: Path | None) -> None:
        record = {"iteration": summary.iterations, **summary.metrics,
                  "world_size": summary.world_size, "final": True}
        files = []
        if work_dir is not None:
            files = [work_dir / name for name in RESULT_FILES if (work_dir / name).exists()]
            files.append(last_checkpoint(work_dir))
        self._report(record, files, FINAL if files else None)

    def _report(self, metrics: dict, files: list[Path], name: str | None) -> None:
        """Every rank reports; rank 0 with `files` as the checkpoint `name` (uploaded now).
        `checkpoint_name` names it in the metrics: what the driver logs to MLflow is what no retry
        will do again."""
        metrics = {**metrics, "nodes": self.nodes, "checkpoint_name": name or ""}
        if not files:
            self._persist(metrics, None, None)
            return
        with tempfile.TemporaryDirectory(dir=self.work_dir.parent) as staging:
            for path in files:  # hard links: no copy of the weights on the node's disk
                target = Path(staging) / path.name
                if path.is_dir():
                    shutil.copytree(path, target, copy_function=os.link)
                else:
                    os.link(path, target)
            self._persist(metrics, Path(staging), name)

    def _persist(self, metrics: dict, folder: Path | None, name: str | None) -> None:
        raise NotImplementedError

    @staticmethod
    def _resume_from(work_dir: Path) -> dict | None:
        """The restored checkpoint's summary if the run had finished; else point mmengine at
        its weights (it resumes from the pointer it leaves beside them)."""
        summary = read_summary(work_dir)
        if summary is None:
            (weights,) = work_dir.glob("iter_*.pth")
            (work_dir / "last_checkpoint").write_text(str(weights))
        return summary


class RayTrainReporter(TrialReporter):
    """Through Ray Train (the ranks of a TorchTrainer): `ray.train.report` persists each
    checkpoint in the trial's Ray Train run folder and keeps the last and the best;
    `ray.train.get_checkpoint` hands the latest back to a restarted trial."""

    def restore(self, work_dir: Path) -> dict | None:
        """The newest whole checkpoint in the storage, or Ray Train's. Ray Train's snapshot of
        the run can lag the uploads (its controller died with a node between the two): the
        storage's newer checkpoint saves an interval of training twice."""
        import ray.train

        latest = latest_whole(self.storage, self.folder)
        if latest is not None:
            self.storage.download(work_dir, *self.folder, latest)
            return self._resume_from(work_dir)
        checkpoint = ray.train.get_checkpoint()
        if checkpoint is None:
            return None
        checkpoint.to_directory(str(work_dir))
        return self._resume_from(work_dir)

    def preempted(self) -> bool:
        """Ray Train's notice of a drained node under one of the ranks (every rank asks)."""
        import ray.train

        return ray.train.get_preemption_info() is not None

    def _persist(self, metrics: dict, folder: Path | None, name: str | None) -> None:
        import ray.train

        checkpoint = ray.train.Checkpoint.from_directory(str(folder)) if folder else None
        ray.train.report(metrics, checkpoint=checkpoint, checkpoint_dir_name=name,
                         checkpoint_upload_fn=upload_with_backoff if checkpoint else None)


def upload_with_backoff(checkpoint, name: str):
    """Ray Train's upload of a checkpoint (to the run's folder, on its filesystem), retried
    with back-off like every other call to the storage: an object store's 503 costs a wait,
    not an attempt of the trial (Ray Train's own upload is one pyarrow copy)."""
    import pyarrow.fs as pafs
    import ray.train

    storage = ray.train.get_context().get_storage()
    target = storage.build_checkpoint_path_from_name(name)

    def copy() -> None:
        storage.storage_filesystem.create_dir(target)
        pafs.copy_files(checkpoint.path, target, source_filesystem=checkpoint.filesystem,
                        destination_filesystem=storage.storage_filesystem)

    with_backoff(copy, f"checkpoint upload {name}")
    return ray.train.Checkpoint(target, filesystem=storage.storage_filesystem)


class TuneTrialReporter(TrialReporter):
    """The one rank of a single-worker CPU trial, which trains inside its Tune trial (no Ray
    Train controller and worker to start): the checkpoint goes to the same folder a Ray Train
    run would use, the last one replacing the one before, and `ray.tune.report` carries the
    metrics. A restarted trial (retry, new driver) finds its latest checkpoint there."""

    def restore(self, work_dir: Path) -> dict | None:
        latest = latest_whole(self.storage, self.folder)
        if latest is None:
            return None
        self.storage.download(work_dir, *self.folder, latest)
        return self._resume_from(work_dir)

    def preempted(self) -> bool:
        """This node is being drained (Ray Core's drain, which an autoscaler sends before a
        spot node goes): the single-worker trial has no Ray Train to tell it."""
        import ray

        return _draining(ray.get_runtime_context().get_node_id())

    def _persist(self, metrics: dict, folder: Path | None, name: str | None) -> None:
        from ray import tune

        if folder is not None:
            # Its marker last: a checkpoint cut short by a kill has none, and is never restored
            last = marker(name)
            for entry in sorted(folder.iterdir(), key=lambda path: path.name == last):
                self.storage.put(entry, *self.folder, name, entry.name)
            for old in self.storage.list(*self.folder):  # only once the new one is whole
                if old.startswith("iter_") and old != name:
                    self.storage.delete(*self.folder, old)
        tune.report(metrics)



def starting_weights(storage: Storage, dataset: str, sha256: str) -> Path:
    """The pretrain checkpoint `sha256` on this node: copied from the sweep's storage (where the
    driver put it) once per node, and checked against its hash before any rank loads it."""
    from filelock import FileLock

    from ..contracts import MODEL, sha256_of

    target = WEIGHTS_CACHE / sha256 / MODEL
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target.parent) + ".lock"):
        if not target.is_file():
            staging = Path(tempfile.mkdtemp(dir=target.parent))
            storage.download(staging, *pretrain_folder(dataset, sha256), names=[MODEL])
            found = sha256_of(staging / MODEL) if (staging / MODEL).is_file() else "nothing"
            if found != sha256:
                shutil.rmtree(staging, ignore_errors=True)
                raise RuntimeError(f"{storage.uri_of(*pretrain_folder(dataset, sha256))}: "
                                   f"expected the checkpoint {sha256[:12]}, found {found[:12]}")
            (staging / MODEL).rename(target)
            shutil.rmtree(staging, ignore_errors=True)
    return target


def pretrain_folder(dataset: str, sha256: str) -> tuple[str, str, str]:
    """Where a sweep's storage holds the checkpoint its trials fine-tune."""
    return (dataset, "pretrain", sha256[:16])


def train_worker(config: dict) -> None:
    """Ray Train worker: one DDP rank of one trial."""
    import ray.train

    _train_rank(config, ray.train.get_context().get_world_rank(), RayTrainReporter)


def _train_rank(config: dict, rank: int, reporter_class) -> None:
    """One rank of a trial, in a node-local work dir, reporting through `reporter_class`."""
    from ..train import run

    _injected_fault(config["key"])
    storage = Storage.parse(config["storage"], on_cluster=True)
    if not storage.exists(config["dataset"], STORAGE_MARKER):
        raise RuntimeError(f"sweep.storage {storage.uri} is not the driver's: this node does "
                           f"not see its {config['dataset']}/{STORAGE_MARKER}. On a cluster use "
                           "an object store (s3://...) or a folder every node mounts")
    # hashed again on this node's first use, and after any failed attempt of this trial
    failed = len((storage.read_json(config["dataset"], config["name"], ATTEMPTS_FILE)
                  or {}).get("errors", []))
    use = node_use() + (f"/{config['name']}/{failed}" if failed else "")
    data = dataset_folder(DatasetVersion(**config["data"]), check=use)
    # Configs are relative to this checkout (the one Ray shipped as working_dir).
    checkout = Path(__file__).resolve().parents[2]
    local = Path(tempfile.gettempdir()) / "pixiou-trials"
    local.mkdir(parents=True, exist_ok=True)
    clear_dead_attempts(local)
    work_dir = Path(tempfile.mkdtemp(prefix=f"{config['name']}-rank{rank}-", dir=local))
    (work_dir / OWNER).write_text(str(os.getpid()))
    try:
        start = config["start"]
        init = None if start["sha256"] is None else \
            str(starting_weights(storage, config["dataset"], start["sha256"]))
        spec = RunSpec(**{**config["spec"], "config": str(checkout / config["spec"]["config"])})
        reporter = reporter_class(work_dir, _worker_nodes(), storage,
                                  (config["dataset"], config["name"]))
        run(spec, Placement(str(work_dir), str(data.parent), init), reporter)
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)  # the trial lives on in the storage


def _draining(node_id: str) -> bool:
    """Ray Core's draining nodes (what Ray Train's own preemption watcher polls)."""
    import ray._private.state

    try:
        return node_id in ray._private.state.state.get_draining_nodes()
    except Exception:  # noqa: BLE001 - no answer from the GCS: no notice
        return False


def clear_dead_attempts(local: Path) -> list[Path]:
    """Remove the node-local work dirs of attempts whose process is gone (a worker killed with
    its node's raylet, a crashed rank): a retried trial lives on in the storage, and their
    checkpoints would fill the node's disk over a long sweep. Returns what it removed."""
    removed = []
    for folder in local.iterdir():
        owner = folder / OWNER
        try:
            pid = int(owner.read_text())
        except (OSError, ValueError):
            continue  # being created, or not a trial's
        if not process_alive(pid):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


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


def _injected_fault(key: str) -> None:
    folder = os.environ.get(FAULT_ENV)
    if folder:
        marker = Path(folder) / key
        if not marker.exists():
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.touch()
            raise RuntimeError(f"injected fault ({FAULT_ENV}): first attempt of trial {key[:8]}")


def scaling_config(workers: int, use_gpu: bool, cpus_per_worker: int,
                   gpus_per_worker: float = 1):
    """A trial's workers, all on one node: DDP across nodes would run at network speed. A
    worker holds a whole GPU, or a share of one (`sweep.gpus_per_trial: 0.5`: two trials on a
    GPU)."""
    import ray.train

    return ray.train.ScalingConfig(
        num_workers=workers, use_gpu=use_gpu, placement_strategy="STRICT_PACK",
        resources_per_worker={"CPU": cpus_per_worker,
                              **({"GPU": gpus_per_worker} if use_gpu else {})})


def torch_config(collective_timeout_s: int):
    """The trial's process group: a collective that hangs longer than this fails the trial."""
    from ray.train.torch import TorchConfig

    return TorchConfig(timeout_s=collective_timeout_s)


def trains_in_trial(workers: int, use_gpu: bool) -> bool:
    """A single-worker CPU trial needs no process group: it trains in its Tune trial's own
    process, without the Ray Train controller and worker that a TorchTrainer starts (seconds
    per trial on a small machine). Multi-worker and GPU trials keep the TorchTrainer."""
    return workers == 1 and not use_gpu


def trial_driver(config: dict) -> None:
    """Ray Tune trial: the one rank of a single-worker CPU trial, or a TorchTrainer with the
    sweep's workers around `train_worker`. A failure that retrying cannot mend ends the trial
    for good (pipeline/sweep/failures.py): it returns, its verdict in the storage.

    The TorchTrainer's Ray Train run is named after the trial and lives in the trial's storage
    folder, so a second start of the trial finds its checkpoints there. Only the last and the
    best (by mIoU) checkpoints are kept; the last is `final` once the trial has finished.
    """
    trial = config["trial"]
    try:
        _drive(trial)
    except Exception as error:
        storage = Storage.parse(trial["storage"], on_cluster=True)
        folder = (trial["dataset"], trial["name"])
        reached = iteration_of(latest_whole(storage, folder))
        if record_failure(storage, folder, error, reached,
                          trial.get("max_repeated_failures", 3)) is None:
            raise  # Tune retries it (sweep.max_failures)


def _drive(trial: dict) -> None:
    loop_config = {k: trial[k] for k in ("key", "name", "spec", "storage", "dataset", "data",
                                         "start")}
    if trains_in_trial(trial["workers"], trial["use_gpu"]):
        _train_rank(loop_config, 0, TuneTrialReporter)
        return
    import ray.train
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    storage = Storage.parse(trial["storage"], on_cluster=True)
    check_ray_snapshot(storage, (trial["dataset"], trial["name"]))
    trainer = TorchTrainer(
        train_worker,
        train_loop_config=loop_config,
        torch_config=torch_config(trial.get("collective_timeout_s", 1800)),
        scaling_config=scaling_config(trial["workers"], trial["use_gpu"],
                                      trial["cpus_per_worker"],
                                      trial.get("gpus_per_worker", 1)),
        run_config=ray.train.RunConfig(
            name=trial["name"], storage_path=storage.path(trial["dataset"]),
            storage_filesystem=retrying(storage.fs), callbacks=[TuneReportCallback()],
            checkpoint_config=ray.train.CheckpointConfig(
                num_to_keep=1, checkpoint_score_attribute="mIoU", checkpoint_score_order="max"),
            failure_config=ray.train.FailureConfig(max_failures=0)))  # Tune retries trials
    trainer.fit()
