"""Probability inflation under plain SFT (paper section 3, Fig. 3).

The paper fine-tunes OPT-350M with SFT on the *chosen* responses of HH-RLHF and monitors, per training batch, the
mean per-token log-probability (Eq. 3) of the chosen and of the rejected responses: both rise together, the
rejected ones sometimes above the chosen ones. SFT alone teaches the domain and the style, not the preference;
that is the motivation for ORPO's penalty.

What we measure: one SFT run (minorpo.train --method sft: the loss is the NLL of the chosen response only; the
rejected responses go through the model without gradient, for the metrics). Per batch: logps/chosen and
logps/rejected. Held out (never trained on): the same means on a fixed set of pairs at every evaluation, and
per pair at the end against the start. The verdict comes from least-squares trends with Newey-West standard
errors (common.linear_trend): the claim HOLDS if both the chosen and the rejected log-probs rise at t > 2,
per batch and on held-out pairs.

    python reproduce/probability_inflation.py --preset cpu --model PATH --data harmless-base-test.jsonl.gz
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common as C  # noqa: E402

CLAIM = ("Section 3 / Fig. 3: SFT on the chosen responses only raises the mean per-token log-probabilities of both "
         "the chosen AND the rejected responses (monitored per batch and on held-out pairs); rejected sometimes "
         "even above chosen.")

PRESETS = C.train_presets(paper={"heldout": 256}, cpu={"heldout": 32}, smoke={"heldout": 6})


def main(argv=None):
    args = C.parse_args(__doc__, PRESETS, argv)
    rec = C.Recorder(args, "probability_inflation", CLAIM)
    s = args.settings
    model, tok, pad_id, pairs, heldout, (a0, b0) = C.heldout_start(args, rec)  # a0, b0: before training
    rows, model = C.train_run(args, rec.out / f"run_{rec.tag}", "sft", (model, tok), pairs)
    a1, b1 = C.pair_logps(model, heldout, pad_id, s["train"]["batch_size"], rec.device)  # after

    train_rows = [r for r in rows if "loss" in r]
    measured, verdicts = {}, {}
    for side in ("chosen", "rejected"):
        steps, v = C.column(train_rows, f"logps/{side}")
        measured[f"per_batch_trend_{side}"] = C.linear_trend(steps, v)
        verdicts[f"per-batch {side} rises"] = C.trend_verdict(measured[f"per_batch_trend_{side}"], "up")
        es, ev = C.column(rows, f"eval_logps/{side}")
        measured[f"eval_{side}"] = dict(zip(es, ev))
        if len(es) >= 3:
            measured[f"eval_trend_{side}"] = C.linear_trend(es, ev)
            verdicts[f"held-out {side} rises (eval trend)"] = C.trend_verdict(measured[f"eval_trend_{side}"], "up")
    # per held-out pair, end minus start: a paired comparison over pairs (the trend above is over time)
    measured["heldout_change_chosen"] = C.paired_difference(a1, a0)
    measured["heldout_change_rejected"] = C.paired_difference(b1, b0)
    measured["heldout_pairs"] = len(heldout)
    measured["heldout_frac_rejected_above_chosen"] = {"start": float((b0 > a0).double().mean()),
                                                      "end": float((b1 > a1).double().mean())}
    steps, vc = C.column(train_rows, "logps/chosen")
    _, vr = C.column(train_rows, "logps/rejected")
    measured["frac_batches_rejected_above_chosen"] = sum(r > c for r, c in zip(vr, vc)) / len(vc)
    measured["per_batch_trend_margin"] = C.linear_trend(steps, [c - r for c, r in zip(vc, vr)])
    t_c, t_r = measured["per_batch_trend_chosen"], measured["per_batch_trend_rejected"]
    measured["rejected_slope_over_chosen_slope"] = t_r["slope"] / t_c["slope"] if t_c["slope"] else None
    measured["steps"] = len(train_rows)

    plt = C.pyplot()
    w = s["smooth"]
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8), gridspec_kw={"width_ratios": [2, 1]})
    ax = axes[0]
    for side, color, dark in (("chosen", "tab:green", "darkgreen"), ("rejected", "tab:red", "darkred")):
        st, v = C.column(train_rows, f"logps/{side}")
        tr = measured[f"per_batch_trend_{side}"]
        ax.plot(st, v, color=color, alpha=0.25, linewidth=0.8)
        ax.plot(st, C.moving_average(v, w), color=color, linewidth=2, label=f"{side}, per batch (mean of {w})")
        ax.plot(st, [tr["intercept"] + tr["slope"] * x for x in st], "--", color=color, linewidth=1,
                label=f"{side} fit: {tr['slope'] * 100:+.3f} ± {tr['slope_se'] * 100:.3f} nats / 100 steps")
        es, ev = C.column(rows, f"eval_logps/{side}")
        ax.plot(es, ev, "o-", color=dark, markersize=5, label=f"{side}, held-out ({rows[0].get('eval_pairs', '')} pairs)")
    ax.set(xlabel="optimizer step (SFT on chosen responses only)", ylabel="mean per-token log-prob (nats, Eq. 3)",
           title="Per-batch and held-out log-probabilities during SFT")
    ax.grid(alpha=0.3), ax.legend(fontsize=7)
    ax = axes[1]
    ax.scatter(a1 - a0, b1 - b0, s=12, color="tab:purple")
    lim = [min(float((a1 - a0).min()), float((b1 - b0).min())) - 0.05, max(float((a1 - a0).max()), float((b1 - b0).max())) + 0.05]
    ax.plot(lim, lim, color="gray", linewidth=0.8, label="equal change")
    ax.axhline(0, color="gray", linewidth=0.5), ax.axvline(0, color="gray", linewidth=0.5)
    ax.set(xlabel="change of chosen log-prob (nats)", ylabel="change of rejected log-prob (nats)",
           title=f"{len(heldout)} held-out pairs, end − start")
    ax.grid(alpha=0.3), ax.legend(fontsize=7)
    fig.suptitle(f"Fig. 3 re-run: probability inflation under SFT — {C.subtitle(args)}")
    figures = [rec.save_figure(fig, "fig3_sft_logps")]

    verdict = C.combine(verdicts.values())
    hc, hr = measured["heldout_change_chosen"], measured["heldout_change_rejected"]
    reason = (f"per-batch slopes (nats per 100 steps): chosen {t_c['slope'] * 100:+.3f} ± {t_c['slope_se'] * 100:.3f}, "
              f"rejected {t_r['slope'] * 100:+.3f} ± {t_r['slope_se'] * 100:.3f}; held-out change over the run "
              f"({len(heldout)} pairs): chosen {hc['mean']:+.3f} ± {hc['se']:.3f}, rejected {hr['mean']:+.3f} ± "
              f"{hr['se']:.3f} nats; rejected above chosen in {measured['frac_batches_rejected_above_chosen']:.0%} "
              f"of batches")
    rec.finish(measured, verdict, reason, figures, verdicts=verdicts)


if __name__ == "__main__":
    main()
