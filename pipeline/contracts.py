"""What the stages hand each other, in a layer under all of them: a stage imports these
instead of another stage's module (the report and the sweep do not import `pretrain` to learn
what a starting point is, or where the model lies; the pretrain stage reads the data section
through its schema here).

    models/pretrain/<dataset>/model.pth      MODEL: the weights the trials fine-tune
    models/pretrain/<dataset>/early.pth      EARLY: the convergence arm's start
    models/pretrain/<dataset>/summary.json   PRETRAIN_SUMMARY: their sha256, mIoU, source
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path


@dataclass
class DataParams:
    """params.yaml: data. Where the data stage builds the datasets (and the pretrain stage
    finds them, and its downloads)."""

    root: str = "data"
    downloads: str = "data/downloads"
    retries: int = 5
    backoff_seconds: float = 2.0


MODEL = "model.pth"
EARLY = "early.pth"
PRETRAIN_SUMMARY = "summary.json"
#: The MLflow tag that finds the pretrain stage's run again.
PRETRAIN_KEY = "pixiou.pretrain_key"


def sha256_of(path: Path) -> str:
    """The file's sha256 (hex), read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while block := stream.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class StartingPoint:
    """Where a sweep's trials start: their protocol and, fine-tuning, the checkpoint."""

    protocol: str  # finetune, scratch, or early (the pre-training's early weights)
    sha256: str | None = None
    mIoU: float | None = None
    source: str | None = None  # 'trained' (this stage) or 'published' (a model zoo)
    path: str | None = None  # model.pth (early.pth) on this machine
    iteration: int | None = None  # early: the pre-training's iteration

    def identity(self) -> dict:
        """What a trial's key depends on (not where the file lies)."""
        identity = {"protocol": self.protocol, "sha256": self.sha256, "mIoU": self.mIoU}
        return identity | ({"iteration": self.iteration} if self.iteration else {})

    def describe(self) -> str:
        """For captions and run descriptions."""
        if self.protocol == "scratch":
            return "trained from scratch"
        if self.protocol == "early":
            return (f"trained from the CE pre-training's weights at iteration {self.iteration} "
                    f"({self.sha256[:12]}, mIoU {self.mIoU:.2f})")
        return (f"fine-tuned from the CE checkpoint {self.sha256[:12]} ({self.source}, "
                f"mIoU {self.mIoU:.2f})")
