"""The claim logic of the report on constructed cases, and its statistics against numpy."""
from __future__ import annotations

import numpy as np
import pytest

from pipeline.stats import (
    INCONCLUSIVE,
    NOT_REPRODUCED,
    REPRODUCED,
    holm,
    paired_difference,
    summarise,
    verdict,
)


def test_summary_matches_numpy():
    values = [12.5, 14.0, 9.25, 17.5]
    summary = summarise(values)
    assert summary.n == 4
    assert summary.mean == pytest.approx(np.mean(values))
    assert summary.std == pytest.approx(np.std(values, ddof=1))
    assert summarise([3.0]) == summarise([3.0]).__class__(3.0, None, 1)
    assert summarise([]).mean is None


@pytest.mark.parametrize("a,b,expected", [
    ({0: 20.0, 1: 21.0, 2: 22.0}, {0: 15.0, 1: 15.5, 2: 16.2}, REPRODUCED),  # clear win
    ({0: 10.0, 1: 11.0, 2: 10.5}, {0: 15.0, 1: 16.5, 2: 15.2}, NOT_REPRODUCED),  # clear loss
    ({0: 20.0, 1: 14.0, 2: 17.0}, {0: 15.0, 1: 16.0, 2: 17.5}, INCONCLUSIVE),  # overlap
    ({0: 30.0}, {0: 10.0}, INCONCLUSIVE),  # one seed: no interval
])
def test_claim_verdicts_on_constructed_cases(a, b, expected):
    diff = paired_difference(a, b)  # a claim tested alone: its p-value is its own
    assert verdict(diff.mean, diff.p_value, 0.05) == expected


def test_the_p_value_is_the_paired_t_tests():
    from scipy import stats

    a, b = {0: 20.0, 1: 22.0, 2: 21.0}, {0: 18.0, 1: 18.5, 2: 19.0}
    expected = stats.ttest_rel([20.0, 22.0, 21.0], [18.0, 18.5, 19.0]).pvalue
    assert paired_difference(a, b).p_value == pytest.approx(expected)
    # identical differences: no spread, so certain (or, all 0, no difference at all)
    assert paired_difference({0: 3.0, 1: 4.0}, {0: 1.0, 1: 2.0}).p_value == 0.0
    assert paired_difference({0: 3.0, 1: 4.0}, {0: 3.0, 1: 4.0}).p_value == 1.0
    assert paired_difference({0: 3.0}, {0: 1.0}).p_value is None


@pytest.mark.parametrize("p_values, adjusted", [
    ([0.01, 0.04, 0.03], [0.03, 0.06, 0.06]),  # x3, x2 (then kept monotone), x1
    ([0.02, 0.02], [0.04, 0.04]),  # ties: the same adjusted value
    ([0.01, None, 0.04], [0.03, None, 0.08]),  # the untested claim still counts in m = 3
    ([0.5, 0.6], [1.0, 1.0]),  # capped at 1
    ([0.001, 0.012, 0.013, 0.9], [0.004, 0.036, 0.036, 0.9]),  # 4 x 0.001, 3 x 0.012, ...
    ([None], [None]),
    ([], []),
])
def test_holm_adjusts_as_computed_by_hand(p_values, adjusted):
    assert holm(p_values) == pytest.approx(adjusted)


def test_a_claim_needs_its_adjusted_p_below_alpha():
    assert verdict(4.0, 0.0606, 0.05) == INCONCLUSIVE  # p = 0.0202 alone, one of 3 claims
    assert verdict(4.0, 0.0202, 0.05) == REPRODUCED
    assert verdict(-4.0, 0.0202, 0.05) == NOT_REPRODUCED
    assert verdict(None, None, 0.05) == INCONCLUSIVE


def test_pairing_uses_only_seeds_both_finished_and_the_t_interval():
    a = {0: 20.0, 1: 22.0, 2: 21.0, 3: 99.0}  # seed 3 failed for b: left out, not imputed
    b = {0: 18.0, 1: 18.5, 2: 19.0}
    diff = paired_difference(a, b)
    assert diff.seeds == (0, 1, 2)
    d = np.array([2.0, 3.5, 2.0])
    half = 4.302652729911275 * d.std(ddof=1) / np.sqrt(3)  # t(0.975, df=2)
    assert diff.mean == pytest.approx(d.mean())
    assert (diff.low, diff.high) == pytest.approx((d.mean() - half, d.mean() + half))
