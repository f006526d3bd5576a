"""ORPO vs SFT on the same data and steps (paper section 7.2, Fig. 7).

The paper trains OPT-350M on HH-RLHF twice, with SFT and with ORPO (lambda = 1.0), and shows that under ORPO the
log-probabilities of the rejected responses fall while those of the chosen responses stay about where SFT puts
them, and the log odds ratio rises.

What we measure: two minorpo.train runs from the same start, same pairs in the same order, same steps and
learning rate: --method sft and --method orpo --lam 1.0. Per batch: logps/chosen, logps/rejected and
log_odds_chosen (the mean log OR). On a held-out set never trained on: per-pair log-probs at the end of each run,
compared pair by pair (paired mean difference with its standard error). Sub-claims and their tests:
  rejected falls under ORPO   per-batch trend of ORPO's rejected log-prob is negative (t beyond the 95% value);
  chosen stays near SFT       on held-out pairs, ORPO moves chosen less than it moves rejected, relative to SFT:
                              |mean(a_orpo - a_sft)| < |mean(b_orpo - b_sft)| by more than 2 standard errors
                              (and ORPO's rejected below SFT's);
  log odds rises              per-batch trend of ORPO's log OR is positive, and ORPO ends above SFT on held-out.

    python reproduce/orpo_vs_sft.py --preset cpu --model PATH --data harmless-base-test.jsonl.gz
"""

import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common as C  # noqa: E402

CLAIM = ("Section 7.2 / Fig. 7: with the same data and steps, ORPO (lambda = 1.0) lowers the log-probabilities of "
         "rejected responses while keeping the chosen ones near where SFT puts them, and the log odds ratio rises.")

PRESETS = C.train_presets(paper={"heldout": 256, "lam": 1.0, "train": {"lr": 8e-6}},
                          cpu={"heldout": 32, "lam": 1.0, "train": {"max_steps": 80}},
                          smoke={"heldout": 6, "lam": 1.0})


def main(argv=None):
    args = C.parse_args(__doc__, PRESETS, argv)
    rec = C.Recorder(args, "orpo_vs_sft", CLAIM)
    s = args.settings
    from minorpo import loss as L
    model, tok, pad_id, pairs, heldout, (a0, b0) = C.heldout_start(args, rec)
    bs = s["train"]["batch_size"]
    runs, end = {}, {}
    for name, method, kw in (("SFT", "sft", {}), ("ORPO", "orpo", {"lam": s["lam"]})):
        if name != "SFT":
            model, tok = C.load_model(args)  # the same starting weights again
        runs[name], model = C.train_run(args, rec.out / f"runs_{rec.tag}" / method, method, (model, tok), pairs, **kw)
        end[name] = C.pair_logps(model, heldout, pad_id, bs, rec.device)
        del model

    measured, verdicts = {"heldout_pairs": len(heldout)}, {}
    for name, rows in runs.items():
        tr = [r for r in rows if "loss" in r]
        m = {}
        for key in ("logps/chosen", "logps/rejected", "log_odds_chosen"):
            steps, v = C.column(tr, key)
            m[f"trend {key}"] = C.linear_trend(steps, v)
            m[f"final {key} (mean of last {s['smooth']} batches)"] = sum(v[-s["smooth"]:]) / len(v[-s["smooth"]:])
        a, b = end[name]
        m["heldout_end"] = {"logps/chosen": float(a.mean()), "logps/rejected": float(b.mean()),
                            "log_odds_chosen": float(L.log_odds_ratio(a, b).mean())}
        m["steps"] = len(tr)
        measured[name] = m
    measured["heldout_start"] = {"logps/chosen": float(a0.mean()), "logps/rejected": float(b0.mean()),
                                 "log_odds_chosen": float(L.log_odds_ratio(a0, b0).mean())}
    (a_s, b_s), (a_o, b_o) = end["SFT"], end["ORPO"]
    d_chosen = C.paired_difference(a_o, a_s)  # ORPO - SFT, per held-out pair
    d_rejected = C.paired_difference(b_o, b_s)
    d_log_or = C.paired_difference(L.log_odds_ratio(a_o, b_o), L.log_odds_ratio(a_s, b_s))
    gap = C.paired_difference(b_s - b_o, (a_o - a_s).abs())  # how much more rejected moved than chosen
    measured["heldout ORPO - SFT"] = {"chosen": d_chosen, "rejected": d_rejected, "log_odds_ratio": d_log_or,
                                      "rejected_drop_minus_abs_chosen_change": gap}
    measured["heldout_per_pair"] = {"start": {"chosen": a0, "rejected": b0}, "SFT": {"chosen": a_s, "rejected": b_s},
                                    "ORPO": {"chosen": a_o, "rejected": b_o}}
    # Both runs see the same batches in the same order, so at each step ORPO - SFT on the batch is a paired
    # difference: the batch-to-batch noise (most of the per-batch curves' wiggle) cancels.
    tr_s, tr_o = ([r for r in runs[n] if "loss" in r] for n in ("SFT", "ORPO"))
    paired = {}
    for key in ("logps/chosen", "logps/rejected", "log_odds_chosen"):
        d = [o[key] - q[key] for o, q in zip(tr_o, tr_s)]
        half = d[len(d) // 2:]
        paired[key] = {"trend": C.linear_trend([r["step"] for r in tr_o], d), "second_half": C.mean_se(half)}
    measured["per_batch ORPO - SFT (same batches)"] = paired
    # median gradient norm before clipping (steps above max_grad_norm = 1.0 were rescaled), per run
    measured["grad_norm_median"] = {n: statistics.median(r["grad_norm"] for r in rows if "grad_norm" in r)
                                    for n, rows in runs.items()}

    verdicts["rejected falls under ORPO (per-batch trend)"] = C.trend_verdict(measured["ORPO"]["trend logps/rejected"], "down")
    if d_rejected["t"] < -2 and gap["t"] > 2:
        verdicts["chosen stays near SFT (held-out)"] = C.HOLDS
    elif gap["t"] < -2:  # chosen moved more than rejected
        verdicts["chosen stays near SFT (held-out)"] = C.FAILS
    else:
        verdicts["chosen stays near SFT (held-out)"] = C.INCONCLUSIVE
    log_or_trend = C.trend_verdict(measured["ORPO"]["trend log_odds_chosen"], "up")
    log_or_vs_sft = C.HOLDS if d_log_or["t"] > 2 else (C.FAILS if d_log_or["t"] < -2 else C.INCONCLUSIVE)
    verdicts["log odds ratio rises (trend, and above SFT held-out)"] = C.combine([log_or_trend, log_or_vs_sft])

    plt = C.pyplot()
    w = s["smooth"]
    fig, axes = plt.subplots(1, 3, figsize=(17, 4.8))
    colors = {"SFT": ("tab:green", "tab:red"), "ORPO": ("darkgreen", "darkred")}
    styles = {"SFT": ":", "ORPO": "-"}
    for name, rows in runs.items():
        tr = [r for r in rows if "loss" in r]
        for i, side in enumerate(("chosen", "rejected")):
            st, v = C.column(tr, f"logps/{side}")
            ax = axes[0]
            ax.plot(st, C.moving_average(v, w), styles[name], color=colors[name][i], linewidth=2,
                    label=f"{name} {side} (per batch, mean of {w})")
            es, ev = C.column(rows, f"eval_logps/{side}")
            axes[1].plot(es, ev, styles[name] + "o", color=colors[name][i], markersize=4, label=f"{name} {side}")
        st, v = C.column(tr, "log_odds_chosen")
        axes[2].plot(st, C.moving_average(v, w), styles[name], color="tab:purple" if name == "ORPO" else "gray",
                     linewidth=2, label=f"{name} (per batch, mean of {w})")
        es, ev = C.column(rows, "eval_log_odds_chosen")
        axes[2].plot(es, ev, "o", color="tab:purple" if name == "ORPO" else "gray", markersize=4, label=f"{name} held-out")
    axes[0].set(title="Per batch", ylabel="mean per-token log-prob (nats, Eq. 3)")
    axes[1].set(title="Held-out (minorpo.train's eval set)", ylabel="mean per-token log-prob (nats, Eq. 3)")
    axes[2].set(title="Log odds ratio", ylabel="mean log OR(y_w, y_l) (nats, Eq. 5)")
    axes[2].axhline(0, color="gray", linewidth=0.6)
    for ax in axes:
        ax.set_xlabel("optimizer step")
        ax.grid(alpha=0.3), ax.legend(fontsize=7)
    fig.suptitle(f"Fig. 7 re-run: SFT vs ORPO (λ = {s['lam']:g}), same data and steps — {C.subtitle(args)}")
    figures = [rec.save_figure(fig, "fig7_orpo_vs_sft")]

    verdict = C.combine(verdicts.values())
    t_r = measured["ORPO"]["trend logps/rejected"]
    reason = (f"ORPO rejected per-batch slope {t_r['slope'] * 100:+.3f} ± {t_r['slope_se'] * 100:.3f} nats/100 steps; "
              f"held-out ORPO - SFT ({len(heldout)} pairs): chosen {d_chosen['mean']:+.3f} ± {d_chosen['se']:.3f}, "
              f"rejected {d_rejected['mean']:+.3f} ± {d_rejected['se']:.3f}, log OR {d_log_or['mean']:+.3f} ± "
              f"{d_log_or['se']:.3f} nats")
    rec.finish(measured, verdict, reason, figures, verdicts=verdicts)


if __name__ == "__main__":
    main()
