"""What the papers compare: each loss's mean ± std over seeds, its paired differences to the
baselines, and the verdict on each claim (statistics in `pipeline.stats`)."""
from __future__ import annotations

from dataclasses import dataclass, field, replace

from ..measures import METRICS, MIOU
from ..params import ParamsError
from ..stats import (
    Difference,
    Plateau,
    Summary,
    detectable_effect,
    holm,
    paired_difference,
    plateau,
    seeds_needed,
    summarise,
    verdict,
)
from .results import (
    CONVERGENCE,
    FAILED,
    FINETUNE,
    FINISHED,
    MIOU_AUC,
    MISSING,
    STOPPED,
    DatasetResults,
    LossResults,
)

#: The power at which a claim row states the smallest difference its seeds detect.
POWER = 0.8


@dataclass(frozen=True)
class ClaimParams:
    """'better' beats 'worse' on 'metric' (keys of train.losses), as 'source' claims, in the
    study's fine-tuning arm (final values) or its convergence arm (mIoU-AUC: how fast)."""

    better: str
    worse: str
    metric: str
    source: str
    arm: str = FINETUNE

    def validate(self, where: str) -> None:
        metrics = {FINETUNE: METRICS, CONVERGENCE: (MIOU_AUC,)}.get(self.arm)
        if metrics is None:
            raise ParamsError(f"params.yaml: {where}.arm is '{self.arm}', expected "
                              f"{FINETUNE} or {CONVERGENCE}")
        if self.metric not in metrics:
            raise ParamsError(f"params.yaml: {where}.metric is '{self.metric}', expected one of "
                              f"{', '.join(metrics)} in the {self.arm} arm")


@dataclass
class PlateauParams:
    """params.yaml: report.plateau. A loss has settled when the gain of its mIoU over its last
    `evaluations` evaluations (the least-squares line's, per seed) lies within ±tolerance
    across the seeds (95% interval)."""

    evaluations: int = 4
    tolerance: float = 1.5

    def validate(self, where: str) -> None:
        if self.evaluations < 2:
            raise ParamsError(f"params.yaml: {where}.evaluations must be >= 2 (a slope needs "
                              f"two points), got {self.evaluations}")
        if not self.tolerance > 0:
            raise ParamsError(f"params.yaml: {where}.tolerance must be > 0, got "
                              f"{self.tolerance}")

    def test(self, losses: LossResults, confidence: float) -> Plateau:
        curves = [t.curve(MIOU) for t in losses.chosen().values()]
        return plateau(curves, self.evaluations, self.tolerance, confidence)


@dataclass(frozen=True)
class LossRow:
    loss: str
    label: str
    terms: list[dict]
    summaries: dict[str, Summary]  # metric -> mean ± std over the finished seeds
    deltas: dict[tuple[str, str], Difference | None]  # (baseline, metric) -> paired difference
    counts: dict[str, int]  # finished / stopped / failed / missing trials
    values: dict[str, dict[int, float]]  # metric -> seed -> value
    # Trained enough? the plateau test of its mIoU curves, and the classes whose IoU (mean over
    # the seeds) stays below 1, of all classes
    plateau: Plateau | None = None
    classes_below_1: tuple[int, int] | None = None

    @property
    def planned(self) -> int:
        return sum(self.counts.values())

    @property
    def problems(self) -> list[str]:
        """e.g. ['1 failed', '3 missing']: the trials that give this row no number."""
        return [f"{self.counts[s]} {s}" for s in (FAILED, STOPPED, MISSING) if self.counts[s]]


@dataclass(frozen=True)
class ClaimResult:
    claim: ClaimParams
    dataset: str
    better_label: str
    worse_label: str
    difference: Difference | None
    reason: str  # why there is no difference to judge, else ""
    alpha: float = 0.05
    adjusted_p: float | None = None  # Holm-adjusted over the report's claims (`family`)
    family: int = 1
    # the plateau tests of (better, worse) in the fine-tuning arm; none in the convergence arm
    plateaus: tuple[Plateau | None, ...] = field(default_factory=tuple)
    # the smallest true difference its seeds detect at the family's strictest level alpha/m
    # with 80% power, from the spread of its paired differences; the seeds the observed
    # difference would need for the same
    detectable: float | None = None
    needed: int | None = None

    @property
    def settled(self) -> bool:
        return all(p is not None and p.settled for p in self.plateaus)

    @property
    def unsettled(self) -> list[tuple[str, Plateau | None]]:
        """(label, plateau) of the losses that have not settled."""
        return [(label, p) for label, p in zip((self.better_label, self.worse_label),
                                               self.plateaus, strict=True)
                if p is None or not p.settled]

    @property
    def verdict(self) -> str:
        return verdict(self.difference.mean if self.difference else None, self.adjusted_p,
                       self.alpha, self.settled)


def correct_for_family(claims: list[ClaimResult]) -> list[ClaimResult]:
    """The claims with their p-values adjusted for being tested together (Holm-Bonferroni),
    and what their seeds can detect at the family's strictest level, alpha / m."""
    adjusted = holm([c.difference.p_value if c.difference else None for c in claims])
    corrected = []
    for claim, p in zip(claims, adjusted, strict=True):
        strictest = claim.alpha / len(claims)
        diff = claim.difference
        detectable = needed = None
        if diff is not None and diff.std is not None:
            detectable = detectable_effect(diff.std, diff.n, strictest, POWER)
            if diff.mean and diff.std > 0:
                needed = seeds_needed(diff.mean, diff.std, strictest, POWER)
        corrected.append(replace(claim, adjusted_p=p, family=len(claims),
                                 detectable=detectable, needed=needed))
    return corrected


def loss_rows(results: DatasetResults, baselines: list[str], confidence: float,
              plateau_params: PlateauParams | None = None) -> list[LossRow]:
    values = {lr.loss: {m: lr.values(m) for m in METRICS} for lr in results.losses}
    rows = []
    for lr in results.losses:
        deltas = {}
        for baseline in baselines:
            for metric in METRICS:
                if lr.loss == baseline or baseline not in values:
                    deltas[baseline, metric] = None
                else:
                    deltas[baseline, metric] = paired_difference(
                        values[lr.loss][metric], values[baseline][metric], confidence)
        rows.append(LossRow(
            loss=lr.loss, label=lr.name, terms=lr.terms,
            summaries={m: summarise(list(values[lr.loss][m].values())) for m in METRICS},
            deltas=deltas, values=values[lr.loss],
            counts={s: len(lr.by_status(s)) for s in (FINISHED, STOPPED, FAILED, MISSING)},
            plateau=(plateau_params or PlateauParams()).test(lr, confidence),
            classes_below_1=_classes_below_1(lr)))
    return rows


def _classes_below_1(losses: LossResults) -> tuple[int, int] | None:
    per_class = losses.finished_per_class()
    names = sorted({k for pc in per_class for k in pc if k.startswith("IoU.")})
    if not names:
        return None
    means = [sum(pc[k] for pc in per_class if k in pc) / sum(k in pc for pc in per_class)
             for k in names]
    return sum(m < 1.0 for m in means), len(names)


def check_claim(claim: ClaimParams, results: DatasetResults, confidence: float,
                plateau_params: PlateauParams | None = None) -> ClaimResult:
    better = results.loss(claim.better, claim.arm)
    worse = results.loss(claim.worse, claim.arm)
    labels = [lr.name if lr else key for key, lr in ((claim.better, better),
                                                     (claim.worse, worse))]
    reason = _no_comparison(claim, better, worse)
    difference = None if reason else paired_difference(
        better.values(claim.metric), worse.values(claim.metric), confidence)
    if difference is not None and difference.n < 2:
        reason = f"{difference.n} paired seed(s) finished; a test needs 2"
    plateaus = ()
    if claim.arm == FINETUNE and not reason:
        tester = plateau_params or PlateauParams()
        plateaus = (tester.test(better, confidence), tester.test(worse, confidence))
    return ClaimResult(claim, results.dataset, *labels, difference, reason,
                       alpha=1 - confidence,
                       adjusted_p=difference.p_value if difference else None, plateaus=plateaus)


def _no_comparison(claim: ClaimParams, better: LossResults | None,
                   worse: LossResults | None) -> str:
    for key, lr in ((claim.better, better), (claim.worse, worse)):
        if lr is None:
            where = "sweep.convergence.losses" if claim.arm == CONVERGENCE else "sweep.losses"
            return f"'{key}' is not in this study ({where})"
        if not lr.by_status(FINISHED):
            return f"no trial of '{key}' finished"
    return ""
