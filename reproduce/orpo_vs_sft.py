"""ORPO vs SFT on the same pairs, in the same order (paper section 7.2, Fig. 7).

The paper trains OPT-350M on HH-RLHF twice, with SFT and with ORPO (lambda = 1.0), and shows that under ORPO the
log-probabilities of the rejected responses fall while those of the chosen responses stay about where SFT puts
them, and the log odds ratio rises.

What we measure, per seed (each seed draws its own subset of trained and held-out pairs; common.py): two runs
from the same weights, --method sft and --method orpo with lambda = 1, full fine-tuning, the same pairs in the
same order, several epochs. Per pair, on the trained pairs and on the held-out pairs, at every epoch: the
chosen and rejected mean log-probs a, b (Eq. 3). All tests are per pair at the end of training (stats.py):

  precondition         ORPO learned the preference on its trained pairs: L_OR fell and log OR rose (paired
                       t-tests). Where it did not, the seed is INCONCLUSIVE with that reason.
  rejected falls       under ORPO, b_end - b_start < 0.
  chosen stays near    a_ORPO - a_SFT is within +-MARGIN nats of 0 (TOST equivalence). The report gives
  SFT                  |mean(a_ORPO - a_SFT)| with the 95% interval of the mean (not mean |.|, which per-pair
                       noise biases upward).
  log OR above SFT     log OR_ORPO - log OR_SFT > 0.

The trained-pairs verdict and the held-out verdict are separate claims (the second asks whether the effect
carries over to pairs never trained on). Sub-claims combine by stats.combine, seeds by stats.across_seeds.

    python reproduce/orpo_vs_sft.py --results                        # cpu preset, Gemma 3 270M base, seeds 0 1
    python reproduce/orpo_vs_sft.py --results --model-family instruct
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common as C  # noqa: E402
import stats as S  # noqa: E402

CLAIM = ("Section 7.2 / Fig. 7: with the same data and steps, ORPO (lambda = 1.0) lowers the log-probabilities of "
         "rejected responses while keeping the chosen ones near where SFT puts them, and the log odds ratio rises "
         "above SFT's.")
# "Near where SFT puts them": within 0.1 nats per token, a factor e^0.1 = 1.105 on the per-token geometric-mean
# probability (Eq. 3). Chosen before the experiment was run, not tuned to it.
MARGIN = 0.1

PRESETS = C.train_presets(paper={"lam": 1.0}, cpu={"lam": 1.0}, smoke={"lam": 1.0})


def sub_claims(sft, orpo, which: str) -> dict:
    """The three per-pair tests on one set ("trained" or "heldout") at the end of training."""
    from minorpo.loss import log_odds_ratio
    a0, b0 = C.begin(orpo, which)
    a_s, b_s = C.end(sft, which)
    a_o, b_o = C.end(orpo, which)
    return {"rejected falls under ORPO": S.mean_test(b_o - b0, "less"),
            "chosen stays near SFT": S.mean_test(a_o - a_s, "equivalent", margin=MARGIN),
            "log OR above SFT": S.mean_test(log_odds_ratio(a_o, b_o) - log_odds_ratio(a_s, b_s), "greater")}


def main(argv=None):
    args = C.parse_args(__doc__, PRESETS, argv)
    rec = C.Recorder(args, "orpo_vs_sft")
    s = args.settings
    arms = {"SFT": ("sft", {}), "ORPO": ("orpo", {"lam": s["lam"]})}
    _, tok = C.load_model(args)
    pool = C.seed_pool(args, tok)
    eta = C.ETA(C.total_steps(args, len(arms)))
    runs_by_seed, measured = {}, {}
    verdicts = {"trained": {}, "heldout": {}}
    reasons = {"trained": {}, "heldout": {}}
    subs, pre = {"trained": {}, "heldout": {}}, {}
    for seed in args.seeds:
        runs, _, _ = C.run_arms(args, arms, seed, pool, eta)
        runs_by_seed[seed] = runs
        p = S.precondition(*C.begin(runs["ORPO"], "trained"), *C.end(runs["ORPO"], "trained"))
        pre[seed] = p["reason"]
        m = {"precondition": p["tests"], "curves": {f"{arm} {w}": C.curves(r, w) for arm, r in runs.items()
                                                    for w in ("trained", "heldout")}}
        for which in ("trained", "heldout"):
            tests = sub_claims(runs["SFT"], runs["ORPO"], which)
            d = tests["chosen stays near SFT"]
            tests["chosen stays near SFT"]["abs_mean"] = abs(d["mean"])  # |mean(a_ORPO - a_SFT)|, the docstring's statistic
            v, each = S.combine(tests)
            if not p["passed"]:
                v = S.INCONCLUSIVE
            m[which] = tests
            verdicts[which][seed], subs[which][seed] = v, each
            r, c, lo = tests["rejected falls under ORPO"], tests["chosen stays near SFT"], tests["log OR above SFT"]
            reasons[which][seed] = (
                (p["reason"] + "; " if not p["passed"] else "")
                + f"{which} pairs (n = {r['n']}): ORPO rejected change {r['mean']:+.3f} ± {r['se']:.3f} ({each['rejected falls under ORPO']}); "
                f"chosen ORPO - SFT {c['mean']:+.3f}, 90% CI [{c['ci90_tost'][0]:+.3f}, {c['ci90_tost'][1]:+.3f}] vs margin "
                f"±{MARGIN} ({each['chosen stays near SFT']}); log OR ORPO - SFT {lo['mean']:+.3f} ± {lo['se']:.3f} "
                f"({each['log OR above SFT']})")
        measured[f"seed {seed}"] = m

    claims = {}
    for which, title in (("trained", "on the trained pairs"), ("heldout", "on held-out pairs")):
        claims[f"§7.2 Fig. 7 {title}"] = C.claim(CLAIM + f" Measured {title}.", verdicts[which], reasons[which],
                                                 sub_verdicts={f"seed {k}": v for k, v in subs[which].items()},
                                                 preconditions=pre)

    plt = C.pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(17, 4.8))
    for ax, which in zip(axes[:2], ("trained", "heldout")):
        for arm, style in (("SFT", ":"), ("ORPO", "-")):
            C.plot_arm(ax, runs_by_seed, arm, which, "chosen", "tab:green", style, f"{arm} chosen")
            C.plot_arm(ax, runs_by_seed, arm, which, "rejected", "tab:red", style, f"{arm} rejected")
        ax.set(title=f"{which} pairs ({s[which + '_pairs'] if which == 'heldout' else s['train_pairs']} per seed)",
               ylabel="mean per-token log-prob (nats, Eq. 3)")
    for arm, color in (("SFT", "gray"), ("ORPO", "tab:purple")):
        C.plot_arm(axes[2], runs_by_seed, arm, "trained", "log_or", color, "-", f"{arm}, trained pairs")
        C.plot_arm(axes[2], runs_by_seed, arm, "heldout", "log_or", color, "--", f"{arm}, held-out pairs")
    axes[2].axhline(0, color="gray", linewidth=0.6)
    axes[2].set(title="log odds ratio", ylabel="mean log OR(y_w, y_l) (nats, Eq. 5)")
    for ax in axes:
        ax.set_xlabel(f"optimizer step ({s['train']['batch_size']} pairs; a point per measurement; a line per seed)")
        ax.grid(alpha=0.3), ax.legend(fontsize=7)
    fig.suptitle(f"Fig. 7 re-run: SFT vs ORPO (λ = {s['lam']:g}), same pairs, same order\n{C.subtitle(args)}")
    figures = [rec.save_figure(fig, "fig7_orpo_vs_sft")]
    rec.finish(measured, claims, figures)


if __name__ == "__main__":
    main()
