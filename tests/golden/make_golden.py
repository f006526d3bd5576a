"""Write the ORPO golden vectors tests/golden/orpo_<preset>.json (see SPEC.md next to this file).

    python tests/golden/make_golden.py          # rewrites the JSON files
    python tests/golden/make_golden.py --check  # exits 1 if the files differ from what this script computes

An INDEPENDENT implementation: plain Python floats (IEEE float64) and the math module, straight from the paper's
equations, no torch and no minorpo. The analytic gradients are checked here against central finite differences
before anything is written. tests/test_golden.py compares minorpo.loss with these files and checks that this script
still reproduces them.
"""

import json
import math
import random
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
LN2 = math.log(2.0)

# The four presets, as far as the token log-prob level sees them (minorpo/batches.py Conventions, shared/PAPER.md section 3):
# which positions enter log P(y|x) and the NLL, how the NLL is normalized, default lambda.
PRESETS = {
    "paper": dict(nll_coverage="response", nll_normalization="sequence_mean", drop_pad_id=False, extra=False),
    "trl": dict(nll_coverage="prompt+response", nll_normalization="token_mean", drop_pad_id=False, extra=False),
    "official": dict(nll_coverage="prompt+response", nll_normalization="token_mean", drop_pad_id=True, extra=True),
    "llamafactory": dict(nll_coverage="response", nll_normalization="sequence_mean", drop_pad_id=False, extra=False),
}

# ---- the math, from the paper ------------------------------------------------------------------------------------


def log1mexp(x):
    """log(1 - e^x), x < 0."""
    return math.log(-math.expm1(x)) if x > -LN2 else math.log1p(-math.exp(x))


def softplus(x):
    """log(1 + e^x) without overflow."""
    return x + math.log1p(math.exp(-x)) if x > 0 else math.log1p(math.exp(x))


def sigmoid(x):
    return 1 / (1 + math.exp(-x)) if x >= 0 else math.exp(x) / (1 + math.exp(x))


def mean(xs):
    return sum(xs) / len(xs)


def masked_mean(row, mask):
    n = sum(mask)
    assert n > 0
    return sum(v for v, m in zip(row, mask) if m) / n


def forward(inp, lam, normalization):
    """loss and metrics from token log-prob rows and masks."""
    C, Cm, Nm, R, Rm = (inp[k] for k in ("chosen_token_logps", "chosen_mask", "nll_mask", "rejected_token_logps",
                                         "rejected_mask"))
    B = len(C)
    a = [masked_mean(C[i], Cm[i]) for i in range(B)]  # Eq. 3
    b = [masked_mean(R[i], Rm[i]) for i in range(B)]
    if normalization == "token_mean":
        nll = -sum(v for i in range(B) for v, m in zip(C[i], Nm[i]) if m) / sum(sum(m) for m in Nm)
    else:
        nll = mean([-masked_mean(C[i], Nm[i]) for i in range(B)])
    z = [(a[i] - b[i]) - (log1mexp(a[i]) - log1mexp(b[i])) for i in range(B)]  # log OR, Eq. 5
    l_or = [softplus(-zi) for zi in z]  # -log sigmoid(z), Eq. 7
    loss = nll + lam * mean(l_or)  # Eq. 6
    metrics = {
        "loss": loss, "nll_loss": nll, "sft_loss": nll, "odds_ratio_loss": mean(l_or),
        "log_odds_ratio": mean([-x for x in l_or]), "log_odds_chosen": mean(z),
        "rewards/chosen": mean([lam * x for x in a]), "rewards/rejected": mean([lam * x for x in b]),
        "rewards/accuracies": mean([1.0 if lam * a[i] > lam * b[i] else 0.0 for i in range(B)]),
        "rewards/margins": mean([lam * (a[i] - b[i]) for i in range(B)]),
        "logps/chosen": mean(a), "logps/rejected": mean(b),
    }
    return loss, metrics, a, b, z


def gradients(inp, lam, normalization):
    """Analytic: dL/d(token log-probs) and d(lam * mean L_OR)/da_i, /db_i (Eq. 8-10, with the sign of Eq. 7)."""
    C, Cm, Nm, R, Rm = (inp[k] for k in ("chosen_token_logps", "chosen_mask", "nll_mask", "rejected_token_logps",
                                         "rejected_mask"))
    B = len(C)
    _, _, a, b, z = forward(inp, lam, normalization)
    delta = [sigmoid(-zi) for zi in z]  # Eq. 9
    g_a = [lam / B * -delta[i] / -math.expm1(a[i]) for i in range(B)]  # -delta / (1 - P_w)
    g_b = [lam / B * delta[i] / -math.expm1(b[i]) for i in range(B)]  # +delta / (1 - P_l)
    total_nll = sum(sum(m) for m in Nm)
    gc, gr = [], []
    for i in range(B):
        row = []
        for t in range(len(C[i])):
            g = g_a[i] * Cm[i][t] / sum(Cm[i])  # through Eq. 3
            if normalization == "token_mean":
                g += -Nm[i][t] / total_nll
            else:
                g += -Nm[i][t] / (sum(Nm[i]) * B)
            row.append(g)
        gc.append(row)
        gr.append([g_b[i] * Rm[i][t] / sum(Rm[i]) for t in range(len(R[i]))])
    return gc, gr, g_a, g_b


def check_by_finite_differences(inp, lam, normalization, grads):
    """Central differences (eps 1e-6) on the loss above agree with the analytic gradients (to 1e-6 relative to the
    largest entry + 1e-8: truncation eps^2 f''' and cancellation ulp(L) / eps)."""
    gc, gr = grads[0], grads[1]
    eps = 1e-6
    for key, g in (("chosen_token_logps", gc), ("rejected_token_logps", gr)):
        scale = max(abs(x) for row in g for x in row)
        for i, row in enumerate(inp[key]):
            for t in range(len(row)):
                if row[t] + eps >= 0:
                    continue  # the loss is defined for log-probs < 0 only
                hi = json.loads(json.dumps(inp))
                lo = json.loads(json.dumps(inp))
                hi[key][i][t] += eps
                lo[key][i][t] -= eps
                fd = (forward(hi, lam, normalization)[0] - forward(lo, lam, normalization)[0]) / (2 * eps)
                assert abs(fd - g[i][t]) <= 1e-6 * scale + 1e-8, (key, i, t, fd, g[i][t])


# ---- the cases ---------------------------------------------------------------------------------------------------
# A row is a list of position kinds: "p" predicts a prompt token, "r" a response token, "e" the response's EOS (which
# is also the pad id), "x" the pad after the response (the official extra target), "-" no target (padding). Each
# position gets a log-prob; the preset turns kinds into masks.


def masks(kinds, preset, side):
    conv = PRESETS[preset]
    response = [k in "re" or (k == "x" and conv["extra"]) for k in kinds]
    if side == "rejected":
        return response, None
    if conv["nll_coverage"] == "response":
        nll = [k in "re" for k in kinds]
    else:
        nll = [k in "pre" for k in kinds]
    if conv["drop_pad_id"]:
        nll = [m and k != "e" for m, k in zip(nll, kinds)]
    return response, nll


def case(name, lam, chosen, rejected, preset, note):
    """chosen / rejected: lists of rows, each a list of (kind, log-prob)."""
    cm, nm, rm = [], [], []
    for row in chosen:
        r, n = masks([k for k, _ in row], preset, "chosen")
        cm.append(r)
        nm.append(n)
    for row in rejected:
        rm.append(masks([k for k, _ in row], preset, "rejected")[0])
    inp = {
        "chosen_token_logps": [[v if m or n else 0.0 for (_, v), m, n in zip(row, cmr, nmr)]
                               for row, cmr, nmr in zip(chosen, cm, nm)],
        "chosen_mask": [[int(m) for m in r] for r in cm],
        "nll_mask": [[int(m) for m in r] for r in nm],
        "rejected_token_logps": [[v if m else 0.0 for (_, v), m in zip(row, rmr)] for row, rmr in zip(rejected, rm)],
        "rejected_mask": [[int(m) for m in r] for r in rm],
    }
    norm = PRESETS[preset]["nll_normalization"]
    loss, metrics, a, b, _ = forward(inp, lam, norm)
    grads = gradients(inp, lam, norm)
    check_by_finite_differences(inp, lam, norm, grads)
    return {
        "name": name, "note": note, "lambda": lam, "nll_normalization": norm, "inputs": inp,
        "outputs": {"loss": loss, "metrics": metrics, "chosen_logps": a, "rejected_logps": b,
                    "grad_chosen_token_logps": grads[0], "grad_rejected_token_logps": grads[1],
                    "grad_or_wrt_chosen_logps": grads[2], "grad_or_wrt_rejected_logps": grads[3]},
    }


def cases_for(preset):
    L = math.log
    rng = random.Random(1234)  # fixed: the files must not change between runs
    out = []
    # 1. tests/test_loss.py's hand case: every log-prob is log P[token] with P = (0.5, 0.25, 0.125, 0.125)
    out.append(case("hand", 0.1 if preset != "official" else 1.0,
                    [[("p", L(0.125)), ("r", L(0.5)), ("e", L(0.125)), ("x", L(0.125))]],
                    [[("p", L(0.125)), ("r", L(0.25)), ("e", L(0.125)), ("x", L(0.125))]], preset,
                    "prompt [2 2], chosen [0 EOS], rejected [1 EOS]; see test_full_loss_by_hand_per_preset"))
    # 2. two pairs of different lengths: token-mean and sequence-mean NLL differ
    out.append(case("two_lengths", 0.5,
                    [[("p", -2.0), ("r", L(0.5)), ("e", -0.1), ("x", -0.3), ("-", 0.0), ("-", 0.0)],
                     [("p", -1.0), ("p", -3.0), ("r", -0.2), ("r", -1.7), ("r", -0.05), ("e", -0.01)]],
                    [[("p", -2.0), ("r", -3.5), ("r", -0.4), ("e", -0.2), ("x", -0.6), ("-", 0.0)],
                     [("p", -1.0), ("p", -3.0), ("r", -4.0), ("e", -2.5), ("x", -0.7), ("-", 0.0)]], preset,
                    "B = 2 with 2 and 4 chosen response tokens"))
    # 3. a nearly certain chosen response (a ~ -1e-9: log1mexp near 0) against a hopeless rejected one
    out.append(case("near_certain", 1.0,
                    [[("p", -0.5), ("r", -1e-9), ("e", -2e-9), ("x", -1e-9)]],
                    [[("p", -0.5), ("r", -30.0), ("e", -25.0), ("x", -40.0)]], preset,
                    "a ~ -1.5e-9 (P(y_w|x) = 1 - 1.5e-9), b ~ -27.5"))
    # 4. the rejected response is the likelier one (accuracy 0), and lambda = 0 (rewards are 0: accuracies 0 too)
    out.append(case("rejected_likelier", 0.2,
                    [[("p", -1.0), ("r", -2.0), ("e", -1.5), ("x", -0.5)]],
                    [[("p", -1.0), ("r", -0.3), ("e", -0.2), ("x", -0.1)]], preset, "a < b"))
    out.append(case("lambda_zero", 0.0,
                    [[("p", -1.0), ("r", -0.4), ("e", -0.3), ("x", -0.2)]],
                    [[("p", -1.0), ("r", -2.0), ("e", -1.0), ("x", -0.9)]], preset,
                    "lam = 0: the loss is the NLL; rewards/accuracies compares lam*a > lam*b, so 0 (as TRL)"))
    # 5. random rows: B = 4, prompts of 1-3 targets, responses of 1-4 tokens ending in EOS, then pad, then padding
    chosen, rejected = [], []
    for _ in range(4):
        P = rng.randint(1, 3)
        for rows in (chosen, rejected):
            R = rng.randint(1, 4)
            kinds = ["p"] * P + ["r"] * (R - 1) + ["e", "x"]
            kinds += ["-"] * (9 - len(kinds))
            rows.append([(k, 0.0 if k == "-" else -rng.expovariate(0.7)) for k in kinds])
    out.append(case("random", 0.3, chosen, rejected, preset, "B = 4, T = 9, random.Random(1234), exponential log-probs"))
    return out


# ---- token-level cases: token ids, so that the masks themselves are tested --------------------------------------
# Each pair's sequence is prompt_ids + response_ids; target i (i = 0 .. len - 2) is token i + 1 predicted at position
# i; one more log-prob, of pad_id at the last position, is the official code's extra target (none when the row was
# truncated at max_length). The presets' rules, from token ids alone (see SPEC.md):
#   log P(y|x)  the response targets (i + 1 >= len(prompt)), + the extra target under `official` when not truncated
#   NLL         the chosen response targets, or every chosen target (prompt+response); `official` drops targets whose
#               id == pad_id (with pad = eos: every EOS)


def token_masks(seq, n_prompt, truncated, preset, side):
    conv = PRESETS[preset]
    n = len(seq)  # targets 0 .. n - 2, then the extra target at index n - 1
    response = [i + 1 >= n_prompt for i in range(n - 1)] + [conv["extra"] and not truncated]
    if side == "rejected":
        return response, None
    nll = [i + 1 >= n_prompt or conv["nll_coverage"] == "prompt+response" for i in range(n - 1)] + [False]
    return response, nll


def token_case(name, note, lam, ids, pairs, rng):
    """ids: dict(vocab_size, bos_id, eos_id, pad_id, max_length); pairs: dicts prompt_ids, chosen_ids, rejected_ids,
    chosen_truncated, rejected_truncated. Log-probs drawn per target (exponential, mean 1.4 nats)."""
    logps = {side: [[-rng.expovariate(0.7) for _ in range(len(p["prompt_ids"]) + len(p[f"{side}_ids"]))]
                    for p in pairs] for side in ("chosen", "rejected")}
    expected = {}
    for preset in PRESETS:
        rows = {"chosen_mask": [], "nll_mask": [], "rejected_mask": []}
        for i, p in enumerate(pairs):
            for side in ("chosen", "rejected"):
                seq = p["prompt_ids"] + p[f"{side}_ids"]
                resp, nll = token_masks(seq, len(p["prompt_ids"]), p[f"{side}_truncated"], preset, side)
                rows[f"{side}_mask"].append([int(m) for m in resp])
                if nll is not None:
                    if PRESETS[preset]["drop_pad_id"]:
                        nll = [m and (k == len(seq) - 1 or seq[k + 1] != ids["pad_id"]) for k, m in enumerate(nll)]
                    rows["nll_mask"].append([int(m) for m in nll])
        inp = {"chosen_token_logps": logps["chosen"], "rejected_token_logps": logps["rejected"], **rows}
        loss, metrics, a, b, _ = forward(inp, lam, PRESETS[preset]["nll_normalization"])
        expected[preset] = {"loss": loss, "metrics": metrics, "chosen_logps": a, "rejected_logps": b, "masks": rows}
    return {"name": name, "note": note, "lambda": lam, **ids, "pairs": pairs,
            "chosen_token_logps": logps["chosen"], "rejected_token_logps": logps["rejected"], "expected": expected}


def token_cases():
    rng = random.Random(4321)
    V, BOS, EOS = 12, 1, 2

    def pair(prompt, chosen, rejected, ct=False, rt=False):
        return {"prompt_ids": prompt, "chosen_ids": chosen, "rejected_ids": rejected, "chosen_truncated": ct,
                "rejected_truncated": rt}

    ids_eos = dict(vocab_size=V, bos_id=BOS, eos_id=EOS, pad_id=EOS, max_length=16)
    ids_pad = dict(vocab_size=V, bos_id=BOS, eos_id=EOS, pad_id=0, max_length=16)
    return [
        token_case("pad_is_eos", "pad = eos (the official setup): official's NLL drops every EOS target, and its "
                   "log P(y|x) also scores the pad (= EOS) after each response", 0.1, ids_eos,
                   [pair([BOS, 5, 6], [7, 8, EOS], [9, EOS]), pair([BOS, 3], [4, EOS, 10, EOS], [11, 7, 7, EOS])], rng),
        token_case("pad_not_eos", "pad id 0 != eos: the official filter drops nothing; its extra target is id 0",
                   0.1, ids_pad, [pair([BOS, 5, 6], [7, 8, EOS], [9, EOS]), pair([BOS, 3], [4, 10, EOS], [6, EOS])],
                   rng),
        token_case("double_bos", "a prompt starting with two BOS (a template and the tokenizer each added one): "
                   "prompt+response NLL scores the second BOS; response-only NLL does not", 0.5, ids_eos,
                   [pair([BOS, BOS, 5], [6, EOS], [7, 8, EOS]), pair([BOS, 4, 4, 4], [9, 9, EOS], [3, EOS])], rng),
        token_case("truncated", "the rejected row of pair 1 was cut at max_length = 8 (no EOS, no extra target)",
                   1.0, {**ids_eos, "max_length": 8},
                   [pair([BOS, 5, 6], [7, EOS], [8, 9, EOS]), pair([BOS, 3, 4], [5, 6, EOS], [7, 8, 9, 10, 11],
                                                                   rt=True)], rng),
    ]


def generate():
    return {preset: {"preset": preset, "conventions": PRESETS[preset], "generator": "tests/golden/make_golden.py",
                     "spec": "tests/golden/SPEC.md", "cases": cases_for(preset)} for preset in PRESETS}


def dumps(content) -> str:
    """JSON with each innermost list (a row of numbers) on one line. Floats are written by repr: they read back
    to the identical float64."""
    text = json.dumps(content, indent=1)
    return re.sub(r"\[\s+([^\[\]{}]*?)\s+\]", lambda m: "[" + " ".join(m.group(1).split()) + "]", text) + "\n"


def main(argv):
    data = {f"orpo_{preset}.json": content for preset, content in generate().items()}
    data["orpo_tokens.json"] = {"generator": "tests/golden/make_golden.py", "spec": "tests/golden/SPEC.md",
                                "presets": PRESETS, "cases": token_cases()}
    stale = []
    for name, content in data.items():
        path = HERE / name
        text = dumps(content)
        if "--check" in argv:
            if not path.exists() or path.read_text() != text:
                stale.append(path.name)
        else:
            path.write_text(text)
            print(f"wrote {path} ({len(content['cases'])} cases)")
    if stale:
        print(f"out of date: {stale}; run python tests/golden/make_golden.py")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
