"""The statistics behind the report's tables and claim checks.

A claim "loss A beats loss B on metric m" is judged on the paired differences A - B over the
seeds both losses finished (same seed: same data order and initialisation): their mean, its
two-sided Student-t confidence interval, and the paired t-test's p-value. The report tests
several claims together, so their p-values are adjusted for that family (Holm-Bonferroni)
before a verdict:

- reproduced      adjusted p < alpha and the mean difference above 0;
- not reproduced  adjusted p < alpha and the mean difference below 0 (B is better);
- inconclusive    otherwise, or fewer than 2 paired seeds (no test).

The Δ columns of the loss tables show the same intervals, uncorrected.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

REPRODUCED = "reproduced"
NOT_REPRODUCED = "not reproduced"
INCONCLUSIVE = "inconclusive"


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
    the seeds it used."""

    mean: float | None
    low: float | None
    high: float | None
    seeds: tuple[int, ...]
    p_value: float | None = None

    @property
    def n(self) -> int:
        return len(self.seeds)


def verdict(mean: float | None, adjusted_p: float | None, alpha: float) -> str:
    """A claim's verdict from its mean paired difference and its family-adjusted p-value."""
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
    diffs = [a[s] - b[s] for s in seeds]
    summary = summarise(diffs)
    if summary.n < 2:
        return Difference(summary.mean, None, None, seeds)
    error = summary.std / math.sqrt(summary.n)
    half = stats.t.ppf(0.5 + confidence / 2, summary.n - 1) * error
    if error == 0:  # identical differences: certain, unless they are all 0
        p = 1.0 if summary.mean == 0 else 0.0
    else:
        p = float(2 * stats.t.sf(abs(summary.mean) / error, summary.n - 1))
    return Difference(summary.mean, summary.mean - half, summary.mean + half, seeds, p)
