"""Reading `results/<dataset>.json` (written by the sweep stage) into what the report compares.

Every problem names the file and the place in it: a report built on a half-read file would show
numbers nobody ran.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..contracts import StartingPoint
from ..data.layouts import CITYSCAPES_CLASSES, VOC_CLASSES
from ..measures import METRICS, MIOU
from ..stats import mean_over_curve
from ..study_losses import StudyLoss

FINISHED, STOPPED, FAILED, MISSING = "finished", "stopped", "failed", "missing"
STATUSES = (FINISHED, STOPPED, FAILED)
#: The study's arms (pipeline.sweep.plan): the claims on final values, and how fast losses learn.
FINETUNE, CONVERGENCE = "finetune", "convergence"
#: The convergence arm's measure of speed: the mean mIoU over the curve (area under it / its
#: iterations), per seed; a claim may name it as its metric.
MIOU_AUC = "mIoU-AUC"
#: Per-class tables follow the dataset's own class order where it is a known one.
CLASS_ORDERS = (VOC_CLASSES, CITYSCAPES_CLASSES)


class ResultsError(ValueError):
    """A results file that is missing, empty or not what the sweep stage writes."""


@dataclass(frozen=True)
class TrialResult:
    loss: str
    seed: int
    status: str  # finished | stopped | failed | missing (planned, absent from the file)
    metrics: dict[str, float]  # pipeline.measures.METRICS (finished trials only)
    per_class: dict[str, float]  # "IoU.<class>", "image-IoU.<class>", ... (finished trials)
    history: list[dict]  # [{iteration, mIoU, image-mIoU, mPixIoU, ...}] validation history
    lr: float | None = None
    iterations: int | None = None
    error: str | None = None
    wall_time_s: float | None = None
    mlflow_run_id: str | None = None
    selection_mIoU: float | None = None  # on the lr search's held-out split, if there was one
    arm: str = FINETUNE

    def curve(self, metric: str = MIOU) -> list[tuple[int, float]]:
        """(iteration, value) of its validation history."""
        return [(p["iteration"], p[metric]) for p in self.history if p.get(metric) is not None]

    @property
    def error_line(self) -> str:
        """The error's last line (a traceback's says what failed), or ''."""
        lines = (self.error or "").strip().splitlines()
        return lines[-1] if lines else ""


@dataclass(frozen=True)
class LossResults:
    """The trials of one loss, one per planned seed (several per seed under an lr search)."""

    loss: str
    name: str  # its display name (train.losses.<loss>.name; the key for a loss params lacks)
    terms: list[dict]  # its mmseg loss configs
    trials: list[TrialResult]

    def by_status(self, status: str) -> list[TrialResult]:
        return [t for t in self.trials if t.status == status]

    def chosen(self) -> dict[int, TrialResult]:
        """seed -> its finished trial; under an lr search, the one with the best mIoU on the
        split held out of the training set (never the validation set the tables report)."""
        best: dict[int, TrialResult] = {}
        for trial in self.by_status(FINISHED):
            if trial.seed not in best or _selection(trial) > _selection(best[trial.seed]):
                best[trial.seed] = trial
        return dict(sorted(best.items()))

    def values(self, metric: str) -> dict[int, float]:
        """seed -> metric of the seed's chosen trial (mIoU-AUC: of its mIoU curve)."""
        if metric == MIOU_AUC:
            means = {seed: mean_over_curve(t.curve()) for seed, t in self.chosen().items()}
            return {seed: m for seed, m in means.items() if m is not None}
        return {seed: trial.metrics[metric] for seed, trial in self.chosen().items()}

    def finished_per_class(self) -> list[dict[str, float]]:
        """The per-class values of the chosen trials, as the main table's."""
        return [trial.per_class for trial in self.chosen().values()]


def _selection(trial: TrialResult) -> float:
    """What chooses among a seed's trials: held-out mIoU; a lone trial has nothing to choose."""
    return trial.selection_mIoU if trial.selection_mIoU is not None else trial.metrics["mIoU"]


@dataclass(frozen=True)
class DatasetResults:
    dataset: str
    config: str
    path: Path
    losses: list[LossResults]
    classes: list[str] = field(default_factory=list)
    start: dict | None = None  # the sweep's protocol and starting checkpoint (older files: None)
    data: dict | None = None  # the data stage's label statistics and target check, if recorded
    convergence: list[LossResults] = field(default_factory=list)  # the convergence arm's
    convergence_start: dict | None = None

    def describe_convergence_start(self) -> str:
        return StartingPoint(**self.convergence_start).describe() \
            if self.convergence_start else "start not recorded"

    def arm(self, name: str) -> list[LossResults]:
        return self.convergence if name == CONVERGENCE else self.losses

    def protocol(self) -> str:
        """How the trials were trained, for captions."""
        return StartingPoint(**self.start).describe() if self.start else \
            "protocol not recorded"

    def loss(self, key: str, arm: str = FINETUNE) -> LossResults | None:
        return next((lr for lr in self.arm(arm) if lr.loss == key), None)

    @property
    def trials(self) -> list[TrialResult]:
        return [t for lr in self.losses for t in lr.trials]

    def counts(self) -> dict[str, int]:
        return {status: sum(t.status == status for t in self.trials)
                for status in (*STATUSES, MISSING)}


def _require(record: dict, key: str, types: type | tuple, where: str, nullable=False):
    if key not in record:
        raise ResultsError(f"{where} has no '{key}'")
    value = record[key]
    if value is None and nullable:
        return None
    if isinstance(value, bool) or not isinstance(value, types):
        raise ResultsError(f"{where}.{key} is {value!r}, expected {_type_name(types)}")
    return value


def _type_name(types) -> str:
    names = [t.__name__ for t in (types if isinstance(types, tuple) else (types,))]
    return " or ".join(names)


def _read_trial(record, where: str) -> tuple[TrialResult, dict]:
    if not isinstance(record, dict):
        raise ResultsError(f"{where} is {type(record).__name__}, expected an object")
    status = _require(record, "status", str, where)
    if status not in STATUSES:
        raise ResultsError(f"{where}.status is {status!r}, expected one of {', '.join(STATUSES)}")
    finished = status == FINISHED
    metrics, per_class = {}, {}
    if finished:
        metrics = {m: float(_require(record, m, (int, float), where)) for m in METRICS}
        per_class = _require(record, "per_class", dict, where)
        for name in per_class:
            _require(per_class, name, (int, float), f"{where}.per_class")
    history = _require(record, "history", list, where, nullable=True) or []
    for i, point in enumerate(history):
        if not isinstance(point, dict) or "iteration" not in point or "mIoU" not in point:
            raise ResultsError(f"{where}.history[{i}] needs 'iteration' and 'mIoU'")
    trial = TrialResult(
        loss=_require(record, "loss", str, where),
        seed=_require(record, "seed", int, where),
        status=status, metrics=metrics, per_class=per_class, history=history,
        lr=_require(record, "lr", (int, float), where, nullable=True),
        iterations=_require(record, "iterations", int, where, nullable=True),
        error=_require(record, "error", str, where, nullable=True) if "error" in record else None,
        wall_time_s=record.get("wall_time_s"), mlflow_run_id=record.get("mlflow_run_id"),
        selection_mIoU=(record.get("selection") or {}).get("mIoU"),
        arm=_require(record, "arm", str, where) if "arm" in record else FINETUNE)
    if trial.arm not in (FINETUNE, CONVERGENCE):
        raise ResultsError(f"{where}.arm is {trial.arm!r}, expected {FINETUNE} or "
                           f"{CONVERGENCE}")
    terms = _require(record, "loss_terms", list, where)
    return trial, terms


def class_order(names: set[str]) -> list[str]:
    for order in CLASS_ORDERS:
        if names == set(order):
            return list(order)
    return sorted(names)


def load_results(path: Path, dataset: str, planned_losses: Sequence[str],
                 planned_seeds: Sequence[int],
                 known: dict[str, StudyLoss] | None = None,
                 planned_convergence: Sequence[str] = ()) -> DatasetResults:
    """Read one results file; planned (loss, seed) pairs absent from it become `missing` trials,
    in each arm (planned_losses: the fine-tuning arm's; planned_convergence: the convergence
    arm's).

    known: train.losses, which names every loss and gives the terms of a planned loss that has
    no trial in the file.

    Raises ResultsError naming the file for a missing, empty or malformed file.
    """
    path = Path(path)
    if not path.is_file():
        raise ResultsError(f"{path}: not found (run the sweep first: dvc repro sweep@{dataset})")
    text = path.read_text()
    if not text.strip():
        raise ResultsError(f"{path}: the file is empty (rerun: dvc repro --force sweep@{dataset})")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise ResultsError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(data, dict):
        raise ResultsError(f"{path}: the top level is {type(data).__name__}, expected an object")
    where = str(path)
    found = _require(data, "dataset", str, where)
    if found != dataset:
        raise ResultsError(f"{path}: holds the results of '{found}', expected '{dataset}'")
    records = _require(data, "trials", list, where)
    if not records:
        raise ResultsError(f"{path}: 'trials' is empty: the sweep planned no trial")

    arms: dict[str, dict[str, list[TrialResult]]] = {FINETUNE: {}, CONVERGENCE: {}}
    terms = {}
    for i, record in enumerate(records):
        trial, trial_terms = _read_trial(record, f"{path}: trials[{i}]")
        arms[trial.arm].setdefault(trial.loss, []).append(trial)
        terms.setdefault(trial.loss, trial_terms)
    names = {name.split(".", 1)[1] for arm in arms.values() for runs in arm.values()
             for t in runs for name in t.per_class if name.startswith("IoU.")}

    def optional(key: str) -> dict | None:
        return _require(data, key, dict, where, nullable=True) if key in data else None

    return DatasetResults(
        dataset, _require(data, "config", str, where), path,
        _by_loss(arms[FINETUNE], planned_losses, planned_seeds, terms, known, FINETUNE),
        class_order(names), optional("start"), optional("data"),
        _by_loss(arms[CONVERGENCE], planned_convergence, planned_seeds, terms, known,
                 CONVERGENCE), optional("convergence_start"))


def _by_loss(trials: dict[str, list[TrialResult]], planned: Sequence[str],
             planned_seeds: Sequence[int], terms: dict[str, list[dict]],
             known: dict[str, StudyLoss] | None, arm: str) -> list[LossResults]:
    """One arm's trials by loss: planned losses first, in params order, then losses only the
    file knows; planned seeds a loss lacks become `missing` trials."""
    losses = []
    for loss in dict.fromkeys([*planned, *trials]):
        present = trials.get(loss, [])
        seeds = {t.seed for t in present}
        absent = [TrialResult(loss, seed, MISSING, {}, {}, [], arm=arm) for seed in planned_seeds
                  if seed not in seeds]
        runs = sorted(present + absent, key=lambda t: (t.seed, t.lr or 0.0))
        study_loss = (known or {}).get(loss)
        losses.append(LossResults(loss, study_loss.name if study_loss else loss,
                                  terms.get(loss, study_loss.terms if study_loss else []), runs))
    return losses
