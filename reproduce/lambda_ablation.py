"""The weight lambda of the odds-ratio term (paper Appendix E, Fig. 9).

The paper (Mistral-7B on UltraFeedback) trains ORPO with lambda = 0.1, 0.5 and 1.0 and reports, for the
log-probabilities of chosen and rejected responses:
  lambda = 0.1  chosen and rejected stay close; chosen rises;
  lambda = 0.5  chosen rises, rejected falls;
  lambda = 1.0  both fall, with the larger margin.
"Larger lambda, stronger discrimination."

What we measure: three minorpo.train runs from the same start on the same pairs, one per lambda. Per batch:
logps/chosen and logps/rejected, with least-squares trends (Newey-West standard errors); per held-out pair at the
end: the margin a - b (chosen minus rejected mean log-prob), compared between lambdas pair by pair. Each
sub-claim gets HOLDS / DOES NOT HOLD / INCONCLUSIVE from the sign of a trend at the 95% level, and the ordering
claim from paired differences of the held-out margin. Our model and data differ from the paper's (a 135M model on
HH-RLHF, LoRA, a short run on the cpu preset): the ordering is the claim most likely to carry over.

    python reproduce/lambda_ablation.py --preset cpu --model PATH --data harmless-base-test.jsonl.gz
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common as C  # noqa: E402

CLAIM = ("Appendix E / Fig. 9: lambda = 0.1 keeps chosen and rejected close with chosen rising; lambda = 0.5 "
         "raises chosen and lowers rejected; lambda = 1.0 lowers both with a larger margin. Larger lambda, stronger "
         "discrimination (margin grows with lambda).")
LAMBDAS = (0.1, 0.5, 1.0)
# per lambda, the claimed direction of the chosen and rejected log-prob trends (None = no claim)
EXPECTED = {0.1: ("up", None), 0.5: ("up", "down"), 1.0: ("down", "down")}

PRESETS = C.train_presets(paper={"heldout": 256, "train": {"lr": 8e-6}},
                          cpu={"heldout": 32, "train": {"max_steps": 50}},
                          smoke={"heldout": 6})


def main(argv=None):
    args = C.parse_args(__doc__, PRESETS, argv)
    rec = C.Recorder(args, "lambda_ablation", CLAIM)
    s = args.settings
    model, tok, pad_id, pairs, heldout, (a0, b0) = C.heldout_start(args, rec)
    bs = s["train"]["batch_size"]
    runs, end = {}, {}
    for i, lam in enumerate(LAMBDAS):
        if i:
            model, tok = C.load_model(args)
        runs[lam], model = C.train_run(args, rec.out / f"runs_{rec.tag}" / f"lam{lam:g}", "orpo", (model, tok), pairs,
                                       lam=lam)
        end[lam] = C.pair_logps(model, heldout, pad_id, bs, rec.device)
        del model

    measured, verdicts = {"heldout_pairs": len(heldout),
                          "heldout_start": {"chosen": float(a0.mean()), "rejected": float(b0.mean()),
                                            "margin": float((a0 - b0).mean())}}, {}
    for lam, rows in runs.items():
        tr = [r for r in rows if "loss" in r]
        m = {}
        for side in ("chosen", "rejected"):
            steps, v = C.column(tr, f"logps/{side}")
            m[f"trend_{side}"] = C.linear_trend(steps, v)
        steps, vc = C.column(tr, "logps/chosen")
        _, vr = C.column(tr, "logps/rejected")
        m["trend_margin"] = C.linear_trend(steps, [c - r for c, r in zip(vc, vr)])
        a, b = end[lam]
        m["heldout_end"] = {"chosen": float(a.mean()), "rejected": float(b.mean()), "margin": float((a - b).mean())}
        m["heldout_change"] = {"chosen": C.paired_difference(a, a0), "rejected": C.paired_difference(b, b0)}
        measured[f"lambda={lam:g}"] = m
        want_c, want_r = EXPECTED[lam]
        parts = [C.trend_verdict(m["trend_chosen"], want_c)]
        if want_r:
            parts.append(C.trend_verdict(m["trend_rejected"], want_r))
        verdicts[f"lambda={lam:g}: chosen {want_c}" + (f", rejected {want_r}" if want_r else "")] = C.combine(parts)
    order = []
    for lo, hi in zip(LAMBDAS, LAMBDAS[1:]):
        (al, bl), (ah, bh) = end[lo], end[hi]
        d = C.paired_difference(ah - bh, al - bl)  # held-out margin at the larger lambda minus the smaller
        measured[f"heldout margin, lambda {hi:g} - lambda {lo:g}"] = d
        order.append(C.HOLDS if d["t"] > 2 else (C.FAILS if d["t"] < -2 else C.INCONCLUSIVE))
    verdicts["margin grows with lambda (held-out, paired)"] = C.combine(order)

    plt = C.pyplot()
    w = s["smooth"]
    fig, axes = plt.subplots(1, len(LAMBDAS) + 1, figsize=(5 * (len(LAMBDAS) + 1), 4.6), sharey=False)
    for ax, (lam, rows) in zip(axes, runs.items()):
        tr = [r for r in rows if "loss" in r]
        for side, color in (("chosen", "tab:green"), ("rejected", "tab:red")):
            st, v = C.column(tr, f"logps/{side}")
            ax.plot(st, v, color=color, alpha=0.25, linewidth=0.8)
            ax.plot(st, C.moving_average(v, w), color=color, linewidth=2, label=f"{side} (per batch, mean of {w})")
            es, ev = C.column(rows, f"eval_logps/{side}")
            ax.plot(es, ev, "o--", color=color, markersize=4, label=f"{side} (held-out)")
        ax.set(title=f"λ = {lam:g}", xlabel="optimizer step", ylabel="mean per-token log-prob (nats, Eq. 3)")
        ax.grid(alpha=0.3), ax.legend(fontsize=7)
    ax = axes[-1]
    for lam, color in zip(LAMBDAS, ("tab:blue", "tab:orange", "tab:purple")):
        tr = [r for r in runs[lam] if "loss" in r]
        st, vc = C.column(tr, "logps/chosen")
        _, vr = C.column(tr, "logps/rejected")
        ax.plot(st, C.moving_average([c - r for c, r in zip(vc, vr)], w), color=color, linewidth=2, label=f"λ = {lam:g}")
    ax.axhline(0, color="gray", linewidth=0.6)
    ax.set(title=f"Margin chosen − rejected (per batch, mean of {w})", xlabel="optimizer step",
           ylabel="log P(y_w|x) − log P(y_l|x) (nats)")
    ax.grid(alpha=0.3), ax.legend(fontsize=8)
    fig.suptitle(f"Fig. 9 re-run: ORPO with λ ∈ {{{', '.join(f'{x:g}' for x in LAMBDAS)}}} — {C.subtitle(args)}")
    figures = [rec.save_figure(fig, "fig9_lambda")]

    verdict = C.combine(verdicts.values())
    reason = "; ".join(
        f"λ={lam:g}: chosen {measured[f'lambda={lam:g}']['trend_chosen']['slope'] * 100:+.3f} ± "
        f"{measured[f'lambda={lam:g}']['trend_chosen']['slope_se'] * 100:.3f}, rejected "
        f"{measured[f'lambda={lam:g}']['trend_rejected']['slope'] * 100:+.3f} ± "
        f"{measured[f'lambda={lam:g}']['trend_rejected']['slope_se'] * 100:.3f} nats/100 steps, held-out margin "
        f"{measured[f'lambda={lam:g}']['heldout_end']['margin']:+.3f}" for lam in LAMBDAS)
    rec.finish(measured, verdict, reason, figures, verdicts=verdicts)


if __name__ == "__main__":
    main()
