"""The statistics behind the report's tables and claim checks.

A claim "loss A beats loss B on metric m" is judged on the paired differences A - B over the
seeds both losses finished (same seed: same data order and initialisation), with a two-sided
95% Student-t confidence interval of their mean:

- reproduced      the interval lies above 0;
- not reproduced  the interval lies below 0 (B is better);
- inconclusive    the interval contains 0, or fewer than 2 paired seeds.
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
    """Mean of the paired differences, its 95% CI (None for n < 2), the seeds it used."""

    mean: float | None
    low: float | None
    high: float | None
    seeds: tuple[int, ...]

    @property
    def n(self) -> int:
        return len(self.seeds)

    @property
    def verdict(self) -> str:
        if self.low is None or self.high is None:
            return INCONCLUSIVE
        if self.low > 0:
            return REPRODUCED
        if self.high < 0:
            return NOT_REPRODUCED
        return INCONCLUSIVE


def paired_difference(a: dict[int, float], b: dict[int, float],
                      confidence: float = 0.95) -> Difference:
    """a, b: seed -> value. Uses the seeds present in both."""
    from scipy import stats

    seeds = tuple(sorted(set(a) & set(b)))
    diffs = [a[s] - b[s] for s in seeds]
    summary = summarise(diffs)
    if summary.n < 2:
        return Difference(summary.mean, None, None, seeds)
    half = stats.t.ppf(0.5 + confidence / 2, summary.n - 1) * summary.std / math.sqrt(summary.n)
    return Difference(summary.mean, summary.mean - half, summary.mean + half, seeds)
