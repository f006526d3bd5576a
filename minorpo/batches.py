"""Batch layouts for preference pairs (lists of data.TokenizedPair -> dicts of tensors).

Padded layout (collate_padded): chosen and rejected are separate rows, each prompt + response, padded to one
common length T (so a trainer can torch.cat them into one 2B-row forward pass):
    chosen_input_ids, chosen_attention_mask, chosen_labels      [B, T]   (1 = real token; labels HF-style:
    rejected_input_ids, rejected_attention_mask, rejected_labels [B, T]   = input_ids on response tokens, -100 on
    prompt_lengths                                               [B]      prompt and padding; NOT shifted)
  Example, prompt [p0 p1], chosen [c0 c1], rejected [r0], right padding with pad id 0:
    chosen_input_ids  p0 p1 c0 c1     chosen_labels    -100 -100 c0 c1
    rejected_input_ids p0 p1 r0 0     rejected_labels  -100 -100 r0 -100

Shared-prompt layout (collate_shared_prompt): one row holds prompt + chosen + rejected, so the prompt is run once:
    input_ids       p0 p1 c0 c1 r0          position_ids  0 1 2 3 2     (rejected restarts after the prompt)
    attention_mask  [B, T, T] bool block mask, True = query t may attend key s:
                      p0: p0            c0: p0 p1 c0        r0: p0 p1 r0   (never c0 c1)
                      p1: p0 p1         c1: p0 p1 c0 c1
    chosen_targets   c0 at p1, c1 at c0, -100 elsewhere     } NEXT-token targets (logprobs.py convention):
    rejected_targets r0 at p1, -100 elsewhere               } targets[:, t] is what position t predicts.
    prompt_targets   p1 at p0, -100 elsewhere               } The last prompt position predicts BOTH c0 and r0,
  which is why chosen and rejected targets are separate tensors.
  Also prompt_lengths, chosen_lengths, rejected_lengths [B]. Padding is on the right; a padding position attends
  to the prompt and earlier padding only (so no attention row is empty) and has no target.
  DataConfig.max_length caps prompt + ONE response, so a shared row can be up to max_length + the longer
  response's length; it is still shorter than the two padded rows together (the prompt is there once).
Both layouts give the same per-sequence log-probs (tests/test_batches.py checks it on a tiny model).

Then `preference_targets` turns a batch of either layout into the next-token targets each term scores, under a
preset's conventions (the presets, and where ORPO implementations differ, are explained once, at PRESETS below).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from minorpo.logprobs import IGNORE_INDEX, shift_labels
from minorpo.loss import nll_count


def pad_token_id(tokenizer) -> int:
    """The id used for padding: pad, else eos, else 0 (padding is masked out, so its value never matters)."""
    for i in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if i is not None:
            return i
    return 0


def _round_up(n: int, multiple: int | None) -> int:
    return n if not multiple else -(-n // multiple) * multiple


def collate_padded(examples, pad_token_id: int, padding_side: str = "right",
                   pad_to_multiple_of: int | None = None) -> dict[str, torch.Tensor]:
    """Separate chosen and rejected rows, padded on padding_side ("right" | "left") to a common length."""
    if padding_side not in ("right", "left"):
        raise ValueError(f"padding_side must be 'right' or 'left', got {padding_side!r}")
    if not examples:
        raise ValueError("collate_padded needs at least one example")
    T = _round_up(max(len(e.prompt_ids) + max(len(e.chosen_ids), len(e.rejected_ids)) for e in examples),
                  pad_to_multiple_of)
    B = len(examples)
    batch = {"prompt_lengths": torch.tensor([len(e.prompt_ids) for e in examples])}  # (B,)
    for side in ("chosen", "rejected"):
        ids = torch.full((B, T), pad_token_id, dtype=torch.long)                         # (B, T)
        mask = torch.zeros((B, T), dtype=torch.long)                                     # (B, T)
        labels = torch.full((B, T), IGNORE_INDEX, dtype=torch.long)                      # (B, T)
        for b, e in enumerate(examples):
            response = getattr(e, f"{side}_ids")
            seq = e.prompt_ids + response
            start = 0 if padding_side == "right" else T - len(seq)
            ids[b, start:start + len(seq)] = torch.tensor(seq)
            mask[b, start:start + len(seq)] = 1
            labels[b, start + len(e.prompt_ids):start + len(seq)] = torch.tensor(response)
        batch[f"{side}_input_ids"], batch[f"{side}_attention_mask"], batch[f"{side}_labels"] = ids, mask, labels
    return batch


def collate_shared_prompt(examples, pad_token_id: int, pad_to_multiple_of: int | None = None) -> dict[str, torch.Tensor]:
    """One row per pair: prompt + chosen + rejected, with position ids and a block mask (see module doc)."""
    if not examples:
        raise ValueError("collate_shared_prompt needs at least one example")
    T = _round_up(max(len(e.prompt_ids) + len(e.chosen_ids) + len(e.rejected_ids) for e in examples),
                  pad_to_multiple_of)
    B = len(examples)
    input_ids = torch.full((B, T), pad_token_id, dtype=torch.long)                      # (B, T)
    position_ids = torch.zeros((B, T), dtype=torch.long)                                # (B, T)
    segment = torch.full((B, T), 3, dtype=torch.long)    # 0 prompt, 1 chosen, 2 rejected, 3 padding; (B, T)
    targets = {k: torch.full((B, T), IGNORE_INDEX, dtype=torch.long) for k in ("prompt", "chosen", "rejected")}
    for b, e in enumerate(examples):
        P, C, R = len(e.prompt_ids), len(e.chosen_ids), len(e.rejected_ids)
        if P == 0 or C == 0 or R == 0:
            raise ValueError(f"example {b} ({e.where}): prompt, chosen and rejected need >= 1 token each")
        input_ids[b, :P + C + R] = torch.tensor(e.prompt_ids + e.chosen_ids + e.rejected_ids)
        position_ids[b, :P + C] = torch.arange(P + C)
        position_ids[b, P + C:P + C + R] = torch.arange(P, P + R)      # rejected continues from the prompt
        segment[b, :P], segment[b, P:P + C], segment[b, P + C:P + C + R] = 0, 1, 2
        targets["prompt"][b, :P - 1] = torch.tensor(e.prompt_ids[1:])
        targets["chosen"][b, P - 1] = e.chosen_ids[0]                  # the last prompt position predicts c0 ...
        targets["chosen"][b, P:P + C - 1] = torch.tensor(e.chosen_ids[1:])
        targets["rejected"][b, P - 1] = e.rejected_ids[0]              # ... and r0
        targets["rejected"][b, P + C:P + C + R - 1] = torch.tensor(e.rejected_ids[1:])
    q = torch.arange(T)
    causal = q[None, :] <= q[:, None]                                   # (T, T) key s <= query t
    seg_q, seg_k = segment[:, :, None], segment[:, None, :]             # (B, T, 1), (B, 1, T)
    attention_mask = causal & ((seg_k == 0) | (seg_k == seg_q))         # (B, T, T) prompt, or own segment
    return {
        "input_ids": input_ids, "position_ids": position_ids, "attention_mask": attention_mask,
        "chosen_targets": targets["chosen"], "rejected_targets": targets["rejected"],
        "prompt_targets": targets["prompt"],
        "prompt_lengths": torch.tensor([len(e.prompt_ids) for e in examples]),
        "chosen_lengths": torch.tensor([len(e.chosen_ids) for e in examples]),
        "rejected_lengths": torch.tensor([len(e.rejected_ids) for e in examples]),
    }


def collate(pairs, pad_id: int, device, layout: str = "padded") -> dict:
    """A micro-batch of tokenized pairs in `layout` ("padded" | "shared"), on `device`."""
    batch = collate_shared_prompt(pairs, pad_id) if layout == "shared" else collate_padded(pairs, pad_id)
    return {k: v.to(device) for k, v in batch.items()}


def row_length(pair, layout: str) -> int:
    """Tokens of the longest row a pair puts in a batch: prompt + longer response (padded), or all three (shared)."""
    if layout == "shared":
        return len(pair.prompt_ids) + len(pair.chosen_ids) + len(pair.rejected_ids)
    return len(pair.prompt_ids) + max(len(pair.chosen_ids), len(pair.rejected_ids))


# --------------------------------------------------------------------------------------------------------------
# Which tokens each term scores: the presets


@dataclass(frozen=True)
class Conventions:
    """Every choice on which ORPO implementations differ (shared/PAPER.md section 3). The four PRESETS below, where
    they differ and why it matters (the one place this is told; elsewhere it points here):

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
    """

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


def get_conventions(preset) -> Conventions:
    """A preset name ("paper", "trl", "official", "llamafactory") or a Conventions instance."""
    if isinstance(preset, Conventions):
        return preset
    if preset not in PRESETS:
        raise ValueError(f"unknown ORPO preset {preset!r}; choose one of {sorted(PRESETS)} or pass a Conventions")
    return PRESETS[preset]


@dataclass
class Targets:
    """Next-token targets of a batch of B pairs (IGNORE_INDEX where none), in the batch's own layout: [B, T] rows of
    the padded layout's chosen / rejected sequences, or the shared layout's one row per pair for both."""

    chosen: torch.Tensor  # every target of the chosen sequences: response (log P(y_w|x)) and NLL (L_SFT) ones
    chosen_mask: torch.Tensor  # bool: the targets of log P(y_w|x), Eq. 3
    nll_mask: torch.Tensor  # bool: the targets of L_SFT
    rejected: torch.Tensor  # the targets of log P(y_l|x) (no NLL on rejected sequences)
    rejected_mask: torch.Tensor  # bool


def preference_targets(batch: dict, preset="paper", pad_token_id=None) -> Targets:
    """The targets each term scores, for a batch of either layout, under a preset's conventions (Conventions).

    Each layout is first read as, per side, the next-token targets of its response tokens, those of the whole
    sequence (prompt + response: what a prompt+response NLL covers), where its last response token sits and
    whether it was truncated; `_apply_conventions` then applies the preset's token rules, once for both layouts.
    Padded batches (collate_padded): chosen_/rejected_ input_ids, attention_mask, labels [B, T*], optionally
    chosen_/rejected_truncated [B] bool. Shared-prompt batches: chosen_, rejected_, prompt_targets [B, T] and, for
    the official extra target, prompt_, chosen_, rejected_lengths [B].
    """
    conv = get_conventions(preset)
    if (conv.nll_drop_pad_id or conv.logps_extra_target) and pad_token_id is None:
        raise ValueError(f"preset {conv.name!r} uses the pad token id (extra target / NLL filter): pass pad_token_id")
    sides = {}
    if "input_ids" in batch:  # shared prompt: one row [prompt | chosen | rejected] per pair
        _require(batch, SHARED_PROMPT_KEYS, "shared-prompt-layout")
        chosen, rejected, prompt = batch["chosen_targets"], batch["rejected_targets"], batch["prompt_targets"]
        last = {}
        if conv.logps_extra_target:  # the last chosen token sits at P + C - 1, the last rejected one at P + C + R - 1
            _require(batch, ("prompt_lengths", "chosen_lengths", "rejected_lengths"), f"shared-prompt ({conv.name})")
            end_chosen = batch["prompt_lengths"] + batch["chosen_lengths"]  # [B]
            last = {"chosen": end_chosen - 1, "rejected": end_chosen + batch["rejected_lengths"] - 1}
        overlap = (prompt != IGNORE_INDEX) & (chosen != IGNORE_INDEX)
        if overlap.any():
            row, pos = (int(i) for i in overlap.nonzero()[0])
            raise ValueError(f"shared-prompt batch: row {row}, position {pos} has both a prompt and a chosen target")
        sequence = torch.where(chosen != IGNORE_INDEX, chosen, prompt)  # prompt + chosen response
        for side, response in (("chosen", chosen), ("rejected", rejected)):
            sides[side] = _apply_conventions(conv, pad_token_id, response, sequence if side == "chosen" else None,
                                             last.get(side), batch.get(f"{side}_truncated"), f"shared-prompt {side}")
    else:  # padded: chosen and rejected sequences as separate rows
        _require(batch, PADDED_KEYS, "padded-layout")
        for side in ("chosen", "rejected"):
            ids, mask, labels = (batch[f"{side}_{k}"] for k in ("input_ids", "attention_mask", "labels"))
            response = shift_labels(labels, mask)  # [B, T]
            sequence = shift_labels(ids.masked_fill(mask == 0, IGNORE_INDEX), mask)  # every real token after the first
            sides[side] = _apply_conventions(conv, pad_token_id, response, sequence, None,
                                             batch.get(f"{side}_truncated"), f"{side} sequences")
    (chosen, chosen_mask, nll_mask), (rejected, rejected_mask, _) = sides["chosen"], sides["rejected"]
    rejected = rejected.masked_fill(~rejected_mask, IGNORE_INDEX)  # no NLL on the rejected sequences
    return Targets(chosen, chosen_mask, nll_mask, rejected, rejected_mask)


def _apply_conventions(conv, pad_token_id, response, sequence, last, truncated, what):
    """One side's (targets, response mask, NLL mask) from its response targets and the targets of its whole
    sequence (None: no NLL). last [N]: the position of the last response token (default: the one after
    the last response target, true in the padded layout); truncated [N]: rows cut at max_length."""
    nll = torch.full_like(response, IGNORE_INDEX)
    if sequence is not None:
        if conv.nll_coverage == "response":
            nll = response
        elif conv.nll_coverage == "prompt+response":
            nll = sequence
        else:
            raise ValueError(f"nll_coverage must be 'response' or 'prompt+response', got {conv.nll_coverage!r}")
        if conv.nll_drop_pad_id:  # official: by token id, so every EOS when pad = eos
            nll = nll.masked_fill(nll == pad_token_id, IGNORE_INDEX)
    targets = _union(response, nll, what)
    mask = response != IGNORE_INDEX
    if conv.logps_extra_target:  # official: also score pad_token_id from the last response token
        T = targets.shape[1]
        if last is None:
            last = T - 1 - mask.flip(1).int().argmax(1) + 1  # [N]
        add = mask.any(1) & (last < T)
        if truncated is not None:
            add &= ~truncated.bool()  # the official mask reaches no pad when the row filled max_length
        rows = add.nonzero().flatten()
        targets, mask = targets.clone(), mask.clone()
        targets[rows, last[rows]] = pad_token_id
        mask[rows, last[rows]] = True
    return targets, mask, nll != IGNORE_INDEX


def _union(response, nll, what: str):
    """One target tensor holding both the response targets and the NLL targets (they agree where both exist)."""
    clash = (response != IGNORE_INDEX) & (nll != IGNORE_INDEX) & (response != nll)
    if clash.any():
        row, pos = (int(i) for i in clash.nonzero()[0])
        raise ValueError(f"{what}: row {row}, position {pos + 1}: the labels ({int(response[row, pos])}) disagree "
                         f"with input_ids ({int(nll[row, pos])}); labels must equal input_ids on response tokens")
    return torch.where(response != IGNORE_INDEX, response, nll)


PADDED_KEYS = ("chosen_input_ids", "chosen_attention_mask", "chosen_labels",
               "rejected_input_ids", "rejected_attention_mask", "rejected_labels")
SHARED_PROMPT_KEYS = ("input_ids", "position_ids", "attention_mask", "chosen_targets", "rejected_targets",
                      "prompt_targets")


def _require(batch: dict, keys: tuple[str, ...], layout: str) -> None:
    missing = [k for k in keys if k not in batch]
    if missing:
        raise KeyError(f"{layout} batch lacks {missing} (has {sorted(batch)}); minorpo.batches builds both layouts")


def count_targets(pairs, preset, pad_id: int) -> dict:
    """The counts a global batch's loss sums are divided by (train.py): its pairs, and its NLL count - the NLL
    tokens under a token mean, the pairs under a sequence mean (loss.nll_count). The padded layout's masks; the
    shared layout has the same NLL tokens per pair."""
    mask = preference_targets(collate_padded(pairs, pad_id), preset, pad_id).nll_mask
    return {"pairs": len(pairs), "nll": nll_count(mask, get_conventions(preset).nll_normalization)}
