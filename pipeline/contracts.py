"""What the stages hand each other, in a layer under all of them: a stage imports these
instead of another stage's module (the report and the sweep do not import `pretrain` to learn
what a starting point is, or where the model lies; the pretrain stage reads the data section
through its schema here). The `pretrain` section's schema is here too: the sweep finds the
stage's output where it says.

    models/pretrain/<dataset>/model.pth      MODEL: the weights the trials fine-tune
    models/pretrain/<dataset>/early.pth      EARLY: the convergence arm's start
    models/pretrain/<dataset>/summary.json   PRETRAIN_SUMMARY: their sha256, mIoU, source
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from .params import ParamsError, check_schedule, lookup, parse_section


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


def identity_key(identity: dict) -> str:
    """The key of a run (a sweep trial, the pre-training): sha256 of its identity as JSON with
    sorted keys. Equal identities, equal keys, on any machine."""
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


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


# --- the pretrain stage's output, as the sweep reads it ------------------------------------------

PROTOCOLS = ("finetune", "scratch")


class MissingPretrain(ParamsError):
    """study.protocol is finetune, and the pretrain stage's model is not here."""


@dataclass
class PublishedCheckpoint:
    """params.yaml: pretrain.published.<dataset>. A CE checkpoint and the mIoU its authors
    published for it; `sha256` may be the prefix that the model zoo's file names carry."""

    url: str
    sha256: str
    mIoU: float

    def validate(self, where: str) -> None:
        if len(self.sha256) < 8 or any(c not in "0123456789abcdef" for c in self.sha256):
            raise ParamsError(f"params.yaml: {where}.sha256 must be the file's sha256 or its "
                              f"first 8 or more hex digits (lower case), got '{self.sha256}'")
        if urlparse(self.url).scheme not in ("http", "https"):
            raise ParamsError(f"params.yaml: {where}.url must be an http(s) URL, got "
                              f"'{self.url}'")


@dataclass
class PretrainParams:
    """params.yaml: pretrain."""

    iterations: int = 3000
    val_interval: int = 500
    seed: int = 0
    lr: float | None = None  # null: the config's
    # the weights at this iteration (a multiple of val_interval) are kept as early.pth, where
    # the convergence arm (sweep.convergence) starts; null keeps none
    early_iteration: int | None = 500
    output: str = "models/pretrain"
    work_dir: str = "work_dirs/pretrain"
    published: dict[str, PublishedCheckpoint] = field(default_factory=dict)

    def validate(self, where: str) -> None:
        check_schedule(self, where)
        if self.seed < 0:
            raise ParamsError(f"params.yaml: {where}.seed must be >= 0, got {self.seed}")
        early = self.early_iteration
        if early is not None and not (0 < early < self.iterations
                                      and early % self.val_interval == 0):
            raise ParamsError(f"params.yaml: {where}.early_iteration must be a multiple of "
                              f"{where}.val_interval ({self.val_interval}) below "
                              f"{where}.iterations ({self.iterations}), or null; got {early}")


def study_protocol(params: dict) -> str:
    protocol = lookup(params, "study.protocol")
    if protocol not in PROTOCOLS:
        raise ParamsError(f"params.yaml: study.protocol must be one of {PROTOCOLS}, got "
                          f"'{protocol}'")
    return protocol


def pretrain_output(dataset: str, params: dict) -> Path:
    """Where the pretrain stage writes `dataset`'s model (models/pretrain/<dataset>)."""
    pretrain = parse_section(PretrainParams, lookup(params, "pretrain"), "pretrain")
    return Path(pretrain.output) / dataset


def _pretrain_summary(folder: Path) -> dict | None:
    path = folder / PRETRAIN_SUMMARY
    return json.loads(path.read_text()) if path.is_file() else None


def starting_point(dataset: str, params: dict, folder: Path | None = None) -> StartingPoint:
    """The sweep's start for `dataset`: from the pretrain stage's output in `folder` (by
    default where the stage writes it on this machine)."""
    protocol = study_protocol(params)
    if protocol == "scratch":
        return StartingPoint("scratch")
    folder = folder or pretrain_output(dataset, params)
    summary = _pretrain_summary(folder)
    if summary is None or summary.get("protocol") != "finetune" or \
            not (folder / MODEL).is_file():
        raise MissingPretrain(f"{folder / MODEL} is missing: study.protocol is finetune, so the "
                              f"trials start from the pretrain stage's model (dvc repro "
                              f"pretrain@{dataset}; in a Ray job, sweep.data.source: dvc and "
                              f"`dvc push` bring it from the DVC remote)")
    return StartingPoint("finetune", summary["sha256"], summary["mIoU"], summary["source"],
                         str((folder / MODEL).resolve()))


def early_point(dataset: str, folder: Path) -> StartingPoint:
    """The pre-training's early weights in the pretrain stage's output `folder`."""
    summary = _pretrain_summary(folder) or {}
    early = summary.get("early")
    if not early or not (folder / EARLY).is_file():
        why = ("its checkpoint is a published one" if summary.get("source") == "published"
               else "pretrain.early_iteration was null, or the stage has not run")
        raise ParamsError(f"sweep.convergence.start is early, but {folder} has no early "
                          f"checkpoint ({why}). Run `dvc repro pretrain@{dataset}` with "
                          f"pretrain.early_iteration set, or set sweep.convergence.start: "
                          f"scratch, or sweep.convergence.losses: [] to leave the arm out")
    return StartingPoint("early", early["sha256"], early["mIoU"], "trained",
                         str((folder / EARLY).resolve()), early["iteration"])
