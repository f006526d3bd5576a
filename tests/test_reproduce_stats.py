"""reproduce/stats.py: Student's t by hand, the tests and the decision rules, on cases whose answer is known.

Published quantiles (any t table, e.g. NIST/SEMATECH e-Handbook §1.3.6.7.2, to 6 digits); closed forms where
they exist: t with 1 degree of freedom is the Cauchy distribution (CDF 1/2 + atan(t)/pi), with 2 it is
1/2 + t / (2 sqrt(2 + t^2)).
"""

import math
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "reproduce"))
import stats as S  # noqa: E402


@pytest.mark.parametrize("p, df, expected", [
    (0.975, 1, 12.706205), (0.975, 3, 3.182446), (0.975, 10, 2.228139), (0.975, 30, 2.042272),
    (0.95, 5, 2.015048), (0.995, 20, 2.845340), (0.975, 120, 1.979930), (0.975, 1e7, 1.959964)])
def test_t_quantile_against_tables(p, df, expected):
    assert S.t_quantile(p, df) == pytest.approx(expected, abs=2e-6)  # tables give 6 decimals
    assert S.t_quantile(1 - p, df) == pytest.approx(-expected, abs=2e-6)  # symmetry


@pytest.mark.parametrize("t", [-30.0, -3.0, -0.4, 0.0, 0.7, 2.0, 9.5])
def test_t_cdf_closed_forms(t):
    assert S.t_cdf(t, 1) == pytest.approx(0.5 + math.atan(t) / math.pi, abs=1e-13)
    assert S.t_cdf(t, 2) == pytest.approx(0.5 + t / (2 * math.sqrt(2 + t * t)), abs=1e-13)


def test_t_quantile_inverts_the_cdf_at_fractional_df():
    for df in (1.5, 4.3, 17.8):
        for p in (0.6, 0.9, 0.999):
            assert S.t_cdf(S.t_quantile(p, df), df) == pytest.approx(p, abs=1e-12)


def test_t_critical_is_the_exact_quantile_not_a_floor_of_2():
    assert S.t_critical(120) == pytest.approx(1.979930, abs=2e-6)  # the old table said max(2.0, 1.96)
    assert S.t_critical(0) == math.inf


def test_mean_test_matches_hand_arithmetic():
    """x = (1, 2, 3, 4): mean 2.5, sd sqrt(5/3), se sqrt(5/3)/2 = 0.645497, t = 3.872983 on 3 df."""
    r = S.mean_test([1.0, 2.0, 3.0, 4.0], "greater")
    assert r["mean"] == 2.5 and r["df"] == 3
    assert r["se"] == pytest.approx(math.sqrt(5 / 3) / 2, rel=1e-12)
    assert r["t"] == pytest.approx(3.872983, abs=1e-6)
    assert r["ci95"][0] == pytest.approx(2.5 - 3.182446 * r["se"], abs=1e-5)
    assert S.decide(r) == S.HOLDS and S.decide({**r, "kind": "less"}) == S.FAILS


def noisy(mean, sd, n, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, generator=g, dtype=torch.float64)
    return (x - x.mean()) / x.std() * sd + mean  # exactly this mean and sd: the verdicts below are known


def test_tost_equivalence_three_outcomes():
    """margin 0.1. Mean 0.02, sd 0.1, n 100: se 0.01, 90% interval 0.02 ± 0.0166, inside (-0.1, 0.1) -> HOLDS.
    Mean 0.5, same spread: the 95% interval 0.5 ± 0.02 lies above 0.1 -> DOES NOT HOLD. Mean 0.02, sd 1: se 0.1,
    the interval crosses the margin on both sides -> INCONCLUSIVE. Mean 0.09, sd 0.1: the 90% upper end 0.1066
    crosses 0.1, the 95% interval does not clear it -> INCONCLUSIVE (near the margin is not equivalent)."""
    assert S.decide(S.mean_test(noisy(0.02, 0.1, 100), "equivalent", margin=0.1)) == S.HOLDS
    assert S.decide(S.mean_test(noisy(0.5, 0.1, 100), "equivalent", margin=0.1)) == S.FAILS
    assert S.decide(S.mean_test(noisy(-0.5, 0.1, 100), "equivalent", margin=0.1)) == S.FAILS
    assert S.decide(S.mean_test(noisy(0.02, 1.0, 100), "equivalent", margin=0.1)) == S.INCONCLUSIVE
    assert S.decide(S.mean_test(noisy(0.09, 0.1, 100), "equivalent", margin=0.1)) == S.INCONCLUSIVE
    with pytest.raises(ValueError):
        S.mean_test([1.0, 2.0], "equivalent")


def test_combine_bonferroni_for_contradiction_and_all_for_holds():
    """Three sub-claims, df 49. A contradiction at t = -2.45 is significant at alpha = 0.05 (critical 2.010) but
    not at the Bonferroni alpha / 3 (critical 2.479) -> INCONCLUSIVE; at t = -4 -> DOES NOT HOLD. All three
    holding -> HOLDS."""
    good = S.mean_test(noisy(0.5, 1.0, 50), "greater")  # t = 3.54
    weak_bad = S.mean_test(noisy(-2.45 / math.sqrt(50), 1.0, 50), "greater")
    strong_bad = S.mean_test(noisy(-4 / math.sqrt(50), 1.0, 50), "greater")
    assert S.decide(weak_bad) == S.FAILS  # alone, at alpha
    assert S.combine({"a": good, "b": good, "c": weak_bad})[0] == S.INCONCLUSIVE
    assert S.combine({"a": good, "b": good, "c": strong_bad})[0] == S.FAILS
    assert S.combine({"a": good, "b": good, "c": good})[0] == S.HOLDS
    assert S.combine({"a": good, "m": S.fixed(S.FAILS)})[0] == S.FAILS


def test_across_seeds():
    assert S.across_seeds([S.HOLDS, S.HOLDS]) == S.HOLDS
    assert S.across_seeds([S.HOLDS, S.INCONCLUSIVE]) == S.INCONCLUSIVE
    assert S.across_seeds([S.HOLDS, S.FAILS]) == S.INCONCLUSIVE
    assert S.across_seeds([S.FAILS, S.FAILS]) == S.FAILS
    assert S.across_seeds([]) == S.INCONCLUSIVE


def test_precondition_on_synthetic_pairs():
    """48 pairs starting at a = b = -2 (log OR 0). Learned: chosen up 0.5, rejected down 0.5 per pair (with
    noise): log OR rises, L_OR falls -> passed. Not learned: both move by noise around 0 -> not passed, and the
    reason says so. Learned the wrong way round -> not passed."""
    a0 = torch.full((48,), -2.0, dtype=torch.float64)
    b0 = a0.clone()
    up, down = noisy(0.5, 0.2, 48, 1), noisy(-0.5, 0.2, 48, 2)
    r = S.precondition(a0, b0, a0 + up, b0 + down)
    assert r["passed"] and r["verdicts"] == {"L_OR falls": S.HOLDS, "log OR rises": S.HOLDS}
    r = S.precondition(a0, b0, a0 + noisy(0.0, 0.2, 48, 3), b0 + noisy(0.0, 0.2, 48, 4))
    assert not r["passed"] and r["reason"].startswith("precondition not reached")
    assert not S.precondition(a0, b0, a0 + down, b0 + up)["passed"]
    assert S.learned_sft(a0, a0 + up)["passed"] and not S.learned_sft(a0, a0 + down)["passed"]


def test_bootstrap_interval_of_a_mean():
    """n = 400 draws of sd 1: the 95% interval of the mean is about ± 1.96 / 20 = ± 0.098 around the sample mean."""
    x = noisy(0.3, 1.0, 400, 5)
    m, lo, hi = S.bootstrap_ci(x, n_boot=2000, seed=1)
    assert m == pytest.approx(0.3, abs=1e-12) and lo < m < hi
    assert (hi - lo) / 2 == pytest.approx(1.96 / 20, rel=0.12)  # bootstrap noise at 2,000 resamples: a few %
    assert S.binomial_se(30, 100) == pytest.approx(math.sqrt(0.3 * 0.7 / 100))
