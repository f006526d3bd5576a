# %% [markdown]
# # Tutorial 2 — The ORPO loss from scratch, and its gradient
#
# We compute the ORPO loss of a small batch line by line, each line beside its equation in the paper, and check
# the result against `minorpo.loss`. Then we derive the gradient of the odds-ratio term (Eq. 8-10) and check it
# against autograd and against finite differences.
#
#     Eq. 3   log P(y|x)  = (1/m) sum_t log P(y_t | x, y_<t)        mean over the m response tokens
#     Eq. 4   odds(y|x)   = P(y|x) / (1 - P(y|x))
#     Eq. 5   OR          = odds(y_w|x) / odds(y_l|x)
#     Eq. 7   L_OR        = -log sigmoid(log OR)
#     Eq. 6   L_ORPO      = E[ L_SFT + lambda * L_OR ]                L_SFT = NLL of the chosen response
#
# Run it: `python tutorials/02_orpo_loss_from_scratch.py` (a few seconds, a tiny random model).

# %%
import math

import torch
import torch.nn.functional as F

from minorpo.batches import collate_padded
from minorpo.hf.config import ModelConfig
from minorpo.data import TokenizedPair
from minorpo.forward import logps_from_logits
from minorpo.logprobs import IGNORE_INDEX, shift_labels
from minorpo.loss import (batch_loss, log_odds_ratio, odds_ratio_loss, odds_ratio_loss_grad,
                          odds_ratio_loss_grad_logits, orpo_gradient)
from minorpo.models import build_model
from minorpo.tools.plot import pyplot, save_figure, tutorial_folder

torch.manual_seed(0)
plt = pyplot()
out = tutorial_folder("02_orpo_loss_from_scratch")  # figures: $MINORPO_TUTORIAL_OUT/..., or a temp folder

# %% [markdown]
# ## 1. A batch of two preference pairs, and a model's logits
#
# Token ids are made up (vocabulary of 16). Pair 0: prompt of 3 tokens, chosen response of 3, rejected of 2.
# Pair 1: prompt of 2, chosen of 4, rejected of 3. `collate_padded` lays them out as separate chosen and rejected
# rows padded to one length, with HF-style labels (-100 on prompt and padding).

# %%
pairs = [TokenizedPair(prompt_ids=[1, 2, 3], chosen_ids=[4, 5, 6], rejected_ids=[7, 8]),
         TokenizedPair(prompt_ids=[1, 9], chosen_ids=[10, 11, 12, 13], rejected_ids=[14, 15, 6])]
PAD = 0
batch = collate_padded(pairs, PAD)
print("chosen_input_ids\n", batch["chosen_input_ids"], "\nchosen_labels\n", batch["chosen_labels"])

config = ModelConfig(model_type="llama", vocab_size=16, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=64)
model = build_model(config).double()  # float64, so that the checks below can be tight
with torch.no_grad():  # larger random weights than the default init, so the probabilities differ visibly
    for p in model.parameters():
        p.normal_(0, 0.3)
chosen_logits = model(batch["chosen_input_ids"], attention_mask=batch["chosen_attention_mask"])  # [B, T, V]
rejected_logits = model(batch["rejected_input_ids"], attention_mask=batch["rejected_attention_mask"])  # [B, T, V]

# %% [markdown]
# ## 2. Per-token log-probabilities and Eq. 3
#
# Position t of the logits predicts token t+1, so labels are shifted one to the left (`shift_labels`): the
# target of position t is labels[t+1]. log P(y_t | ...) = log_softmax(logits)[target].

# %%
def response_logps(logits, labels, attention_mask):
    targets = shift_labels(labels, attention_mask)  # [B, T], -100 where nothing is scored
    mask = targets != IGNORE_INDEX  # [B, T] the response tokens
    logp = torch.log_softmax(logits, dim=-1)  # [B, T, V]
    token_logp = logp.gather(-1, targets.clamp(min=0)[..., None])[..., 0]  # [B, T]
    token_logp = torch.where(mask, token_logp, 0.0)
    return token_logp, mask


tok_w, mask_w = response_logps(chosen_logits, batch["chosen_labels"], batch["chosen_attention_mask"])
tok_l, mask_l = response_logps(rejected_logits, batch["rejected_labels"], batch["rejected_attention_mask"])
a = tok_w.sum(-1) / mask_w.sum(-1)  # Eq. 3 for y_w   [B]
b = tok_l.sum(-1) / mask_l.sum(-1)  # Eq. 3 for y_l   [B]
print("response tokens per row: chosen", mask_w.sum(-1).tolist(), "rejected", mask_l.sum(-1).tolist())
assert mask_w.sum(-1).tolist() == [3, 4] and mask_l.sum(-1).tolist() == [2, 3]  # the responses above
print("a = log P(y_w|x):", a.tolist(), "\nb = log P(y_l|x):", b.tolist())

# %% [markdown]
# ## 3. Eq. 4, 5, 7: odds, log odds ratio, L_OR — in log space
#
# log odds = log P - log(1 - P) = a - log(1 - e^a). Written naively this loses all precision as a -> 0
# (tutorial 1, section 4), so we use `torch.log(-torch.expm1(a))`, exact for a near 0 (our a are far from 0
# here, so both agree).

# %%
log_odds_w = a - torch.log(-torch.expm1(a))  # Eq. 4   [B]
log_odds_l = b - torch.log(-torch.expm1(b))  # Eq. 4   [B]
log_or = log_odds_w - log_odds_l  # Eq. 5   [B]
l_or = -F.logsigmoid(log_or)  # Eq. 7   [B]
print("log OR:", log_or.tolist(), "\nL_OR:  ", l_or.tolist())

# %% [markdown]
# ## 4. L_SFT and Eq. 6
#
# L_SFT is the causal-LM loss of the chosen *response*. The paper's reading (minorpo's `paper` preset): each
# pair's loss is its per-token mean, so L_SFT_i = -a_i, and the batch loss is the mean over pairs of
# L_SFT_i + lambda * L_OR_i. (Other implementations average over all tokens of the batch, or include the
# prompt in the NLL: the `trl` and `official` presets; see minorpo/batches.py, Conventions.)

# %%
lam = 0.5
l_sft = -a  # per pair   [B]
loss = (l_sft + lam * l_or).mean()  # Eq. 6
print(f"L_ORPO = {loss.item():.10f}")

# %% [markdown]
# ## 5. The same with minorpo
#
# minorpo's pipeline from these logits: `logps_from_logits` builds the targets and masks of the `paper` preset
# from the batch and takes the per-token log-probs; `batch_loss` computes Eq. 3, Eq. 5 with its stable log1mexp,
# and Eq. 6 with the paper's per-sequence NLL mean. In float64 both computations agree to rounding: 1e-12.

# %%
tl = logps_from_logits(chosen_logits, rejected_logits, batch, preset="paper")
loss_m, metrics = batch_loss(tl, "orpo", lam, nll_normalization="sequence_mean")
print(f"minorpo: {loss_m.item():.10f}; metrics:", {k: round(v, 4) for k, v in metrics.items()})
assert abs(loss_m.item() - loss.item()) < 1e-12
assert abs(metrics["logps/chosen"] - a.mean().item()) < 1e-12
assert abs(metrics["log_odds_chosen"] - log_or.mean().item()) < 1e-12  # TRL's name for the mean log OR
assert abs(metrics["odds_ratio_loss"] - l_or.mean().item()) < 1e-12

# %% [markdown]
# ## 6. The gradient of L_OR (Eq. 8-10)
#
# Differentiate L_OR = -log sigmoid(log OR) with d/dz[-log sigmoid(z)] = -sigmoid(-z), and
# d log odds(y|x) / d log P = 1 + P / (1 - P) = 1 / (1 - P):
#
#     dL_OR/da = -delta / (1 - P(y_w|x)),     dL_OR/db = +delta / (1 - P(y_l|x)),
#     delta    = sigmoid(-log OR) = [1 + odds(y_w|x) / odds(y_l|x)]^-1                       (Eq. 9)
#
# so grad L_OR = -delta * h with h = grad a / (1 - P_w) - grad b / (1 - P_l) (Eq. 10). The paper prints
# Eq. 8 as +delta * h: that is the gradient of log sigmoid(log OR), the direction that *descent* moves in.
# minorpo's `orpo_gradient` returns delta and the two 1/(1-P) coefficients.

# %%
a_leaf = a.detach().clone().requires_grad_(True)
b_leaf = b.detach().clone().requires_grad_(True)
odds_ratio_loss(a_leaf, b_leaf).sum().backward()  # autograd: dL_OR_i/da_i, dL_OR_i/db_i
delta, h_w, h_l = orpo_gradient(a, b)
by_hand_da = -torch.sigmoid(-log_or) / (1 - a.exp())
by_hand_db = torch.sigmoid(-log_or) / (1 - b.exp())
print("delta:", delta.tolist())
print("dL/da autograd", a_leaf.grad.tolist(), " -delta*h_w", (-delta * h_w).tolist())
for x, y in ((a_leaf.grad, -delta * h_w), (b_leaf.grad, -delta * h_l), (a_leaf.grad, by_hand_da),
             (b_leaf.grad, by_hand_db)):
    assert torch.allclose(x, y.detach(), rtol=1e-12, atol=1e-14)  # float64: rounding only

# %% [markdown]
# Finite differences: (L_OR(a + eps) - L_OR(a - eps)) / (2 eps). With eps = 1e-6 in float64 the truncation
# error is ~eps^2 * L''' ~ 1e-12 and the rounding error ~1e-16 / eps = 1e-10, so agreement to 1e-8 is expected.

# %%
eps = 1e-6
for i in range(len(a)):
    e = torch.zeros_like(a)
    e[i] = eps
    fd_a = (odds_ratio_loss(a + e, b) - odds_ratio_loss(a - e, b))[i] / (2 * eps)
    fd_b = (odds_ratio_loss(a, b + e) - odds_ratio_loss(a, b - e))[i] / (2 * eps)
    print(f"pair {i}: dL/da FD {fd_a.item():.8f} formula {(-delta * h_w)[i].item():.8f}; "
          f"dL/db FD {fd_b.item():.8f} formula {(-delta * h_l)[i].item():.8f}")
    assert abs(fd_a - (-delta * h_w)[i]) < 1e-8 and abs(fd_b - (-delta * h_l)[i]) < 1e-8

# %% [markdown]
# ## 7. All the way down to the logits
#
# a_i is a mean of log_softmax entries, and d log_softmax(z)[y] / dz_v = onehot(y)_v - softmax(z)_v. So the
# gradient of sum_i L_OR_i with respect to each logit is dL/da_i / m_i * (onehot - softmax) on the chosen
# response positions (likewise for b). `odds_ratio_loss_grad_logits` writes that out; autograd must agree.

# %%
cl = chosen_logits.detach().requires_grad_(True)
rl = rejected_logits.detach().requires_grad_(True)
ct = shift_labels(batch["chosen_labels"], batch["chosen_attention_mask"])
rt = shift_labels(batch["rejected_labels"], batch["rejected_attention_mask"])
aa = (response_logps(cl, batch["chosen_labels"], batch["chosen_attention_mask"])[0].sum(-1) / mask_w.sum(-1))
bb = (response_logps(rl, batch["rejected_labels"], batch["rejected_attention_mask"])[0].sum(-1) / mask_l.sum(-1))
odds_ratio_loss(aa, bb).sum().backward()
g_c, g_r = odds_ratio_loss_grad_logits(chosen_logits.detach(), ct, rejected_logits.detach(), rt)
print("max |autograd - formula| on the logits:", max((cl.grad - g_c).abs().max().item(), (rl.grad - g_r).abs().max().item()))
assert torch.allclose(cl.grad, g_c, rtol=1e-10, atol=1e-14) and torch.allclose(rl.grad, g_r, rtol=1e-10, atol=1e-14)

# %% [markdown]
# ## 8. What delta does
#
# delta = sigmoid(-log OR) is near 1 for a pair the model gets wrong (log OR << 0) and near 0 once the chosen
# odds dominate: ORPO stops pushing on pairs it has already separated. The 1/(1-P) factors are close to 1
# while likelihoods are small (a mean token log-prob of -2 gives 1/(1 - e^-2) = 1.16) and grow only as P -> 1.

# %%
grid = torch.tensor([-4.0, -1.0, 0.0, 1.0, 4.0], dtype=torch.float64)
for z, d in zip(grid.tolist(), torch.sigmoid(-grid).tolist()):
    print(f"log OR = {z:+.0f}: delta = {d:.3f}")
assert torch.all(torch.diff(torch.sigmoid(-grid)) < 0)  # delta falls as log OR rises
assert abs(1 / (1 - math.exp(-2)) - 1.1565) < 1e-4  # 4 decimals of hand arithmetic

# %% [markdown]
# ## 9. L_OR and delta over the whole plane
#
# Every pair is a point (a, b) = (log P(y_w|x), log P(y_l|x)). L_OR is small below the diagonal a = b (the chosen
# response is more likely) and grows above it; delta, the pair's weight in the gradient, is its mirror image: ~1
# where the model is wrong, ~0 once the pair is separated. The two batches' pairs from section 1 are marked.

# %%
g = torch.linspace(-6, -0.02, 300, dtype=torch.float64)
A, Bg = torch.meshgrid(g, g, indexing="xy")  # A varies along x (columns), Bg along y (rows)
l_or_grid = odds_ratio_loss(A.flatten(), Bg.flatten()).view(A.shape)
delta_grid = orpo_gradient(A.flatten(), Bg.flatten())[0].view(A.shape)
assert torch.allclose(delta_grid, torch.sigmoid(-log_odds_ratio(A.flatten(), Bg.flatten())).view(A.shape))
fig, axes = plt.subplots(1, 2, figsize=(7.8, 3.8), sharey=True)
for ax, grid_values, name, cmap in ((axes[0], l_or_grid, "L_OR = -log σ(log OR)  (nats)", "viridis"),
                                    (axes[1], delta_grid, "δ = σ(-log OR)  (weight, 0 to 1)", "magma")):
    mesh = ax.pcolormesh(A, Bg, grid_values, cmap=cmap, shading="auto",
                         vmax=min(float(grid_values.max()), 6.0))
    ax.contour(A, Bg, grid_values, levels=[0.1, 0.5, 1, 2, 4] if cmap == "viridis" else [0.1, 0.5, 0.9],
               colors="white", linewidths=0.7)
    ax.plot([-6, 0], [-6, 0], color="white", ls="--", lw=1)
    ax.plot(a.tolist(), b.tolist(), "o", color="tab:red", ms=6, label="section 1's pairs")
    ax.set(xlabel="a = log P(y_w|x) (nats)", title=name)
    fig.colorbar(mesh, ax=ax, fraction=0.046)
axes[0].set_ylabel("b = log P(y_l|x) (nats)")
axes[0].legend(fontsize=8, loc="lower left")
fig.suptitle("The odds-ratio loss and its gradient weight over (log P_w, log P_l); dashed: a = b", fontsize=11)
fig.tight_layout()
save_figure(fig, out, "l_or_and_delta_surface.png")
assert l_or_grid[0, -1] < 0.01 and l_or_grid[-1, 0] > 5  # a = -0.02, b = -6: separated; the reverse: far from it

# %% [markdown]
# ## 10. The four terms of the gradient
#
# Along a line b = -2, as the chosen response becomes certain (a -> 0): delta falls (the pair is separated), while
# 1/(1 - P(y_w|x)) rises without bound. Their product |dL_OR/da| does not vanish: the two cancel, and it tends to
# odds(y_l|x) = e^-2 / (1 - e^-2) = 0.157 (loss.py's module docstring, the a = 0 case). The rejected response's
# term 1/(1 - P(y_l|x)) stays 1.16 (b is fixed), so |dL_OR/db| follows delta down to 0.

# %%
a_line = torch.linspace(-6, -0.01, 400, dtype=torch.float64)
b_line = torch.full_like(a_line, -2.0)
d_line, hw_line, hl_line = orpo_gradient(a_line, b_line)
fig, ax = plt.subplots(figsize=(7.5, 4.2))
ax.plot(a_line, d_line, lw=2, label="δ = σ(-log OR)  (Eq. 9)")
ax.plot(a_line, hw_line, lw=2, label="1 / (1 - P(y_w|x))  (Eq. 10, chosen)")
ax.plot(a_line, -hl_line, lw=2, ls=":", label="1 / (1 - P(y_l|x))  (Eq. 10, rejected)")
ax.plot(a_line, d_line * hw_line, lw=2.5, color="black", label="|dL_OR/da| = δ / (1 - P(y_w|x))")
ax.plot(a_line, -d_line * hl_line, lw=2, ls="--", color="gray", label="|dL_OR/db| = δ / (1 - P(y_l|x))")
ax.axvline(-2.0, color="gray", lw=0.8)
ax.text(-2.05, 2e-3, "a = b", ha="right", fontsize=8, color="gray")
ax.set_yscale("log")
ax.set(xlabel="a = log P(y_w|x) (nats), with b = log P(y_l|x) = -2", ylabel="value (log scale)",
       title="The terms of the gradient of L_OR (Eq. 8-10) as the chosen response becomes certain")
ax.grid(alpha=0.3, which="both")
ax.legend(fontsize=8, loc="upper center")
save_figure(fig, out, "gradient_terms.png")
assert torch.allclose(d_line * hw_line, -odds_ratio_loss_grad(a_line, b_line)[0])  # the product is dL/da
odds_l = math.exp(-2) / (1 - math.exp(-2))
assert abs((d_line * hw_line)[-1].item() / odds_l - 1) < 0.02  # a = -0.01: within 1% of its limit (error ~ |a|)
print("tutorial 2: all checks passed")
