"""The study's mmengine hook (registered once in mmengine's HOOKS): the validation history,
every evaluation reported, a checkpoint on a preemption notice. Imports mmengine: the run
imports this module when it starts, not before."""
from __future__ import annotations

import json
from pathlib import Path

from mmengine.dist import broadcast, get_world_size, is_distributed, is_main_process
from mmengine.hooks import Hook
from mmengine.registry import HOOKS

from ..files import write_atomic
from ..measures import METRICS, PER_CLASS
from ..watch import RunWatch, keep_log
from .reporter import Reporter, last_checkpoint
from .spec import HISTORY, LOGS, PREEMPTION_POLL


@HOOKS.register_module()
class StudyHook(Hook):
    """Keeps the validation history (resumable, in the work dir) and reports every
    evaluation before the last one (the run reports that one, with its files): iteration,
    the measures (pipeline.measures), the mean training loss since the last one and the world
    size the model trains in, with the checkpoint it evaluated. Its artifacts (confusion
    matrix, overlays) cover the whole validation set, whatever the number of ranks it is
    split over.

    `training=False` (an evaluation of a checkpoint) keeps artifacts and reports nothing.
    """

    # Before mmengine's NORMAL hooks: the buffers are rank 0's before anything reads them.
    priority = "ABOVE_NORMAL"

    def __init__(self, work_dir: str, reporter: Reporter | None, overlays: int,
                 training: bool = True, evaluate_start: bool = False):
        self.work_dir = Path(work_dir)
        self.evaluate_start = evaluate_start
        self.history_file = self.work_dir / HISTORY
        self.reporter = reporter
        self.overlays = overlays
        self.training = training
        self.artifacts = None  # of the latest validation (or test) pass
        self.test_record = None  # the test pass's, with a held-out validation split
        self.history: list[dict] = []
        self._loss_sum = 0.0
        self._loss_count = 0
        self._saved_for_preemption = False
        # lr, timings, memory and (rank 0) system metrics of each evaluation
        self.watch = RunWatch(sample_system=training and is_main_process())

    def before_train(self, runner) -> None:
        # After a resume, keep the evaluations up to the checkpoint the run resumed from.
        if self.history_file.is_file():
            lines = self.history_file.read_text().splitlines()
            self.history = [r for r in map(json.loads, lines) if r["iteration"] <= runner.iter]
        if is_main_process():
            self._write_history()
        self.watch.start(runner.iter)
        if self.evaluate_start and runner.iter == 0 and not self.history:
            # The weights it starts from, on the data it is evaluated on: iteration 0 of
            # a fine-tuning run (and of its curves) is where the pre-training ended.
            runner.val_loop.run()

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
        if outputs and "loss" in outputs:
            self._loss_sum += float(outputs["loss"])
            self._loss_count += 1
        if self.reporter is not None and not self._saved_for_preemption and \
                runner.iter % PREEMPTION_POLL == 0 and runner.iter < runner.max_iters and \
                self.reporter.preempted():
            # The node is being taken back: a checkpoint now, so the retry on another node
            # repeats none of the iterations since the last one
            self._saved_for_preemption = True
            name = f"iter_{runner.iter}.pth"
            saved = None
            if not (self.work_dir / name).is_file():
                runner.save_checkpoint(str(self.work_dir), name)  # rank 0 writes it
            if is_main_process():
                saved = self.work_dir / name
                (self.work_dir / "last_checkpoint").write_text(str(saved))
                self._write_history()
                keep_log(runner, self.work_dir, LOGS)
            self.reporter.checkpointed(runner.iter, saved)

    def before_val_epoch(self, runner) -> None:
        self._begin_pass(runner, runner.val_dataloader.dataset)

    def before_test_epoch(self, runner) -> None:
        self._begin_pass(runner, runner.test_dataloader.dataset)

    def _begin_pass(self, runner, dataset) -> None:
        from ..artifacts import EvaluationArtifacts

        if is_distributed():
            # Without SyncBN (CPU), each rank's BN statistics drift apart in training. Every
            # rank evaluates rank 0's model: the one its checkpoint holds.
            for buffer in runner.model.buffers():
                broadcast(buffer, src=0)
        meta = dataset.metainfo
        # The same images whatever the world size: the first ones of the validation set.
        fixed = [dataset.get_data_info(i)["img_path"]
                 for i in range(min(self.overlays, len(dataset)))]
        self.artifacts = EvaluationArtifacts(meta["classes"], meta["palette"], fixed)

    def after_val_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
        if outputs is not None:
            self.artifacts.add(outputs)

    after_test_iter = after_val_iter

    def after_test_epoch(self, runner, metrics=None) -> None:
        """The final score of a run that validated on a held-out split."""
        self.artifacts.gather()
        self.test_record = self._record(runner, metrics)

    def after_val_epoch(self, runner, metrics=None) -> None:
        self.artifacts.gather()  # every rank takes part; rank 0 holds the whole set
        if not metrics or not self.training:
            return
        record = self._record(runner, metrics)
        self._loss_sum, self._loss_count = 0.0, 0
        self.history = [r for r in self.history if r["iteration"] != record["iteration"]]
        self.history.append(record)
        if is_main_process():
            self._write_history()
        if self.reporter is not None and runner.iter < runner.max_iters:
            # mmengine saved a checkpoint just before validating when this iteration is a
            # checkpoint's (train.checkpoint_interval); the others report values only
            saved = last_checkpoint(self.work_dir) if is_main_process() else None
            if saved is not None and saved.stem != f"iter_{runner.iter}":
                saved = None
            elif saved is not None:
                keep_log(runner, self.work_dir, LOGS)  # travels with the checkpoint
            self.reporter.evaluation(self.record(), saved)

    def after_train(self, runner) -> None:
        self.watch.stop()

    def _record(self, runner, metrics: dict) -> dict:
        return {
            "iteration": runner.iter,
            **{m: float(metrics[m]) for m in METRICS},
            "loss": self._loss_sum / self._loss_count if self._loss_count else None,
            "world_size": get_world_size(),
            **(self.watch.run_metrics(runner) if runner.iter else {}),
            **self.watch.system(),
            "per_class": {k: float(v) for k, v in metrics.items()
                          if k.split(".", 1)[0] in PER_CLASS.values()},
        }

    def record(self) -> dict:
        """The latest evaluation, without its per-class values."""
        return {k: v for k, v in self.history[-1].items() if k != "per_class"}

    def _write_history(self) -> None:
        write_atomic(self.history_file, "".join(json.dumps(r) + "\n" for r in self.history))
