"""What one training step computes, per method, with gradient accumulation done right.

The loss of a global batch (all micro-batches of one optimizer step, on all ranks) is

    orpo:  L = L_SFT + lam * (1/N) sum_i L_OR_i                      (Eq. 6; loss.py)
    sft:   L = L_SFT                                                  (the paper's baseline, chosen only)
    pr:    L = L_SFT + lam * (1/N) sum_i -log sigmoid(beta (a_i - b_i))  (section 7.1's probability ratio)
    dpo:   L = (1/N) sum_i -log sigmoid(beta (r_w,i - r_l,i))         (reference = LoRA disabled or a frozen copy)

with N the pairs of the GLOBAL batch and L_SFT normalized by the preset's rule over the GLOBAL batch:
a token mean divides by the NLL tokens of all micro-batches, a sequence mean by N. Each micro-batch
therefore contributes its own sums divided by global counts (`weights` below), and the micro-batch
gradients add up to exactly the gradient of the whole batch taken at once. Dividing each micro-batch by
its *own* token count and then averaging the micro-batches is the bug TRL fixed in #3716: micro-batches
with few tokens get too much weight.

Two ways to lay a micro-batch out (collate.py), the same loss either way:
    padded  chosen and rejected as separate rows [prompt | response], one forward of 2B rows (as TRL);
    shared  one row [prompt | chosen | rejected] per pair with a block mask: the prompt is computed once.
            HH-RLHF prompts are ~3x longer than responses, so this skips a third or more of the tokens.
            With `unpadded`, each row runs at its own length (B forwards of one row): no padded tokens.
The NLL tokens of a pair (what count_targets counts) are the same set in both layouts, so the global
normalizers do not depend on the layout.
"""

from dataclasses import dataclass, replace

import torch

from minorpo import loss as L
from minorpo.batches import collate_padded, collate_shared_prompt, pad_token_id  # noqa: F401  (pad_token_id: train.py)
from minorpo.fast import flex
from minorpo.fast.compiled_head import CompiledChunkedTokenLogps
from minorpo.logprobs import ChunkedTokenLogps, sequence_logps
from minorpo.lora import lora_disabled, lora_layers


@dataclass
class LossSpec:
    method: str = "orpo"  # orpo | sft | dpo | pr
    lam: float = 0.1  # ORPO's lambda
    beta: float = 0.1  # DPO's beta
    preset: str = "paper"  # loss conventions (loss.PRESETS)
    chunk_size: int = 1024  # tokens per chunk of the log-prob computation; 0 = unchunked ([2B, T, V] logits)
    pad_id: int = 0  # the tokenizer's pad id (the official preset's NLL filter and extra target use it)
    layout: str = "padded"  # padded (chosen and rejected rows) | shared (prompt once per pair); see above
    unpadded: bool = False  # shared layout: each pair's row run at its own length, no padding (see token_logps)
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


def collate(pairs, pad_id: int, device) -> dict:
    """Padded-layout batch of tokenized pairs, on `device`."""
    return {k: v.to(device) for k, v in collate_padded(pairs, pad_id).items()}


def collate_shared(pairs, pad_id: int, device) -> dict:
    """Shared-prompt-layout batch of tokenized pairs, on `device`."""
    return {k: v.to(device) for k, v in collate_shared_prompt(pairs, pad_id).items()}


def row_length(pair, layout: str) -> int:
    """Tokens of the longest row a pair puts in a batch: prompt + longer response (padded), or all three (shared)."""
    if layout == "shared":
        return len(pair.prompt_ids) + len(pair.chosen_ids) + len(pair.rejected_ids)
    return len(pair.prompt_ids) + max(len(pair.chosen_ids), len(pair.rejected_ids))


def token_logps(model, batch: dict, spec: LossSpec) -> L.TokenLogps:
    """Per-token log-probs of a micro-batch in spec.layout (loss.py section 6)."""
    head = CompiledChunkedTokenLogps if spec.compiled_head else ChunkedTokenLogps
    if spec.layout == "shared" and spec.unpadded:  # B forwards of one row each, no padded token computed
        T = batch["input_ids"].shape[1]
        return _stack_rows([L.preference_logps_shared_prompt(model, _attention(row, spec), spec.preset, spec.pad_id,
                                                             spec.chunk_size, head)
                            for row in _unpadded_rows(batch)], T)
    if spec.layout == "shared":
        return L.preference_logps_shared_prompt(model, _attention(batch, spec), spec.preset, spec.pad_id,
                                                spec.chunk_size, head)
    if spec.chunk_size == 0:  # the textbook way, to measure what chunking saves: all logits [2B, T, V] at once
        B = batch["chosen_input_ids"].shape[0]
        logits = model(torch.cat([batch["chosen_input_ids"], batch["rejected_input_ids"]]),
                       attention_mask=torch.cat([batch["chosen_attention_mask"], batch["rejected_attention_mask"]]))
        return L.token_logps_from_logits(logits[:B], logits[B:], batch, spec.preset, spec.pad_id)  # [2B, T, V]
    return L.preference_logps(model, batch, spec.preset, spec.pad_id, spec.chunk_size, head)


def _attention(batch: dict, spec: LossSpec) -> dict:
    """The shared-layout batch with its [B, T, T] block mask as FlexAttention's BlockMask when spec.attention is flex."""
    if spec.attention != "flex":
        return batch
    return {**batch, "attention_mask": flex.block_mask(batch["attention_mask"])}


def _unpadded_rows(batch: dict):
    """A shared-prompt batch as B batches of one row each, cut to the row's own length P + C + R. Padding can be a
    fifth of a small batch's tokens (rows of unequal length); running rows one by one computes none of it, at the
    price of smaller matrix products (a loss on a GPU, not on a CPU)."""
    lengths = batch["prompt_lengths"] + batch["chosen_lengths"] + batch["rejected_lengths"]  # [B]
    for b, n in enumerate(lengths.tolist()):
        row = {k: v[b:b + 1] for k, v in batch.items()}
        yield {k: v[:, :n, :n].contiguous() if k == "attention_mask" else v[:, :n] if v.dim() == 2 else v
               for k, v in row.items()}  # [1, n, n] / [1, n] / [1]


def _stack_rows(parts: list, T: int) -> L.TokenLogps:
    """One TokenLogps [B, T] from B per-row ones [1, n]: right-padded with 0 / False; each mean logit (a mean over
    the row's response positions) weighted by the row's count of those positions."""
    def cat(x):
        return torch.cat([torch.cat([p, p.new_zeros(1, T - p.shape[1])], dim=1) for p in x])  # [B, T]

    def mean_logit(means, masks):
        counts = [m.sum() for m in masks]
        return sum(v * n for v, n in zip(means, counts)) / sum(counts)

    return L.TokenLogps(cat([p.chosen for p in parts]), cat([p.chosen_mask for p in parts]),
                        cat([p.nll_mask for p in parts]), cat([p.rejected for p in parts]),
                        cat([p.rejected_mask for p in parts]),
                        mean_logit([p.logits_chosen for p in parts], [p.chosen_mask for p in parts]),
                        mean_logit([p.logits_rejected for p in parts], [p.rejected_mask for p in parts]))


def count_targets(pairs, spec: LossSpec) -> dict:
    """Pairs and NLL tokens of a whole global batch, computed with the same masks the loss uses (the padded
    layout's; the shared layout has the same NLL tokens per pair)."""
    b = collate_padded(pairs, spec.pad_id)
    _, _, nll_mask = L.preference_targets(b["chosen_input_ids"], b["chosen_attention_mask"], b["chosen_labels"],
                                          spec.preset, spec.pad_id)
    return {"pairs": len(pairs), "nll_tokens": int(nll_mask.sum())}


def _weights(tl: L.TokenLogps, spec: LossSpec, counts: dict):
    """Multipliers that turn this micro-batch's means into its share of the global-batch loss."""
    n = tl.chosen.shape[0]
    if L.get_conventions(spec.preset).nll_normalization == "token_mean":
        nll_w = int(tl.nll_mask.sum()) / counts["nll_tokens"]
    else:
        nll_w = n / counts["pairs"]
    return nll_w, n / counts["pairs"]


def loss_and_metrics(model, batch: dict, spec: LossSpec, counts: dict, reference=None):
    """(loss to backpropagate, metrics to add up) for one micro-batch. See the module docstring."""
    tl = token_logps(model, batch, spec)
    nll_w, pair_w = _weights(tl, spec, counts)
    if spec.method in ("orpo", "sft", "pr"):
        objective = "probability_ratio" if spec.method == "pr" else spec.method
        loss, m = L.loss_from_token_logps(tl, spec.lam, spec.preset, objective, beta=spec.beta,
                                          weights=(nll_w, pair_w))
    elif spec.method == "dpo":
        loss, m = _dpo(tl, batch, spec, model, reference, pair_w)
    else:
        raise ValueError(f"unknown method {spec.method!r}: orpo, sft, dpo or pr")
    # loss / nll_loss / sft_loss are already this micro-batch's share; the rest are means over its pairs
    shares = {k: v for k, v in m.items() if k in ("loss", "nll_loss", "sft_loss")}
    means = {k: v * pair_w for k, v in m.items() if k not in shares}
    return loss, {**shares, **means}


def _dpo(tl, batch, spec, model, reference, pair_w):
    """DPO on summed log-probs; the reference is the frozen copy, or the same model with LoRA switched off."""
    pol_w = sequence_logps(tl.chosen, tl.chosen_mask, average=False)  # [B]
    pol_l = sequence_logps(tl.rejected, tl.rejected_mask, average=False)  # [B]
    with torch.no_grad():
        if reference is not None:
            ref = token_logps(reference, batch, spec)
        elif lora_layers(model):
            with lora_disabled(model):
                ref = token_logps(model, batch, spec)
        else:
            raise ValueError("DPO needs a reference model: use LoRA (the disabled adapter) or pass a frozen copy")
        ref_w = sequence_logps(ref.chosen, ref.chosen_mask, average=False)
        ref_l = sequence_logps(ref.rejected, ref.rejected_mask, average=False)
    losses, rew_w, rew_l = L.dpo_loss(pol_w, pol_l, ref_w, ref_l, spec.beta)
    loss = losses.mean() * pair_w
    a = sequence_logps(tl.chosen, tl.chosen_mask).detach()
    b = sequence_logps(tl.rejected, tl.rejected_mask).detach()
    metrics = {"loss": float(loss.detach()), "rewards/chosen": float(rew_w.mean()), "rewards/rejected": float(rew_l.mean()),
               "rewards/accuracies": float((rew_w > rew_l).float().mean()),
               "rewards/margins": float((rew_w - rew_l).mean()),
               "logps/chosen": float(a.mean()), "logps/rejected": float(b.mean()),
               "log_odds_chosen": float(L.log_odds_ratio(a, b).mean())}
    return loss, metrics


def finish_metrics(sums: dict, world: int) -> dict:
    """Global-batch metrics from the summed micro-batch contributions, already averaged over ranks.

    Every contribution was divided by the GLOBAL pair or token count, so the sum over all ranks is the global
    value; the rank average (what the all-reduce mean gives) is 1/world of it.
    """
    return {k: v * world for k, v in sums.items()}


@torch.no_grad()
def evaluate(model, pairs, pad_id: int, spec: LossSpec, batch_size: int, device, on_batch=None) -> dict:
    """Held-out metrics: mean log-probs of chosen and rejected (Eq. 3), log odds ratio (Eq. 5), preference
    accuracy (fraction with log OR > 0), NLL of chosen responses (per-token mean over all held-out tokens),
    and the ORPO loss of the preset at this lambda. on_batch(done, total, n): called after each batch (progress)."""
    a_all, b_all, nll_sum, nll_n = [], [], 0.0, 0
    paper = replace(spec, preset="paper")
    for i in range(0, len(pairs), batch_size):
        batch = (collate_shared if spec.layout == "shared" else collate)(pairs[i:i + batch_size], pad_id, device)
        tl = token_logps(model, batch, paper)
        a_all.append(sequence_logps(tl.chosen, tl.chosen_mask).float())
        b_all.append(sequence_logps(tl.rejected, tl.rejected_mask).float())
        nll_sum += float(-torch.where(tl.chosen_mask, tl.chosen.float(), 0.0).sum())
        nll_n += int(tl.chosen_mask.sum())
        if on_batch is not None:
            on_batch(min(i + batch_size, len(pairs)), len(pairs), len(pairs[i:i + batch_size]))
    a, b = torch.cat(a_all), torch.cat(b_all)
    log_or = L.log_odds_ratio(a, b)
    return {"logps/chosen": float(a.mean()), "logps/rejected": float(b.mean()),
            "log_odds_chosen": float(log_or.mean()), "rewards/accuracies": float((log_or > 0).float().mean()),
            "odds_ratio_loss": float(L.odds_ratio_loss(a, b).mean()), "nll_loss": nll_sum / max(nll_n, 1),
            "pairs": len(pairs)}
