"""Mini Table 2, part 1: the judge, a Bradley-Terry reward model (paper Table 2 uses a 1.3B OPT reward model).

The judge is a small frozen language model with a trained scalar head: r(x, y) = w . phi(x, y) + c, where
phi is the final-norm hidden state of the model over prompt + response, [mean over the response tokens, the last
token] (2 x hidden numbers). Bradley-Terry: P(y_w preferred to y_l) = sigmoid(r(x, y_w) - r(x, y_l)); the head
is fit by minimizing -log sigmoid(r_w - r_l) + wd |w|^2 over the judge's training pairs (full batch, L-BFGS).
A frozen body keeps this inside the CPU budget (one no-grad forward per response); it is a weak judge, and a
weak judge pulls any win rate it decides toward 50% (win_rate.py says so beside its number).

Data: the HH-RLHF rows are split once, by a fixed seeded permutation of their row ids (common.table2_split),
into the judge's training rows, the judge's held-out rows, the policies' training rows and the evaluation
prompts. The judge never sees a row the policies train on or are evaluated on.

Measured: held-out accuracy (the fraction of held-out pairs with r_w > r_l) with its binomial standard error
and a 95% bootstrap interval; the claim checked (a precondition of win_rate.py, not a claim of the paper): the
judge is better than chance (the interval's lower end above 0.5). The head and the feature recipe are written
into the result JSON, which win_rate.py reads.

    python reproduce/reward_model.py --results          # judge: SmolLM2-135M-Instruct (--judge to change)
"""

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common as C  # noqa: E402
import stats as S  # noqa: E402

CLAIM = ("Calibration for mini Table 2 (not a claim of the paper): a Bradley-Terry reward model trained on HH-RLHF "
         "pairs disjoint from the policies' data ranks held-out pairs better than chance.")
WEIGHT_DECAY = 1e-2  # on the head's weights; fixed before the run (features are unit-scaled first)

PRESETS = {
    "paper": {"data": C.DEFAULT_DATA, "data_files": "harmless-base/test.jsonl.gz", "max_length": 512,
              "max_prompt_length": 256, "rm_train": 1200, "rm_heldout": 400, "batch_size": 16},
    "cpu": {"data": C.DEFAULT_DATA, "data_files": "harmless-base/test.jsonl.gz", "max_length": 128,
            "max_prompt_length": 64, "rm_train": 800, "rm_heldout": 300, "batch_size": 8},
    "smoke": {"max_length": 48, "max_prompt_length": 24, "rm_train": 24, "rm_heldout": 12, "batch_size": 8},
}


def judge_args(args):
    """args with the judge as the model (--judge, default the instruct family) for common.load_model."""
    j = C.MODEL_FAMILIES["instruct"]
    args.model_used = "tiny random llama (in-process)" if args.smoke else (
        getattr(args, "judge", None) or (str(j["fixture"]) if (j["fixture"] / "config.json").exists() else j["hub"]))
    return args


@torch.no_grad()
def features(model, tok, texts: list[tuple[str, str]], batch_size: int, max_length: int, device, eta=None) -> torch.Tensor:
    """phi(x, y) for each (prompt, response): [mean of the final hidden states over the response tokens, the
    hidden state of the last token] -> [N, 2C]. Prompts are cut keeping their end so that prompt + response fits."""
    rows = []
    for prompt, response in texts:
        p, r = tok.encode(prompt), tok.encode(response)
        r = r[: max_length // 2] or [tok.eos_token_id or 0]
        p = p[-(max_length - len(r)):] if len(p) + len(r) > max_length else p
        rows.append((p, r))
    out = []
    model.eval()
    for i in range(0, len(rows), batch_size):
        chunk = rows[i:i + batch_size]
        T = max(len(p) + len(r) for p, r in chunk)
        ids = torch.zeros(len(chunk), T, dtype=torch.long)
        mask = torch.zeros(len(chunk), T, dtype=torch.long)
        resp = torch.zeros(len(chunk), T, dtype=torch.bool)
        for j, (p, r) in enumerate(chunk):  # right-padded: position ids stay 0..n-1 for every row
            n = len(p) + len(r)
            ids[j, :n] = torch.tensor(p + r)
            mask[j, :n] = 1
            resp[j, len(p):n] = True
        h = model(ids.to(device), attention_mask=mask.to(device), return_hidden=True).float().cpu()  # [B, T, C]
        last = h[torch.arange(len(chunk)), mask.sum(1) - 1]                                         # [B, C]
        mean = (h * resp[..., None]).sum(1) / resp.sum(1, keepdim=True)                             # [B, C]
        out.append(torch.cat([mean, last], dim=1).double())
        if eta is not None and (i // batch_size) % 10 == 0:
            print(f"   features {i + len(chunk)}/{len(rows)} {eta.step(len(chunk))}", flush=True)
        elif eta is not None:
            eta.step(len(chunk))
    return torch.cat(out)


def fit_head(fw: torch.Tensor, fl: torch.Tensor, wd: float = WEIGHT_DECAY) -> dict:
    """Bradley-Terry head on standardized features: minimize mean softplus(-(w . (z_w - z_l))) + wd |w|^2.
    Returns {"mean", "scale", "w"} (z = (phi - mean) / scale; the bias c cancels in r_w - r_l)."""
    allf = torch.cat([fw, fl])
    mean, scale = allf.mean(0), allf.std(0).clamp_min(1e-6)
    d = (fw - mean) / scale - (fl - mean) / scale                                                   # [N, D]
    w = torch.zeros(d.shape[1], dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w], lr=1.0, max_iter=500, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.softplus(-(d @ w)).mean() + wd * (w * w).sum()
        loss.backward()
        return loss
    opt.step(closure)
    return {"mean": mean.tolist(), "scale": scale.tolist(), "w": w.detach().tolist()}


def reward(head: dict, phi: torch.Tensor) -> torch.Tensor:
    """r(x, y) up to a constant, from features phi [N, D]."""
    z = (phi.double() - torch.tensor(head["mean"], dtype=torch.float64)) / torch.tensor(head["scale"], dtype=torch.float64)
    return z @ torch.tensor(head["w"], dtype=torch.float64)


def main(argv=None):
    args = C.parse_args(__doc__, PRESETS, argv, extra=lambda p: p.add_argument(
        "--judge", default=None, help="the judge's base model (default: SmolLM2-135M-Instruct, fixture or hub)"))
    judge_args(args)
    rec = C.Recorder(args, "reward_model")
    s = args.settings
    model, tok = C.load_model(args)
    model.to(rec.device)
    pairs = C.load_pairs(args, tok, None)
    split = C.table2_split(pairs)
    train, held = split["judge_train"][: s["rm_train"]], split["judge_heldout"][: s["rm_heldout"]]
    print(f"judge: {len(train)} training pairs, {len(held)} held-out pairs (rows disjoint from the policies')", flush=True)
    eta = C.ETA(2 * (len(train) + len(held)))
    t0 = time.time()
    phi = {}
    for name, ps in (("train", train), ("heldout", held)):
        for side, k in (("chosen", 1), ("rejected", 2)):
            phi[name, side] = features(model, tok, [(p.texts[0], p.texts[k]) for p in ps], s["batch_size"],
                                       s["max_length"], rec.device, eta)
    feat_s = time.time() - t0
    head = fit_head(phi["train", "chosen"], phi["train", "rejected"])
    margins = {n: reward(head, phi[n, "chosen"]) - reward(head, phi[n, "rejected"]) for n in ("train", "heldout")}
    correct = (margins["heldout"] > 0).double()
    k, n = int(correct.sum()), len(correct)
    acc, lo, hi = S.bootstrap_ci(correct, seed=args.seed)
    se = S.binomial_se(k, n)
    train_acc = float((margins["train"] > 0).double().mean())
    verdict = S.HOLDS if lo > 0.5 else S.FAILS if hi < 0.5 else S.INCONCLUSIVE
    reason = (f"held-out accuracy {acc:.3f} ± {se:.3f} (SE; 95% bootstrap CI {lo:.3f}-{hi:.3f}; {k}/{n} pairs), "
              f"training accuracy {train_acc:.3f} on {len(train)} pairs; a weak judge pulls a win rate toward 50%")
    claims = {"judge better than chance": C.claim(CLAIM, {args.seed: verdict}, {args.seed: reason})}

    plt = C.pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.hist(margins["heldout"].numpy(), bins=30, color="tab:blue", alpha=0.7, label=f"held-out pairs ({n})")
    ax.axvline(0, color="gray")
    ax.set(xlabel="r(x, y_w) − r(x, y_l) (Bradley–Terry logit)", ylabel="pairs",
           title=f"Judge on held-out pairs: accuracy {acc:.3f} ± {se:.3f} — {Path(str(args.model_used)).name}")
    ax.grid(alpha=0.3), ax.legend(fontsize=8)
    figures = [rec.save_figure(fig, "reward_model")]
    rec.finish({"heldout_accuracy": acc, "heldout_accuracy_se": se, "heldout_accuracy_95ci": [lo, hi],
                "heldout_correct": k, "heldout_pairs": n, "train_accuracy": train_acc, "train_pairs": len(train),
                "feature_seconds": feat_s, "head": head, "weight_decay": WEIGHT_DECAY,
                "judge_model": str(args.model_used), "max_length": s["max_length"]}, claims, figures)


if __name__ == "__main__":
    main()
