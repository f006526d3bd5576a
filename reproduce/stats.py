"""The statistics behind every reproduce/ verdict: Student's t by hand, paired tests, equivalence (TOST), the
bootstrap, the precondition, and how sub-claims and seeds combine into one verdict.

No scipy (it is not a dependency): Student's t distribution is computed from the regularized incomplete beta
function (a continued fraction, Numerical Recipes 3rd ed. §6.4), and its quantile by bisection on the CDF.
tests/test_reproduce_stats.py checks them against published values (t_{0.975,3} = 3.182446, ...).

The decision rules, stated once (reproduce/README.md points here):

* A directional sub-claim ("rejected falls") is a paired t-test over pairs, mean of per-pair differences
  against 0 with n - 1 degrees of freedom: HOLDS if t is beyond the two-sided 1 - alpha/2 critical value in the
  claimed direction, DOES NOT HOLD if beyond it in the opposite direction, else INCONCLUSIVE.
* A "stays near" sub-claim is an equivalence test (TOST, Schuirmann 1987) with a stated margin m: HOLDS if the
  (1 - 2 alpha) interval of the mean lies inside (-m, m) (both one-sided tests reject at alpha), DOES NOT HOLD if
  the (1 - alpha) interval lies entirely outside [-m, m] (the difference is significantly larger than m), else
  INCONCLUSIVE.
* Several sub-claims of one claim: HOLDS only if every sub-claim HOLDS at alpha (an intersection-union test, which
  has level alpha without correction); DOES NOT HOLD if some sub-claim is contradicted at alpha / k (Bonferroni
  over the k sub-claims: any one of k would do, so each must pass a k-times stricter test); else INCONCLUSIVE.
* Seeds (each draws its own subset of pairs): a claim HOLDS only where every seed HOLDS, DOES NOT HOLD only where
  every seed says so; seeds that disagree give INCONCLUSIVE.
* The precondition comes first: a claim about what the preference term does is only tested where the term was
  learned on the trained pairs (per pair: L_OR fell AND log OR rose, both paired t-tests that HOLD). Where it
  fails, the seed's verdict is INCONCLUSIVE and the reason names what was not reached.
"""

from __future__ import annotations

import math

import torch

HOLDS, FAILS, INCONCLUSIVE = "HOLDS", "DOES NOT HOLD", "INCONCLUSIVE"
ALPHA = 0.05


# ---------------------------------------------------------------------------------------------------------
# Student's t distribution


def _betacf(a: float, b: float, x: float) -> float:
    """The continued fraction of the incomplete beta function (modified Lentz; Numerical Recipes betacf)."""
    tiny, eps = 1e-300, 1e-15
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 10_000):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))  # the even step
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))  # the odd step
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < eps:
            return h
    raise RuntimeError(f"incomplete beta: no convergence for a={a}, b={b}, x={x}")


def betainc(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function I_x(a, b), 0 <= x <= 1."""
    if not 0.0 <= x <= 1.0:
        raise ValueError(f"betainc needs 0 <= x <= 1, got {x}")
    if x in (0.0, 1.0):
        return x
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):  # the fraction converges fast here; else use the symmetry I_x(a,b) = 1 - I_1-x(b,a)
        return math.exp(log_front) * _betacf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _betacf(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with df degrees of freedom (df > 0, need not be an integer):
    the two tails together have mass I_{df/(df+t^2)}(df/2, 1/2)."""
    if math.isinf(t):
        return 1.0 if t > 0 else 0.0
    tail = 0.5 * betainc(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t > 0 else tail


def t_quantile(p: float, df: float) -> float:
    """The t with t_cdf(t, df) = p, by bisection (to ~1e-12 relative)."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"t_quantile needs 0 < p < 1, got {p}")
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    if p == 0.5:
        return 0.0
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < p:
        lo, hi = hi, hi * 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-13 * max(1.0, hi):
            break
    return 0.5 * (lo + hi)


def t_critical(df: float, alpha: float = ALPHA) -> float:
    """The two-sided (1 - alpha) critical value of Student's t: t_{1-alpha/2, df}."""
    if df < 1:
        return math.inf
    return t_quantile(1.0 - alpha / 2.0, df)


# ---------------------------------------------------------------------------------------------------------
# tests over pairs


def mean_test(x, kind: str = "greater", margin: float | None = None, alpha: float = ALPHA) -> dict:
    """One-sample t statistics of x (per-pair differences, say) for a sub-claim about its mean.

    kind: "greater" (mean > 0 claimed), "less" (mean < 0), or "equivalent" (|mean| < margin, TOST).
    Returns mean, its standard error, n, df = n - 1, t, the two-sided p value, the (1 - alpha) interval, and for
    "equivalent" the margin and the (1 - 2 alpha) interval TOST uses; `decide` turns it into a verdict.
    """
    if kind not in ("greater", "less", "equivalent"):
        raise ValueError(f"kind must be greater, less or equivalent, got {kind!r}")
    if kind == "equivalent" and not (margin and margin > 0):
        raise ValueError("an equivalence test needs a margin > 0")
    x = torch.as_tensor(x, dtype=torch.float64).flatten()
    n = len(x)
    m = float(x.mean()) if n else math.nan
    se = float(x.std() / math.sqrt(n)) if n >= 2 else math.inf
    df = n - 1
    t = m / se if se > 0 else (math.copysign(math.inf, m) if m else 0.0)
    p = 2 * (1 - t_cdf(abs(t), df)) if df >= 1 and math.isfinite(t) else (0.0 if se == 0 and m else 1.0)
    c = t_critical(df, alpha)
    out = {"kind": kind, "mean": m, "se": se, "n": n, "df": df, "t": t, "p_two_sided": p,
           f"ci{round(100 * (1 - alpha))}": [m - c * se, m + c * se]}
    if kind == "equivalent":
        c1 = t_quantile(1 - alpha, df) if df >= 1 else math.inf
        out.update({"margin": margin, f"ci{round(100 * (1 - 2 * alpha))}_tost": [m - c1 * se, m + c1 * se]})
    return out


def decide(test: dict, alpha: float = ALPHA) -> str:
    """The verdict of one sub-claim (see the module docstring for the rules). A test with kind "fixed" carries
    its verdict (a deterministic check: a tolerance, a measured ratio against a stated range)."""
    kind = test["kind"]
    if kind == "fixed":
        return test["verdict"]
    m, se, df = test["mean"], test["se"], test["df"]
    if df < 1 or not math.isfinite(m):
        return INCONCLUSIVE
    if kind == "equivalent":
        c1, c2, mg = t_quantile(1 - alpha, df), t_critical(df, alpha), test["margin"]
        if -mg < m - c1 * se and m + c1 * se < mg:
            return HOLDS
        if m - c2 * se > mg or m + c2 * se < -mg:
            return FAILS
        return INCONCLUSIVE
    t = test["t"] if kind == "greater" else -test["t"]
    c = t_critical(df, alpha)
    return HOLDS if t > c else FAILS if t < -c else INCONCLUSIVE


def fixed(verdict: str, **numbers) -> dict:
    """A deterministic sub-claim in the form `decide` and `combine` take."""
    assert verdict in (HOLDS, FAILS, INCONCLUSIVE), verdict
    return {"kind": "fixed", "verdict": verdict, **numbers}


def combine(tests: dict, alpha: float = ALPHA) -> tuple[str, dict]:
    """(verdict of a claim, verdict of each sub-claim) from {name: test}: every sub-claim HOLDS at alpha ->
    HOLDS; some sub-claim contradicted at alpha / k (Bonferroni) -> DOES NOT HOLD; else INCONCLUSIVE."""
    k = len(tests)
    each = {name: decide(t, alpha) for name, t in tests.items()}
    if k and all(v == HOLDS for v in each.values()):
        return HOLDS, each
    if any(decide(t, alpha / k) == FAILS for t in tests.values()):
        return FAILS, each
    return INCONCLUSIVE, each


def across_seeds(verdicts: list[str]) -> str:
    """Every seed HOLDS -> HOLDS; every seed DOES NOT HOLD -> DOES NOT HOLD; else INCONCLUSIVE."""
    if verdicts and all(v == HOLDS for v in verdicts):
        return HOLDS
    if verdicts and all(v == FAILS for v in verdicts):
        return FAILS
    return INCONCLUSIVE


def precondition(a0, b0, a1, b1, alpha: float = ALPHA) -> dict:
    """Was the preference term learned on the trained pairs? a0, b0: per-pair chosen / rejected log-probs (Eq. 3)
    before training, a1, b1 after. Passed when, per pair, L_OR = -log sigmoid(log OR) fell (paired t-test, HOLDS)
    AND log OR rose (HOLDS). Returns {"passed", "reason", "tests"}."""
    from minorpo.loss import log_odds_ratio

    def lor(a, b):
        return log_odds_ratio(torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64))

    before, after = lor(a0, b0), lor(a1, b1)
    tests = {"L_OR falls": mean_test(torch.nn.functional.softplus(-after) - torch.nn.functional.softplus(-before),
                                     "less", alpha=alpha),
             "log OR rises": mean_test(after - before, "greater", alpha=alpha)}
    each = {k: decide(t, alpha) for k, t in tests.items()}
    passed = all(v == HOLDS for v in each.values())
    d = tests["log OR rises"]
    reason = (f"on the trained pairs log OR changed {d['mean']:+.3f} ± {d['se']:.3f} nats (t = {d['t']:.1f}, "
              f"df {d['df']}), L_OR {tests['L_OR falls']['mean']:+.3f} ± {tests['L_OR falls']['se']:.3f}")
    if not passed:
        reason = "precondition not reached: the preference was not learned on the trained pairs (" + ", ".join(
            f"{k}: {v}" for k, v in each.items()) + "); " + reason
    return {"passed": passed, "reason": reason, "tests": tests, "verdicts": each}


def learned_sft(a0, a1, alpha: float = ALPHA) -> dict:
    """The precondition of the SFT-only claim (§3): SFT learned the trained pairs' chosen responses (per pair, the
    chosen log-prob rose, paired t-test HOLDS)."""
    test = mean_test(torch.as_tensor(a1, dtype=torch.float64) - torch.as_tensor(a0, dtype=torch.float64),
                     "greater", alpha=alpha)
    passed = decide(test, alpha) == HOLDS
    reason = f"chosen log-prob on the trained pairs changed {test['mean']:+.3f} ± {test['se']:.3f} nats (t = {test['t']:.1f})"
    if not passed:
        reason = "precondition not reached: SFT did not raise the trained chosen responses; " + reason
    return {"passed": passed, "reason": reason, "tests": {"chosen rises": test}}


# ---------------------------------------------------------------------------------------------------------
# the bootstrap


def bootstrap_ci(x, stat=None, n_boot: int = 2000, level: float = 0.95, seed: int = 0) -> tuple[float, float, float]:
    """(statistic, lower, upper): the percentile-bootstrap interval of stat(x) (default: the mean) resampling
    the entries of x (prompts, pairs) with replacement."""
    x = torch.as_tensor(x, dtype=torch.float64).flatten()
    stat = stat or (lambda v: float(v.mean()))
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(len(x), (n_boot, len(x)), generator=g)
    boots = torch.tensor([stat(x[i]) for i in idx], dtype=torch.float64)
    q = torch.quantile(boots, torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=torch.float64))
    return stat(x), float(q[0]), float(q[1])


def binomial_se(k: int, n: int) -> float:
    """Standard error of a proportion k / n (sqrt(p (1 - p) / n))."""
    p = k / n
    return math.sqrt(p * (1 - p) / n)
