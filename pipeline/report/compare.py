"""What the papers compare: each loss's mean ± std over seeds, its paired differences to the
baselines, and the verdict on each claim (statistics in `pipeline.stats`)."""
from __future__ import annotations

from dataclasses import dataclass, replace

from ..measures import METRICS
from ..params import ParamsError
from ..stats import Difference, Summary, holm, paired_difference, summarise, verdict
from .results import FAILED, FINISHED, MISSING, STOPPED, DatasetResults, LossResults


@dataclass(frozen=True)
class ClaimParams:
    """'better' beats 'worse' on 'metric' (keys of train.losses), as 'source' claims."""

    better: str
    worse: str
    metric: str
    source: str

    def validate(self, where: str) -> None:
        if self.metric not in METRICS:
            raise ParamsError(f"params.yaml: {where}.metric is '{self.metric}', expected one of "
                              f"{', '.join(METRICS)}")


@dataclass(frozen=True)
class LossRow:
    loss: str
    label: str
    terms: list[dict]
    summaries: dict[str, Summary]  # metric -> mean ± std over the finished seeds
    deltas: dict[tuple[str, str], Difference | None]  # (baseline, metric) -> paired difference
    counts: dict[str, int]  # finished / stopped / failed / missing trials
    values: dict[str, dict[int, float]]  # metric -> seed -> value
    # Trained enough? mIoU gained over the last evaluation interval (mean over the seeds), and
    # the classes whose IoU (mean over the seeds) stays below 1, of all classes
    last_change: float | None = None
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

    @property
    def verdict(self) -> str:
        return verdict(self.difference.mean if self.difference else None, self.adjusted_p,
                       self.alpha)


def correct_for_family(claims: list[ClaimResult]) -> list[ClaimResult]:
    """The claims with their p-values adjusted for being tested together (Holm-Bonferroni)."""
    adjusted = holm([c.difference.p_value if c.difference else None for c in claims])
    return [replace(c, adjusted_p=p, family=len(claims)) for c, p in zip(claims, adjusted,
                                                                        strict=True)]


def loss_rows(results: DatasetResults, baselines: list[str], confidence: float) -> list[LossRow]:
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
            last_change=_last_change(lr), classes_below_1=_classes_below_1(lr)))
    return rows


def _last_change(losses: LossResults) -> float | None:
    changes = [t.history[-1]["mIoU"] - t.history[-2]["mIoU"]
               for t in losses.chosen().values() if len(t.history) >= 2]
    return sum(changes) / len(changes) if changes else None


def _classes_below_1(losses: LossResults) -> tuple[int, int] | None:
    per_class = losses.finished_per_class()
    names = sorted({k for pc in per_class for k in pc if k.startswith("IoU.")})
    if not names:
        return None
    means = [sum(pc[k] for pc in per_class if k in pc) / sum(k in pc for pc in per_class)
             for k in names]
    return sum(m < 1.0 for m in means), len(names)


def check_claim(claim: ClaimParams, results: DatasetResults, confidence: float) -> ClaimResult:
    better, worse = results.loss(claim.better), results.loss(claim.worse)
    labels = [lr.name if lr else key for key, lr in ((claim.better, better),
                                                     (claim.worse, worse))]
    reason = _no_comparison(claim, better, worse)
    difference = None if reason else paired_difference(
        better.values(claim.metric), worse.values(claim.metric), confidence)
    if difference is not None and difference.n < 2:
        reason = f"{difference.n} paired seed(s) finished; a test needs 2"
    return ClaimResult(claim, results.dataset, *labels, difference, reason,
                       alpha=1 - confidence, adjusted_p=difference.p_value if difference else None)


def _no_comparison(claim: ClaimParams, better: LossResults | None,
                   worse: LossResults | None) -> str:
    for key, lr in ((claim.better, better), (claim.worse, worse)):
        if lr is None:
            return f"'{key}' is not in this study (sweep.losses)"
        if not lr.by_status(FINISHED):
            return f"no trial of '{key}' finished"
    return ""
