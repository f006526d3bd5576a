"""Odds ratio vs probability ratio (paper section 7.1, Fig. 6, and Appendix B, Fig. 8): two separate claims.

Claim 1, the simulation of Fig. 6. X1, X2 ~ Uniform(0, 1), 50,000 samples each, stand for P(y_w|x) and P(y_l|x).
Compare the distribution of the log probability ratio, scaled as in a DPO-style loss,
    beta * log PR = beta * (log X1 - log X2)                       beta in {0.2, 1.0}
with that of the log odds ratio (Eq. 5)
    log OR = log(X1 / (1 - X1)) - log(X2 / (1 - X2)).
Exact distributions (our oracle for the simulation): -log X ~ Exponential(1), so log X1 - log X2 is Laplace(0, 1)
(standard deviation sqrt(2)); logit(X) ~ Logistic(0, 1), so log OR is the difference of two logistics (standard
deviation pi * sqrt(2/3) = 2.565). The paper's reading: log PR is much sharper (concentrated near 0), so
-log sigmoid(beta log PR) can only be made small by an extreme contrast between the two likelihoods. Decided per
seed from the 95% bootstrap interval of std(beta log PR) / std(log OR) (below 1: sharper), with the sample
matching the exact distributions as a second sub-claim.

Claim 2, Appendix B: L_SFT + lam * L_PR, with L_PR = -log sigmoid(beta * (log P(y_w|x) - log P(y_l|x)))
(minorpo --method pr), "drives the log-probabilities down" (below -4 in the paper's Fig. 8) where L_SFT + lam *
L_OR does so only after overfitting. The two differ only where 1 / (1 - P) is not ~1: log OR - log PR =
log(1 - P_l) - log(1 - P_w), ~0.02 nats at P ~ 0.08. So we train on a small subset for several epochs (the
likelihoods of the trained pairs climb) and compare per pair, on the trained pairs, at the end:
  precondition   each arm learned its own preference on the trained pairs (OR: L_OR fell and log OR rose; PR:
                 a - b rose), AND the regime where OR and PR can differ was reached: the median trained pair's
                 1 / (1 - P_w) >= REGIME in the OR run. Else INCONCLUSIVE, naming which.
  rejected lower under PR    b_PR - b_OR < 0 per pair (paired t-test: same pairs, same order, same start).
  chosen lower under PR      a_PR - a_OR < 0 per pair (Fig. 8 shows both responses pushed down).
Reported, not tested: the fraction of trained pairs whose log-probs are below -4 at each epoch, per arm (the
paper's threshold; one run's crossing step is not a statistic).

    python reproduce/odds_vs_probability_ratio.py --results [--model-family instruct]
"""

import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common as C  # noqa: E402
import stats as S  # noqa: E402

CLAIM_SIM = ("Section 7.1 / Fig. 6: with X1, X2 ~ U(0,1) (50,000 samples), beta*log(X1/X2) for beta in {0.2, 1.0} "
             "is much sharper (more concentrated near 0) than the log odds ratio logit(X1) - logit(X2).")
CLAIM_TRAIN = ("Appendix B / Fig. 8: training with a probability-ratio term (L_SFT + L_PR) drives the log-probabilities "
               "of the responses down (below -4 in the paper) where the odds ratio does not.")
THRESHOLD = -4.0  # the paper's "below -4"
LOSS_TARGET = 0.1  # a preference loss -log sigmoid(z) <= 0.1 needs z >= log(1 / (e^0.1 - 1)) = 2.252
# OR and PR can differ only where 1/(1 - P_w) is not ~1: we require the median trained pair's 1/(1 - P_w) >= 1.25
# (P_w >= 0.2, a >= -1.61 nats per token) at the end of the OR run; log OR - log PR is then >= 0.22 nats there.
REGIME = 1.25

PRESETS = C.train_presets(
    paper={"samples": 50_000, "betas": [0.2, 1.0], "bootstrap": 1000, "lam": 1.0, "pr_betas": [0.2, 1.0]},
    cpu={"samples": 50_000, "betas": [0.2, 1.0], "bootstrap": 1000, "lam": 1.0, "pr_betas": [1.0], "epochs": 6},
    smoke={"samples": 5_000, "betas": [0.2, 1.0], "bootstrap": 50, "lam": 1.0, "pr_betas": [0.2]},
)


# ---------------------------------------------------------------------------------------------------------
# Part 1: the simulation


def summary(x: torch.Tensor) -> dict:
    """Mean, standard deviation, interquartile range, excess kurtosis, tails, and mass near 0 of a sample."""
    q = torch.quantile(x.float(), torch.tensor([0.01, 0.25, 0.5, 0.75, 0.99])).double()
    z = (x - x.mean()) / x.std()
    return {"mean": float(x.mean()), "std": float(x.std()), "iqr": float(q[3] - q[1]), "median": float(q[2]),
            "q01": float(q[0]), "q99": float(q[4]), "excess_kurtosis": float((z ** 4).mean() - 3),
            "frac_abs_below_0.5": float((x.abs() < 0.5).double().mean()),
            "frac_above_loss_target": float((x > math.log(1 / math.expm1(LOSS_TARGET))).double().mean())}


def bootstrap_std_ratio(x: torch.Tensor, y: torch.Tensor, n_boot: int, g: torch.Generator) -> tuple[float, float]:
    """95% percentile-bootstrap interval of std(x) / std(y), x and y paired (resampled together)."""
    n = len(x)
    ratios = []
    for _ in range(n_boot):
        i = torch.randint(n, (n,), generator=g)
        ratios.append(float(x[i].std() / y[i].std()))
    r = torch.tensor(ratios)
    return float(torch.quantile(r, 0.025)), float(torch.quantile(r, 0.975))


def simulate(s: dict, seed: int) -> tuple[dict, dict, dict]:
    g = torch.Generator().manual_seed(seed)
    n = s["samples"]
    x1 = torch.rand(n, generator=g, dtype=torch.float64).clamp_min(1e-300)  # (n,)  P(y_w|x); never exactly 0
    x2 = torch.rand(n, generator=g, dtype=torch.float64).clamp_min(1e-300)  # (n,)  P(y_l|x)
    log_or = torch.logit(x1) - torch.logit(x2)  # Eq. 5 with P = X
    samples = {"log OR": log_or}
    for beta in s["betas"]:
        samples[f"{beta:g} * log PR"] = beta * (x1.log() - x2.log())
    stats = {name: summary(v) for name, v in samples.items()}
    exact_std = {"log OR": math.pi * math.sqrt(2 / 3)}
    exact_std.update({f"{b:g} * log PR": b * math.sqrt(2) for b in s["betas"]})
    checks, verdicts = {}, {}
    for name, v in samples.items():
        # the simulation against the exact distributions: the sample std's standard error is ~ std * sqrt((k+2)/(4n))
        # with k the excess kurtosis; allow 4 standard errors
        se = exact_std[name] * math.sqrt((stats[name]["excess_kurtosis"] + 2) / (4 * n))
        checks[name] = {"exact_std": exact_std[name], "sample_std": stats[name]["std"], "se": se,
                        "agrees": abs(stats[name]["std"] - exact_std[name]) < 4 * se}
    for beta in s["betas"]:
        name = f"{beta:g} * log PR"
        lo, hi = bootstrap_std_ratio(samples[name], log_or, s["bootstrap"], g)
        stats[name]["std_ratio_to_log_OR"] = stats[name]["std"] / stats["log OR"]["std"]
        stats[name]["std_ratio_95ci"] = [lo, hi]
        verdicts[f"sharper (beta={beta:g})"] = S.fixed(S.HOLDS if hi < 1 else S.FAILS if lo > 1 else S.INCONCLUSIVE,
                                                        ci95=[lo, hi])
    agree = all(c["agrees"] for c in checks.values())
    verdicts["sample matches the exact distributions"] = S.fixed(S.HOLDS if agree else S.INCONCLUSIVE)
    return samples, {"statistics": stats, "exact_std_check": checks}, verdicts


def plot_simulation(rec, samples, s):
    plt = C.pyplot()
    fig, axes = plt.subplots(1, len(s["betas"]), figsize=(6 * len(s["betas"]), 4.3), sharey=True)
    bins = torch.linspace(-10, 10, 161)
    for ax, beta in zip(axes, s["betas"]):
        name = f"{beta:g} * log PR"
        ax.hist(samples[name].clamp(-10, 10).numpy(), bins=bins.numpy(), density=True, alpha=0.55,
                color="tab:red", label=f"β log PR, β = {beta:g} (std {samples[name].std():.2f})")
        ax.hist(samples["log OR"].clamp(-10, 10).numpy(), bins=bins.numpy(), density=True, alpha=0.55,
                color="tab:blue", label=f"log OR (std {samples['log OR'].std():.2f})")
        ax.set(xlabel="log ratio (nats; clipped to [-10, 10])", title=f"β = {beta:g}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0].set_ylabel("density")
    fig.suptitle(f"Fig. 6 re-run: X1, X2 ~ U(0,1), {s['samples']:,} samples")
    return rec.save_figure(fig, "fig6_simulation")


# ---------------------------------------------------------------------------------------------------------
# Part 2: training with PR vs OR on a small subset, several epochs


def train_claims(runs: dict, lam_name: str) -> tuple[dict, dict]:
    """(precondition, {PR arm: tests}) for one seed's runs {"OR": ..., "PR (β=...)": ...}."""
    import torch
    from minorpo.loss import log_odds_ratio
    a0, b0 = C.begin(runs["OR"], "trained")
    a_or, b_or = C.end(runs["OR"], "trained")
    pre = S.precondition(a0, b0, a_or, b_or)
    inv = float((1 / (-torch.expm1(a_or.double()))).median())  # 1 / (1 - P_w), P_w = exp(a)
    gap = float((log_odds_ratio(a_or.double(), b_or.double()) - (a_or - b_or).double()).mean())
    pre["regime"] = {"median_inv_1_minus_Pw_OR_run": inv, "mean_logOR_minus_logPR_OR_run": gap, "required": REGIME}
    reasons = [] if pre["passed"] else [pre["reason"]]
    tests = {}
    for name, run in runs.items():
        if name == "OR":
            continue
        a1, b1 = C.end(run, "trained")
        learned = S.mean_test((a1 - b1) - (a0 - b0), "greater")
        pre[f"{name} learned (a - b rose)"] = learned
        if S.decide(learned) != S.HOLDS:
            reasons.append(f"{name} did not learn its preference (a - b {learned['mean']:+.3f} ± {learned['se']:.3f})")
        tests[name] = {"rejected lower under PR": S.mean_test(b1 - b_or, "less"),
                       "chosen lower under PR": S.mean_test(a1 - a_or, "less")}
    if inv < REGIME:
        reasons.append(f"the likelihoods stayed too low for OR and PR to differ: median 1/(1 - P_w) = {inv:.3f} < "
                       f"{REGIME} on the trained pairs (log OR - log PR = {gap:+.3f} nats)")
    pre["passed_all"] = not reasons
    pre["reason_all"] = ("precondition not reached: " + "; ".join(reasons)) if reasons else (
        pre["reason"] + f"; median 1/(1 - P_w) {inv:.3f} >= {REGIME}")
    return pre, tests


def plot_training(rec, args, runs_by_seed):
    plt = C.pyplot()
    names = list(next(iter(runs_by_seed.values())))
    fig, axes = plt.subplots(1, 3, figsize=(17, 4.6))
    colors = ["tab:blue", "tab:red", "tab:orange", "tab:purple"]
    for ax, side in zip(axes[:2], ("chosen", "rejected")):
        for color, name in zip(colors, names):
            C.plot_arm(ax, runs_by_seed, name, "trained", side, color, "-", f"{name}, trained pairs")
            C.plot_arm(ax, runs_by_seed, name, "heldout", side, color, ":", f"{name}, held-out pairs")
        ax.axhline(THRESHOLD, color="gray", linestyle=":", label=f"{THRESHOLD:g} (the paper's threshold)")
        ax.set(title=f"{side} responses, mean over pairs", ylabel="mean per-token log-prob (nats, Eq. 3)")
    ax = axes[2]
    for color, name in zip(colors, names):
        for i, (seed, runs) in enumerate(runs_by_seed.items()):
            r = runs[name]
            frac = (r["trained"]["b"] < THRESHOLD).double().mean(1).tolist()
            ax.plot(r["steps"], frac, "-o", markersize=3, color=color, alpha=1.0 if i == 0 else 0.55,
                    label=name if i == 0 else None)
    ax.set(title=f"fraction of trained pairs with rejected log-prob < {THRESHOLD:g}", ylabel="fraction of pairs")
    for ax in axes:
        ax.set_xlabel("optimizer step (a point per measurement, a line per seed)")
        ax.grid(alpha=0.3), ax.legend(fontsize=7)
    fig.suptitle(f"App. B / Fig. 8: L_SFT + λ·L_PR vs L_SFT + λ·L_OR, λ = {args.settings['lam']:g}\n{C.subtitle(args)}")
    return rec.save_figure(fig, "fig8_training")


def main(argv=None):
    args = C.parse_args(__doc__, PRESETS, argv)
    rec = C.Recorder(args, "odds_vs_probability_ratio")
    s = args.settings
    sim_v, sim_r, sim_sub, sim_measured = {}, {}, {}, {}
    for seed in args.seeds:
        samples, sim, tests = simulate(s, seed)
        v, each = S.combine(tests)
        sim_v[seed], sim_sub[f"seed {seed}"] = v, each
        sim_measured[f"seed {seed}"] = sim
        st = sim["statistics"]
        sim_r[seed] = "std of beta*log PR / std of log OR = " + ", ".join(
            f"{st[f'{b:g} * log PR']['std_ratio_to_log_OR']:.3f} (95% CI {st[f'{b:g} * log PR']['std_ratio_95ci'][0]:.3f}"
            f"-{st[f'{b:g} * log PR']['std_ratio_95ci'][1]:.3f}) for beta={b:g}" for b in s["betas"])
        if seed == args.seeds[0]:
            figures = [plot_simulation(rec, samples, s)]

    arms = {"OR": ("orpo", {"lam": s["lam"]})}
    arms.update({f"PR (β={b:g})": ("pr", {"lam": s["lam"], "beta": b}) for b in s["pr_betas"]})
    _, tok = C.load_model(args)
    pool = C.seed_pool(args, tok)
    eta = C.ETA(C.total_steps(args, len(arms)))
    runs_by_seed, train_measured = {}, {}
    tr_v, tr_r, tr_sub, pre_r = {}, {}, {}, {}
    for seed in args.seeds:
        runs, _, _ = C.run_arms(args, arms, seed, pool, eta)
        runs_by_seed[seed] = runs
        pre, tests = train_claims(runs, s["lam"])
        flat = {f"{arm}: {k}": t for arm, ts in tests.items() for k, t in ts.items()}
        v, each = S.combine(flat)
        tr_v[seed] = v if pre["passed_all"] else S.INCONCLUSIVE
        tr_sub[f"seed {seed}"] = each
        pre_r[seed] = pre["reason_all"]
        below = {arm: {side: (r["trained"][side] < THRESHOLD).double().mean(1).tolist() for side in ("a", "b")}
                 for arm, r in runs.items()}
        train_measured[f"seed {seed}"] = {
            "precondition": pre, "tests": flat, "fraction_trained_pairs_below_-4 (a = chosen, b = rejected)": below,
            "curves": {f"{arm} {w}": C.curves(r, w) for arm, r in runs.items() for w in ("trained", "heldout")}}
        tr_r[seed] = ((pre["reason_all"] + "; ") if not pre["passed_all"] else "") + ", ".join(
            f"{k}: {t['mean']:+.3f} ± {t['se']:.3f} ({each[k]})" for k, t in flat.items())
    figures.append(plot_training(rec, args, runs_by_seed))
    claims = {"§7.1 Fig. 6 simulation": C.claim(CLAIM_SIM, sim_v, sim_r, sim_sub),
              "App. B Fig. 8 training": C.claim(CLAIM_TRAIN, tr_v, tr_r, tr_sub, pre_r)}
    rec.finish({"simulation": sim_measured, "training": train_measured}, claims, figures)


if __name__ == "__main__":
    main()
