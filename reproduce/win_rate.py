"""Mini Table 2, part 2: the win rate of ORPO over SFT, judged by reward_model.py's judge (paper Table 2:
OPT-125M 84.0%, OPT-350M 82.7%, OPT-1.3B 78.0% on HH-RLHF, judged by a 1.3B OPT reward model).

Per seed (its own subset of the policies' training rows; common.table2_split keeps them disjoint from the
judge's rows and from the evaluation prompts): an SFT policy and an ORPO policy (lambda = 1) trained from the
same weights on the same pairs in the same order (common.train_measured, the cpu preset's epochs). Then, for each
of the evaluation prompts (the same prompts for every seed, never trained on), one greedy response from each
policy with minorpo's KV-cache generation (minorpo.tools.generate.generate), cut at the end of the assistant's
turn; the judge scores both. Per prompt: ORPO wins (1), ties (1/2) or loses (0).

  precondition   the judge is better than chance on its held-out pairs (reward_model.py's verdict), and ORPO
                 learned the preference on its trained pairs (stats.precondition).
  ORPO wins      the win rate's 95% bootstrap interval over prompts lies above 50% (below: DOES NOT HOLD).
Reported beside it: the mean reward difference ORPO - SFT (paired t-test over prompts) and the judge's accuracy.
A weak judge pulls the win rate toward 50% (its noise decides many prompts at random), so a win rate near 50%
from a judge of accuracy near 50% says little about the policies; the paper's 78-84% came from a 1.3B judge.

    python reproduce/reward_model.py --results && python reproduce/win_rate.py --results [--model-family instruct]
"""

import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common as C  # noqa: E402
import reward_model as RM  # noqa: E402
import stats as S  # noqa: E402

CLAIM = ("Table 2 (mini): responses of an ORPO policy win against those of an SFT policy trained on the same pairs "
         "more often than not, judged by a reward model (paper: 78-84% on HH-RLHF).")

PRESETS = C.train_presets(paper={"lam": 1.0, "prompts": 500, "max_new_tokens": 128, "gen_batch": 32},
                          cpu={"lam": 1.0, "prompts": 200, "max_new_tokens": 48, "gen_batch": 8, "heldout_pairs": 0},
                          smoke={"lam": 1.0, "prompts": 6, "max_new_tokens": 8, "gen_batch": 4, "heldout_pairs": 0})
END_OF_TURN = "\n\nHuman"  # a base model goes on with the dialogue: the response ends where the next turn starts


def generate_responses(model, tok, prompts: list, s: dict, device, eta=None) -> list[str]:
    """Greedy responses to tokenized prompts (left-padded batches), decoded and cut at END_OF_TURN."""
    from minorpo.batches import pad_token_id
    from minorpo.tools.generate import generate
    pad = pad_token_id(tok)
    out = []
    for i in range(0, len(prompts), s["gen_batch"]):
        chunk = prompts[i:i + s["gen_batch"]]
        T = max(len(p) for p in chunk)
        ids = torch.full((len(chunk), T), pad, dtype=torch.long)
        mask = torch.zeros(len(chunk), T, dtype=torch.long)
        for j, p in enumerate(chunk):
            ids[j, T - len(p):] = torch.tensor(p)
            mask[j, T - len(p):] = 1
        gen = generate(model, ids.to(device), s["max_new_tokens"], attention_mask=mask.to(device),
                       eos_token_id=tok.eos_token_id, pad_token_id=pad)
        for row in gen[:, T:].tolist():
            if tok.eos_token_id in row:
                row = row[:row.index(tok.eos_token_id)]
            out.append(tok.decode(row, skip_special_tokens=True).split(END_OF_TURN)[0])
        progress = eta.step(len(chunk)) if eta is not None else ""
        print(f"   generated {i + len(chunk)}/{len(prompts)} {progress}", flush=True)
    return out


def main(argv=None):
    def extra(p):
        p.add_argument("--judge-result", default=None,
                       help="reward_model.py's result JSON (default: its --results file, else its temporary output)")
    args = C.parse_args(__doc__, PRESETS, argv, extra)
    rec = C.Recorder(args, "win_rate")
    s = args.settings
    judge_path = Path(args.judge_result) if args.judge_result else None
    if judge_path is None:
        jargs = RM.judge_args(C.parse_args("", RM.PRESETS, ["--smoke"] if args.smoke else ["--preset", args.preset]))
        tag = C.model_tag(jargs)
        for root in (C.RESULTS, Path(C.tempfile.gettempdir()) / "minorpo-reproduce"):
            if (root / tag / "reward_model" / f"result_{args.preset_name}.json").exists():
                judge_path = root / tag / "reward_model" / f"result_{args.preset_name}.json"
                break
    if judge_path is None or not judge_path.exists():
        raise SystemExit("win_rate.py needs the judge: run reward_model.py first (or pass --judge-result)")
    judge = json.loads(judge_path.read_text())
    jm = judge["measured"]
    judge_ok = judge["verdicts"]["judge better than chance"] == S.HOLDS
    print(f"judge {jm['judge_model']}: held-out accuracy {jm['heldout_accuracy']:.3f} ± {jm['heldout_accuracy_se']:.3f} "
          f"({judge_path})", flush=True)

    _, tok = C.load_model(args)
    split = C.table2_split(C.load_pairs(args, tok, None))
    prompts = split["eval"][: s["prompts"]]
    arms = {"SFT": ("sft", {}), "ORPO": ("orpo", {"lam": s["lam"]})}
    eta = C.ETA(C.total_steps(args, len(arms)) + len(args.seeds) * len(arms) * len(prompts))
    judge_args = RM.judge_args(C.parse_args("", RM.PRESETS, ["--smoke"] if args.smoke else ["--preset", args.preset]))
    judge_args.model_used = "tiny random llama (in-process)" if args.smoke else jm["judge_model"]
    jmodel, jtok = C.load_model(judge_args)
    jmodel.to(rec.device)
    verdicts, reasons, pre, measured = {}, {}, {}, {}
    for seed in args.seeds:
        trained, _ = C.draw_subsets(split["policy_train"], s["train_pairs"], 0, seed)
        responses, runs = {}, {}
        for name, (method, kw) in arms.items():
            model, tok = C.load_model(args)
            runs[name] = C.train_measured(args, model, tok, trained, [], method, seed, f"seed {seed}, {name}", eta, **kw)
            t0 = time.time()
            responses[name] = generate_responses(model, tok, [p.prompt_ids for p in prompts], s, rec.device, eta)
            print(f"   {name}: {len(prompts)} responses in {time.time() - t0:.0f} s", flush=True)
            del model
        p = S.precondition(*C.begin(runs["ORPO"], "trained"), *C.end(runs["ORPO"], "trained"))
        rewards = {}
        for name, resp in responses.items():
            phi = RM.features(jmodel, jtok, [(q.texts[0], r) for q, r in zip(prompts, resp)], 8, jm["max_length"],
                              rec.device)
            rewards[name] = RM.reward(jm["head"], phi)
        diff = rewards["ORPO"] - rewards["SFT"]
        wins = (diff > 0).double() + 0.5 * (diff == 0).double()
        rate, lo, hi = S.bootstrap_ci(wins, seed=seed)
        v = S.HOLDS if lo > 0.5 else S.FAILS if hi < 0.5 else S.INCONCLUSIVE
        reasons_pre = ([] if judge_ok else [f"the judge is not better than chance ({judge['claims']['judge better than chance']['reason']})"]) \
            + ([] if p["passed"] else [p["reason"]])
        verdicts[seed] = v if not reasons_pre else S.INCONCLUSIVE
        pre[seed] = "; ".join(reasons_pre) or p["reason"]
        reward_test = S.mean_test(diff, "greater")
        reasons[seed] = (("precondition not reached: " + "; ".join(reasons_pre) + "; ") if reasons_pre else "") + (
            f"ORPO wins {rate:.1%} of {len(prompts)} prompts (95% bootstrap CI {lo:.1%}-{hi:.1%}); reward ORPO - SFT "
            f"{reward_test['mean']:+.3f} ± {reward_test['se']:.3f}; judge accuracy {jm['heldout_accuracy']:.3f} ± "
            f"{jm['heldout_accuracy_se']:.3f} (a weak judge pulls the win rate toward 50%)")
        measured[f"seed {seed}"] = {
            "win_rate": rate, "win_rate_95ci": [lo, hi], "ties": int((diff == 0).sum()), "reward_difference": reward_test,
            "precondition": p["tests"],
            "examples": [{"prompt": q.texts[0][-300:], "SFT": responses["SFT"][i], "ORPO": responses["ORPO"][i],
                          "reward_SFT": float(rewards["SFT"][i]), "reward_ORPO": float(rewards["ORPO"][i])}
                         for i, q in enumerate(prompts[:5])],
            "rewards": {k: v.tolist() for k, v in rewards.items()}}

    claims = {"Table 2 (mini) win rate ORPO vs SFT": C.claim(CLAIM, verdicts, reasons, preconditions=pre)}
    plt = C.pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    seeds = list(measured)
    axes[0].errorbar(range(len(seeds)), [measured[k]["win_rate"] for k in seeds],
                     yerr=[[measured[k]["win_rate"] - measured[k]["win_rate_95ci"][0] for k in seeds],
                           [measured[k]["win_rate_95ci"][1] - measured[k]["win_rate"] for k in seeds]],
                     fmt="o", capsize=5, color="tab:purple", label="ORPO win rate (95% bootstrap CI)")
    axes[0].axhline(0.5, color="gray", linestyle=":", label="50% (no difference; where a weak judge pulls)")
    axes[0].set_xticks(range(len(seeds)), seeds)
    axes[0].set(ylim=(0, 1), ylabel="fraction of prompts ORPO wins",
                title=f"{len(prompts)} prompts; judge accuracy {jm['heldout_accuracy']:.2f} ± {jm['heldout_accuracy_se']:.2f}")
    for k in seeds:
        axes[1].hist(torch.tensor(measured[k]["rewards"]["ORPO"]) - torch.tensor(measured[k]["rewards"]["SFT"]),
                     bins=30, alpha=0.5, label=k)
    axes[1].axvline(0, color="gray")
    axes[1].set(xlabel="reward ORPO − reward SFT, per prompt", ylabel="prompts", title="judge's reward difference")
    for ax in axes:
        ax.grid(alpha=0.3), ax.legend(fontsize=7)
    fig.suptitle(f"Mini Table 2: ORPO vs SFT, judged by a Bradley–Terry reward model\n{C.subtitle(args)}")
    figures = [rec.save_figure(fig, "win_rate")]
    rec.finish({"judge": {k: jm[k] for k in ("judge_model", "heldout_accuracy", "heldout_accuracy_se",
                                             "heldout_accuracy_95ci", "heldout_pairs")}, "judge_result": str(judge_path),
                "prompts": len(prompts), **measured}, claims, figures)


if __name__ == "__main__":
    main()
