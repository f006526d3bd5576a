"""The ORPO objective (Hong, Lee & Thorne 2024, Eq. 3-10), every convention explicit, plus the baselines.

Read top to bottom:
  1. Eq. 4-7 on the mean log-probs a = log P(y_w|x), b = log P(y_l|x) (Eq. 3, see logprobs.sequence_logps):
         log OR = (a - b) - (log(1 - e^a) - log(1 - e^b))      L_OR = -log sigmoid(log OR)
  2. Eq. 8-10, the gradient, written out (delta, h) for tests and teaching.
  3. L_SFT (the NLL term) and the baselines: SFT alone, DPO, the probability-ratio loss of section 7.1.
  4. Conventions: which tokens the NLL covers and how it is normalized, and four named presets.
  5. loss_from_token_logps: per-token log-probs + masks -> (loss, metrics). Framework-neutral core
     (tests/golden/SPEC.md specifies it so other implementations can check themselves).
  6. Batches -> per-token log-probs: from a model (padded or shared-prompt layout) or from given logits.

Where implementations differ (shared/PAPER.md section 3) and why it matters:
  * paper         L = mean_i [ L_SFT_i + lam * L_OR_i ] with L_SFT_i = the NLL of the chosen RESPONSE, a
                  per-sequence mean (Eq. 6's expectation over pairs of a length-normalized causal-LM loss;
                  PAPER.md lists the normalization as unspecified - this is our reading, and with it
                  L_SFT_i = -a_i exactly). Default lam = 0.1.
  * trl           TRL ORPOTrainer 1.x: the NLL covers PROMPT + chosen response, pads removed by attention mask,
                  one token mean pooled over the whole micro-batch (long sequences weigh more). lam = beta = 0.1.
  * official      xfactlab/orpo: NLL over prompt + response as a pooled token mean, but targets are dropped BY
                  TOKEN ID == pad_token_id (the official code sets pad = eos, so every EOS - including the one
                  that ends the response - is never trained by the NLL); and log P(y|x) scores ONE EXTRA target,
                  pad_token_id right after the response (its mask `chosen_mask[:, :-1] - prompt_mask[:, 1:]`
                  reaches the first pad; not when the row was truncated). lam = alpha = 1.0.
                  Not reproduced: the final cast of the loss to bf16 (it only rounds the value to ~3 digits) and
                  its log1p(-exp)/log(sigmoid) numerics (identical wherever they are finite and accurate).
  * llamafactory  LLaMA-Factory pref_loss=orpo: mean_i[-a_i + beta * L_OR_i] - the same loss as `paper`;
                  it differs only in the logits/* metrics (and numerically, log1p(-exp) near a = 0).
  Prompt+response NLL roughly adds the prompt's tokens to L_SFT: with HH-RLHF's long multi-turn prompts it
  dominates the SFT term, changes its scale (so a given lam means something else) and trains the model on the
  human turns too. The extra official target teaches "the response ends with pad" through L_OR only.

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

from minorpo.logprobs import (DEFAULT_CHUNK_SIZE, IGNORE_INDEX, ChunkedTokenLogps, logit_sums, sequence_logps,
                              shift_labels, token_logps, token_logps_reference)

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
    """Analytic gradient of L_OR_i w.r.t. a_i and b_i (Eq. 8 with the sign fixed): (-delta*h_chosen, -delta*h_rejected)."""
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


def nll_loss(token_logps: torch.Tensor, mask: torch.Tensor, normalization: str = "token_mean") -> torch.Tensor:
    """L_SFT, the causal-LM negative log-likelihood of the masked tokens (0-dim).

    token_mean:    -sum(logp * mask) / sum(mask), ONE mean pooled over every token of the batch
                   (HF's CrossEntropyLoss; TRL, official). A long sequence weighs more.
    sequence_mean: mean over rows of -sum_t(logp * mask) / sum_t(mask) (paper's per-sequence L_SFT,
                   LLaMA-Factory). Every pair weighs the same.
    Plain SFT, the baseline of the paper's Fig. 3, is this term alone (objective="sft" below).
    """
    if normalization == "token_mean":
        count = mask.sum()
        if count == 0:
            raise ValueError("nll_loss: the NLL mask selects no token in the whole batch")
        return -torch.where(mask, token_logps, 0.0).sum() / count
    if normalization == "sequence_mean":
        return -sequence_logps(token_logps, mask, name="NLL tokens").mean()
    raise ValueError(f"nll_loss: normalization must be one of {NLL_NORMALIZATIONS}, got {normalization!r}")


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
# 4. Conventions and presets
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Conventions:
    """Every choice on which ORPO implementations differ (shared/PAPER.md section 3)."""

    name: str
    nll_coverage: str  # "response" (chosen response tokens) | "prompt+response" (every chosen token after the first)
    nll_normalization: str  # "token_mean" (pooled over the batch) | "sequence_mean" (per sequence, then batch mean)
    nll_drop_pad_id: bool  # drop NLL targets whose token id == pad_token_id (official: every EOS when pad = eos)
    logps_extra_target: bool  # log P(y|x) also scores pad_token_id after the last response token (official)
    logits_metric: str  # logits/* = mean logit over: "response" positions | "all_but_last" positions (TRL) | "all"
    lam: float  # default lambda (TRL `beta`, official `alpha`, LLaMA-Factory `pref_beta`)


PRESETS = {
    "paper": Conventions("paper", "response", "sequence_mean", False, False, "response", 0.1),
    "trl": Conventions("trl", "prompt+response", "token_mean", False, False, "all_but_last", 0.1),
    "official": Conventions("official", "prompt+response", "token_mean", True, True, "response", 1.0),
    "llamafactory": Conventions("llamafactory", "response", "sequence_mean", False, False, "all", 0.1),
}
OBJECTIVES = ("orpo", "sft", "probability_ratio")


def get_conventions(preset) -> Conventions:
    """A preset name ("paper", "trl", "official", "llamafactory") or a Conventions instance."""
    if isinstance(preset, Conventions):
        return preset
    if preset not in PRESETS:
        raise ValueError(f"unknown ORPO preset {preset!r}; choose one of {sorted(PRESETS)} or pass a Conventions")
    return PRESETS[preset]


# --------------------------------------------------------------------------------------------------------------
# 5. Per-token log-probs -> loss and metrics
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


def loss_from_token_logps(tl: TokenLogps, lam: float | None = None, preset="paper", objective: str = "orpo",
                          beta: float = 1.0, weights: tuple[float, float] = (1.0, 1.0)):
    """(loss, metrics) from per-token log-probs, under a preset's NLL normalization.

    objective: "orpo"              L = L_SFT + lam * mean_i L_OR_i                       (Eq. 6)
               "sft"               L = L_SFT (the paper's baseline; the OR metrics are still reported)
               "probability_ratio" L = L_SFT + lam * mean_i -log sigmoid(beta (a_i - b_i))  (section 7.1)
    metrics (Python floats), under TRL's names where TRL logs them (rewards = lam * log-prob, as TRL's beta):
      loss, nll_loss, sft_loss (= nll_loss, LLaMA-Factory's name), odds_ratio_loss (mean L_OR, unweighted),
      log_odds_ratio (mean log sigmoid(log OR) - TRL's name, not the log OR itself), log_odds_chosen (mean log OR),
      rewards/chosen, rewards/rejected, rewards/accuracies (mean of lam*a > lam*b, strict, as TRL), rewards/margins,
      logps/chosen, logps/rejected (batch means of Eq. 3), logits/chosen, logits/rejected (when known),
      probability_ratio_loss (for that objective).
    weights = (w_nll, w_pair) multiply L_SFT and the mean pair term: gradient accumulation (objective.py) passes
    this micro-batch's share of the global batch's tokens and pairs, so that the micro-batch losses add up to the
    loss of the whole batch. Then loss, nll_loss and sft_loss are reported as those weighted shares.
    """
    conv = get_conventions(preset)
    lam = conv.lam if lam is None else float(lam)
    if lam < 0:
        raise ValueError(f"lambda must be >= 0, got {lam}")
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
    dtype = _compute_dtype(tl.chosen, tl.rejected)
    chosen, rejected = tl.chosen.to(dtype), tl.rejected.to(dtype)
    a = sequence_logps(chosen, tl.chosen_mask, name="chosen responses")  # Eq. 3  [B]
    b = sequence_logps(rejected, tl.rejected_mask, name="rejected responses")  # Eq. 3  [B]
    w_nll, w_pair = weights
    nll = nll_loss(chosen, tl.nll_mask, conv.nll_normalization) * w_nll  # L_SFT
    log_or = log_odds_ratio(a, b)  # Eq. 5  [B]
    l_or = -F.logsigmoid(log_or)  # Eq. 7  [B]
    if objective == "orpo":
        loss = nll + lam * l_or.mean() * w_pair  # Eq. 6
    elif objective == "sft":
        loss = nll
    else:
        l_pr = probability_ratio_loss(a, b, beta)  # [B]
        loss = nll + lam * l_pr.mean() * w_pair

    with torch.no_grad():
        names = ["loss", "nll_loss", "sft_loss", "odds_ratio_loss", "log_odds_ratio", "log_odds_chosen",
                 "rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins",
                 "logps/chosen", "logps/rejected"]
        values = [loss, nll, nll, l_or.mean(), -l_or.mean(), log_or.mean(),
                  (lam * a).mean(), (lam * b).mean(), (lam * a > lam * b).to(dtype).mean(), (lam * (a - b)).mean(),
                  a.mean(), b.mean()]
        if tl.logits_chosen is not None:
            names += ["logits/chosen", "logits/rejected"]
            values += [tl.logits_chosen.to(dtype), tl.logits_rejected.to(dtype)]
        if objective == "probability_ratio":
            names.append("probability_ratio_loss")
            values.append(l_pr.mean())
        metrics = dict(zip(names, torch.stack([v.detach().to(dtype) for v in values]).tolist()))  # one sync
    return loss, metrics


# --------------------------------------------------------------------------------------------------------------
# 6. Batches -> per-token log-probs
# --------------------------------------------------------------------------------------------------------------

PADDED_KEYS = ("chosen_input_ids", "chosen_attention_mask", "chosen_labels",
               "rejected_input_ids", "rejected_attention_mask", "rejected_labels")
SHARED_PROMPT_KEYS = ("input_ids", "position_ids", "attention_mask", "chosen_targets", "rejected_targets",
                      "prompt_targets")


def _require(batch: dict, keys: tuple[str, ...], layout: str) -> None:
    missing = [k for k in keys if k not in batch]
    if missing:
        raise KeyError(f"{layout} batch lacks {missing} (has {sorted(batch)}); minorpo.batches builds both layouts")


def _need_pad_id(conv: Conventions, pad_token_id) -> None:
    if (conv.nll_drop_pad_id or conv.logps_extra_target) and pad_token_id is None:
        raise ValueError(f"preset {conv.name!r} uses the pad token id (extra target / NLL filter): pass pad_token_id")


def _add_extra_target(targets, mask, pad_token_id, truncated=None, positions=None):
    """official: also score pad_token_id from the last response token (the first pad follows it there).

    positions [N]: where the last response token is; by default the position after the last scored one, which
    holds in the padded layout (not in the shared-prompt one, where a 1-token rejected response's only target
    sits at the last prompt position).
    """
    T = targets.shape[1]
    if positions is None:
        positions = T - 1 - mask.flip(1).int().argmax(1) + 1  # [N]
    add = mask.any(1) & (positions < T)
    if truncated is not None:
        add &= ~truncated.bool()  # the official mask reaches no pad when the row filled max_length
    rows = add.nonzero().flatten()
    targets, mask = targets.clone(), mask.clone()
    targets[rows, positions[rows]] = pad_token_id
    mask[rows, positions[rows]] = True
    return targets, mask


def _union_targets(response, nll, what: str):
    """One target tensor holding both the response targets and the NLL targets (they agree where both exist)."""
    clash = (response != IGNORE_INDEX) & (nll != IGNORE_INDEX) & (response != nll)
    if clash.any():
        row, pos = (int(i) for i in clash.nonzero()[0])
        raise ValueError(f"{what}: row {row}, position {pos + 1}: the labels ({int(response[row, pos])}) disagree "
                         f"with input_ids ({int(nll[row, pos])}); labels must equal input_ids on response tokens")
    return torch.where(response != IGNORE_INDEX, response, nll)


def preference_targets(input_ids, attention_mask, labels, preset="paper", pad_token_id=None, truncated=None,
                       what: str = "chosen"):
    """Next-token targets for one side of a padded-layout batch under a preset's conventions.

    input_ids, attention_mask, labels [N, T] (labels HF-style: input_ids on response tokens, -100 elsewhere).
    Returns (targets [N, T], response_mask [N, T] bool - the tokens of Eq. 3 -, nll_mask [N, T] bool - the
    tokens of L_SFT if this side is the chosen one). truncated [N] bool (optional): rows cut at max_length,
    which get no official extra target.
    """
    conv = get_conventions(preset)
    _need_pad_id(conv, pad_token_id)
    response = shift_labels(labels, attention_mask)  # [N, T]
    if conv.nll_coverage == "response":
        nll = response.clone()
    elif conv.nll_coverage == "prompt+response":  # every real token except the first, predicted from a real token
        nll = shift_labels(input_ids.masked_fill(attention_mask == 0, IGNORE_INDEX), attention_mask)
    else:
        raise ValueError(f"nll_coverage must be 'response' or 'prompt+response', got {conv.nll_coverage!r}")
    if conv.nll_drop_pad_id:
        nll = nll.masked_fill(nll == pad_token_id, IGNORE_INDEX)
    targets = _union_targets(response, nll, f"{what} sequences")
    response_mask = response != IGNORE_INDEX
    if conv.logps_extra_target:
        targets, response_mask = _add_extra_target(targets, response_mask, pad_token_id, truncated)
    return targets, response_mask, nll != IGNORE_INDEX


def _mean_logit(sums, response_mask, vocab_size: int, how: str):
    """Mean logit over positions x vocabulary, from per-position sums over the vocabulary [N, T]."""
    if how == "response":
        return sums[response_mask].sum() / (response_mask.sum() * vocab_size)
    if how == "all_but_last":  # TRL: logits[:, :-1] of the padded 2B batch, pads included
        return sums[:, :-1].mean() / vocab_size
    if how == "all":  # LLaMA-Factory: every position of the padded batch
        return sums.mean() / vocab_size
    raise ValueError(f"logits_metric must be 'response', 'all_but_last' or 'all', got {how!r}")


def _pad_right(x: torch.Tensor, length: int, value) -> torch.Tensor:
    return F.pad(x, (0, length - x.shape[1]), value=value)


def _concatenated(batch: dict, pad_token_id):
    """Chosen rows then rejected rows, right-padded to one length (as TRL's concatenated_inputs)."""
    T = max(batch["chosen_input_ids"].shape[1], batch["rejected_input_ids"].shape[1])
    pad_id = 0 if pad_token_id is None else pad_token_id
    cat = {}
    for key, value in (("input_ids", pad_id), ("attention_mask", 0), ("labels", IGNORE_INDEX)):
        cat[key] = torch.cat([_pad_right(batch[f"chosen_{key}"], T, value),
                              _pad_right(batch[f"rejected_{key}"], T, value)])  # [2B, T]
    return cat


def token_logps_from_logits(chosen_logits, rejected_logits, batch: dict, preset="paper", pad_token_id=None):
    """TokenLogps from given logits ([B, T, V], aligned with the batch's chosen/rejected input_ids), unchunked."""
    _require(batch, PADDED_KEYS, "padded-layout")
    conv = get_conventions(preset)
    sides = {}
    for side, logits in (("chosen", chosen_logits), ("rejected", rejected_logits)):
        targets, mask, nll_mask = preference_targets(
            batch[f"{side}_input_ids"], batch[f"{side}_attention_mask"], batch[f"{side}_labels"], conv,
            pad_token_id, batch.get(f"{side}_truncated"), what=side)
        sums = logits.detach().to(_compute_dtype(logits)).sum(-1)  # [B, T]
        sides[side] = (token_logps_reference(logits, targets), mask, nll_mask,
                       _mean_logit(sums, mask, logits.shape[-1], conv.logits_metric))
    (c, cm, nm, lc), (r, rm, _, lr) = sides["chosen"], sides["rejected"]
    return TokenLogps(c, cm, nm, r, rm, lc, lr)


def preference_logps(model, batch: dict, preset="paper", pad_token_id=None, chunk_size: int = DEFAULT_CHUNK_SIZE,
                     head=ChunkedTokenLogps):
    """TokenLogps of a padded-layout batch: ONE forward of the 2B chosen+rejected rows, chunked log-probs (`head`:
    logprobs.token_logps's).

    batch: chosen_/rejected_ input_ids, attention_mask, labels [B, T*] (contracts.md), optionally
    chosen_/rejected_truncated [B] bool (official preset). model(..., return_hidden=True) -> [2B, T, H] and
    model.lm_head.weight [V, H].
    """
    _require(batch, PADDED_KEYS, "padded-layout")
    conv = get_conventions(preset)
    B = batch["chosen_input_ids"].shape[0]
    cat = _concatenated(batch, pad_token_id)  # [2B, T] each
    truncated = None
    if "chosen_truncated" in batch or "rejected_truncated" in batch:
        zeros = torch.zeros(B, dtype=torch.bool, device=cat["input_ids"].device)
        truncated = torch.cat([batch.get("chosen_truncated", zeros), batch.get("rejected_truncated", zeros)])
    targets, mask, nll_mask = preference_targets(cat["input_ids"], cat["attention_mask"], cat["labels"], conv,
                                                 pad_token_id, truncated, what="chosen+rejected")
    targets = torch.cat([targets[:B], targets[B:].masked_fill(~mask[B:], IGNORE_INDEX)])  # no NLL on rejected
    hidden = model(cat["input_ids"], attention_mask=cat["attention_mask"], return_hidden=True)  # [2B, T, H]
    weight = model.lm_head.weight  # [V, H]
    cap = model.config.final_logit_softcapping  # Gemma's logit soft-cap, applied in the chunked head; else None
    logps = token_logps(hidden, weight, targets, chunk_size, cap, head)  # [2B, T]
    with torch.no_grad():
        sums = logit_sums(hidden, weight, cap)  # [2B, T]
    V = weight.shape[0]
    return TokenLogps(logps[:B], mask[:B], nll_mask[:B], logps[B:], mask[B:],
                      _mean_logit(sums[:B], mask[:B], V, conv.logits_metric),
                      _mean_logit(sums[B:], mask[B:], V, conv.logits_metric))


def preference_logps_shared_prompt(model, batch: dict, preset="paper", pad_token_id=None,
                                   chunk_size: int = DEFAULT_CHUNK_SIZE, head=ChunkedTokenLogps):
    """TokenLogps of a shared-prompt-layout batch: [prompt | chosen | rejected] in ONE row per pair.

    batch: input_ids, position_ids [B, T], attention_mask [B, T, T] bool block mask, chosen_targets,
    rejected_targets, prompt_targets [B, T] next-token targets (contracts.md). The last prompt position predicts
    both first response tokens, so chosen and rejected targets are scored as a tuple (one logsumexp).
    logits/* metrics use response positions whatever the preset (there are no pad positions to count here).
    """
    _require(batch, SHARED_PROMPT_KEYS, "shared-prompt-layout")
    conv = get_conventions(preset)
    _need_pad_id(conv, pad_token_id)
    chosen_t, rejected_t, prompt_t = batch["chosen_targets"], batch["rejected_targets"], batch["prompt_targets"]
    chosen_mask, rejected_mask = chosen_t != IGNORE_INDEX, rejected_t != IGNORE_INDEX
    if conv.nll_coverage == "response":
        nll = chosen_t
    else:
        overlap = (prompt_t != IGNORE_INDEX) & chosen_mask
        if overlap.any():
            row, pos = (int(i) for i in overlap.nonzero()[0])
            raise ValueError(f"shared-prompt batch: row {row}, position {pos} has both a prompt and a chosen target")
        nll = torch.where(chosen_mask, chosen_t, prompt_t)
    if conv.nll_drop_pad_id:
        nll = nll.masked_fill(nll == pad_token_id, IGNORE_INDEX)
    chosen_all = _union_targets(chosen_t, nll, "shared-prompt chosen")
    if conv.logps_extra_target:  # the last chosen token sits at P + C - 1, the last rejected one at P + C + R - 1
        _require(batch, ("prompt_lengths", "chosen_lengths", "rejected_lengths"), f"shared-prompt ({conv.name})")
        end_chosen = batch["prompt_lengths"] + batch["chosen_lengths"]  # [B]
        chosen_all, chosen_mask = _add_extra_target(chosen_all, chosen_mask, pad_token_id,
                                                    batch.get("chosen_truncated"), end_chosen - 1)
        rejected_t, rejected_mask = _add_extra_target(rejected_t, rejected_mask, pad_token_id,
                                                      batch.get("rejected_truncated"),
                                                      end_chosen + batch["rejected_lengths"] - 1)
    hidden = model(batch["input_ids"], attention_mask=batch["attention_mask"], position_ids=batch["position_ids"],
                   return_hidden=True)  # [B, T, H]
    weight = model.lm_head.weight
    cap = model.config.final_logit_softcapping  # Gemma's logit soft-cap, applied in the chunked head; else None
    chosen, rejected = token_logps(hidden, weight, (chosen_all, rejected_t), chunk_size, cap, head)  # [B, T] each
    with torch.no_grad():
        sums = logit_sums(hidden, weight, cap)  # [B, T]
    V = weight.shape[0]
    return TokenLogps(chosen, chosen_mask, nll != IGNORE_INDEX, rejected, rejected_mask,
                      _mean_logit(sums, chosen_mask, V, "response"), _mean_logit(sums, rejected_mask, V, "response"))


def orpo_loss(model, batch: dict, preset="paper", lam: float | None = None, pad_token_id=None,
              chunk_size: int = DEFAULT_CHUNK_SIZE, objective: str = "orpo", beta: float = 1.0):
    """(loss, metrics) for a padded-layout batch: preference_logps then loss_from_token_logps."""
    tl = preference_logps(model, batch, preset, pad_token_id, chunk_size)
    return loss_from_token_logps(tl, lam, preset, objective, beta)


def orpo_loss_shared_prompt(model, batch: dict, preset="paper", lam: float | None = None, pad_token_id=None,
                            chunk_size: int = DEFAULT_CHUNK_SIZE, objective: str = "orpo", beta: float = 1.0):
    """(loss, metrics) for a shared-prompt-layout batch (one row per pair)."""
    tl = preference_logps_shared_prompt(model, batch, preset, pad_token_id, chunk_size)
    return loss_from_token_logps(tl, lam, preset, objective, beta)


def orpo_loss_from_logits(chosen_logits, rejected_logits, batch: dict, preset="paper", lam: float | None = None,
                          pad_token_id=None, objective: str = "orpo", beta: float = 1.0):
    """(loss, metrics) from given logits [B, T, V] of the batch's chosen and rejected rows (unchunked)."""
    tl = token_logps_from_logits(chosen_logits, rejected_logits, batch, preset, pad_token_id)
    return loss_from_token_logps(tl, lam, preset, objective, beta)
