"""The model forward of a micro-batch: per-token log-probs of every pair's chosen and rejected response.

    train.py:  tl = pair_logps(model, batch, spec)      this file: targets -> model -> chunked log-probs
               objective_sums(tl, ...)                 loss.py: the sums; train.py divides them by the global counts

Two ways to lay a micro-batch out (batches.py), the same log-probs either way:
    padded  chosen and rejected as separate rows [prompt | response], one forward of 2B rows (as TRL);
    shared  one row [prompt | chosen | rejected] per pair with a block mask: the prompt is computed once.
            HH-RLHF prompts are ~3x longer than responses, so this skips a third or more of the tokens.
            With `unpadded`, each row runs at its own length (B forwards of one row): no padded tokens.
The targets each term scores come from batches.preference_targets (the preset's conventions); the NLL tokens of a
pair are the same set in both layouts, so the global counts (batches.count_targets) do not depend on the layout.
Also here: the reference model's log-probs for DPO, and the held-out evaluation.
"""

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from minorpo.batches import Targets, collate, get_conventions, preference_targets
from minorpo.fast import flex
from minorpo.fast.compiled_head import CompiledChunkedTokenLogps
from minorpo.logprobs import (IGNORE_INDEX, ChunkedTokenLogps, logit_sums, sequence_logps, token_logps,
                              token_logps_reference)
from minorpo.loss import TokenLogps, log_odds_ratio, odds_ratio_loss
from minorpo.lora import lora_disabled, lora_layers


@dataclass
class ForwardSpec:
    """How a micro-batch's log-probs are computed: the layout and the masks' conventions; what the loss does with
    them (method, lambda, beta) is loss.objective_sums' business."""
    preset: str = "paper"  # loss conventions (batches.PRESETS)
    chunk_size: int = 1024  # tokens per chunk of the log-prob computation; 0 = unchunked ([2B, T, V] logits)
    pad_id: int = 0  # the tokenizer's pad id (the official preset's NLL filter and extra target use it)
    layout: str = "padded"  # padded (chosen and rejected rows) | shared (prompt once per pair); see above
    unpadded: bool = False  # shared layout: each pair's row run at its own length, no padding (see _unpadded_rows)
    attention: str = "sdpa"  # sdpa (dense block mask) | flex (FlexAttention, masked blocks skipped; shared layout)
    compiled_head: bool = False  # the output head's elementwise work compiled (minorpo/fast/compiled_head.py)

    def __post_init__(self):
        if self.layout not in ("padded", "shared"):
            raise ValueError(f"layout must be 'padded' or 'shared', got {self.layout!r}")
        if self.chunk_size == 0 and self.layout != "padded":
            raise ValueError("chunk_size=0 (unchunked log-probs) is implemented for layout='padded' only")
        if self.unpadded and self.layout != "shared":
            raise ValueError("unpadded rows are implemented for layout='shared' only")
        if self.attention not in ("sdpa", "flex"):
            raise ValueError(f"attention must be 'sdpa' or 'flex', got {self.attention!r}")
        if self.attention == "flex":
            flex.check(self.layout)

    @property
    def nll_normalization(self) -> str:
        return get_conventions(self.preset).nll_normalization


def pair_logps(model, batch: dict, spec: ForwardSpec) -> TokenLogps:
    """TokenLogps of a micro-batch in spec.layout: its targets (batches.py), ONE forward, chunked log-probs.

    padded batch: chosen_/rejected_ input_ids, attention_mask, labels [B, T*] (batches.collate_padded) -> a forward of the
    2B rows, chosen then rejected. shared batch: input_ids, position_ids [B, T], attention_mask [B, T, T] bool
    block mask, chosen_/rejected_/prompt_targets [B, T] -> a forward of B rows; the last prompt position predicts
    both first response tokens, so chosen and rejected targets are scored as a tuple (one logsumexp).
    model(..., return_hidden=True) -> [N, T, H] and model.lm_head.weight [V, H]. Log-probs in float32.
    """
    if spec.unpadded:  # B forwards of one row each, no padded token computed
        rows = [pair_logps(model, row, replace(spec, unpadded=False)) for row in _unpadded_rows(batch)]
        return _stack_rows(rows, batch["input_ids"].shape[1])
    t = preference_targets(batch, spec.preset, spec.pad_id)
    cap = model.config.final_logit_softcapping  # Gemma's logit soft-cap, applied in the chunked head; else None
    head = CompiledChunkedTokenLogps if spec.compiled_head else ChunkedTokenLogps  # logprobs.py / fast/compiled_head.py
    if spec.layout == "shared":
        mask = batch["attention_mask"]
        if spec.attention == "flex":  # the [B, T, T] block mask as FlexAttention's BlockMask (fast/flex.py)
            mask = flex.block_mask(mask)
        hidden = model(batch["input_ids"], attention_mask=mask, position_ids=batch["position_ids"],
                       return_hidden=True)  # [B, T, H]
        weight = model.lm_head.weight  # [V, H], read after the forward (under --fsdp it is whole only then)
        chosen, rejected = token_logps(hidden, weight, (t.chosen, t.rejected), spec.chunk_size, cap, head)  # [B, T]
        with torch.no_grad():
            sums = logit_sums(hidden, weight, cap)  # [B, T]
        V = weight.shape[0]  # logits/*: response positions whatever the preset (no pad positions to count here)
        return TokenLogps(chosen, t.chosen_mask, t.nll_mask, rejected, t.rejected_mask,
                          _mean_logit(sums, t.chosen_mask, V, "response"),
                          _mean_logit(sums, t.rejected_mask, V, "response"))
    B = batch["chosen_input_ids"].shape[0]
    ids, mask, t = _concatenated(batch, t, spec.pad_id)  # [2B, T] ids and attention mask; targets padded to T
    if spec.chunk_size == 0:  # the textbook way, to measure what chunking saves: all logits [2B, T, V] at once
        logits = model(ids, attention_mask=mask)  # [2B, T, V]
        return _from_logits(logits[:B], logits[B:], t, spec.preset)
    hidden = model(ids, attention_mask=mask, return_hidden=True)  # [2B, T, H]
    weight = model.lm_head.weight  # [V, H], read after the forward (under --fsdp it is whole only then)
    logps = token_logps(hidden, weight, torch.cat([t.chosen, t.rejected]), spec.chunk_size, cap, head)  # [2B, T]
    with torch.no_grad():
        sums = logit_sums(hidden, weight, cap)  # [2B, T]
    how, V = get_conventions(spec.preset).logits_metric, weight.shape[0]
    return TokenLogps(logps[:B], t.chosen_mask, t.nll_mask, logps[B:], t.rejected_mask,
                      _mean_logit(sums[:B], t.chosen_mask, V, how), _mean_logit(sums[B:], t.rejected_mask, V, how))


def logps_from_logits(chosen_logits, rejected_logits, batch: dict, preset="paper", pad_id=None) -> TokenLogps:
    """TokenLogps of a padded batch from given logits ([B, T, V], aligned with its chosen / rejected input_ids),
    unchunked: for tests, tutorials and pair_logps's chunk_size=0."""
    return _from_logits(chosen_logits, rejected_logits, preference_targets(batch, preset, pad_id), preset)


def _from_logits(chosen_logits, rejected_logits, t: Targets, preset) -> TokenLogps:
    how = get_conventions(preset).logits_metric

    def side(logits, targets, mask):
        dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
        sums = logits.detach().to(dtype).sum(-1)  # [B, T]
        return token_logps_reference(logits, targets), _mean_logit(sums, mask, logits.shape[-1], how)

    (chosen, logits_c), (rejected, logits_r) = (side(chosen_logits, t.chosen, t.chosen_mask),
                                                side(rejected_logits, t.rejected, t.rejected_mask))
    return TokenLogps(chosen, t.chosen_mask, t.nll_mask, rejected, t.rejected_mask, logits_c, logits_r)


def _concatenated(batch: dict, t: Targets, pad_id):
    """Chosen rows then rejected rows, right-padded to one length T (as TRL's concatenated_inputs): input ids and
    attention mask [2B, T], and the targets with each side padded to T."""
    T = max(batch["chosen_input_ids"].shape[1], batch["rejected_input_ids"].shape[1])
    pad = lambda x, value: F.pad(x, (0, T - x.shape[1]), value=value)  # noqa: E731
    pad_id = 0 if pad_id is None else pad_id  # padding is masked out: its id never matters
    ids = torch.cat([pad(batch["chosen_input_ids"], pad_id), pad(batch["rejected_input_ids"], pad_id)])
    mask = torch.cat([pad(batch["chosen_attention_mask"], 0), pad(batch["rejected_attention_mask"], 0)])
    t = Targets(pad(t.chosen, IGNORE_INDEX), pad(t.chosen_mask, False), pad(t.nll_mask, False),
                pad(t.rejected, IGNORE_INDEX), pad(t.rejected_mask, False))
    return ids, mask, t


def _mean_logit(sums, response_mask, vocab_size: int, how: str):
    """Mean logit over positions x vocabulary, from per-position sums over the vocabulary [N, T]."""
    if how == "response":
        return sums[response_mask].sum() / (response_mask.sum() * vocab_size)
    if how == "all_but_last":  # TRL: logits[:, :-1] of the padded 2B batch, pads included
        return sums[:, :-1].mean() / vocab_size
    if how == "all":  # LLaMA-Factory: every position of the padded batch
        return sums.mean() / vocab_size
    raise ValueError(f"logits_metric must be 'response', 'all_but_last' or 'all', got {how!r}")


def _unpadded_rows(batch: dict):
    """A shared-prompt batch as B batches of one row each, cut to the row's own length P + C + R. Padding can be a
    fifth of a small batch's tokens (rows of unequal length); running rows one by one computes none of it, at the
    price of smaller matrix products (a loss on a GPU, not on a CPU)."""
    lengths = batch["prompt_lengths"] + batch["chosen_lengths"] + batch["rejected_lengths"]  # [B]
    for b, n in enumerate(lengths.tolist()):
        row = {k: v[b:b + 1] for k, v in batch.items()}
        yield {k: v[:, :n, :n].contiguous() if k == "attention_mask" else v[:, :n] if v.dim() == 2 else v
               for k, v in row.items()}  # [1, n, n] / [1, n] / [1]


def _stack_rows(parts: list, T: int) -> TokenLogps:
    """One TokenLogps [B, T] from B per-row ones [1, n]: right-padded with 0 / False; each mean logit (a mean over
    the row's response positions) weighted by the row's count of those positions."""
    def cat(x):
        return torch.cat([torch.cat([p, p.new_zeros(1, T - p.shape[1])], dim=1) for p in x])  # [B, T]

    def mean_logit(means, masks):
        counts = [m.sum() for m in masks]
        return sum(v * n for v, n in zip(means, counts)) / sum(counts)

    return TokenLogps(cat([p.chosen for p in parts]), cat([p.chosen_mask for p in parts]),
                      cat([p.nll_mask for p in parts]), cat([p.rejected for p in parts]),
                      cat([p.rejected_mask for p in parts]),
                      mean_logit([p.logits_chosen for p in parts], [p.chosen_mask for p in parts]),
                      mean_logit([p.logits_rejected for p in parts], [p.rejected_mask for p in parts]))


@torch.no_grad()
def reference_logps(model, batch: dict, spec: ForwardSpec, reference=None) -> TokenLogps:
    """DPO's reference log-probs: of the frozen copy `reference`, or of the same model with LoRA switched off."""
    if reference is not None:
        return pair_logps(reference, batch, spec)
    if not lora_layers(model):
        raise ValueError("DPO needs a reference model: use LoRA (the disabled adapter) or pass a frozen copy")
    with lora_disabled(model):
        return pair_logps(model, batch, spec)


@torch.no_grad()
def heldout_logps(model, pairs, spec: ForwardSpec, batch_size: int, device, on_batch=None):
    """(a [N], b [N], nll_sum, nll_tokens) of held-out pairs under the paper preset: the mean log-probs of each chosen
    and rejected response (Eq. 3, float32) and the summed NLL of the chosen responses with its token count.
    on_batch(done, total, n): called after each batch (progress)."""
    a_all, b_all, nll_sum, nll_n = [], [], 0.0, 0
    paper = replace(spec, preset="paper")
    for i in range(0, len(pairs), batch_size):
        tl = pair_logps(model, collate(pairs[i:i + batch_size], spec.pad_id, device, spec.layout), paper)
        a_all.append(sequence_logps(tl.chosen, tl.chosen_mask).float())
        b_all.append(sequence_logps(tl.rejected, tl.rejected_mask).float())
        nll_sum += float(-torch.where(tl.chosen_mask, tl.chosen.float(), 0.0).sum())
        nll_n += int(tl.chosen_mask.sum())
        if on_batch is not None:
            on_batch(min(i + batch_size, len(pairs)), len(pairs), len(pairs[i:i + batch_size]))
    return torch.cat(a_all), torch.cat(b_all), nll_sum, nll_n


def evaluate(model, pairs, spec: ForwardSpec, batch_size: int, device, on_batch=None) -> dict:
    """Held-out metrics: mean log-probs of chosen and rejected (Eq. 3), log odds ratio (Eq. 5), preference
    accuracy (fraction with log OR > 0), NLL of chosen responses (per-token mean over all held-out tokens),
    and the odds-ratio loss (Eq. 7), all under the paper preset."""
    a, b, nll_sum, nll_n = heldout_logps(model, pairs, spec, batch_size, device, on_batch)
    log_or = log_odds_ratio(a, b)
    return {"logps/chosen": float(a.mean()), "logps/rejected": float(b.mean()),
            "log_odds_chosen": float(log_or.mean()), "rewards/accuracies": float((log_or > 0).float().mean()),
            "odds_ratio_loss": float(odds_ratio_loss(a, b).mean()), "nll_loss": nll_sum / max(nll_n, 1),
            "pairs": len(pairs)}
