"""The claim logic of the report on constructed cases, and its statistics against numpy."""
from __future__ import annotations

import numpy as np
import pytest

from pipeline.stats import (
    INCONCLUSIVE,
    NOT_REPRODUCED,
    REPRODUCED,
    paired_difference,
    summarise,
)


def test_summary_matches_numpy():
    values = [12.5, 14.0, 9.25, 17.5]
    summary = summarise(values)
    assert summary.n == 4
    assert summary.mean == pytest.approx(np.mean(values))
    assert summary.std == pytest.approx(np.std(values, ddof=1))
    assert summarise([3.0]) == summarise([3.0]).__class__(3.0, None, 1)
    assert summarise([]).mean is None


@pytest.mark.parametrize("a,b,verdict", [
    ({0: 20.0, 1: 21.0, 2: 22.0}, {0: 15.0, 1: 15.5, 2: 16.2}, REPRODUCED),  # clear win
    ({0: 10.0, 1: 11.0, 2: 10.5}, {0: 15.0, 1: 16.5, 2: 15.2}, NOT_REPRODUCED),  # clear loss
    ({0: 20.0, 1: 14.0, 2: 17.0}, {0: 15.0, 1: 16.0, 2: 17.5}, INCONCLUSIVE),  # overlap
    ({0: 30.0}, {0: 10.0}, INCONCLUSIVE),  # one seed: no interval
])
def test_claim_verdicts_on_constructed_cases(a, b, verdict):
    assert paired_difference(a, b).verdict == verdict


def test_pairing_uses_only_seeds_both_finished_and_the_t_interval():
    a = {0: 20.0, 1: 22.0, 2: 21.0, 3: 99.0}  # seed 3 failed for b: left out, not imputed
    b = {0: 18.0, 1: 18.5, 2: 19.0}
    diff = paired_difference(a, b)
    assert diff.seeds == (0, 1, 2)
    d = np.array([2.0, 3.5, 2.0])
    half = 4.302652729911275 * d.std(ddof=1) / np.sqrt(3)  # t(0.975, df=2)
    assert diff.mean == pytest.approx(d.mean())
    assert (diff.low, diff.high) == pytest.approx((d.mean() - half, d.mean() + half))
