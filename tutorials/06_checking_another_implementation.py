# %% [markdown]
# # Tutorial 6 — Checking another implementation against minorpo
#
# Every ORPO implementation makes choices the paper leaves open (shared/PAPER.md section 3): which tokens the
# NLL covers, how it is averaged, how log(1 - e^x) is computed. Two tools tell you what an implementation does:
#
# 1. **Golden vectors** (`tests/golden/orpo_<preset>.json`, specified in `tests/golden/SPEC.md`): inputs at the
#    level of per-token log-probabilities and masks, with the loss, metrics and gradients they must give, written
#    by an independent plain-Python float64 generator. Any framework can run them.
# 2. **`minorpo conformance`**: give it a model, a few pairs (or the other code's collated batch), and the numbers
#    another implementation logged on them; it evaluates every combination of conventions from one forward and
#    names the coordinates, and the known implementations (TRL, official, LLaMA-Factory, ms-swift, xtuner, ...)
#    that share them.
#
# Here we write two small "foreign" implementations in NumPy — a correct one, and the widely copied manual loss
# that PAPER.md section 5 warns about — and let both tools judge them.

# %%
import json
from pathlib import Path

import numpy as np
import torch

from minorpo.batches import collate_padded
from minorpo.tools.conformance import judge
from minorpo.hf.config import ModelConfig
from minorpo.tools.conventions import Predictor, score_batch
from minorpo.data import TokenizedPair
from minorpo.models import build_model

HERE = Path(__file__).resolve().parent if "__file__" in globals() else Path.cwd()  # a notebook runs in tutorials/
GOLDEN = HERE.parent / "tests" / "golden"
golden = {p: json.loads((GOLDEN / f"orpo_{p}.json").read_text()) for p in ("paper", "trl")}
print("golden cases:", [c["name"] for c in golden["paper"]["cases"]])

# %% [markdown]
# ## 1. Two foreign implementations
#
# Both take a case's inputs (per-token log-probs `[B][T]` and 0/1 masks) and return the loss.

# %%
def log1mexp(x):
    """log(1 - e^x), accurate for every x < 0 (tutorial 1, section 4)."""
    return np.where(x > -np.log(2), np.log(-np.expm1(np.minimum(x, -1e-300))), np.log1p(-np.exp(np.minimum(x, -np.log(2)))))


def careful_orpo(inp, lam, normalization):
    C, Cm, Nm = (np.array(inp[k], dtype=np.float64) for k in ("chosen_token_logps", "chosen_mask", "nll_mask"))
    R, Rm = (np.array(inp[k], dtype=np.float64) for k in ("rejected_token_logps", "rejected_mask"))
    a = (C * Cm).sum(1) / Cm.sum(1)  # Eq. 3, one value per pair
    b = (R * Rm).sum(1) / Rm.sum(1)
    log_or = (a - b) - (log1mexp(a) - log1mexp(b))  # Eq. 5
    l_or = np.logaddexp(0.0, -log_or)  # Eq. 7: -log sigmoid(z) = log(1 + e^-z)
    if normalization == "token_mean":
        nll = -(C * Nm).sum() / Nm.sum()
    else:
        nll = np.mean(-(C * Nm).sum(1) / Nm.sum(1))
    return nll + lam * l_or.mean()  # Eq. 6


def copied_manual_orpo(inp, lam, normalization):
    """The circulating 'manual ORPO loss': ONE mean over the whole batch's tokens before forming the odds, and
    odds = exp(a) / (1 - exp(a)) followed by log, in float32 as a model's outputs usually are."""
    C, Cm, Nm = (np.array(inp[k], dtype=np.float32) for k in ("chosen_token_logps", "chosen_mask", "nll_mask"))
    R, Rm = (np.array(inp[k], dtype=np.float32) for k in ("rejected_token_logps", "rejected_mask"))
    a = (C * Cm).sum() / Cm.sum()  # pooled over the batch: one "pair"
    b = (R * Rm).sum() / Rm.sum()
    with np.errstate(divide="ignore", invalid="ignore"):
        log_or = np.log(np.exp(a) / (1 - np.exp(a))) - np.log(np.exp(b) / (1 - np.exp(b)))
        l_or = -np.log(1 / (1 + np.exp(-log_or)))
    nll = -(C * Nm).sum() / Nm.sum()
    return float(nll + lam * l_or)


# %% [markdown]
# ## 2. Run the golden vectors
#
# Tolerance: the careful version computes in float64 like the generator, so 1e-12 relative (SPEC.md); the copied
# one computes in float32, so we give it 1e-5 — any failure below is a different formula, not rounding.

# %%
def check(impl, preset, rtol):
    results = {}
    for case in golden[preset]["cases"]:
        got = impl(case["inputs"], case["lambda"], case["nll_normalization"])
        want = case["outputs"]["loss"]
        rel = abs(got - want) / abs(want) if np.isfinite(got) else float("inf")
        results[case["name"]] = rel <= rtol
        print(f"  {preset:5s} {case['name']:18s} expected {want:.10f} got {got:.10f}  "
              f"{'ok' if rel <= rtol else 'FAIL (rel. diff %.1e)' % rel}")
    return results


print("careful_orpo:")
careful = {p: check(careful_orpo, p, 1e-12) for p in golden}
print("copied_manual_orpo:")
copied = {p: check(copied_manual_orpo, p, 1e-5) for p in golden}
assert all(all(r.values()) for r in careful.values())
# The copied loss is right only where pooling the batch changes nothing: one pair ('hand', 'near_certain'), or
# pairs that happen to have equal log-probs. The cases with several pairs of different lengths catch it:
assert not copied["paper"]["random"] and not copied["paper"]["two_lengths"]
assert copied["paper"]["hand"]  # B = 1: pooling is harmless there, and float32 is accurate enough
print("failures of the copied loss:", sorted(k for k, ok in copied["paper"].items() if not ok))

# %% [markdown]
# The same verdicts as a picture: each implementation's relative error on each golden case of the paper preset,
# on a log scale, against the two tolerances. An exact match (error 0) is drawn at 1e-17, float64's floor.

# %%
from minorpo.tools.plot import pyplot, save_figure, tutorial_folder

plt = pyplot()
cases = golden["paper"]["cases"]
fig, ax = plt.subplots(figsize=(7.5, 3.8))
for k, (impl, name, color) in enumerate(((careful_orpo, "careful_orpo (float64)", "tab:blue"),
                                         (copied_manual_orpo, "copied_manual_orpo (float32)", "tab:red"))):
    rel = []
    for case in cases:
        got = impl(case["inputs"], case["lambda"], case["nll_normalization"])
        want = case["outputs"]["loss"]
        rel.append(max(abs(got - want) / abs(want), 1e-17) if np.isfinite(got) else 1e3)
    ax.bar(np.arange(len(cases)) + (k - 0.5) * 0.4, rel, width=0.4, color=color, label=name)
ax.axhline(1e-12, color="tab:blue", ls="--", lw=1, label="tolerance for the float64 one, 1e-12")
ax.axhline(1e-5, color="tab:red", ls="--", lw=1, label="tolerance for the float32 one, 1e-5")
ax.set_yscale("log")
ax.set_xticks(range(len(cases)), [c["name"] for c in cases], rotation=20, fontsize=8)
ax.set(ylabel="relative error of the loss", ylim=(1e-18, 1e2),
       title="Golden vectors (paper preset): which cases each implementation gets right\n"
             "bars above their dashed tolerance are failures")
ax.legend(fontsize=7, loc="upper left", ncol=2)
ax.grid(alpha=0.3, axis="y")
save_figure(fig, tutorial_folder("06_checking_another_implementation"), "golden_vector_errors.png")

# %% [markdown]
# 'near_certain' passed only by luck: there the chosen response is certain (e^a rounds to 1 in float32, its odds
# are +inf) and L_OR's true value is ~0 anyway. Make *both* responses near-certain and the naive odds give
# inf - inf = NaN, while the careful log1mexp stays finite:

# %%
both_certain = {"chosen_token_logps": [[-1e-9, -1e-9]], "chosen_mask": [[1, 1]], "nll_mask": [[1, 1]],
                "rejected_token_logps": [[-2e-9, -2e-9]], "rejected_mask": [[1, 1]]}
print("both near-certain: careful", careful_orpo(both_certain, 1.0, "sequence_mean"),
      " copied", copied_manual_orpo(both_certain, 1.0, "sequence_mean"))
assert np.isnan(copied_manual_orpo(both_certain, 1.0, "sequence_mean"))
# by hand: log OR = log(odds_w / odds_l) ~ log((1/1e-9) / (1/2e-9)) = log 2, so L_OR = log(1 + 1/2) = 0.405465
assert abs(careful_orpo(both_certain, 1.0, "sequence_mean") - (1e-9 + np.log(1.5))) < 1e-8

# %% [markdown]
# ## 3. Which convention does an implementation follow? `minorpo conformance`
#
# Golden vectors need access to an implementation's internals (its token log-probs). Often you only have what
# it logged: a loss, an nll_loss, some rewards. `minorpo conformance --model M --data D --limit 4
# --metrics-json trainer_state.json` (or `--batch` with the other code's own collated batch) runs the model once
# and evaluates every combination of conventions on those pairs, as one batch: NLL coverage and normalization,
# the tokens of log P(y|x), the preference term, lambda, what logits/* average over. Each dimension is judged
# from the quantities that identify it (nll_loss for the NLL, logps/* for log P(y|x), (loss - nll_loss) / lambda
# and the odds metrics for the preference term), and the verdict names the known implementations at the matching
# coordinates. Here we do it in Python on a tiny model, with the "other implementation" written out by hand below
# in plain torch, TRL-style: the NLL is a token mean over prompt + response of the chosen rows.

# %%
torch.manual_seed(0)
config = ModelConfig(model_type="llama", vocab_size=32, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=64)
model = build_model(config).eval()
with torch.no_grad():
    for p in model.parameters():
        p.normal_(0, 0.2)
pairs = [TokenizedPair([1, 5, 6, 7], [8, 9, 2], [10, 2]), TokenizedPair([1, 11], [12, 13, 14, 15, 2], [16, 17, 2]),
         TokenizedPair([1, 18, 19], [20, 2], [21, 22, 23, 2])]
PAD, EOS, LAM = 0, 2, 0.1


@torch.no_grad()
def other_implementation(model, pairs, lam):
    """An ORPO loss written without minorpo: one forward of chosen + rejected rows; NLL over every chosen token
    after the first (prompt + response), pooled over the batch; log P(y|x) the mean over response tokens."""
    batch = collate_padded(pairs, PAD)
    ids = torch.cat([batch["chosen_input_ids"], batch["rejected_input_ids"]])
    mask = torch.cat([batch["chosen_attention_mask"], batch["rejected_attention_mask"]])
    labels = torch.cat([batch["chosen_labels"], batch["rejected_labels"]])
    logp = torch.log_softmax(model(ids, attention_mask=mask)[:, :-1].double(), -1)  # predicts tokens 1..T-1
    tok = logp.gather(-1, ids[:, 1:, None])[..., 0]  # [2B, T-1]
    B = len(pairs)
    real = mask[:, 1:].bool()
    nll = -tok[:B][real[:B]].mean()  # prompt + response of the chosen rows, one token mean
    resp = labels[:, 1:] != -100
    seq = (tok * resp).sum(1) / resp.sum(1)  # Eq. 3
    a, b = seq[:B], seq[B:]
    log_or = (a - b) - (torch.log(-torch.expm1(a)) - torch.log(-torch.expm1(b)))
    l_or = torch.nn.functional.softplus(-log_or)
    return {"loss": float(nll + lam * l_or.mean()), "nll_loss": float(nll), "logps/chosen": float(a.mean()),
            "logps/rejected": float(b.mean()), "log_odds_ratio": float(-l_or.mean())}


reported = other_implementation(model, pairs, LAM)
scores = score_batch(model, collate_padded(pairs, PAD), PAD, EOS)  # ONE forward; every convention is a mask
lines, status = judge(Predictor(scores), reported, rtol=1e-5, lam=LAM)  # float32 model: ~1e-6 is rounding
print("\n".join(lines))
verdict = next(line for line in lines if line.startswith("verdict:"))
assert status == 0 and verdict.startswith("verdict: MATCH")  # one candidate on every identified dimension ...
assert "shared by: trl (" in "\n".join(lines)  # ... and it is TRL's

# %% [markdown]
# The copied manual loss above, fed the same way, matches nothing: its one odds ratio per batch changes
# log_odds_ratio and the loss, and the report names those quantities and the dimensions they identify.

# %%
batch = collate_padded(pairs, PAD)
ids = torch.cat([batch["chosen_input_ids"], batch["rejected_input_ids"]])
with torch.no_grad():
    logp = torch.log_softmax(model(ids, attention_mask=torch.cat([batch["chosen_attention_mask"],
                                                                  batch["rejected_attention_mask"]]))[:, :-1], -1)
tok = logp.gather(-1, ids[:, 1:, None])[..., 0].numpy()
resp = (torch.cat([batch["chosen_labels"], batch["rejected_labels"]])[:, 1:] != -100).numpy()
real = torch.cat([batch["chosen_attention_mask"], batch["rejected_attention_mask"]])[:, 1:].bool().numpy()
B = len(pairs)
inp = {"chosen_token_logps": tok[:B], "chosen_mask": resp[:B], "nll_mask": real[:B],
       "rejected_token_logps": tok[B:], "rejected_mask": resp[B:]}
copied_loss = copied_manual_orpo(inp, LAM, "token_mean")
lines, status = judge(Predictor(scores), {"loss": copied_loss, "nll_loss": reported["nll_loss"]}, rtol=1e-5, lam=LAM)
print("\n".join(lines[-4:]))
assert status == 1 and "MATCH" not in next(line for line in lines if line.startswith("verdict:"))

# %% [markdown]
# ## 4. Bring your own loss: `minorpo.tools.testing`
#
# When you can call the other loss function yourself, `minorpo.tools.testing.check_orpo_loss(fn, convention=...)`
# drives it with hypothesis-generated batches (uneven lengths, long responses, near-certain responses, ...),
# names the convention it implements, and lists every property it breaks with a minimal failing example.
# `assert_orpo_conforms` is the same as a pytest assertion. Our two NumPy losses, wrapped to take torch tensors
# (token log-probs [B, T] and bool masks; no gradient, so the gradient checks are skipped):

# %%
from minorpo.tools.testing import assert_orpo_conforms, check_orpo_loss  # noqa: E402


def as_torch_loss(impl):
    def fn(c, cm, nm, r, rm, lam):
        inp = {"chosen_token_logps": c.detach().double().numpy(), "chosen_mask": cm.numpy(), "nll_mask": nm.numpy(),
               "rejected_token_logps": r.detach().double().numpy(), "rejected_mask": rm.numpy()}
        return torch.tensor(float(impl(inp, lam, "token_mean")))
    return fn


print(assert_orpo_conforms(as_torch_loss(careful_orpo), convention="trl", max_examples=15))
report = check_orpo_loss(as_torch_loss(copied_manual_orpo), convention="trl", max_examples=15)
print(report)
assert "one odds ratio per batch" in str(report)  # the pooled odds ratio, named, with a two-pair example
assert "near_zero" in {name for name, _, _ in report.failures}  # and exp(a) / (1 - exp(a)) near a = 0

# %% [markdown]
# The golden vectors of section 2 come with masks already built. `tests/golden/orpo_tokens.json` holds token-level
# cases (pad = eos, the official extra target, a double BOS, a truncated row) and
# `minorpo.tools.testing.golden_to_batch(case)` turns one into logits + labels for a padded batch, so that a real
# implementation's own masking code is what gets checked (tests/golden/SPEC.md).

# %%
print("tutorial 6: all checks passed")
