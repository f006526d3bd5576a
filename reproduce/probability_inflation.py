"""Probability inflation under plain SFT (paper section 3, Fig. 3).

The paper fine-tunes OPT-350M with SFT on the *chosen* responses of HH-RLHF and monitors, per training batch, the
mean per-token log-probability (Eq. 3) of the chosen and of the rejected responses: both rise together, the
rejected ones sometimes above the chosen ones. SFT alone teaches the domain and the style, not the preference;
that is the motivation for ORPO's penalty.

What we measure, per seed (its own subset of pairs; common.py): one SFT run (the loss is the NLL of the chosen
response only), full fine-tuning, several epochs over the trained pairs; per pair, on the trained pairs (what
the paper's per-batch curves show) and on held-out pairs, the change of a and b from step 0 to the end.

  precondition        SFT learned: the trained pairs' chosen log-probs rose (paired t-test).
  rejected rises      b_end - b_start > 0 per pair (paired t-test), on the trained pairs; the held-out pairs are
                      a separate claim.
  chosen rises        a_end - a_start > 0 (the precondition on the trained set; a sub-claim on held-out).
Reported, not tested: the fraction of pairs whose rejected response is the likelier one, at each epoch.

    python reproduce/probability_inflation.py --results [--model-family instruct]
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common as C  # noqa: E402
import stats as S  # noqa: E402

CLAIM = ("Section 3 / Fig. 3: SFT on the chosen responses only raises the mean per-token log-probabilities of both "
         "the chosen AND the rejected responses; rejected sometimes even above chosen.")

PRESETS = C.train_presets()


def main(argv=None):
    args = C.parse_args(__doc__, PRESETS, argv)
    rec = C.Recorder(args, "probability_inflation")
    _, tok = C.load_model(args)
    pool = C.seed_pool(args, tok)
    eta = C.ETA(C.total_steps(args, 1))
    runs_by_seed, measured, pre = {}, {}, {}
    verdicts, reasons, subs = ({"trained": {}, "heldout": {}} for _ in range(3))
    for seed in args.seeds:
        runs, _, _ = C.run_arms(args, {"SFT": ("sft", {})}, seed, pool, eta)
        runs_by_seed[seed] = runs
        run = runs["SFT"]
        p = S.learned_sft(C.begin(run, "trained")[0], C.end(run, "trained")[0])
        pre[seed] = p["reason"]
        m = {"precondition": p["tests"], "curves": {f"SFT {w}": C.curves(run, w) for w in ("trained", "heldout")}}
        for which in ("trained", "heldout"):
            (a0, b0), (a1, b1) = C.begin(run, which), C.end(run, which)
            tests = {"rejected rises": S.mean_test(b1 - b0, "greater")}
            if which == "heldout":
                tests["chosen rises"] = S.mean_test(a1 - a0, "greater")
            v, each = S.combine(tests)
            if not p["passed"]:
                v = S.INCONCLUSIVE
            frac = [float((b > a).double().mean()) for a, b in zip(run[which]["a"], run[which]["b"])]
            m[which] = {**tests, "chosen change": S.mean_test(a1 - a0, "greater"),
                        "fraction rejected above chosen, per epoch": frac}
            verdicts[which][seed], subs[which][seed] = v, each
            hc, hr = m[which]["chosen change"], tests["rejected rises"]
            reasons[which][seed] = ((p["reason"] + "; " if not p["passed"] else "")
                                    + f"{which} pairs (n = {hr['n']}): chosen {hc['mean']:+.3f} ± {hc['se']:.3f}, "
                                    f"rejected {hr['mean']:+.3f} ± {hr['se']:.3f} nats (t = {hr['t']:.1f}); "
                                    f"rejected above chosen in {frac[0]:.0%} of pairs at the start, {frac[-1]:.0%} at the end")
        measured[f"seed {seed}"] = m

    claims = {}
    for which, title in (("trained", "on the trained pairs"), ("heldout", "on held-out pairs")):
        claims[f"§3 Fig. 3 {title}"] = C.claim(CLAIM + f" Measured {title}.", verdicts[which], reasons[which],
                                               sub_verdicts={f"seed {k}": v for k, v in subs[which].items()},
                                               preconditions=pre)

    plt = C.pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.6), gridspec_kw={"width_ratios": [1, 1, 1]})
    for ax, which in zip(axes[:2], ("trained", "heldout")):
        C.plot_arm(ax, runs_by_seed, "SFT", which, "chosen", "tab:green", "-", "chosen")
        C.plot_arm(ax, runs_by_seed, "SFT", which, "rejected", "tab:red", "-", "rejected")
        ax.set(title=f"{which} pairs, mean over pairs", ylabel="mean per-token log-prob (nats, Eq. 3)",
               xlabel="optimizer step of SFT (a line per seed)")
        ax.grid(alpha=0.3), ax.legend(fontsize=8)
    ax = axes[2]
    for seed, runs in runs_by_seed.items():
        run = runs["SFT"]
        (a0, b0), (a1, b1) = C.begin(run, "heldout"), C.end(run, "heldout")
        ax.scatter(a1 - a0, b1 - b0, s=12, label=f"seed {seed}")
    ax.axhline(0, color="gray", linewidth=0.5), ax.axvline(0, color="gray", linewidth=0.5)
    ax.set(xlabel="change of chosen log-prob (nats)", ylabel="change of rejected log-prob (nats)",
           title="held-out pairs, end − start, one point per pair")
    ax.grid(alpha=0.3), ax.legend(fontsize=8)
    fig.suptitle(f"Fig. 3 re-run: probability inflation under SFT\n{C.subtitle(args)}")
    figures = [rec.save_figure(fig, "fig3_sft_logps")]
    rec.finish(measured, claims, figures)


if __name__ == "__main__":
    main()
