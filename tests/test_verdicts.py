"""What lets a claim reach a verdict (issue: enough seeds, settled curves, the convergence
claim): the detectable effect, the plateau test and the convergence measures, on hand-made
numbers, and the claims they decide through the report's own code."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from pipeline.report.compare import ClaimParams, PlateauParams, check_claim, correct_for_family
from pipeline.report.convergence import ConvergenceReportParams, convergence_rows, threshold_of
from pipeline.report.results import (
    CONVERGENCE,
    FINISHED,
    MIOU_AUC,
    DatasetResults,
    LossResults,
    TrialResult,
)
from pipeline.report.tables import verdict_text
from pipeline.stats import (
    INCONCLUSIVE,
    NOT_SETTLED,
    REPRODUCED,
    crossing,
    detectable_effect,
    mean_over_curve,
    plateau,
    seeds_needed,
)

# --- the detectable effect ----------------------------------------------------------------


def test_detectable_effect_by_hand_n5():
    # By hand: t_{0.975, 4} = 2.7764; the noncentrality at which a noncentral t with 4 degrees
    # of freedom exceeds it 80% of the time is 4.1871 (solved below from its definition);
    # the effect is that times sd / sqrt(n).
    critical = 2.7764451051977987
    assert stats.t.ppf(0.975, 4) == pytest.approx(critical)
    lam = _noncentrality_by_bisection(critical, 4, 0.8)
    assert detectable_effect(0.5, 5, 0.05) == pytest.approx(lam * 0.5 / math.sqrt(5), rel=1e-6)
    assert detectable_effect(0.5, 5, 0.05) == pytest.approx(0.8410, abs=5e-4)


def _noncentrality_by_bisection(critical: float, df: int, power: float) -> float:
    low, high = 0.0, 50.0
    for _ in range(100):
        mid = (low + high) / 2
        if stats.nct.sf(critical, df, mid) < power:
            low = mid
        else:
            high = mid
    return (low + high) / 2


@pytest.mark.parametrize("n,alpha", [(3, 0.05), (5, 0.05 / 12), (8, 0.01), (20, 0.05 / 12)])
def test_at_the_detectable_effect_the_t_test_has_80_percent_power(n, alpha):
    """scipy's noncentral t, and a simulation of the paired t-test itself."""
    sd = 0.5
    effect = detectable_effect(sd, n, alpha)
    critical = stats.t.ppf(1 - alpha / 2, n - 1)
    assert stats.nct.sf(critical, n - 1, effect * math.sqrt(n) / sd) == pytest.approx(0.8,
                                                                                      abs=1e-6)
    rng = np.random.default_rng(n)
    diffs = rng.normal(effect, sd, size=(40000, n))
    t = diffs.mean(axis=1) / (diffs.std(axis=1, ddof=1) / math.sqrt(n))
    p = 2 * stats.t.sf(np.abs(t), n - 1)
    assert (p < alpha).mean() == pytest.approx(0.8, abs=0.01)


def test_detectable_effect_tends_to_the_normal_formula_and_falls_with_seeds():
    z = stats.norm.ppf(0.975) + stats.norm.ppf(0.8)
    assert detectable_effect(1.0, 2000, 0.05) == pytest.approx(z / math.sqrt(2000), rel=2e-3)
    effects = [detectable_effect(0.5, n, 0.05 / 12) for n in range(3, 10)]
    assert effects == sorted(effects, reverse=True)
    assert detectable_effect(0.5, 1, 0.05) is None and detectable_effect(0.0, 5, 0.05) is None


def test_seeds_needed_is_the_first_count_that_detects_the_effect():
    n = seeds_needed(1.5, 0.5, 0.05 / 12)
    assert detectable_effect(0.5, n, 0.05 / 12) <= 1.5 < detectable_effect(0.5, n - 1,
                                                                            0.05 / 12)
    assert seeds_needed(0.001, 0.5, 0.05, most=50) is None


# --- the plateau test --------------------------------------------------------------------------

ITERATIONS = list(range(0, 121, 20))


def _curves(slopes: list[float], noise: float = 0.0, seed: int = 0) -> list[list]:
    rng = np.random.default_rng(seed)
    return [[(x, 70 + s * x + noise * rng.normal()) for x in ITERATIONS] for s in slopes]


def test_a_settled_curve_passes_and_rising_ones_are_flagged():
    flat = plateau(_curves([0.0, 0.001, -0.001, 0.0005, -0.0005], noise=0.2), 4, 1.5)
    assert flat.settled and abs(flat.gain) < 0.5 and flat.span == 60 and flat.seeds == 5
    rising = plateau(_curves([0.05] * 5, noise=0.2), 4, 1.5)  # +3 mIoU over the window
    assert not rising.settled and rising.gain == pytest.approx(3.0, abs=0.5)
    # noisy and rising: its interval is wide and reaches past the tolerance
    noisy = plateau(_curves([0.03] * 5, noise=1.5, seed=3), 4, 1.5)
    assert not noisy.settled and noisy.high > 1.5
    # the window is the last evaluations: an early rise that has stopped is settled
    early = [[(x, 60 + min(x, 40) * 0.3) for x in ITERATIONS] for _ in range(3)]
    assert plateau([[(x, y + 0.01 * i) for x, y in c] for i, c in enumerate(early)], 4,
                   1.5).settled


def test_the_plateau_gain_is_the_least_squares_line_by_hand():
    curve = [(0, 1.0), (20, 2.0), (40, 2.0), (60, 4.0)]
    # x mean 30, y mean 2.25; slope = sum((x - 30)(y - 2.25)) / sum((x - 30)^2)
    #   = (37.5 + 2.5 - 2.5 + 52.5) / (900 + 100 + 100 + 900) = 90 / 2000
    result = plateau([curve, curve], 4, 10.0)
    assert result.gain == pytest.approx(90 / 2000 * 60)
    assert result.low == result.high == pytest.approx(result.gain)  # no spread across seeds
    assert plateau([curve], 4, 10.0).low is None  # one seed: no interval, not settled
    assert not plateau([curve], 4, 10.0).settled
    assert plateau([curve[:3], curve[:3]], 4, 10.0).gain is None  # too few evaluations


# --- the convergence measures ----------------------------------------------------------------

def test_threshold_crossing_between_evaluations_never_reached_and_auc_by_hand():
    curve = [(0, 20.0), (10, 30.0), (20, 50.0), (30, 45.0)]
    assert crossing(curve, 40.0) == pytest.approx(15.0)  # halfway from 30 to 50
    assert crossing(curve, 30.0) == pytest.approx(10.0)
    assert crossing(curve, 10.0) == 0.0
    assert crossing(curve, 60.0) is None
    # trapezoids: 10*(20+30)/2 + 10*(30+50)/2 + 10*(50+45)/2 = 250 + 400 + 475, over 30
    assert mean_over_curve(curve) == pytest.approx(1125 / 30)
    assert mean_over_curve([(0, 1.0)]) is None


def _trial(loss, seed, final, curve, arm="finetune"):
    history = [{"iteration": x, "mIoU": y} for x, y in curve]
    return TrialResult(loss, seed, FINISHED, {"mIoU": final, "image-mIoU": final,
                                              "mPixIoU": final}, {}, history, arm=arm)


def _results(finetune: dict[str, list[TrialResult]],
             convergence: dict[str, list[TrialResult]] | None = None) -> DatasetResults:
    group = lambda arm: [LossResults(k, k.upper(), [], v) for k, v in (arm or {}).items()]
    return DatasetResults("synthetic_voc", "cfg", Path("results/synthetic_voc.json"),
                          group(finetune), convergence=group(convergence))


def test_convergence_rows_on_hand_made_curves():
    ce = [_trial("ce", s, 0, [(0, 20), (10, 40), (20, 50)], CONVERGENCE) for s in range(3)]
    fast = [_trial("pixiou", s, 0, [(0, 20), (10, 45 + s), (20, 50)], CONVERGENCE)
            for s in range(3)]
    slow = [_trial("lovasz", s, 0, [(0, 20), (10, 25), (20, 30 + s)], CONVERGENCE)
            for s in range(3)]
    results = _results({}, {"ce": ce, "lovasz": slow, "pixiou": fast})
    params = ConvergenceReportParams(reference="ce", threshold=0.9)
    # CE goes from 20 to 50: 90% of its gain is 20 + 0.9 * 30 = 47
    assert threshold_of(results, params) == pytest.approx(47.0)
    threshold, rows = convergence_rows(results, params, 0.95)
    by = {r.loss: r for r in rows}
    assert by["ce"].crossings == {s: pytest.approx(17.0) for s in range(3)}  # 40 -> 50 at 10-20
    assert by["pixiou"].crossings == {0: pytest.approx(14.0), 1: pytest.approx(12.5),
                                      2: pytest.approx(10.0)}
    assert by["lovasz"].crossings == {0: None, 1: None, 2: None}
    assert by["lovasz"].to_threshold is None
    assert by["pixiou"].auc_delta.mean > 0 > by["lovasz"].auc_delta.mean
    assert by["ce"].auc.mean == pytest.approx((10 * 30 + 10 * 45) / 20)
    # the claim "faster" is judged on the paired mIoU-AUC
    claim = check_claim(ClaimParams("pixiou", "lovasz", MIOU_AUC, "Yu et al. 2021",
                                    CONVERGENCE), results, 0.95)
    assert claim.difference.n == 3 and claim.difference.mean > 0 and claim.plateaus == ()


# --- claims that more seeds, or settled curves, decide -------------------------------------

def _claim_on(effect: float, seeds: int, slope: float = 0.0):
    rng = np.random.default_rng(7)
    noise = rng.normal(0, 0.5, seeds)
    curve = lambda base, s: [(x, base + slope * x + 0.05 * ((x // 20 + s) % 2))
                             for x in ITERATIONS]
    ce = [_trial("ce", s, 80.0, curve(80.0, s)) for s in range(seeds)]
    lovasz = [_trial("lovasz", s, 80.0 + effect + noise[s], curve(80.0, s))
              for s in range(seeds)]
    results = _results({"ce": ce, "lovasz": lovasz})
    claim = check_claim(ClaimParams("lovasz", "ce", "mIoU", "Berman et al. 2018"), results,
                        0.95, PlateauParams(4, 1.5))
    # a family of 12, as the default study's
    return correct_for_family([claim] + [claim] * 11)[0]


def test_more_seeds_turn_an_inconclusive_claim_into_a_verdict():
    few = _claim_on(1.0, 3)
    assert few.verdict == INCONCLUSIVE and few.settled
    assert few.detectable > abs(few.difference.mean)
    text = verdict_text(few)
    assert f"below the {few.detectable:.2f} its 3 seeds detect" in text
    assert f"{few.needed} seeds would detect" in text and few.needed > 3
    many = _claim_on(1.0, few.needed + 4)
    assert many.verdict == REPRODUCED and many.detectable < few.detectable


def test_a_claim_on_a_loss_that_has_not_settled_reads_not_settled():
    rising = _claim_on(3.0, 8, slope=0.05)  # +3 mIoU over the plateau window
    assert not rising.settled and rising.verdict == NOT_SETTLED
    assert rising.adjusted_p < 0.05  # significant, yet no verdict
    text = verdict_text(rising)
    assert text.startswith("not settled (") and "NOT settled" in text and "+3.00" in text


# --- the params that drive them fail naming the key ---------------------------------------

@pytest.mark.parametrize("section, values, message", [
    ("sweep", {"convergence": {"losses": ["ce"], "start": "late"}},
     "sweep.convergence.start must be one of early, scratch, got 'late'"),
    ("sweep", {"convergence": {"losses": ["ce"], "iterations": 10, "val_interval": 20}},
     "sweep.convergence.val_interval (20) is longer than sweep.convergence.iterations (10)"),
    ("sweep", {"convergence": {"losses": ["focal"]}},
     "sweep.convergence.losses[0]: unknown loss 'focal'"),
    ("train", {"schedule": "cosine"}, "train.schedule must be one of config, constant"),
    ("train", {"val_subset": 0}, "train.val_subset must be > 0 or null"),
], ids=["start", "interval", "loss", "schedule", "subset"])
def test_bad_arm_and_schedule_params_fail_naming_the_key(tmp_path, tiny_data, section, values,
                                                         message):
    from pipeline.params import ParamsError
    from pipeline.sweep.plan import load_study
    from tests.conftest import study_params

    raw = __import__("yaml").safe_load(study_params(tmp_path, tiny_data).read_text())
    for key, value in values.items():
        raw[section][key] = {**raw[section][key], **value} if isinstance(value, dict) else value
    params = tmp_path / "bad.yaml"
    params.write_text(__import__("yaml").safe_dump(raw))
    with pytest.raises(ParamsError, match=None) as raised:
        load_study("synthetic_voc", params)
    assert message in str(raised.value)


def test_the_convergence_arm_without_early_weights_says_what_to_set(tmp_path, tiny_data):
    """A study that trains from scratch (or a published checkpoint) has no early weights."""
    from pipeline.params import ParamsError
    from pipeline.sweep.plan import load_study
    from tests.conftest import study_params

    params = study_params(tmp_path, tiny_data, sweep={"convergence": {"losses": ["ce"]}})
    with pytest.raises(ParamsError) as raised:
        load_study("synthetic_voc", params)
    assert "sweep.convergence.start is early" in str(raised.value)
    assert "sweep.convergence.start: scratch" in str(raised.value)


def test_the_sweep_plans_the_convergence_arm_with_its_own_start_and_keys(tmp_path, tiny_data):
    from pipeline.sweep.plan import CONVERGENCE, FINETUNE, load_study, plan_trials
    from tests.conftest import study_params

    params = study_params(tmp_path, tiny_data, sweep={
        "losses": ["ce", "lovasz"], "seeds": [0, 1],
        "convergence": {"losses": ["ce", "pixiou"], "start": "scratch", "iterations": 6,
                        "val_interval": 3, "lr": 3.0e-3}})
    trials = plan_trials(load_study("synthetic_voc", params))
    arms = [t.arm for t in trials]
    assert arms.count(FINETUNE) == 4 and arms.count(CONVERGENCE) == 4
    arm = [t for t in trials if t.arm == CONVERGENCE]
    assert {t.spec.iterations for t in arm} == {6} and {t.spec.val_interval for t in arm} == {3}
    assert {t.spec.schedule for t in arm} == {"constant"} and {t.spec.lr for t in arm} == {3e-3}
    assert all(t.name.startswith("convergence_") for t in arm)
    # the same loss and seed in the two arms are two trials
    assert len({t.key for t in trials}) == len(trials)
