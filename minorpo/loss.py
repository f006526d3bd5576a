"""The ORPO objective (Hong, Lee & Thorne 2024, Eq. 3-10) and its baselines: tensors in, sums out.

Read top to bottom:
  1. Eq. 4-7 on the mean log-probs a = log P(y_w|x), b = log P(y_l|x) (Eq. 3, see logprobs.sequence_logps):
         log OR = (a - b) - (log(1 - e^a) - log(1 - e^b))      L_OR = -log sigmoid(log OR)
  2. Eq. 8-10, the gradient, written out (delta, h) for tests and teaching.
  3. L_SFT (the NLL term) and the baselines: SFT alone, DPO, the probability-ratio loss of section 7.1.
  4. objective_sums: per-token log-probs + masks (TokenLogps, from minorpo/forward.py) -> the objective of a batch
     as SUMS over its NLL tokens (or sequences) and its pairs. Dividing them by the counts of the batch they are a
     mean over is the caller's one visible step: batch_loss divides by the batch's own counts (the loss that
     tests/golden/SPEC.md specifies), train.py by the counts of the whole global batch (exact gradient accumulation).
Which tokens the masks select under each preset (paper, trl, official, llamafactory): minorpo/batches.py, Conventions.

The a = 0 case (P(y|x) = 1, which float32 reaches when a model is very confident): odds = P / (1 - P) is
infinite. We read a (or b) = 0 as -tiny, the smallest positive normal number of the dtype (1.2e-38 in float32),
in value only; the gradient passes through unchanged. Then, exactly as the one-sided limits say,
  a = 0, b < 0:  L_OR ~ 0, dL_OR/da = -odds(y_l) = -e^b / (1 - e^b), dL_OR/db ~ 0;
  a < 0, b = 0:  L_OR is large but finite (about 87 + log odds(y_w) in float32, 708 + ... in float64)
                 instead of +inf: the rejected response is certain, the worst case; its gradient is huge;
  a = b = 0:     log OR = 0, L_OR = log 2.
Positive "log-probabilities" are rejected with an error (they mean probabilities or an NLL were passed).
TRL's log1mexp gives a NaN gradient for a in about (-3e-8, 0) in float32 (torch.where evaluates the unused
log1p(-exp(a)) branch, and 0 * inf = NaN); ours feeds each branch only inputs it is accurate for.
"""

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from minorpo.logprobs import IGNORE_INDEX, sequence_logps, token_logps_reference

LN2 = math.log(2.0)

# --------------------------------------------------------------------------------------------------------------
# 1. Eq. 4-7 in log space
# --------------------------------------------------------------------------------------------------------------


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - e^x) for x <= 0, accurate everywhere (Maechler 2012, "Accurately computing log(1 - exp(-|a|))").

    Near 0, 1 - e^x cancels: use log(-expm1(x)). Far below, e^x is tiny: use log1p(-e^x). The switch is at
    x = -ln 2. Each branch is evaluated only on inputs it is accurate for (the other gets a harmless -1), so
    torch.where's backward never multiplies 0 by an infinite derivative. log1mexp(0) = -inf.
    """
    far = x < -LN2  # e^x < 1/2
    x_far = torch.where(far, x, -1.0)
    x_near = torch.where(far, -1.0, x)
    return torch.where(far, torch.log1p(-torch.exp(x_far)), torch.log(-torch.expm1(x_near)))


def _check_logps(x: torch.Tensor, name: str) -> None:
    if (x > 0).any():
        row = int((x > 0).nonzero()[0][0])
        raise ValueError(f"{name}[{row}] = {x.flatten()[row].item():.6g} > 0, but a log-probability is <= 0 "
                         "(were probabilities or an NLL passed instead of log-probabilities?)")


def _as_uncertain(logp: torch.Tensor) -> torch.Tensor:
    """logp = 0 (P = 1) -> -tiny in value; gradient passed straight through (see the module docstring)."""
    tiny = torch.finfo(logp.dtype).tiny
    return logp + (logp.clamp(max=-tiny) - logp).detach()


def _compute_dtype(*xs: torch.Tensor) -> torch.dtype:
    """float64 if any input is float64, else float32 (bf16 / fp16 inputs are upcast)."""
    return torch.float64 if any(x.dtype == torch.float64 for x in xs) else torch.float32


def log_odds(logps: torch.Tensor) -> torch.Tensor:
    """Eq. 4 in log space: log odds(y|x) = log P - log(1 - P), from logps = log P(y|x)."""
    _check_logps(logps, "logps")
    logps = _as_uncertain(logps.to(_compute_dtype(logps)))
    return logps - log1mexp(logps)


def log_odds_ratio(chosen_logps: torch.Tensor, rejected_logps: torch.Tensor) -> torch.Tensor:
    """Eq. 5 in log space: log OR = (a - b) - (log(1 - e^a) - log(1 - e^b)), per pair [B]."""
    _check_logps(chosen_logps, "chosen_logps")
    _check_logps(rejected_logps, "rejected_logps")
    dtype = _compute_dtype(chosen_logps, rejected_logps)
    a = _as_uncertain(chosen_logps.to(dtype))  # [B]
    b = _as_uncertain(rejected_logps.to(dtype))  # [B]
    return (a - b) - (log1mexp(a) - log1mexp(b))  # Eq. 5  [B]


def odds_ratio_loss(chosen_logps: torch.Tensor, rejected_logps: torch.Tensor) -> torch.Tensor:
    """Eq. 7: L_OR = -log sigmoid(log OR(y_w, y_l)), per pair [B] (not averaged)."""
    return -F.logsigmoid(log_odds_ratio(chosen_logps, rejected_logps))  # Eq. 7  [B]


# --------------------------------------------------------------------------------------------------------------
# 2. Eq. 8-10: the gradient of L_OR
# --------------------------------------------------------------------------------------------------------------


def orpo_gradient(chosen_logps: torch.Tensor, rejected_logps: torch.Tensor):
    """delta(d) (Eq. 9) and the two coefficients of h(d) (Eq. 10), per pair.

        delta(d) = [1 + odds(y_w|x) / odds(y_l|x)]^-1 = sigmoid(-log OR)
        h(d)     = grad log P(y_w|x) / (1 - P(y_w|x)) - grad log P(y_l|x) / (1 - P(y_l|x))
                 = h_chosen * grad a + h_rejected * grad b

    Returns (delta, h_chosen, h_rejected), each [B]. The gradient of L_OR is MINUS delta * h:
    dL_OR/da = -delta * h_chosen, dL_OR/db = -delta * h_rejected. The paper prints +delta * h (Eq. 8; its
    Appendix A, Eq. 20, drops the minus sign of Eq. 7 - xfactlab/orpo issue #37): that is the gradient of
    log sigmoid(log OR), the direction gradient DESCENT on L_OR moves a and b. delta -> 0 once the chosen odds
    dominate; 1 / (1 - P) amplifies the push where a likelihood is low... and blows up as P -> 1.
    """
    dtype = _compute_dtype(chosen_logps, rejected_logps)
    a = _as_uncertain(chosen_logps.to(dtype))
    b = _as_uncertain(rejected_logps.to(dtype))
    delta = torch.sigmoid(-log_odds_ratio(a, b))  # Eq. 9  [B]
    h_chosen = -1.0 / torch.expm1(a)  # 1 / (1 - P(y_w|x))  [B]
    h_rejected = 1.0 / torch.expm1(b)  # -1 / (1 - P(y_l|x))  [B]
    return delta, h_chosen, h_rejected


def odds_ratio_loss_grad(chosen_logps: torch.Tensor, rejected_logps: torch.Tensor):
    """Analytic gradient of L_OR_i w.r.t. a_i and b_i (Eq. 8 with the sign fixed, see orpo_gradient):
    (-delta * h_chosen, -delta * h_rejected)."""
    delta, h_chosen, h_rejected = orpo_gradient(chosen_logps, rejected_logps)
    return -delta * h_chosen, -delta * h_rejected


def odds_ratio_loss_grad_logits(chosen_logits, chosen_targets, rejected_logits, rejected_targets):
    """Analytic gradient of sum_i L_OR_i w.r.t. the logits [N, T, V] of both sequences (for tests and teaching).

    Chain rule through Eq. 3: a_i = (1/m_i) sum_t log softmax(z_it)[y_it], so
    d a_i / d z_itv = (1/m_i) (onehot(y_it)_v - softmax(z_it)_v) on scored positions, 0 elsewhere.
    Materializes [N, T, V]; training uses autograd through the chunked path instead.
    """
    a = sequence_logps(token_logps_reference(chosen_logits, chosen_targets), chosen_targets, name="chosen")
    b = sequence_logps(token_logps_reference(rejected_logits, rejected_targets), rejected_targets, name="rejected")
    grad_a, grad_b = odds_ratio_loss_grad(a, b)  # [B], [B]

    def through_eq3(logits, targets, grad_seq):
        scored = targets != IGNORE_INDEX  # [N, T]
        probs = torch.softmax(logits.to(grad_seq.dtype), dim=-1)  # [N, T, V]
        onehot = F.one_hot(targets.clamp(min=0), logits.shape[-1]).to(probs.dtype)  # [N, T, V]
        weight = (grad_seq / scored.sum(-1))[:, None] * scored  # dL/da_i / m_i on scored positions  [N, T]
        return weight[..., None] * (onehot - probs)  # [N, T, V]

    return through_eq3(chosen_logits, chosen_targets, grad_a), through_eq3(rejected_logits, rejected_targets, grad_b)


# --------------------------------------------------------------------------------------------------------------
# 3. L_SFT and the baselines
# --------------------------------------------------------------------------------------------------------------

NLL_NORMALIZATIONS = ("token_mean", "sequence_mean")


def nll_sum(token_logps: torch.Tensor, mask: torch.Tensor, normalization: str = "token_mean") -> torch.Tensor:
    """L_SFT as a SUM (0-dim), to be divided by its count (nll_count) over the batch it is a mean over.

    token_mean:    -sum(logp * mask), over the NLL tokens: ONE mean pooled over every token of the batch
                   (HF's CrossEntropyLoss; TRL, official). A long sequence weighs more.
    sequence_mean: sum over rows of -sum_t(logp * mask) / sum_t(mask), over the rows (paper's per-sequence
                   L_SFT, LLaMA-Factory). Every pair weighs the same.
    Plain SFT, the baseline of the paper's Fig. 3, is this term alone (method "sft" below).
    """
    if normalization == "token_mean":
        return -torch.where(mask, token_logps, 0.0).sum()
    if normalization == "sequence_mean":
        return -sequence_logps(token_logps, mask, name="NLL tokens").sum()
    raise ValueError(f"nll_loss: normalization must be one of {NLL_NORMALIZATIONS}, got {normalization!r}")


def nll_count(mask: torch.Tensor, normalization: str = "token_mean") -> int:
    """What nll_sum is divided by for one batch: its NLL tokens (token_mean) or its rows (sequence_mean)."""
    count = int(mask.sum()) if normalization == "token_mean" else mask.shape[0]
    if count == 0:
        raise ValueError("nll_loss: the NLL mask selects no token in the whole batch")
    return count


def nll_loss(token_logps: torch.Tensor, mask: torch.Tensor, normalization: str = "token_mean") -> torch.Tensor:
    """L_SFT of one batch, the causal-LM negative log-likelihood of the masked tokens (0-dim): nll_sum / nll_count."""
    return nll_sum(token_logps, mask, normalization) / nll_count(mask, normalization)


def probability_ratio_loss(chosen_logps: torch.Tensor, rejected_logps: torch.Tensor, beta: float = 1.0):
    """Section 7.1's alternative to the odds ratio: -log sigmoid(beta * log PR), log PR = a - b, per pair [B]."""
    dtype = _compute_dtype(chosen_logps, rejected_logps)
    return -F.logsigmoid(beta * (chosen_logps.to(dtype) - rejected_logps.to(dtype)))


def dpo_loss(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps,
             beta: float = 0.1):
    """DPO (Rafailov et al. 2023), the reference-model baseline: -log sigmoid(beta * (r_w - r_l)) per pair.

    Takes SUMMED sequence log-probs (logprobs.sequence_logps(..., average=False)), as DPO defines them, of the
    policy and of a frozen reference model. r = log pi(y|x) - log pi_ref(y|x). Returns (losses [B],
    chosen_rewards [B], rejected_rewards [B]) with rewards = beta * r, detached (TRL's DPO metrics).
    """
    dtype = _compute_dtype(policy_chosen_logps, policy_rejected_logps)
    r_w = policy_chosen_logps.to(dtype) - reference_chosen_logps.to(dtype)  # [B]
    r_l = policy_rejected_logps.to(dtype) - reference_rejected_logps.to(dtype)  # [B]
    losses = -F.logsigmoid(beta * (r_w - r_l))
    return losses, beta * r_w.detach(), beta * r_l.detach()


# --------------------------------------------------------------------------------------------------------------
# 4. Per-token log-probs -> the objective, as sums
# --------------------------------------------------------------------------------------------------------------


@dataclass
class TokenLogps:
    """Per-token log-probs of a batch of B pairs and which tokens each term uses. Tensors [B, T] (T may differ
    between chosen and rejected); log-probs are 0 where no target."""

    chosen: torch.Tensor  # log P of each target of the chosen sequences (response and NLL targets)
    chosen_mask: torch.Tensor  # bool: the tokens of log P(y_w|x), Eq. 3
    nll_mask: torch.Tensor  # bool: the tokens of L_SFT
    rejected: torch.Tensor  # log P of each target of the rejected sequences
    rejected_mask: torch.Tensor  # bool: the tokens of log P(y_l|x)
    logits_chosen: torch.Tensor | None = None  # 0-dim mean logit (logits/chosen metric), or None
    logits_rejected: torch.Tensor | None = None


METHODS = ("orpo", "sft", "pr", "dpo")
NLL_METRICS = ("nll_loss", "sft_loss")  # logged sums over the NLL count; every other logged sum is over the pairs


def objective_sums(tl: TokenLogps, method: str = "orpo", lam: float = 0.1, beta: float = 0.1,
                   nll_normalization: str = "token_mean", reference: TokenLogps | None = None):
    """The objective of a batch as sums: (nll_sum, pair_sum, stats).

    method: "orpo"  L = L_SFT + lam * mean_i L_OR_i                                    (Eq. 6)
            "sft"   L = L_SFT (the paper's baseline; the OR metrics are still reported)
            "pr"    L = L_SFT + lam * mean_i -log sigmoid(beta (a_i - b_i))           (section 7.1's probability ratio)
            "dpo"   L = mean_i -log sigmoid(beta (r_w,i - r_l,i)), on summed log-probs; `reference`: the reference
                    model's TokenLogps of the same batch (no L_SFT: nll_sum is 0)
    nll_sum: L_SFT summed under nll_normalization (nll_sum above); pair_sum: the pair term summed over the pairs,
    lam included. L = nll_sum / (NLL count) + pair_sum / (pairs), over the batch they are a mean over.
    stats (Python floats, one sync), each a SUM over the pairs, under TRL's names where TRL logs them (rewards =
    lam * log-prob, as TRL's beta): odds_ratio_loss (L_OR, unweighted), log_odds_ratio (log sigmoid(log OR) - TRL's
    name, not the log OR itself), log_odds_chosen (log OR), rewards/chosen, rewards/rejected, rewards/accuracies
    (lam*a > lam*b, strict, as TRL), rewards/margins, logps/chosen, logps/rejected (Eq. 3), logits/chosen,
    logits/rejected (when known: the batch's mean logit times B), probability_ratio_loss (pr); and nll_loss =
    sft_loss (LLaMA-Factory's name) = nll_sum, a sum over the NLL count (NLL_METRICS). DPO: its rewards (beta * r),
    logps/* and log_odds_chosen.
    """
    if lam < 0:
        raise ValueError(f"lambda must be >= 0, got {lam}")
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}: orpo, sft, dpo or pr")
    dtype = _compute_dtype(tl.chosen, tl.rejected)
    chosen, rejected = tl.chosen.to(dtype), tl.rejected.to(dtype)
    a = sequence_logps(chosen, tl.chosen_mask, name="chosen responses")  # Eq. 3  [B]
    b = sequence_logps(rejected, tl.rejected_mask, name="rejected responses")  # Eq. 3  [B]
    if method == "dpo":
        return _dpo_sums(tl, reference, a, b, beta)
    nll = nll_sum(chosen, tl.nll_mask, nll_normalization)  # L_SFT, summed
    log_or = log_odds_ratio(a, b)  # Eq. 5  [B]
    l_or = -F.logsigmoid(log_or)  # Eq. 7  [B]
    if method == "orpo":
        pairs = lam * l_or.sum()  # Eq. 6's lam * L_OR, summed over the pairs
    elif method == "sft":
        pairs = torch.zeros((), dtype=dtype, device=a.device)
    else:
        l_pr = probability_ratio_loss(a, b, beta)  # [B]
        pairs = lam * l_pr.sum()

    with torch.no_grad():
        B = a.shape[0]
        stats = {"nll_loss": nll, "sft_loss": nll, "odds_ratio_loss": l_or.sum(), "log_odds_ratio": -l_or.sum(),
                 "log_odds_chosen": log_or.sum(), "rewards/chosen": (lam * a).sum(),
                 "rewards/rejected": (lam * b).sum(),
                 "rewards/accuracies": (lam * a > lam * b).sum(), "rewards/margins": (lam * (a - b)).sum(),
                 "logps/chosen": a.sum(), "logps/rejected": b.sum()}
        if tl.logits_chosen is not None:
            stats["logits/chosen"], stats["logits/rejected"] = tl.logits_chosen * B, tl.logits_rejected * B
        if method == "pr":
            stats["probability_ratio_loss"] = l_pr.sum()
    return nll, pairs, _floats(stats, dtype)


def _dpo_sums(tl: TokenLogps, reference: TokenLogps | None, a, b, beta: float):
    """DPO on summed log-probs of the policy (tl) and of the reference model (reference); see objective_sums."""
    if reference is None:
        raise ValueError("DPO needs the reference model's log-probs (minorpo/forward.py: reference_logps)")
    pol_w = sequence_logps(tl.chosen, tl.chosen_mask, average=False)  # [B]
    pol_l = sequence_logps(tl.rejected, tl.rejected_mask, average=False)  # [B]
    ref_w = sequence_logps(reference.chosen, reference.chosen_mask, average=False)
    ref_l = sequence_logps(reference.rejected, reference.rejected_mask, average=False)
    losses, rew_w, rew_l = dpo_loss(pol_w, pol_l, ref_w, ref_l, beta)  # [B] each
    with torch.no_grad():
        a, b = a.detach(), b.detach()
        stats = {"rewards/chosen": rew_w.sum(), "rewards/rejected": rew_l.sum(),
                 "rewards/accuracies": (rew_w > rew_l).sum(), "rewards/margins": (rew_w - rew_l).sum(),
                 "logps/chosen": a.sum(), "logps/rejected": b.sum(), "log_odds_chosen": log_odds_ratio(a, b).sum()}
    return torch.zeros((), dtype=losses.dtype, device=losses.device), losses.sum(), _floats(stats, losses.dtype)


def _floats(stats: dict, dtype) -> dict:
    """{name: 0-dim tensor} -> {name: Python float}, in one device sync."""
    values = torch.stack([v.detach().to(dtype) for v in stats.values()]).tolist()
    return dict(zip(stats, values))


def metric_shares(loss, stats: dict, counts: dict) -> dict:
    """The logged metrics of a batch's share of the loss: `loss`, and each of objective_sums's stats divided by the
    count it is a sum over (counts: {"nll": the NLL count, "pairs": the pairs} of the batch the loss is a mean
    over)."""
    shares = {k: v / counts["nll" if k in NLL_METRICS else "pairs"] for k, v in stats.items()}
    return {"loss": float(loss.detach()), **shares}


def batch_loss(tl: TokenLogps, method: str = "orpo", lam: float = 0.1, beta: float = 0.1,
               nll_normalization: str = "token_mean", reference: TokenLogps | None = None):
    """(loss, metrics) of ONE batch: objective_sums divided by this batch's own counts (tests/golden/SPEC.md).
    Under gradient accumulation, train.py divides the same sums by the counts of the whole global batch instead."""
    nll, pairs, stats = objective_sums(tl, method, lam, beta, nll_normalization, reference)
    counts = {"pairs": tl.chosen.shape[0],
              "nll": 1 if method == "dpo" else nll_count(tl.nll_mask, nll_normalization)}
    loss = nll / counts["nll"] + pairs / counts["pairs"]
    return loss, metric_shares(loss, stats, counts)
