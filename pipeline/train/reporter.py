"""Where a run reports: the default keeps everything in the work dir; the sweep's trials send
it to the storage (pipeline/sweep/trial.py)."""
from __future__ import annotations

import json
from pathlib import Path

from .spec import SUMMARY, RunSummary


class Reporter:
    """Where a run's evaluations, checkpoints and final files go beyond its work dir.

    This one keeps them in the work dir (a run from the command line). Every rank calls every
    method, in the same order; only rank 0 is given files.
    """

    def restore(self, work_dir: Path) -> RunSummary | None:
        """Put the run's last checkpoint into `work_dir` (mmengine resumes from it); return the
        summary instead if the run had already finished. Here the work dir holds both."""
        return None

    def evaluation(self, record: dict, checkpoint: Path | None) -> None:
        """An evaluation before the last; `checkpoint`: the weights it evaluated (rank 0)."""

    def finished(self, summary: RunSummary, work_dir: Path | None) -> None:
        """The final evaluation and the run's files (`RESULT_FILES` and `last_checkpoint`
        under `work_dir`, rank 0); None when the run had finished before (restored)."""

    def preempted(self) -> bool:
        """Is the machine about to be taken back (a spot node drained)? Asked of every rank at
        the same iterations (every PREEMPTION_POLL); True once is enough."""
        return False

    def checkpointed(self, iteration: int, checkpoint: Path | None) -> None:
        """A checkpoint saved between evaluations (before a preemption); rank 0 has it."""


def last_checkpoint(work_dir: Path) -> Path | None:
    """The checkpoint mmengine saved last in `work_dir` (its `last_checkpoint` pointer)."""
    pointer = work_dir / "last_checkpoint"
    return Path(pointer.read_text().strip()) if pointer.is_file() else None


def read_summary(work_dir: Path | str) -> RunSummary | None:
    """The summary of the run in `work_dir`, if it finished."""
    path = Path(work_dir) / SUMMARY
    return RunSummary.from_dict(json.loads(path.read_text())) if path.is_file() else None
