"""The statistics behind the report's tables and claim checks.

A claim "loss A beats loss B on metric m" is judged on the paired differences A - B over the
seeds both losses finished (same seed: same data order and initialisation): their mean, its
two-sided Student-t confidence interval, and the paired t-test's p-value. The report tests
several claims together, so their p-values are adjusted for that family (Holm-Bonferroni)
before a verdict:

- not settled     a loss of the claim was still changing when training stopped (`plateau`):
                  its final value is not the one it would keep, so no verdict is given;
- reproduced      adjusted p < alpha and the mean difference above 0;
- not reproduced  adjusted p < alpha and the mean difference below 0 (B is better);
- inconclusive    otherwise, or fewer than 2 paired seeds (no test).

An inconclusive claim says why with a number: the smallest difference its seeds detect at the
family's strictest level with 80% power (`detectable_effect`), and how many seeds the
observed difference would need (`seeds_needed`). The Δ columns of the loss tables show the
same intervals, uncorrected.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import pairwise

REPRODUCED = "reproduced"
NOT_REPRODUCED = "not reproduced"
INCONCLUSIVE = "inconclusive"
NOT_SETTLED = "not settled"


@dataclass(frozen=True)
class Summary:
    """Mean and sample standard deviation (n - 1) of n values; std is None for n < 2."""

    mean: float | None
    std: float | None
    n: int


def summarise(values: list[float]) -> Summary:
    n = len(values)
    if n == 0:
        return Summary(None, None, 0)
    mean = sum(values) / n
    if n < 2:
        return Summary(mean, None, 1)
    return Summary(mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)), n)


@dataclass(frozen=True)
class Difference:
    """Mean of the paired differences, its CI and two-sided t-test p-value (None for n < 2),
    the seeds it used and the differences' standard deviation."""

    mean: float | None
    low: float | None
    high: float | None
    seeds: tuple[int, ...]
    p_value: float | None = None
    std: float | None = None

    @property
    def n(self) -> int:
        return len(self.seeds)


def verdict(mean: float | None, adjusted_p: float | None, alpha: float,
            settled: bool = True) -> str:
    """A claim's verdict from its mean paired difference and its family-adjusted p-value;
    `settled`: whether both losses' curves passed the plateau test."""
    if not settled:
        return NOT_SETTLED
    if mean is None or adjusted_p is None or adjusted_p >= alpha:
        return INCONCLUSIVE
    return REPRODUCED if mean > 0 else NOT_REPRODUCED


def holm(p_values: list[float | None]) -> list[float | None]:
    """Holm-Bonferroni adjusted p-values of a family of m = len(p_values) tests.

    The i-th smallest p is multiplied by m - i + 1, made non-decreasing in that order and
    capped at 1. A test that could not be run (None) still counts in m, as a p of 1 would: the
    family is what was planned, not what happened to finish. Ties keep their order.
    """
    m = len(p_values)
    ranked = sorted((p, i) for i, p in enumerate(p_values) if p is not None)
    adjusted: list[float | None] = [None] * m
    running = 0.0
    for rank, (p, i) in enumerate(ranked):
        running = max(running, min(1.0, (m - rank) * p))
        adjusted[i] = running
    return adjusted


def paired_difference(a: dict[int, float], b: dict[int, float],
                      confidence: float = 0.95) -> Difference:
    """a, b: seed -> value. Uses the seeds present in both."""
    from scipy import stats

    seeds = tuple(sorted(set(a) & set(b)))
    summary = summarise([a[s] - b[s] for s in seeds])
    if summary.n < 2:
        return Difference(summary.mean, None, None, seeds)
    if summary.std == 0:  # identical differences: certain, unless they are all 0
        return Difference(summary.mean, summary.mean, summary.mean, seeds,
                          1.0 if summary.mean == 0 else 0.0, 0.0)
    test = stats.ttest_rel([a[s] for s in seeds], [b[s] for s in seeds])
    low, high = test.confidence_interval(confidence)
    return Difference(summary.mean, float(low), float(high), seeds, float(test.pvalue),
                      summary.std)


# --- what the seeds can detect --------------------------------------------------------------

def detectable_effect(std: float | None, n: int, alpha: float,
                      power: float = 0.8) -> float | None:
    """The smallest true mean paired difference that a two-sided paired t-test at level
    `alpha` detects with probability `power`, for n pairs whose differences spread by `std`.

    Exact for the t-test: δ = λ·std/√n, where λ is the noncentrality at which the noncentral t
    with n - 1 degrees of freedom exceeds t_{1-α/2, n-1} with probability `power` (the far
    tail, below -t, is left out, as sample-size tables do). None for n < 2 or no spread.
    """
    from scipy import special, stats

    if n < 2 or std is None or not std > 0:
        return None
    critical = stats.t.ppf(1 - alpha / 2, n - 1)
    noncentrality = special.nctdtrinc(n - 1, 1 - power, critical)
    return float(noncentrality * std / math.sqrt(n))


def seeds_needed(effect: float, std: float, alpha: float, power: float = 0.8,
                 most: int = 200) -> int | None:
    """The fewest paired seeds whose detectable effect is at most |effect|; None past `most`."""
    for n in range(2, most + 1):
        if detectable_effect(std, n, alpha, power) <= abs(effect):
            return n
    return None


# --- has a curve settled? ---------------------------------------------------------------------

@dataclass(frozen=True)
class Plateau:
    """What a validation curve still gains over its last `points` evaluations: the
    least-squares slope through them times the iterations they span, fitted per seed; its mean
    over the seeds with the Student-t interval across them. Settled: the whole interval lies
    within ±tolerance, so neither a rise nor a fall larger than that fits the seeds."""

    gain: float | None
    low: float | None
    high: float | None
    seeds: int
    points: int
    span: int  # iterations the window covers
    tolerance: float

    @property
    def settled(self) -> bool:
        return self.low is not None and -self.tolerance <= self.low and \
            self.high <= self.tolerance


def window_gain(curve: list[tuple[int, float]], points: int) -> tuple[float, int] | None:
    """(slope x span, span) of the least-squares line through the last `points` (iteration,
    value) pairs of `curve`; None if it has fewer than `points` (or 2)."""
    if len(curve) < max(points, 2):
        return None
    window = sorted(curve)[-points:]
    xs, ys = [x for x, _ in window], [y for _, y in window]
    x_mean, y_mean = sum(xs) / len(xs), sum(ys) / len(ys)
    spread = sum((x - x_mean) ** 2 for x in xs)
    if spread == 0:
        return None
    slope = sum((x - x_mean) * (y - y_mean) for x, y in zip(xs, ys, strict=True)) / spread
    span = xs[-1] - xs[0]
    return slope * span, span


def plateau(curves: list[list[tuple[int, float]]], points: int, tolerance: float,
            confidence: float = 0.95) -> Plateau:
    """The plateau test over the seeds' curves (each a list of (iteration, value))."""
    from scipy import stats

    fitted = [g for g in (window_gain(c, points) for c in curves) if g is not None]
    gains = summarise([g for g, _ in fitted])
    span = max((s for _, s in fitted), default=0)
    if gains.n < 2:
        return Plateau(gains.mean, None, None, gains.n, points, span, tolerance)
    if gains.std == 0:
        low = high = gains.mean
    else:
        low, high = stats.ttest_1samp([g for g, _ in fitted], 0.0).confidence_interval(
            confidence)
    return Plateau(gains.mean, float(low), float(high), gains.n, points, span, tolerance)


# --- how fast a curve rises -------------------------------------------------------------------

def crossing(curve: list[tuple[int, float]], threshold: float) -> float | None:
    """The first iteration at which the curve reaches `threshold`, interpolated linearly
    between the two evaluations around it; None if it never does."""
    points = sorted(curve)
    for i, (x, y) in enumerate(points):
        if y >= threshold:
            if i == 0:
                return float(x)
            x0, y0 = points[i - 1]
            return x0 + (threshold - y0) / (y - y0) * (x - x0)
    return None


def mean_over_curve(curve: list[tuple[int, float]]) -> float | None:
    """The area under the curve (trapezoids between evaluations) divided by the iterations it
    spans: its mean height, in the curve's own unit; higher means it rose sooner."""
    points = sorted(curve)
    if len(points) < 2 or points[-1][0] == points[0][0]:
        return None
    area = sum((x1 - x0) * (y0 + y1) / 2 for (x0, y0), (x1, y1) in pairwise(points))
    return area / (points[-1][0] - points[0][0])


def mean_interval(values: list[float], confidence: float = 0.95) -> Difference:
    """The mean of independent values with its Student-t interval (the seeds of one loss), in
    the same form as a paired difference."""
    return paired_difference(dict(enumerate(values)), dict.fromkeys(range(len(values)), 0.0),
                             confidence)
