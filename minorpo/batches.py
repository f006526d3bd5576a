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
Both layouts give the same per-sequence log-probs (tests/test_collate.py checks it on a tiny model).
"""

from __future__ import annotations

import torch

IGNORE = -100  # label / target value that is not scored


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
        labels = torch.full((B, T), IGNORE, dtype=torch.long)                            # (B, T)
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
    targets = {k: torch.full((B, T), IGNORE, dtype=torch.long) for k in ("prompt", "chosen", "rejected")}
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
