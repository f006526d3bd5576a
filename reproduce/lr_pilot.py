"""The learning-rate pilot of the training scripts, and the step costs their sizing rests on.

Not a claim of the paper: a calibration, reported as such. For each learning rate of a small grid, one ORPO run
(lambda = 1, full fine-tuning, the cpu preset's batch and layout) for one epoch over seed 0's trained pairs,
then the precondition the claims need (stats.precondition: L_OR fell and log OR rose on the trained pairs) and
the chosen log-prob change on held-out pairs (a falling one warns of a learning rate that damages the model).

Rule, fixed before looking: the chosen learning rate is the smallest of the grid whose precondition passes
after ONE epoch (the claims train for several, so the preference is learned with room to spare) and whose
held-out chosen log-prob does not fall significantly; if none passes, the largest that does not damage the
held-out chosen log-prob. The other scripts take it with --lr (run_all.sh passes it on).

Also measured and written: seconds per optimizer step and per measurement of both sets, from which
README.md's sizing note computes each script's time (steps x arms x seeds).

    python reproduce/lr_pilot.py --results [--model-family instruct]
"""

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common as C  # noqa: E402
import stats as S  # noqa: E402

PRESETS = C.train_presets(paper={"grid": [4e-6, 8e-6, 2e-5]}, cpu={"grid": [1e-5, 2e-5, 5e-5], "epochs": 1},
                          smoke={"grid": [1e-3, 3e-3], "epochs": 1})


def main(argv=None):
    args = C.parse_args(__doc__, PRESETS, argv)
    rec = C.Recorder(args, "lr_pilot")
    s = args.settings
    _, tok = C.load_model(args)
    pool = C.seed_pool(args, tok)
    trained, heldout = C.draw_subsets(pool, s["train_pairs"], s["heldout_pairs"], args.seed)
    eta = C.ETA(C.run_steps(s)[0] * len(s["grid"]))
    results, start = {}, None
    for lr in s["grid"]:
        model, tok = C.load_model(args)
        t0, given = time.time(), start is not None
        r = C.train_measured(args, model, tok, trained, heldout, "orpo", args.seed, f"lr {lr:g}", eta, start,
                             lam=1.0, lr=lr)
        wall = time.time() - t0
        start = {k: (r[k]["a"][0], r[k]["b"][0]) for k in ("trained", "heldout") if k in r}
        del model
        p = S.precondition(*C.begin(r, "trained"), *C.end(r, "trained"))
        a0, a1 = C.begin(r, "heldout")[0], C.end(r, "heldout")[0]
        held = S.mean_test(a1 - a0, "greater")
        step_s = sorted(row["step_time"] for row in r["rows"])
        results[f"{lr:g}"] = {"lr": lr, "precondition": p["tests"], "passed": p["passed"], "reason": p["reason"],
                              "heldout_chosen_change": held, "damages_heldout": S.decide(held) == S.FAILS,
                              "median_step_s": step_s[len(step_s) // 2], "run_wall_s": wall,
                              "measure_s": (wall - sum(step_s)) / max(len(r["steps"]) - given, 1),
                              "curves": {w: C.curves(r, w) for w in ("trained", "heldout")}}
    ok = [v for v in results.values() if v["passed"] and not v["damages_heldout"]]
    safe = [v for v in results.values() if not v["damages_heldout"]]
    chosen = ok[0] if ok else (safe[-1] if safe else list(results.values())[0])
    verdict = S.HOLDS if ok else S.INCONCLUSIVE
    reason = (f"chosen lr {chosen['lr']:g} ("
              + ("the smallest of the grid whose precondition passed after one epoch" if ok else
                 "no learning rate of the grid passed the precondition in one epoch: the largest that did not damage "
                 "the held-out chosen log-prob") + "); " + "; ".join(
                  f"lr {k}: precondition {'passed' if v['passed'] else 'not passed'}, held-out chosen "
                  f"{v['heldout_chosen_change']['mean']:+.3f}, {v['median_step_s']:.1f} s/step" for k, v in results.items()))
    claims = {"learning-rate pilot": C.claim("Calibration (not a claim of the paper): the learning rate at which the "
                                             "preference is learned on the trained pairs within one epoch.",
                                             {args.seed: verdict}, {args.seed: reason})}
    plt = C.pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for k, v in results.items():
        c = v["curves"]["trained"]
        ax.plot(c["steps"], c["log_or"], "-o", label=f"lr {k}, trained pairs")
        c = v["curves"]["heldout"]
        ax.plot(c["steps"], c["log_or"], ":o", label=f"lr {k}, held-out pairs")
    ax.set(xlabel="optimizer step", ylabel="mean log OR (nats, Eq. 5)", title=f"lr pilot, ORPO λ = 1\n{C.subtitle(args)}")
    ax.grid(alpha=0.3), ax.legend(fontsize=7)
    figures = [rec.save_figure(fig, "lr_pilot")]
    args.seeds_planned = [0, 1]  # the training scripts' default seeds
    prediction, sizes = predict(args, chosen), recommend(args, chosen)
    print(f"predicted wall time of each training script ({len(args.seeds_planned)} seeds), from this pilot's costs:")
    for k, v in prediction.items():
        print(f"  {k}: {v / 60:.1f} min at {args.settings['train_pairs']} pairs; fits {BUDGET_S // 60} min with "
              f"{sizes[k]} pairs ({predict(args, chosen, sizes[k])[k] / 60:.1f} min)")
    rec.finish({"grid": results, "chosen_lr": chosen["lr"], "predicted_script_seconds": prediction,
                "recommended_pairs": sizes}, claims, figures)


# arms and epochs of each training script (their PRESETS): the sizing note in README.md uses the same sums
SCRIPTS = {"probability_inflation": (1, 4), "orpo_vs_sft": (2, 4), "lambda_ablation": (3, 4),
           "odds_vs_probability_ratio": (2, 6), "win_rate": (2, 4)}
BUDGET_S = 30 * 60  # each script <= 30 minutes (issue 13)
# win_rate.py's generation (2 seeds x 2 arms x 200 prompts x 48 tokens) and judging, which the pilot does not
# measure, counted in training steps of the same model: Gemma 3 270M's run of 2026-12-02 spent 1,069 s on them
# (2,134 s in all, 1,065 s predicted for its training) at 11.1 s a step, 96 steps' worth. The fixed 10 minutes
# used before under-predicted that run by 1.28x (35.6 min against a 30-minute budget).
WIN_RATE_EXTRA_STEPS = 96


def predict(args, measured: dict, n: int | None = None) -> dict:
    """Seconds per script with n trained and n held-out pairs per seed (default: the preset's): per seed, arms x
    (steps x s/step + measurements x s/measurement) + the shared step-0 measurement; a measurement costs in
    proportion to the pairs measured (the pilot measured train_pairs + heldout_pairs of them)."""
    s = args.settings
    n = n or s["train_pairs"]
    per_pair = measured["measure_s"] / (s["train_pairs"] + s["heldout_pairs"])
    out = {}
    for name, (arms, epochs) in SCRIPTS.items():
        steps = n // s["train"]["batch_size"] * epochs
        meas = -(-epochs // s["measure_every_epochs"])
        m = 0 if name == "win_rate" else 2 * n * per_pair
        extra = WIN_RATE_EXTRA_STEPS * measured["median_step_s"] if name == "win_rate" else 0
        out[name] = len(args.seeds_planned) * (arms * (steps * measured["median_step_s"] + meas * m) + m) + extra
    return out


def recommend(args, measured: dict) -> dict:
    """Per script, the largest number of trained (and held-out) pairs, a multiple of the batch size from 16 (or the preset's, if fewer) up
    to the preset's, whose predicted time fits BUDGET_S: sizing by cost alone, never by outcome."""
    s, bs = args.settings, args.settings["train"]["batch_size"]
    out = {}
    for name in SCRIPTS:
        low = min(16, s["train_pairs"])
        fits = [n for n in range(low, s["train_pairs"] + 1, bs) if predict(args, measured, n)[name] <= BUDGET_S]
        out[name] = max(fits) if fits else low
    return out


if __name__ == "__main__":
    main()
