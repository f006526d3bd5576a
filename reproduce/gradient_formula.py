"""The gradient of L_OR (paper Eq. 8-10) on a real model's outputs, and how delta weights the pairs.

Eq. 8-10 (with the sign of Eq. 7 kept; the paper prints +delta*h, see minorpo/loss.py `orpo_gradient`):

    grad L_OR = -delta(d) * h(d)
    delta(d)  = [1 + odds(y_w|x) / odds(y_l|x)]^-1 = sigmoid(-log OR)                        (Eq. 9)
    h(d)      = grad log P(y_w|x) / (1 - P(y_w|x)) - grad log P(y_l|x) / (1 - P(y_l|x))      (Eq. 10)

Part 1: for N pairs of the data, the model's parameter gradients grad a and grad b (a = log P(y_w|x), b =
log P(y_l|x), Eq. 3) are taken by autograd, combined with minorpo.loss.orpo_gradient's delta and 1/(1-P)
coefficients, and compared with autograd's gradient of L_OR itself. The parameters are the last decoder layers
and the final norm (the identity is the chain rule through a and b, so it holds for any subset; a subset keeps
backward short). Computed in float64 (RMSNorm in float32; see TOL).
Part 2: for M pairs (float32 log-probs), delta and the two multipliers dL_OR/da = -delta/(1-P_w), dL_OR/db = delta/(1-P_l):
how much of the total push goes to the pairs the model currently gets wrong (log OR < 0). This is an
ILLUSTRATION, not a claim tested: delta = sigmoid(-log OR) > 0.5 exactly when log OR < 0, so "delta weights wrong
pairs more" is true by construction; what is measured is how much (the share of the push, the 1/(1-P) factors).
Seeds: each seed checks the formula on its own pairs (the identity must hold on every one).

    python reproduce/gradient_formula.py --preset cpu --model PATH --data harmless-base-test.jsonl.gz
"""

import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common as C  # noqa: E402
import stats as S  # noqa: E402

CLAIM = ("Eq. 8-10: the gradient of L_OR equals -delta(d)*h(d) with delta = [1 + odds_w/odds_l]^-1 and "
         "h = grad log P_w/(1-P_w) - grad log P_l/(1-P_l) (the paper prints +delta*h).")
# Tolerance on ||-delta*h - autograd|| / ||autograd||. The model runs in float64, but minorpo (like transformers)
# computes every RMSNorm in float32, so each gradient carries ~1e-7 relative rounding that differs between the
# separate backward passes of a, b and L_OR. A wrong formula is off by far more: a sign flip by 2, a dropped
# 1/(1-P) factor by P/(1-P) (0.3% even at a mean token log-prob of -5.8, 29% at -1.5).
TOL = 1e-5

PRESETS = {
    "paper": {"model": "facebook/opt-350m", "data": C.DEFAULT_DATA, "data_files": "harmless-base/test.jsonl.gz",
              "max_length": 1024, "max_prompt_length": 1024, "n_grad_pairs": 16, "n_weight_pairs": 1000,
              "last_layers": 2},
    "cpu": {"data": C.DEFAULT_DATA, "data_files": "harmless-base/test.jsonl.gz",
            "max_length": 128, "max_prompt_length": 64, "n_grad_pairs": 8, "n_weight_pairs": 200,
            "last_layers": 2},
    "smoke": {"max_length": 48, "max_prompt_length": 24, "n_grad_pairs": 3, "n_weight_pairs": 24, "last_layers": 1},
}


def chosen_rejected_logps(model, pair, pad_id, device):
    """a, b (0-dim, with grad): Eq. 3 mean log-probs of one pair's chosen and rejected responses."""
    from minorpo.batches import collate
    from minorpo.forward import ForwardSpec, pair_logps
    from minorpo.logprobs import sequence_logps

    tl = pair_logps(model, collate([pair], pad_id, device), ForwardSpec(preset="paper", pad_id=pad_id))
    return sequence_logps(tl.chosen, tl.chosen_mask)[0], sequence_logps(tl.rejected, tl.rejected_mask)[0]


def flat(grads) -> torch.Tensor:
    return torch.cat([g.reshape(-1) for g in grads])


def check_formula(model, params, pairs, pad_id, device) -> list[dict]:
    """Per pair: autograd grad of L_OR vs -delta*h (and vs the paper's printed +delta*h)."""
    from minorpo.loss import log_odds_ratio, odds_ratio_loss, orpo_gradient

    out = []
    for i, pair in enumerate(pairs):
        a, b = chosen_rejected_logps(model, pair, pad_id, device)
        grad_a = flat(torch.autograd.grad(a, params, retain_graph=True))  # (P,)  grad log P(y_w|x)
        grad_b = flat(torch.autograd.grad(b, params, retain_graph=True))  # (P,)  grad log P(y_l|x)
        l_or = odds_ratio_loss(a[None], b[None])[0]  # Eq. 7
        autograd = flat(torch.autograd.grad(l_or, params))  # (P,)
        delta, h_chosen, h_rejected = (t[0] for t in orpo_gradient(a.detach()[None], b.detach()[None]))
        h = h_chosen * grad_a + h_rejected * grad_b  # Eq. 10: grad a / (1 - P_w) - grad b / (1 - P_l)
        formula = -delta * h  # Eq. 8 with Eq. 7's minus sign kept
        rel = float((formula - autograd).norm() / autograd.norm())
        cos_printed = float(torch.nn.functional.cosine_similarity(delta * h, autograd, dim=0))
        a, b = a.detach(), b.detach()
        out.append({"pair": i, "a": float(a), "b": float(b), "log_OR": float(log_odds_ratio(a[None], b[None])[0]),
                    "delta": float(delta), "inv_1_minus_Pw": float(h_chosen), "inv_1_minus_Pl": float(-h_rejected),
                    "grad_norm": float(autograd.norm()), "rel_error": rel, "cosine_paper_sign": cos_printed})
        print(f"  pair {i}: a {float(a):.3f}  b {float(b):.3f}  delta {float(delta):.3f}  |grad L_OR| "
              f"{float(autograd.norm()):.3e}  rel. error of -delta*h {rel:.1e}", flush=True)
    return out


def weights(a: torch.Tensor, b: torch.Tensor) -> dict:
    """delta and the multipliers of grad a and grad b, per pair, and how they split between wrong and right."""
    from minorpo.loss import log_odds_ratio, odds_ratio_loss, orpo_gradient

    log_or = log_odds_ratio(a, b)
    delta, h_c, h_r = orpo_gradient(a, b)
    w_a, w_b = -delta * h_c, -delta * h_r  # dL_OR/da, dL_OR/db
    push = w_a.abs() + w_b.abs()  # size of the push on (a, b) per pair
    wrong = log_or < 0
    m = {"n": len(a), "frac_wrong": float(wrong.double().mean()),
         "inv_1_minus_P_chosen": {"min": float(h_c.min()), "median": float(h_c.median()), "max": float(h_c.max())},
         "inv_1_minus_P_rejected": {"min": float(-h_r.max()), "median": float((-h_r).median()), "max": float(-h_r.min())}}
    if wrong.any() and (~wrong).any():
        mw, sw = C.mean_se(delta[wrong])
        mr, sr = C.mean_se(delta[~wrong])
        m.update({"delta_wrong_mean": mw, "delta_wrong_se": sw, "delta_right_mean": mr, "delta_right_se": sr,
                  "delta_diff_t": (mw - mr) / math.hypot(sw, sr),
                  "push_share_of_wrong_pairs": float(push[wrong].sum() / push.sum()),
                  "push_per_pair_ratio_wrong_over_right": float(push[wrong].mean() / push[~wrong].mean())})
    return m, log_or, delta


def main(argv=None):
    args = C.parse_args(__doc__, PRESETS, argv)
    rec = C.Recorder(args, "gradient_formula")
    s = args.settings
    model, tok = C.load_model(args, dtype=torch.float64)
    model = model.double().to(rec.device).eval()
    from minorpo.batches import pad_token_id
    pad_id = pad_token_id(tok)
    pool = C.load_pairs(args, tok, max(s["n_grad_pairs"] * len(args.seeds), s["n_weight_pairs"]) + s["n_grad_pairs"])

    # the parameters whose gradient we compare: the last decoder layers and the final norm
    for p in model.parameters():
        p.requires_grad_(False)
    layers = list(model.layers)[-s["last_layers"]:]
    params = [p for layer in layers for p in layer.parameters()]
    final_norm = getattr(model.model, "norm", None) or getattr(getattr(model.model, "decoder", None), "final_layer_norm", None)
    if final_norm is not None:
        params += list(final_norm.parameters())
    for p in params:
        p.requires_grad_(True)
    n_params = sum(p.numel() for p in params)
    print(f"comparing gradients over {n_params:,} parameters (last {s['last_layers']} layers + final norm), float64")

    per_seed, verdicts, reasons = {}, {}, {}
    for seed in args.seeds:
        pairs, _ = C.draw_subsets(pool, s["n_grad_pairs"], 0, seed)
        rows = check_formula(model, params, pairs, pad_id, rec.device)
        max_rel = max(r["rel_error"] for r in rows)
        verdicts[seed] = S.HOLDS if max_rel < TOL else S.FAILS
        per_seed[f"seed {seed}"] = {"max_rel_error": max_rel, "per_pair": rows}
        reasons[seed] = (f"-delta*h matches autograd to max relative error {max_rel:.1e} (tolerance {TOL:g}) over "
                         f"{len(rows)} pairs; the paper's printed +delta*h has cosine "
                         f"{max(r['cosine_paper_sign'] for r in rows):.3f} with the true gradient (opposite direction)")
    per_pair = [r for v in per_seed.values() for r in v["per_pair"]]
    max_rel = max(r["rel_error"] for r in per_pair)

    model.float()  # part 2 needs only the log-probs: float32 is 2-3x faster on a CPU than float64
    a, b = C.pair_logps(model, pool[: s["n_weight_pairs"]], pad_id, batch_size=4, device=rec.device)
    a, b = a.double(), b.double()
    w, log_or, delta = weights(a, b)

    plt = C.pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    ax = axes[0]
    x = torch.linspace(float(log_or.min()) - 0.5, float(log_or.max()) + 0.5, 200)
    ax.plot(x, torch.sigmoid(-x), color="gray", label="δ = σ(−log OR) (Eq. 9)")
    wrong = log_or < 0
    ax.scatter(log_or[wrong], delta[wrong], s=10, color="tab:red", label=f"pairs the model gets wrong ({int(wrong.sum())})")
    ax.scatter(log_or[~wrong], delta[~wrong], s=10, color="tab:blue", label=f"pairs it gets right ({int((~wrong).sum())})")
    ax.set(xlabel="log OR(y_w, y_l) of the pair under the model (nats, Eq. 5)", ylabel="δ(d) (dimensionless)",
           title="Illustration: δ weights each pair's gradient (δ > ½ exactly when log OR < 0)")
    ax.grid(alpha=0.3), ax.legend(fontsize=8)
    ax = axes[1]
    ax.semilogy(range(len(per_pair)), [max(r["rel_error"], 1e-18) for r in per_pair], "o", label="‖−δh − ∇L_OR‖ / ‖∇L_OR‖")
    ax.axhline(TOL, color="red", linestyle=":", label=f"tolerance {TOL:g}")
    ax.set(xlabel="pair (all seeds)", ylabel="relative error (float64)", title="Eq. 8–10 vs autograd, parameter gradients")
    ax.grid(alpha=0.3), ax.legend(fontsize=8)
    fig.suptitle(f"ORPO gradient\n{C.subtitle(args)}")
    figures = [rec.save_figure(fig, "gradient")]

    if "delta_diff_t" in w:
        w["note"] = ("an illustration, true by construction (delta > 0.5 exactly when log OR < 0): mean delta "
                     f"{w['delta_wrong_mean']:.3f} ± {w['delta_wrong_se']:.3f} on the {w['frac_wrong']:.0%} of pairs "
                     f"with log OR < 0 vs {w['delta_right_mean']:.3f} ± {w['delta_right_se']:.3f} on the rest; they "
                     f"get {w['push_share_of_wrong_pairs']:.0%} of the total push on (a, b); 1/(1-P) factors: median "
                     f"{w['inv_1_minus_P_chosen']['median']:.3f} (chosen), {w['inv_1_minus_P_rejected']['median']:.3f} (rejected)")
    claims = {"Eq. 8-10 gradient": C.claim(CLAIM, verdicts, reasons)}
    rec.finish({"parameters_compared": n_params, "max_rel_error": max_rel, "per_seed": per_seed,
                "weighting_illustration": w}, claims, figures)


if __name__ == "__main__":
    main()
