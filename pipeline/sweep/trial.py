"""What runs inside Ray: one Tune trial launches one Ray Train `TorchTrainer` whose workers are
the DDP ranks of `pipeline.train.run`.

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

from ..train import HISTORY, RESULT_FILES, Reporter, RunSpec, last_checkpoint, read_summary
from .datasets import DatasetVersion, dataset_folder
from .storage import FINAL, Storage

#: Written by the driver into `<storage>/<dataset>/` before any trial starts: a rank that does
#: not find it does not share the driver's storage (a local path on a cluster).
STORAGE_MARKER = "sweep.json"
#: Fault injection for the reliability tests: a folder; the first attempt of every trial fails
#: (leaving a marker there), so the retry path runs for real. Unset in normal use.
FAULT_ENV = "PIXIOU_FAIL_FIRST_ATTEMPT"


class RayTrainReporter(Reporter):
    """A run's reports, through Ray Train to the trial's folder in the sweep's storage."""

    def __init__(self, work_dir: Path, nodes: list[str]):
        self.work_dir = work_dir
        self.nodes = ",".join(nodes)  # a string: Tune's loggers skip it, where lists warn

    def restore(self, work_dir: Path) -> dict | None:
        import ray.train

        checkpoint = ray.train.get_checkpoint()
        if checkpoint is None:
            return None
        checkpoint.to_directory(str(work_dir))
        summary = read_summary(work_dir)
        if summary is None:  # mmengine resumes from the pointer it left beside the weights
            (weights,) = work_dir.glob("iter_*.pth")
            (work_dir / "last_checkpoint").write_text(str(weights))
        return summary

    def evaluation(self, record: dict, checkpoint: Path | None) -> None:
        files = [checkpoint, self.work_dir / HISTORY] if checkpoint else []
        self._report(record, files, checkpoint.stem if checkpoint else None)

    def finished(self, summary: dict, work_dir: Path | None) -> None:
        record = {"iteration": summary["iterations"], "mIoU": summary["mIoU"],
                  "mPixIoU": summary["mPixIoU"], "world_size": summary["world_size"],
                  "final": True}
        files = []
        if work_dir is not None:
            files = [work_dir / name for name in RESULT_FILES if (work_dir / name).exists()]
            files.append(last_checkpoint(work_dir))
        self._report(record, files, FINAL if files else None)

    def _report(self, metrics: dict, files: list[Path], name: str | None) -> None:
        """Every rank reports; rank 0 with `files` as the checkpoint `name` (uploaded now)."""
        import ray.train

        metrics = {**metrics, "nodes": self.nodes}
        if not files:
            ray.train.report(metrics)
            return
        with tempfile.TemporaryDirectory(dir=self.work_dir.parent) as staging:
            for path in files:  # hard links: no copy of the weights on the node's disk
                target = Path(staging) / path.name
                if path.is_dir():
                    shutil.copytree(path, target, copy_function=os.link)
                else:
                    os.link(path, target)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(staging),
                             checkpoint_dir_name=name)


def train_worker(config: dict) -> None:
    """Ray Train worker: one DDP rank of one trial."""
    import ray.train

    from ..train import run

    _injected_fault(config["key"])
    storage = Storage.parse(config["storage"], on_cluster=True)
    if not storage.exists(config["dataset"], STORAGE_MARKER):
        raise RuntimeError(f"sweep.storage {storage.uri} is not the driver's: this node does "
                           f"not see its {config['dataset']}/{STORAGE_MARKER}. On a cluster use "
                           "an object store (s3://...) or a folder every node mounts")
    data = dataset_folder(DatasetVersion(**config["data"]))
    rank = ray.train.get_context().get_world_rank()
    # Configs are relative to this checkout (the one Ray shipped as working_dir).
    checkout = Path(__file__).resolve().parents[2]
    local = Path(tempfile.gettempdir()) / "pixiou-trials"
    local.mkdir(parents=True, exist_ok=True)
    work_dir = Path(tempfile.mkdtemp(prefix=f"{config['name']}-rank{rank}-", dir=local))
    try:
        spec = RunSpec(**{**config["spec"], "config": str(checkout / config["spec"]["config"]),
                          "work_dir": str(work_dir), "data_root": str(data.parent)})
        run(spec, RayTrainReporter(work_dir, _worker_nodes()))
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)  # the trial lives on in the storage


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


def scaling_config(workers: int, use_gpu: bool, cpus_per_worker: int):
    """A trial's workers, all on one node: DDP across nodes would run at network speed."""
    import ray.train

    return ray.train.ScalingConfig(
        num_workers=workers, use_gpu=use_gpu, placement_strategy="STRICT_PACK",
        resources_per_worker={"CPU": cpus_per_worker, **({"GPU": 1} if use_gpu else {})})


def trial_driver(config: dict) -> None:
    """Ray Tune trial: a TorchTrainer with the sweep's workers around `train_worker`.

    Its Ray Train run is named after the trial and lives in the trial's storage folder, so a
    second start of the trial finds its checkpoints there. Only the last and the best (by mIoU)
    checkpoints are kept; the last is `final` once the trial has finished.
    """
    import ray.train
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    trial = config["trial"]
    storage = Storage.parse(trial["storage"], on_cluster=True)
    trainer = TorchTrainer(
        train_worker,
        train_loop_config={k: trial[k] for k in ("key", "name", "spec", "storage", "dataset",
                                                 "data")},
        scaling_config=scaling_config(trial["workers"], trial["use_gpu"],
                                      trial["cpus_per_worker"]),
        run_config=ray.train.RunConfig(
            name=trial["name"], storage_path=storage.path(trial["dataset"]),
            storage_filesystem=storage.fs, callbacks=[TuneReportCallback()],
            checkpoint_config=ray.train.CheckpointConfig(
                num_to_keep=1, checkpoint_score_attribute="mIoU", checkpoint_score_order="max"),
            failure_config=ray.train.FailureConfig(max_failures=0)))  # Tune retries trials
    trainer.fit()
