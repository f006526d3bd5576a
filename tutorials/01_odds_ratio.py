# %% [markdown]
# # Tutorial 1 — Odds, odds ratios, and why ORPO uses them
#
# ORPO (Hong, Lee & Thorne 2024) adds one term to supervised fine-tuning: a penalty that is small when the model
# gives the *chosen* response y_w higher **odds** than the *rejected* response y_l. This tutorial builds that
# term from numbers you can check by hand, then compares it with the alternative the paper rejects, the
# **probability ratio** (section 7.1, Fig. 6).
#
# Run it: `python tutorials/01_odds_ratio.py` (a second, no model needed). Every check is an `assert`.

# %%
import math

import torch

from minorpo import loss
from minorpo.tools.plot import pyplot, save_figure, tutorial_folder

torch.set_printoptions(precision=4)
plt = pyplot()
out = tutorial_folder("01_odds_ratio")  # figures go here: $MINORPO_TUTORIAL_OUT/01_odds_ratio, or a temp folder

# %% [markdown]
# ## 1. The probability of a response (Eq. 3)
#
# A language model gives each token of a response a probability. ORPO uses their **geometric mean**:
#
#     log P(y|x) = (1/m) * sum_t log P(y_t | x, y_<t)          (Eq. 3, m = number of response tokens)
#
# so P(y|x) is always in (0, 1) and does not shrink just because a response is long.
# Take a 4-token response whose tokens get probabilities 0.5, 0.8, 0.9 and 0.4:

# %%
token_probs = torch.tensor([0.5, 0.8, 0.9, 0.4], dtype=torch.float64)
a = token_probs.log().mean()  # Eq. 3
# by hand: (log 0.5 + log 0.8 + log 0.9 + log 0.4) / 4 = (-0.6931 - 0.2231 - 0.1054 - 0.9163) / 4 = -0.4845
print(f"log P(y|x) = {a.item():.4f}, P(y|x) = {a.exp().item():.4f} (geometric mean of the token probabilities)")
assert abs(a.item() - (-0.4845)) < 1e-4  # 4 decimals of hand arithmetic
assert abs(a.exp().item() - (0.5 * 0.8 * 0.9 * 0.4) ** 0.25) < 1e-12  # the geometric mean, exactly

# %% [markdown]
# ## 2. Odds (Eq. 4) and the odds ratio (Eq. 5)
#
#     odds(y|x) = P(y|x) / (1 - P(y|x))          OR(y_w, y_l) = odds(y_w|x) / odds(y_l|x)
#
# Odds of 4 mean "4 times more likely to be generated than not". With P(y_w|x) = 0.8 and P(y_l|x) = 0.5:
# odds 4 and 1, so OR = 4 and log OR = log 4 = 1.3863. minorpo works in log space, on a = log P(y_w|x) and
# b = log P(y_l|x): log OR = (a - b) - (log(1 - e^a) - log(1 - e^b)).

# %%
a = torch.tensor([math.log(0.8)], dtype=torch.float64)
b = torch.tensor([math.log(0.5)], dtype=torch.float64)
print("log odds(y_w) =", loss.log_odds(a).item(), " (log 4 =", math.log(4), ")")
print("log OR        =", loss.log_odds_ratio(a, b).item())
assert abs(loss.log_odds(a).item() - math.log(4)) < 1e-12  # float64: exact up to rounding
assert abs(loss.log_odds(b).item() - 0.0) < 1e-12  # P = 0.5: odds 1, log odds 0
assert abs(loss.log_odds_ratio(a, b).item() - math.log(4)) < 1e-12

# %% [markdown]
# ## 3. The ORPO penalty (Eq. 7)
#
#     L_OR = -log sigmoid(log OR) = log(1 + 1/OR)
#
# With OR = 4: log(1.25) = 0.2231. It tends to 0 as the chosen odds dominate and grows like -log OR when the
# rejected response has the higher odds.

# %%
l_or = loss.odds_ratio_loss(a, b)
print(f"L_OR = {l_or.item():.4f}  (log 1.25 = {math.log(1.25):.4f})")
assert abs(l_or.item() - math.log(1.25)) < 1e-12
swapped = loss.odds_ratio_loss(b, a)  # the model prefers the rejected response: OR = 1/4
assert abs(swapped.item() - math.log(5)) < 1e-12  # log(1 + 4)
print(f"with chosen and rejected swapped: L_OR = {swapped.item():.4f} (log 5)")

# %% [markdown]
# ## 4. Why log(1 - e^a) needs care
#
# A confident model has a = log P(y_w|x) close to 0, and 1 - e^a cancels catastrophically. In float32,
# e^(-1e-9) rounds to exactly 1, so the naive formula gives log(0) = -inf and the loss becomes NaN (the bug
# TRL fixed in #4763). minorpo's `log1mexp` uses log(-expm1(a)) near 0 (expm1 is accurate there) and
# log1p(-e^a) further away (Maechler 2012).

# %%
a32 = torch.tensor([-1e-9], dtype=torch.float32)
naive = torch.log(1 - torch.exp(a32))
stable = loss.log1mexp(a32)
exact = math.log(-math.expm1(-1e-9))  # float64 reference: log(1e-9 - 5e-19 ...) = -20.7233
print(f"naive float32: {naive.item()}, minorpo float32: {stable.item():.6f}, float64 exact: {exact:.6f}")
assert torch.isinf(naive).all()
assert abs(stable.item() - exact) < 1e-5  # float32 has ~7 significant digits; |exact| ~ 20.7

# %% [markdown]
# ## 5. Odds ratio vs probability ratio (section 7.1, Fig. 6)
#
# Why not compare probabilities directly, as DPO does with its (reference-relative) log ratio? The paper's
# simulation: draw X1, X2 ~ Uniform(0, 1) as stand-ins for P(y_w|x), P(y_l|x), and compare the spread of
# beta * log(X1/X2) with that of log OR = logit(X1) - logit(X2). The exact answer, an oracle for the sample:
# -log X is Exponential(1), so log X1 - log X2 is Laplace(0, 1) with standard deviation sqrt(2); logit(X) is
# Logistic(0, 1), so log OR has standard deviation pi * sqrt(2/3) = 2.565.

# %%
g = torch.Generator().manual_seed(0)
n = 20_000
x1 = torch.rand(n, generator=g, dtype=torch.float64)
x2 = torch.rand(n, generator=g, dtype=torch.float64)
log_or = loss.log_odds_ratio(x1.log(), x2.log())  # minorpo's Eq. 5 on log-probabilities
assert torch.allclose(log_or, torch.logit(x1) - torch.logit(x2), rtol=1e-9, atol=1e-9)  # the same thing
for beta in (0.2, 1.0):
    log_pr = beta * (x1.log() - x2.log())
    print(f"beta = {beta}: std of beta*log PR = {log_pr.std():.3f} (exact {beta * math.sqrt(2):.3f}); "
          f"share within ±0.5: {(log_pr.abs() < 0.5).double().mean():.2f}")
    # sample std within 5% of the exact value: its standard error at n = 20,000 is ~1.5% (Laplace kurtosis 6)
    assert abs(log_pr.std() / (beta * math.sqrt(2)) - 1) < 0.05
print(f"std of log OR = {log_or.std():.3f} (exact {math.pi * math.sqrt(2 / 3):.3f}); "
      f"share within ±0.5: {(log_or.abs() < 0.5).double().mean():.2f}")
assert abs(log_or.std() / (math.pi * math.sqrt(2 / 3)) - 1) < 0.05  # std error ~1% (logistic-difference kurtosis)

# %% [markdown]
# The picture of Fig. 6: histograms of the 20,000 simulated values, and the exact densities drawn over them. The
# log OR is the difference of two Logistic(0, 1) variables, whose density is
# f(z) = e^-z ((z - 2) + (z + 2) e^-z) / (1 - e^-z)^3 for z > 0 (symmetric; f(0) = 1/6). We check it integrates
# to 1 with variance 2 pi^2 / 3 before drawing it.

# %%
def logistic_difference_density(z):
    z = z.abs().clamp(min=1e-3)  # symmetric; the formula cancels at 0 (its limit, 1/6, is within 1e-7 at 1e-3)
    e = torch.exp(-z)
    return e * ((z - 2) + (z + 2) * e) / (1 - e) ** 3


grid = torch.linspace(-40, 40, 160_001, dtype=torch.float64)
dens = logistic_difference_density(grid)
step = (grid[1] - grid[0]).item()
assert abs(dens.sum().item() * step - 1) < 1e-4  # Riemann sum of a smooth density: error << 1e-4
assert abs((dens * grid**2).sum().item() * step / (2 * math.pi**2 / 3) - 1) < 1e-4

fig, ax = plt.subplots(figsize=(7.5, 4.2))
zs = torch.linspace(-8, 8, 801, dtype=torch.float64)
bins = torch.linspace(-8, 8, 81).tolist()
for beta, color in ((0.2, "tab:orange"), (1.0, "tab:green")):
    samples = beta * (x1.log() - x2.log())
    ax.hist(samples.tolist(), bins=bins, density=True, alpha=0.35, color=color)
    ax.plot(zs, torch.exp(-zs.abs() / beta) / (2 * beta), color=color, lw=2,
            label=f"probability ratio, β·log PR, β = {beta} (Laplace, std {beta * math.sqrt(2):.2f})")
ax.hist(log_or.tolist(), bins=bins, density=True, alpha=0.35, color="tab:blue")
ax.plot(zs, logistic_difference_density(zs), color="tab:blue", lw=2,
        label=f"odds ratio, log OR (logistic difference, std {math.pi * math.sqrt(2 / 3):.2f})")
ax.set(xlabel="log ratio of the chosen to the rejected response (nats)", ylabel="density",
       title="Fig. 6: spread of the preference signal when P(y_w|x), P(y_l|x) ~ Uniform(0, 1)\n"
             "histograms: 20,000 draws; lines: exact densities", xlim=(-8, 8), ylim=(0, 1.0))
ax.annotate("β = 0.2 peaks at 2.5", (0.0, 0.97), xytext=(1.2, 0.62), fontsize=8, color="tab:orange",
            arrowprops={"arrowstyle": "->", "color": "tab:orange"})
ax.grid(alpha=0.3)
ax.legend(fontsize=8, loc="upper right")
save_figure(fig, out, "fig6_odds_vs_probability_ratio.png")

# %% [markdown]
# The probability ratio is **sharper**: most of its mass sits near 0. For a loss -log sigmoid(z) to become
# small, say 0.1, z must reach log(1/(e^0.1 - 1)) = 2.252. How far must the rejected response be pushed down
# for that, when the chosen one has P(y_w|x) = e^-1 (a mean token log-prob of -1, typical of a fine-tuned
# model)?
#
# * PR with beta: beta (a - b) >= 2.252, so b <= a - 2.252 / beta.
# * OR: solve log OR(a, b) = 2.252 for b (bisection below, on minorpo's log_odds_ratio).

# %%
z = math.log(1 / math.expm1(0.1))
a0 = -1.0
for beta in (0.2, 1.0):
    print(f"PR, beta = {beta}: rejected mean log-prob must reach {a0 - z / beta:.2f}")
lo, hi = -60.0, a0  # log OR rises as b falls: bisection on b
for _ in range(200):
    mid = (lo + hi) / 2
    if loss.log_odds_ratio(torch.tensor([a0], dtype=torch.float64), torch.tensor([mid], dtype=torch.float64)) > z:
        lo = mid
    else:
        hi = mid
print(f"OR: rejected mean log-prob must reach {lo:.2f}")
# by hand: odds(y_w) = e^-1 / (1 - e^-1) = 0.5820; odds(y_l) <= 0.5820 / e^2.252 = 0.0612, P <= 0.0577, log = -2.853
assert abs(lo - (-2.853)) < 1e-3
assert a0 - z / 0.2 < -12  # beta = 0.2: -12.26, a per-token probability of 5e-6

# %% [markdown]
# The same as a picture: each loss as the rejected response's mean log-prob falls, the chosen one held at -1.

# %%
b_grid = torch.linspace(-14, -1.0, 400, dtype=torch.float64)
a_grid = torch.full_like(b_grid, a0)
fig, ax = plt.subplots(figsize=(7.5, 4.2))
ax.plot(b_grid, loss.odds_ratio_loss(a_grid, b_grid), color="tab:blue", lw=2, label="odds ratio: L_OR")
for beta, color in ((1.0, "tab:green"), (0.2, "tab:orange")):
    ax.plot(b_grid, loss.probability_ratio_loss(a_grid, b_grid, beta), color=color, lw=2,
            label=f"probability ratio: -log σ(β (a - b)), β = {beta}")
ax.axhline(0.1, color="gray", ls="--", lw=1)
for b_reached, color, dx in ((lo, "tab:blue", -16), (a0 - z / 1.0, "tab:green", 16), (a0 - z / 0.2, "tab:orange", 0)):
    ax.plot([b_reached], [0.1], "o", color=color, ms=7)
    ax.annotate(f"{b_reached:.2f}", (b_reached, 0.1), textcoords="offset points", xytext=(dx, 8), ha="center",
                fontsize=8, color=color)
ax.set(xlabel="log P(y_l|x): mean token log-prob of the rejected response (nats)", ylabel="loss (nats)",
       title="How far must the rejected response fall for the loss to reach 0.1?\n"
             "chosen response held at log P(y_w|x) = -1 (dots: where each loss crosses 0.1)",
       xlim=(-14, -1), ylim=(0, 0.8))
ax.invert_xaxis()  # the rejected response falls to the right
ax.grid(alpha=0.3)
ax.legend(fontsize=8, loc="upper left")
save_figure(fig, out, "loss_vs_rejected_logprob.png")
# %% [markdown]
# With beta = 0.2 the probability-ratio loss keeps pushing until the rejected tokens average a log-prob of
# about -12; the odds ratio is satisfied at about -2.9. Combined with the SFT term, that is the
# over-suppression of Appendix B (log-probs falling below -4): `reproduce/odds_vs_probability_ratio.py`
# measures it in training. Next: tutorial 2 builds the whole ORPO loss and its gradient.

# %%
print("tutorial 1: all checks passed")
