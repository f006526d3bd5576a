"""The weight lambda of the odds-ratio term (paper Appendix E, Fig. 9).

The paper (Mistral-7B on UltraFeedback) trains ORPO with lambda = 0.1, 0.5 and 1.0 and reports, for the
log-probabilities of chosen and rejected responses:
  lambda = 0.1  chosen and rejected stay close; chosen rises;
  lambda = 0.5  chosen rises, rejected falls;
  lambda = 1.0  both fall, with the larger margin.
"Larger lambda, stronger discrimination."

What we measure, per seed (its own subset of pairs; common.py): three ORPO runs from the same weights on the
same pairs in the same order, one per lambda, full fine-tuning, several epochs. Per pair, at the end:

  precondition      the lambda = 1 run learned the preference on its trained pairs (L_OR fell, log OR rose).
  ordering          (a claim of its own, on the trained pairs; the held-out pairs are a third claim) the margin
                    a - b is larger at the larger lambda, per pair: m(0.5) - m(0.1) > 0 and m(1) - m(0.5) > 0.
  directions        (a claim of its own, trained pairs) lambda = 0.1: chosen rises; 0.5: chosen rises and
                    rejected falls; 1.0: chosen and rejected fall (end - start per pair, 5 sub-claims).
"Chosen and rejected stay close" at lambda = 0.1 is relative to the other lambdas, so the ordering covers it.
Sub-claims combine by stats.combine (all must hold; a contradiction needs alpha / k), seeds by stats.across_seeds.

    python reproduce/lambda_ablation.py --results [--model-family instruct]
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common as C  # noqa: E402
import stats as S  # noqa: E402

CLAIM_ORDER = "Appendix E / Fig. 9: larger lambda, stronger discrimination: the margin chosen - rejected grows with lambda."
CLAIM_DIRECTIONS = ("Appendix E / Fig. 9: lambda = 0.1 raises chosen; lambda = 0.5 raises chosen and lowers rejected; "
                    "lambda = 1.0 lowers both.")
LAMBDAS = (0.1, 0.5, 1.0)
# per lambda, the claimed direction of the chosen and rejected changes (None = no claim)
EXPECTED = {0.1: ("greater", None), 0.5: ("greater", "less"), 1.0: ("less", "less")}

PRESETS = C.train_presets()


def main(argv=None):
    args = C.parse_args(__doc__, PRESETS, argv)
    rec = C.Recorder(args, "lambda_ablation")
    s = args.settings
    arms = {f"λ={lam:g}": ("orpo", {"lam": lam}) for lam in LAMBDAS}
    _, tok = C.load_model(args)
    pool = C.seed_pool(args, tok)
    eta = C.ETA(C.total_steps(args, len(arms)))
    runs_by_seed, measured, pre = {}, {}, {}
    verdicts, reasons, subs = ({k: {} for k in ("order trained", "order heldout", "directions")} for _ in range(3))
    for seed in args.seeds:
        runs, _, _ = C.run_arms(args, arms, seed, pool, eta)
        runs_by_seed[seed] = runs
        top = runs[f"λ={LAMBDAS[-1]:g}"]
        p = S.precondition(*C.begin(top, "trained"), *C.end(top, "trained"))
        pre[seed] = p["reason"]
        m = {"precondition": p["tests"], "curves": {f"{arm} {w}": C.curves(r, w) for arm, r in runs.items()
                                                    for w in ("trained", "heldout")}}
        for which in ("trained", "heldout"):
            tests = {}
            for lo, hi in zip(LAMBDAS, LAMBDAS[1:]):
                (al, bl), (ah, bh) = C.end(runs[f"λ={lo:g}"], which), C.end(runs[f"λ={hi:g}"], which)
                tests[f"margin λ={hi:g} > λ={lo:g}"] = S.mean_test((ah - bh) - (al - bl), "greater")
            key = f"order {which}"
            v, each = S.combine(tests)
            verdicts[key][seed] = v if p["passed"] else S.INCONCLUSIVE
            subs[key][seed] = each
            m[f"ordering {which}"] = tests
            reasons[key][seed] = ((p["reason"] + "; " if not p["passed"] else "") + f"{which} pairs: " + ", ".join(
                f"{k}: {t['mean']:+.3f} ± {t['se']:.3f} ({each[k]})" for k, t in tests.items()))
        tests = {}
        for lam in LAMBDAS:
            (a0, b0), (a1, b1) = C.begin(runs[f"λ={lam:g}"], "trained"), C.end(runs[f"λ={lam:g}"], "trained")
            want_c, want_r = EXPECTED[lam]
            tests[f"λ={lam:g} chosen {'rises' if want_c == 'greater' else 'falls'}"] = S.mean_test(a1 - a0, want_c)
            if want_r:
                tests[f"λ={lam:g} rejected falls"] = S.mean_test(b1 - b0, want_r)
        v, each = S.combine(tests)
        verdicts["directions"][seed] = v if p["passed"] else S.INCONCLUSIVE
        subs["directions"][seed] = each
        m["directions trained"] = tests
        reasons["directions"][seed] = ((p["reason"] + "; " if not p["passed"] else "") + "trained pairs, end - start: "
                                       + ", ".join(f"{k}: {t['mean']:+.3f} ± {t['se']:.3f} ({each[k]})"
                                                   for k, t in tests.items()))
        measured[f"seed {seed}"] = m

    claims = {
        "App. E Fig. 9 margin grows with λ, trained pairs": C.claim(CLAIM_ORDER + " Measured on the trained pairs.",
                                                                  verdicts["order trained"], reasons["order trained"],
                                                                  {f"seed {k}": v for k, v in subs["order trained"].items()}, pre),
        "App. E Fig. 9 margin grows with λ, held-out pairs": C.claim(CLAIM_ORDER + " Measured on held-out pairs.",
                                                                   verdicts["order heldout"], reasons["order heldout"],
                                                                   {f"seed {k}": v for k, v in subs["order heldout"].items()}, pre),
        "App. E Fig. 9 directions per λ, trained pairs": C.claim(CLAIM_DIRECTIONS + " Measured on the trained pairs.",
                                                               verdicts["directions"], reasons["directions"],
                                                               {f"seed {k}": v for k, v in subs["directions"].items()}, pre),
    }

    plt = C.pyplot()
    fig, axes = plt.subplots(1, len(LAMBDAS) + 1, figsize=(5 * (len(LAMBDAS) + 1), 4.6))
    for ax, lam in zip(axes, LAMBDAS):
        arm = f"λ={lam:g}"
        for which, style in (("trained", "-"), ("heldout", "--")):
            C.plot_arm(ax, runs_by_seed, arm, which, "chosen", "tab:green", style, f"chosen, {which}")
            C.plot_arm(ax, runs_by_seed, arm, which, "rejected", "tab:red", style, f"rejected, {which}")
        ax.set(title=f"λ = {lam:g}", ylabel="mean per-token log-prob (nats, Eq. 3)")
    ax = axes[-1]
    for lam, color in zip(LAMBDAS, ("tab:blue", "tab:orange", "tab:purple")):
        for i, (seed, runs) in enumerate(runs_by_seed.items()):
            c = C.curves(runs[f"λ={lam:g}"], "trained")
            ax.plot(c["steps"], [x - y for x, y in zip(c["chosen"], c["rejected"])], "-o", markersize=3, color=color,
                    alpha=1.0 if i == 0 else 0.55, label=f"λ = {lam:g}" if i == 0 else None)
    ax.axhline(0, color="gray", linewidth=0.6)
    ax.set(title="margin chosen − rejected, trained pairs", ylabel="log P(y_w|x) − log P(y_l|x) (nats)")
    for ax in axes:
        ax.set_xlabel("optimizer step (a point per measurement, a line per seed)")
        ax.grid(alpha=0.3), ax.legend(fontsize=7)
    fig.suptitle(f"Fig. 9 re-run: ORPO with λ ∈ {{{', '.join(f'{x:g}' for x in LAMBDAS)}}}\n{C.subtitle(args)}")
    figures = [rec.save_figure(fig, "fig9_lambda")]
    rec.finish(measured, claims, figures)


if __name__ == "__main__":
    main()
