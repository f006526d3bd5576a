"""Odds ratio vs probability ratio (paper section 7.1, Fig. 6, and Appendix B, Fig. 8).

Part 1, the simulation of Fig. 6. X1, X2 ~ Uniform(0, 1), 50,000 samples each, stand for P(y_w|x) and P(y_l|x).
Compare the distribution of the log probability ratio, scaled as in a DPO-style loss,
    beta * log PR = beta * (log X1 - log X2)                       beta in {0.2, 1.0}
with that of the log odds ratio (Eq. 5)
    log OR = log(X1 / (1 - X1)) - log(X2 / (1 - X2)).
Exact distributions (our oracle for the simulation): -log X ~ Exponential(1), so log X1 - log X2 is Laplace(0, 1)
(standard deviation sqrt(2)); logit(X) ~ Logistic(0, 1), so log OR is the difference of two logistics (standard
deviation pi * sqrt(2/3) = 2.565). The paper's reading: log PR is much sharper (concentrated near 0), so
-log sigmoid(beta log PR) can only be made small by an extreme contrast between the two likelihoods.

Part 2, Appendix B. The same short training run twice: L_SFT + lam * L_OR (ORPO) and L_SFT + lam * L_PR with
L_PR = -log sigmoid(beta * (log P(y_w|x) - log P(y_l|x))) (minorpo.train --method pr). The paper reports that the
PR variant drives the per-batch log-probabilities below -4 quickly, and the OR variant only after overfitting.
We report the first step at which the per-batch mean log-prob (a trailing mean over `smooth` batches) falls below
-4, and the slope of each curve with its standard error.

    python reproduce/odds_vs_probability_ratio.py --preset cpu --model PATH --data harmless-base-test.jsonl.gz
"""

import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common as C  # noqa: E402

CLAIM = ("Section 7.1 / Fig. 6: with X1, X2 ~ U(0,1) (50,000 samples), beta*log(X1/X2) for beta in {0.2, 1.0} is much "
         "sharper (more concentrated near 0) than the log odds ratio logit(X1) - logit(X2). Appendix B / Fig. 8: "
         "training with a probability-ratio term drives the per-batch log-probs below -4 quickly; with the odds "
         "ratio only after overfitting.")
THRESHOLD = -4.0  # the paper's "below -4"
LOSS_TARGET = 0.1  # a preference loss -log sigmoid(z) <= 0.1 needs z >= log(1 / (e^0.1 - 1)) = 2.252

PRESETS = C.train_presets(
    paper={"samples": 50_000, "betas": [0.2, 1.0], "bootstrap": 1000, "lam": 1.0, "pr_betas": [0.2, 1.0]},
    cpu={"samples": 50_000, "betas": [0.2, 1.0], "bootstrap": 1000, "lam": 1.0, "pr_betas": [0.2, 1.0],
         "train": {"max_steps": 50}},
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
        verdicts[f"sharper (beta={beta:g})"] = C.HOLDS if hi < 1 else (C.FAILS if lo > 1 else C.INCONCLUSIVE)
    if not all(c["agrees"] for c in checks.values()):
        verdicts["simulation matches the exact distributions"] = C.INCONCLUSIVE
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
# Part 2: a short training run with PR vs OR


def train_both(rec, args):
    s = args.settings
    model_tok = C.load_model(args)
    tok = model_tok[1]
    pairs = C.load_pairs(args, tok, s.get("pairs") or None)
    runs = {"OR": C.train_run(args, rec.out / f"runs_{rec.tag}" / "or", "orpo", model_tok, pairs, lam=s["lam"])[0]}
    for beta in s["pr_betas"]:
        runs[f"PR (β={beta:g})"] = C.train_run(args, rec.out / f"runs_{rec.tag}" / f"pr_beta{beta:g}", "pr",
                                               C.load_model(args), pairs, lam=s["lam"], beta=beta)[0]
    measured, verdicts = {}, {}
    w = s["smooth"]
    for name, rows in runs.items():
        m = {}
        for side in ("chosen", "rejected"):
            steps, v = C.column([r for r in rows if "loss" in r], f"logps/{side}")
            m[f"first_step_below_{THRESHOLD:g}_{side}"] = C.first_below(steps, v, THRESHOLD, w)
            m[f"trend_{side}"] = C.linear_trend(steps, v)
            m[f"final_{side}_mean_last_{w}"] = sum(v[-w:]) / len(v[-w:])
            es, ev = C.column(rows, f"eval_logps/{side}")
            m[f"eval_{side}"] = dict(zip(es, ev))
        m["steps"] = max(r["step"] for r in rows)
        measured[name] = m
    or_first = measured["OR"][f"first_step_below_{THRESHOLD:g}_rejected"]
    for name in runs:
        if name == "OR":
            continue
        pr = measured[name]
        pr_first = pr[f"first_step_below_{THRESHOLD:g}_rejected"]
        # slope difference (rejected): PR minus OR, standard errors added in quadrature
        d = pr["trend_rejected"]["slope"] - measured["OR"]["trend_rejected"]["slope"]
        d_se = math.hypot(pr["trend_rejected"]["slope_se"], measured["OR"]["trend_rejected"]["slope_se"])
        pr["rejected_slope_minus_OR"] = {"diff": d, "se": d_se}
        if pr_first is not None and (or_first is None or pr_first < or_first):
            verdicts[f"{name} below {THRESHOLD:g} first"] = C.HOLDS
        elif or_first is not None and (pr_first is None or or_first < pr_first):
            verdicts[f"{name} below {THRESHOLD:g} first"] = C.FAILS
        else:  # neither crossed (or both at the same step): the run was too short to tell
            verdicts[f"{name} below {THRESHOLD:g} first"] = C.INCONCLUSIVE
    return runs, measured, verdicts


def plot_training(rec, args, runs):
    plt = C.pyplot()
    w = args.settings["smooth"]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    colors = ["tab:blue", "tab:red", "tab:orange", "tab:purple"]
    styles = ["-", "--", ":", "-."]  # the curves can coincide: line styles keep each one visible
    for ax, side in zip(axes, ("chosen", "rejected")):
        for color, style, (name, rows) in zip(colors, styles, runs.items()):
            steps, v = C.column([r for r in rows if "loss" in r], f"logps/{side}")
            ax.plot(steps, C.moving_average(v, w), style, color=color, linewidth=2.5 if style == "-" else 1.8,
                    label=f"{name}, per batch (mean of {w})")
            es, ev = C.column(rows, f"eval_logps/{side}")
            ax.plot(es, ev, "o" + style, color=color, markersize=5, linewidth=1,
                    label=f"{name}, held-out ({args.settings['train']['eval_pairs']} pairs)")
        ax.axhline(THRESHOLD, color="gray", linestyle=":", label=f"{THRESHOLD:g}")
        ax.set(xlabel="optimizer step", title=f"{side} responses", ylabel="mean per-token log-prob (nats, Eq. 3)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"App. B / Fig. 8: L_SFT + λ·L_PR vs L_SFT + λ·L_OR, λ = {args.settings['lam']:g} — {C.subtitle(args)}")
    return rec.save_figure(fig, "fig8_training")


def main(argv=None):
    args = C.parse_args(__doc__, PRESETS, argv)
    rec = C.Recorder(args, "odds_vs_probability_ratio", CLAIM)
    s = args.settings
    samples, sim, verdicts = simulate(s, args.seed)
    figures = [plot_simulation(rec, samples, s)]
    runs, train_measured, train_verdicts = train_both(rec, args)
    figures.append(plot_training(rec, args, runs))
    verdicts.update(train_verdicts)
    sim_verdict = C.combine(v for k, v in verdicts.items() if k not in train_verdicts)
    train_verdict = C.combine(train_verdicts.values())
    verdict = C.combine([sim_verdict, train_verdict])
    stats = sim["statistics"]
    reason = (f"simulation: {sim_verdict} (std of beta*log PR / std of log OR = "
              + ", ".join(f"{stats[f'{b:g} * log PR']['std_ratio_to_log_OR']:.3f} for beta={b:g}" for b in s["betas"])
              + "); training: " + train_verdict + " (first step with per-batch rejected log-prob < -4: "
              + ", ".join(f"{n}: {m[f'first_step_below_{THRESHOLD:g}_rejected']}" for n, m in train_measured.items())
              + f", None = not within {max(m['steps'] for m in train_measured.values())} steps)")
    rec.finish({"simulation": sim, "training": train_measured}, verdict, reason, figures, verdicts=verdicts)


if __name__ == "__main__":
    main()
