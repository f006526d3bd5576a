"""Every combination of ORPO conventions from ONE forward pass, and which combination reported numbers follow.

Implementations differ along independent dimensions (shared/PAPER.md section 3); each is identified by the
reported quantities that depend on it, and is judged by those alone, with their own tolerance:

    dimension          candidates                                            identified by
    nll_coverage       response | response-pad-id | prompt+response |        nll_loss (sft_loss)
                       prompt+response-pad-id  (-pad-id: targets whose id is the pad id dropped, as the
                       official code does with pad = eos)
    nll_normalization  token_mean (pooled over the batch) | sequence_mean |  nll_loss
                       sequence_sum (mean over rows of each row's sum) | batch_sum
    logps              response (mean over response targets) |              logps/*, rewards/*, and with the
                       response+extra (official: also the pad after the      objective the odds metrics
                       response) | unshifted-nonzero (xtuner: the logit at t scores token t, id 0 dropped)
    objective          odds_ratio (Eq. 7) | probability_ratio (section 7.1,  odds_ratio_loss, log_odds_ratio,
                       odds = P) | sft (no preference term)                  log_odds_chosen, (loss - nll) / lam
    lam                given, inferred from rewards/* / logps/*, or 0.1 and 1.0   rewards/*, the loss
    logits             response | all_but_last (TRL) | all (LLaMA-Factory)   logits/*

Every candidate is a mask or a target over the same per-token log-probs, so `score_batch` runs the model once
(with HF-style position ids and pad rows, so the pad positions that logits/* average over are computed as a
transformers model computes them) and `predict` evaluates any combination from its result.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from minorpo.loss import log_odds_ratio
from minorpo.logprobs import DEFAULT_CHUNK_SIZE, IGNORE_INDEX, logit_sums, shift_labels, token_logps

DIMENSIONS = {
    "nll_coverage": ("response", "response-pad-id", "prompt+response", "prompt+response-pad-id"),
    "nll_normalization": ("token_mean", "sequence_mean", "sequence_sum", "batch_sum"),
    "logps": ("response", "response+extra", "unshifted-nonzero"),
    "objective": ("odds_ratio", "probability_ratio", "sft"),
    "logits": ("response", "all_but_last", "all"),
}


@dataclass(frozen=True)
class Implementation:
    name: str
    description: str
    coords: dict  # dimension -> value; a dimension left out is not logged (or not known) for this implementation
    lam: float  # its default lambda
    source: str  # what the coordinates are based on


# The coordinates of known implementations, each read from its code (paths as in the stored repositories):
KNOWN = [
    Implementation("paper", "the paper's equations as minorpo reads them (response-only NLL, per-sequence mean)",
                   dict(nll_coverage="response", nll_normalization="sequence_mean", logps="response",
                        objective="odds_ratio", logits="response"), 0.1, "minorpo/loss.py, Eq. 6"),
    Implementation("trl", "TRL ORPOTrainer 1.x (and Liger-Kernel's LigerORPOTrainer and Axolotl, which use its math)",
                   dict(nll_coverage="prompt+response", nll_normalization="token_mean", logps="response",
                        objective="odds_ratio", logits="all_but_last"), 0.1,
                   "trl/experimental/orpo/orpo_trainer.py: concatenated_forward (CrossEntropyLoss over input_ids "
                   "with pads -100; logits[:, :-1].mean()), odds_ratio_loss"),
    Implementation("official", "the official xfactlab/orpo trainer (pad = eos)",
                   dict(nll_coverage="prompt+response-pad-id", nll_normalization="token_mean",
                        logps="response+extra", objective="odds_ratio"), 1.0,
                   "xfactlab/orpo src/orpo_trainer.py: labels[labels == pad] = -100 (HF token-mean loss); "
                   "compute_logps mask chosen_attention_mask[:, :-1] - prompt_attention_mask[:, 1:]"),
    Implementation("official-no-prompt-loss", "the official xfactlab/orpo trainer with --disable_prompt_loss",
                   dict(nll_coverage="response-pad-id", nll_normalization="token_mean", logps="response+extra",
                        objective="odds_ratio"), 1.0, "xfactlab/orpo src/orpo_trainer.py: disable_prompt_loss"),
    Implementation("llamafactory", "LLaMA-Factory (pref_loss: orpo)",
                   dict(nll_coverage="response", nll_normalization="sequence_mean", logps="response",
                        objective="odds_ratio", logits="all"), 0.1,
                   "hiyouga/LLaMA-Factory src/llamafactory/train/dpo/trainer.py: odds_ratio_loss (sft_loss = "
                   "-chosen_logps), get_batch_loss_metrics (logits.mean() over the padded rows)"),
    Implementation("ms-swift", "ms-swift (rlhf_type orpo, on TRL's ORPOTrainer)",
                   dict(nll_coverage="response", nll_normalization="token_mean", logps="response",
                        objective="odds_ratio", logits="all_but_last"), 0.1,
                   "modelscope/ms-swift swift/trainers/rlhf_trainer/rlhf_mixin.py: concatenated_forward passes the "
                   "labels as concatenated_input_ids, so TRL's NLL covers the response only"),
    Implementation("xtuner", "xtuner (its ORPO model)",
                   dict(nll_coverage="response", nll_normalization="token_mean", logps="unshifted-nonzero",
                        objective="odds_ratio"), 0.1,
                   "InternLM/xtuner xtuner/model/orpo.py: cross_entropy_loss on the chosen rows' labels; get_logps "
                   "gathers log_softmax(logits)[labels] without the shift, loss_mask = labels != 0"),
]


@dataclass
class BatchScores:
    """Per-token log-probs of the 2B concatenated rows (chosen first) under every target a convention uses."""

    B: int
    next: torch.Tensor  # [2B, T] log P(next input token), 0 where there is none
    next_ids: torch.Tensor  # [2B, T] the next input token, IGNORE_INDEX where there is none
    response: torch.Tensor  # [2B, T] bool: the position predicts a response token (labels shifted)
    extra: torch.Tensor  # [2B, T] log P(pad id) at the last real position (the official extra target)
    extra_mask: torch.Tensor  # [2B, T] bool
    unshifted: torch.Tensor  # [2B, T] log P(token t) from the logits at t (xtuner), response labels != 0
    unshifted_mask: torch.Tensor  # [2B, T] bool
    logit_sums: torch.Tensor  # [2B, T] sum of the logits over the vocabulary
    vocab_size: int
    pad_id: int  # the official convention's pad id (its NLL filter and extra target)


def concatenated(batch: dict, pad_id: int, pad_to_multiple_of: int | None = None) -> dict:
    """Chosen rows then rejected rows [2B, T], right-padded to one length (a multiple of pad_to_multiple_of)."""
    T = max(batch["chosen_input_ids"].shape[1], batch["rejected_input_ids"].shape[1])
    if pad_to_multiple_of:
        T = -(-T // pad_to_multiple_of) * pad_to_multiple_of
    out = {}
    for key, value in (("input_ids", pad_id), ("attention_mask", 0), ("labels", IGNORE_INDEX)):
        out[key] = torch.cat([F.pad(batch[f"{side}_{key}"], (0, T - batch[f"{side}_{key}"].shape[1]), value=value)
                              for side in ("chosen", "rejected")])  # [2B, T]
    return out


@torch.no_grad()
def score_batch(model, batch: dict, pad_id: int, official_pad_id: int, max_length: int | None = None,
                pad_to_multiple_of: int | None = None, chunk_size: int = DEFAULT_CHUNK_SIZE) -> BatchScores:
    """One forward of a padded-layout batch (chosen_/rejected_ input_ids, attention_mask, labels) -> BatchScores.

    pad_id pads rows to a common length; official_pad_id is the id the official convention filters from the NLL
    and scores after each response (its code sets pad = eos). Rows of max_length tokens count as truncated (no
    extra target). Position ids are 0..T-1 on every row, pads included, as a transformers model numbers them
    when none are passed (TRL, LLaMA-Factory), and a pad attends to the real tokens only (minorpo.models.llama).
    """
    device = next(model.parameters()).device
    cat = {k: v.to(device) for k, v in concatenated(batch, pad_id, pad_to_multiple_of).items()}
    ids, mask, labels = cat["input_ids"], cat["attention_mask"], cat["labels"]
    N, T = ids.shape
    next_ids = shift_labels(ids.masked_fill(mask == 0, IGNORE_INDEX), mask)  # [2B, T]
    response = shift_labels(labels, mask) != IGNORE_INDEX  # [2B, T]
    lengths = mask.sum(1)  # [2B]
    last = T - 1 - mask.flip(1).int().argmax(1)  # [2B] the last real position
    extra_mask = torch.zeros_like(response)
    keep = lengths > 0 if max_length is None else (lengths > 0) & (lengths < max_length)
    extra_mask[keep.nonzero().flatten(), last[keep]] = True
    extra_ids = torch.where(extra_mask, official_pad_id, IGNORE_INDEX)
    unshifted_mask = (labels != IGNORE_INDEX) & (labels != 0) & (mask == 1)
    unshifted_ids = torch.where(unshifted_mask, labels, IGNORE_INDEX)
    position_ids = torch.arange(T, device=device).expand(N, T)
    hidden = model(ids, attention_mask=mask, position_ids=position_ids, return_hidden=True)  # [2B, T, H]
    weight = model.lm_head.weight
    cap = model.config.final_logit_softcapping  # Gemma's logit soft-cap (None elsewhere), as in forward.py
    nxt, extra, unshifted = token_logps(hidden, weight, (next_ids, extra_ids, unshifted_ids), chunk_size, cap)
    sums = logit_sums(hidden, weight, cap)  # [2B, T]
    f64 = lambda x: x.double().cpu()  # noqa: E731
    return BatchScores(N // 2, f64(nxt), next_ids.cpu(), response.cpu(), f64(extra), extra_mask.cpu(),
                       f64(unshifted), unshifted_mask.cpu(), f64(sums), weight.shape[0], official_pad_id)


def nll_value(s: BatchScores, coverage: str, normalization: str) -> float:
    """The NLL term of the chosen rows under one coverage and normalization."""
    B = s.B
    lp = s.next[:B]
    mask = (s.response if coverage.startswith("response") else s.next_ids != IGNORE_INDEX)[:B]
    if coverage.endswith("-pad-id"):
        mask = mask & (s.next_ids[:B] != s.pad_id)
    total = torch.where(mask, lp, 0.0).sum(1)  # [B]
    count = mask.sum(1).clamp(min=1)
    value = {"token_mean": total.sum() / count.sum(), "sequence_mean": (total / count).mean(),
             "sequence_sum": total.mean(), "batch_sum": total.sum()}[normalization]
    return float(-value)


def sequence_values(s: BatchScores, logps: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(a, b): log P(y|x) of the chosen and rejected rows [B] under one logps convention (Eq. 3)."""
    if logps == "response":
        lp, m = s.next, s.response
    elif logps == "response+extra":
        lp, m = s.next + s.extra, s.response | s.extra_mask
    else:
        lp, m = s.unshifted, s.unshifted_mask
    seq = torch.where(m, lp, 0.0).sum(1) / m.sum(1).clamp(min=1)  # [2B]
    return seq[:s.B], seq[s.B:]


def preference_values(a: torch.Tensor, b: torch.Tensor, objective: str) -> dict[str, float]:
    """The preference term (mean over pairs) and the odds metrics an implementation of this objective logs."""
    z = (a - b) if objective == "probability_ratio" else log_odds_ratio(a, b)  # [B]
    l_pref = -F.logsigmoid(z)  # [B]
    return {"term": 0.0 if objective == "sft" else float(l_pref.mean()), "odds_ratio_loss": float(l_pref.mean()),
            "log_odds_ratio": float(-l_pref.mean()), "log_odds_chosen": float(z.mean())}


def logits_value(s: BatchScores, how: str, side: str) -> float:
    rows = slice(0, s.B) if side == "chosen" else slice(s.B, 2 * s.B)
    sums, resp = s.logit_sums[rows], s.response[rows]
    if how == "response":
        return float(sums[resp].sum() / (resp.sum() * s.vocab_size))
    return float((sums[:, :-1] if how == "all_but_last" else sums).mean() / s.vocab_size)


class Predictor:
    """predict(coords) -> every quantity minorpo compares, for one full combination of DIMENSIONS + lam."""

    def __init__(self, s: BatchScores):
        self.s = s
        self.nll = {(c, n): nll_value(s, c, n) for c in DIMENSIONS["nll_coverage"]
                    for n in DIMENSIONS["nll_normalization"]}
        self.seq = {lp: sequence_values(s, lp) for lp in DIMENSIONS["logps"]}
        self.pref = {(lp, o): preference_values(*self.seq[lp], o) for lp in DIMENSIONS["logps"]
                     for o in DIMENSIONS["objective"]}
        self.logits = {(h, side): logits_value(s, h, side) for h in DIMENSIONS["logits"]
                       for side in ("chosen", "rejected")}

    def predict(self, c: dict) -> dict[str, float]:
        lam = c["lam"]
        a, b = self.seq[c["logps"]]
        pref = self.pref[(c["logps"], c["objective"])]
        nll = self.nll[(c["nll_coverage"], c["nll_normalization"])]
        return {"loss": nll + lam * pref["term"], "nll_loss": nll, "preference_term": pref["term"],
                "odds_ratio_loss": pref["odds_ratio_loss"], "log_odds_ratio": pref["log_odds_ratio"],
                "log_odds_chosen": pref["log_odds_chosen"], "rewards/chosen": lam * float(a.mean()),
                "rewards/rejected": lam * float(b.mean()),
                "rewards/accuracies": float((lam * a > lam * b).double().mean()),
                "rewards/margins": lam * float((a - b).mean()), "logps/chosen": float(a.mean()),
                "logps/rejected": float(b.mean()), "logits/chosen": self.logits[(c["logits"], "chosen")],
                "logits/rejected": self.logits[(c["logits"], "rejected")],
                "_scale_logps": float(a.abs().mean() + b.abs().mean())}


def combinations(lams) -> list[dict]:
    names = list(DIMENSIONS)
    return [dict(zip(names, values), lam=lam)
            for values in itertools.product(*DIMENSIONS.values()) for lam in lams]


def implementations_at(coords: dict) -> list[Implementation]:
    """The known implementations whose coordinates agree with coords (on the dimensions both define)."""
    return [impl for impl in KNOWN if all(coords.get(k, v) == v for k, v in impl.coords.items())]
