"""The convergence arm (Yu et al. 2021: learning over IoU "leads to slower convergence"): how
fast each loss learns from an under-trained start, per seed, with intervals over the seeds.

Two measures of speed, both on the arm's mIoU curves (evaluated every `val_interval`):

- iterations to the threshold: the first iteration at which the curve has made `threshold` of
  the reference loss's (CE's) gain in the arm (from the start to its final mIoU, means over its
  seeds), interpolated between evaluations; a seed that never reaches it is counted, not
  averaged;
- mIoU-AUC: the area under the curve divided by the iterations it spans (its mean height):
  defined for every seed, so the claim "A converges faster than B" is judged on its paired
  difference, like the other claims.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..measures import MIOU
from ..params import ParamsError
from ..stats import Difference, crossing, mean_interval, paired_difference
from .results import FINISHED, MIOU_AUC, DatasetResults, LossResults
from .tables import DASH, Cell, Table, difference, number


@dataclass
class ConvergenceReportParams:
    """params.yaml: report.convergence."""

    reference: str = "ce"  # the loss whose gain in the arm sets the threshold
    threshold: float = 0.9  # of the reference's gain, from the start to its final mIoU

    def validate(self, where: str) -> None:
        if not 0 < self.threshold <= 1:
            raise ParamsError(f"params.yaml: {where}.threshold must lie in (0, 1], got "
                              f"{self.threshold}")


@dataclass(frozen=True)
class ConvergenceRow:
    loss: str
    label: str
    finished: int
    planned: int
    start: float | None  # mIoU at iteration 0, mean over the seeds
    end: Difference | None  # mIoU at the last evaluation, mean with its interval
    crossings: dict[int, float | None]  # seed -> iterations to the threshold (None: never)
    to_threshold: Difference | None  # over the seeds that reached it
    auc: Difference | None  # mIoU-AUC, mean with its interval
    auc_delta: Difference | None  # paired against the reference loss


def threshold_of(results: DatasetResults, params: ConvergenceReportParams) -> float | None:
    """The mIoU at `threshold` of the reference loss's gain in the arm: its start plus that
    fraction of the way to its final mIoU (means over its seeds). A fraction of the final mIoU
    alone can lie below the start, where every curve "reaches" it at iteration 0."""
    reference = results.loss(params.reference, "convergence")
    curves = [t.curve() for t in (reference.chosen().values() if reference else [])]
    curves = [c for c in curves if c]
    if not curves:
        return None
    start = sum(c[0][1] for c in curves) / len(curves)
    end = sum(c[-1][1] for c in curves) / len(curves)
    return start + params.threshold * (end - start)


def convergence_rows(results: DatasetResults, params: ConvergenceReportParams,
                     confidence: float) -> tuple[float | None, list[ConvergenceRow]]:
    threshold = threshold_of(results, params)
    reference = results.loss(params.reference, "convergence")
    rows = []
    for losses in results.convergence:
        trials = losses.chosen()
        curves = {seed: t.curve() for seed, t in trials.items() if t.curve()}
        crossings = {seed: crossing(c, threshold) if threshold is not None else None
                     for seed, c in curves.items()}
        reached = [x for x in crossings.values() if x is not None]
        auc = losses.values(MIOU_AUC)
        rows.append(ConvergenceRow(
            losses.loss, losses.name, len(losses.by_status(FINISHED)), len(losses.trials),
            _mean([c[0][1] for c in curves.values()]),
            mean_interval([c[-1][1] for c in curves.values()], confidence) if curves else None,
            crossings, mean_interval(reached, confidence) if reached else None,
            mean_interval(list(auc.values()), confidence) if auc else None,
            None if reference is None or losses.loss == params.reference else
            paired_difference(auc, reference.values(MIOU_AUC), confidence)))
    return threshold, rows


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _unsigned(diff: Difference | None) -> str:
    return difference(diff, signed=False)


def convergence_table(results: DatasetResults, rows: list[ConvergenceRow],
                      threshold: float | None, params: ConvergenceReportParams,
                      confidence: float) -> Table:
    ci = f"{confidence:.0%} CI"
    labels = {row.loss: row.label for row in rows}
    reference = labels.get(params.reference, params.reference)
    goal = f"{number(threshold)}" if threshold is not None else "?"
    share = f"{params.threshold:.0%}"
    header = ["Loss", "Trials", "mIoU at the start", f"mIoU at the end [{ci}]",
              f"Iterations to mIoU {goal} [{ci}]", f"mIoU-AUC [{ci}]",
              f"ΔmIoU-AUC vs {reference} [{ci}]"]
    body = []
    for row in rows:
        reached = sum(x is not None for x in row.crossings.values())
        to = _unsigned(row.to_threshold)
        if reached < len(row.crossings):
            to += f" ({reached}/{len(row.crossings)} reached)"
        body.append([Cell(row.label), Cell(f"{row.finished}/{row.planned}"),
                     Cell(DASH if row.start is None else number(row.start)),
                     Cell(_unsigned(row.end)), Cell(to), Cell(_unsigned(row.auc)),
                     Cell(DASH if row.loss == params.reference else difference(row.auc_delta))])
    iterations = sorted({t.iterations for lr in results.convergence for t in lr.trials
                         if t.iterations})
    notes = [
        f"{results.dataset}, the convergence arm: {results.describe_convergence_start()}, "
        f"{'/'.join(map(str, iterations)) or '?'} iterations at a constant learning rate, "
        f"evaluated every few iterations (the curves: figures/convergence_curves.png).",
        f"Iterations to mIoU {goal}: {share} of {reference}'s gain in the arm (its start plus "
        f"{share} of the way to its mIoU at the end, means over its seeds), where each seed's "
        f"curve first reaches it "
        f"(linear between evaluations), mean over the seeds that reach it. mIoU-AUC: the area "
        f"under the mIoU curve over the iterations it spans (its mean height; higher: learned "
        f"sooner); Δ: paired over the seeds. Intervals: Student t over the seeds.",
    ]
    return Table(f"{results.dataset}: how fast the losses learn (convergence arm)", header,
                 body, notes, f"tab:{results.dataset}-convergence")


def curve_band(losses: LossResults, confidence: float) -> list[tuple[int, float, float, float,
                                                                     int]]:
    """(iteration, mean mIoU over the finished seeds, low, high, seeds) at each evaluation: the
    curve with its interval over the seeds (low = high = mean where one seed gives none)."""
    points: dict[int, list[float]] = {}
    for trial in losses.chosen().values():
        for iteration, value in trial.curve(MIOU):
            points.setdefault(iteration, []).append(value)
    band = []
    for iteration, values in sorted(points.items()):
        mean = mean_interval(values, confidence)
        low, high = (mean.low, mean.high) if mean.low is not None else (mean.mean, mean.mean)
        band.append((iteration, mean.mean, low, high, len(values)))
    return band


def band_csv(losses: LossResults, confidence: float) -> str:
    """The curve's band (`curve_band`) as DVC plot data."""
    lines = ["iteration,mIoU,low,high,seeds"]
    lines += [f"{i},{mean:.4f},{low:.4f},{high:.4f},{n}"
              for i, mean, low, high, n in curve_band(losses, confidence)]
    return "\n".join(lines) + "\n"
