"""Token log-probabilities from the model's last hidden states, in chunks, and their mean (Eq. 3).

ORPO needs, for every response token, log P(y_t | x, y_<t) = logit[y_t] - logsumexp(logits). The obvious way
computes `log_softmax(lm_head(hidden))`, a [2B, T, V] float32 tensor: at B = 8, T = 1024, V = 49152 that is
3.2 GB, and autograd keeps it (and its softmax) alive until backward. Here the output head is applied to a
chunk of `chunk_size` token positions at a time:

    forward, per chunk:  logits = hidden_c @ W.T            [C, V]  (in the model's dtype, like lm_head)
                         lse    = logsumexp(logits.float())  [C]     (float32 even for bf16 logits)
                         logp   = logits[target] - lse       [C]
    backward, per chunk: the logits are RECOMPUTED from hidden_c (a custom torch.autograd.Function,
                         `ChunkedTokenLogps`), d logp / d logits = onehot(target) - softmax, then
                         grad_hidden_c = g @ W and grad_W += g.T @ hidden_c (summed over chunks in float32).

So forward and backward each hold one [C, V] block at a time, and between them autograd keeps only the
hidden states, the targets and one logsumexp per position: memory grows with the chunk, not with B*T*V
(tests/test_logprobs.py measures it; reproduce/bench_loss_memory.py prints it at SmolLM2 scale). The price is
one extra [C, H] x [H, V] matmul per chunk in backward (the recompute). Only positions that have a target are
sent through the head at all.

Targets are NEXT-token targets aligned with hidden positions: `targets[:, t]` is the token that hidden[:, t]
predicts, IGNORE_INDEX (-100) where there is none. `shift_labels` turns HF-style labels (aligned with
input_ids) into targets. Several target tensors can be scored in one pass (a tuple): the logsumexp is computed
once and each target gathered - the shared-prompt layout needs this, because the last prompt position predicts
both the first chosen and the first rejected token.

`token_logps_reference` is the same computation written the obvious (unchunked) way, for tests and teaching.

Soft-capped logits (Gemma's final_logit_softcapping, `softcap` below): each chunk's logits z become
cap * tanh(z / cap) before the logsumexp, in the accumulation dtype, and backward multiplies the gradient with
respect to the capped logits by the derivative 1 - tanh(z / cap)^2. The cap is one more elementwise step per
chunk, so memory is unchanged.

`minorpo train --compile` scores the chunks with minorpo/fast/compiled_head.py instead: the same steps, the
elementwise ones compiled (`token_logps(..., head=...)`).
"""

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100  # "no target here", as in torch.nn.CrossEntropyLoss and HF labels
DEFAULT_CHUNK_SIZE = 1024  # token positions per chunk: 1024 x 49152 float32 logits = 200 MB


def shift_labels(labels: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """HF-style labels (aligned with input_ids, -100 = ignore) -> next-token targets aligned with hidden states.

    targets[:, t] = labels[:, t + 1]; the last position has no target. With an attention_mask, a position that is
    itself padding predicts nothing (matters for left padding, where the first real token would otherwise be
    "predicted" from a pad position).
    """
    targets = torch.full_like(labels, IGNORE_INDEX)  # [N, T]
    targets[:, :-1] = labels[:, 1:]
    if attention_mask is not None:
        targets[:, :-1] = targets[:, :-1].masked_fill(attention_mask[:, :-1] == 0, IGNORE_INDEX)
    return targets


def softcap(logits: torch.Tensor, cap: float | None) -> torch.Tensor:
    """cap * tanh(logits / cap): a smooth clamp of the logits to (-cap, cap) (Gemma 2/3); None = unchanged."""
    if cap is None:
        return logits
    return torch.tanh(logits / cap) * cap


def _accumulation_dtype(*dtypes: torch.dtype) -> torch.dtype:
    """float64 stays float64 (gradcheck); everything else (bf16, fp16, fp32) is accumulated in float32."""
    return torch.float64 if torch.float64 in dtypes else torch.float32


def _as_tuple(targets) -> tuple[tuple[torch.Tensor, ...], bool]:
    if isinstance(targets, torch.Tensor):
        return (targets,), True
    return tuple(targets), False


def _check_targets(targets: tuple[torch.Tensor, ...], shape: torch.Size, vocab_size: int, what: str) -> None:
    for k, t in enumerate(targets):
        name = f"targets[{k}]" if len(targets) > 1 else "targets"
        if t.shape != shape:
            raise ValueError(f"{what}: {name} has shape {tuple(t.shape)}, expected {tuple(shape)} (one per position)")
        if t.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"{what}: {name} must be an integer tensor of token ids, got {t.dtype}")
        if t.device.type == "meta":  # shapes only, no values to check
            continue
        bad = (t != IGNORE_INDEX) & ((t < 0) | (t >= vocab_size))
        if bad.any():
            row, pos = (int(i) for i in bad.nonzero()[0])
            raise ValueError(f"{what}: {name}[{row}, {pos}] = {int(t[row, pos])} is not a token id in [0, {vocab_size}) "
                             f"nor IGNORE_INDEX ({IGNORE_INDEX})")


def token_logps_reference(logits: torch.Tensor, targets):
    """Unchunked log P(target | prefix) per position: log_softmax over the whole [N, T, V] tensor, then gather.

    logits [N, T, V] (any float dtype; computed in float32, or float64 for float64 logits), targets [N, T] or a
    tuple of such. Returns [N, T] (or a tuple), 0 where the target is IGNORE_INDEX.
    """
    targets, single = _as_tuple(targets)
    _check_targets(targets, logits.shape[:-1], logits.shape[-1], "token_logps_reference")
    logp_all = torch.log_softmax(logits.to(_accumulation_dtype(logits.dtype)), dim=-1)  # [N, T, V]
    out = tuple(
        logp_all.gather(-1, t.clamp(min=0).long().unsqueeze(-1)).squeeze(-1).masked_fill(t == IGNORE_INDEX, 0.0)
        for t in targets
    )  # each [N, T]
    return out[0] if single else out


def _head_dtype(hidden: torch.Tensor, weight: torch.Tensor) -> torch.dtype:
    """dtype of the output head's matmuls: autocast's (bf16) when autocast is on, as for lm_head, else hidden's.

    A custom autograd Function's backward runs outside the autocast region, so the dtype is decided once in
    forward and used again in backward: otherwise the recomputed logits (float32) would not be the ones the
    forward's logsumexp came from (bf16), and on a GPU the backward's three matmuls would run in float32.
    """
    dev = hidden.device.type
    if (dev in ("cuda", "cpu") and torch.is_autocast_enabled(dev)
            and hidden.dtype in (torch.float32, torch.float16, torch.bfloat16) and weight.dtype == hidden.dtype):
        return torch.get_autocast_dtype(dev)
    return hidden.dtype


class ChunkedTokenLogps(torch.autograd.Function):
    """log P(targets) for M positions given their hidden states and the output head weight, chunk by chunk.

    forward(hidden [M, H], weight [V, H], targets [K, M] long, chunk_size, cap) -> logps [K, M] (float32/64);
    cap: the logit soft-cap or None.
    Saved for backward: hidden, weight, targets and the logsumexp [M]; the logits are recomputed per chunk.
    The matmuls run in _head_dtype (bf16 under autocast), forward and backward alike; logsumexp, softmax and the
    weight gradient's sum over chunks in float32 (float64 for float64 inputs).
    """

    @staticmethod
    def forward(ctx, hidden, weight, targets, chunk_size, cap=None):
        acc = _accumulation_dtype(hidden.dtype, weight.dtype)
        head = _head_dtype(hidden, weight)
        h, w = hidden.to(head), weight.to(head)  # one cast of the head weight per call, not one per chunk
        M = hidden.shape[0]
        safe = targets.clamp(min=0).long()  # [K, M]; IGNORE_INDEX gathers token 0, zeroed below
        out = torch.empty(targets.shape, dtype=acc, device=hidden.device)  # [K, M]
        lse = torch.empty(M, dtype=acc, device=hidden.device)  # [M]
        for s in range(0, M, chunk_size):
            e = min(s + chunk_size, M)
            logits = softcap(F.linear(h[s:e], w).to(acc), cap)  # [C, V], the values lm_head (+ cap) would give
            lse[s:e] = torch.logsumexp(logits, dim=-1)  # [C]
            out[:, s:e] = logits.gather(1, safe[:, s:e].T).T - lse[s:e]  # [K, C]
        out = out.masked_fill(targets == IGNORE_INDEX, 0.0)
        ctx.save_for_backward(hidden, weight, targets, lse)
        ctx.chunk_size, ctx.head, ctx.cap = chunk_size, head, cap
        return out

    @staticmethod
    def backward(ctx, grad_out):  # grad_out [K, M]
        hidden, weight, targets, lse = ctx.saved_tensors
        acc = lse.dtype
        h, w = hidden.to(ctx.head), weight.to(ctx.head)  # the forward's matmul dtype again
        g = grad_out.to(acc).masked_fill(targets == IGNORE_INDEX, 0.0)  # [K, M]
        g_total = g.sum(0)  # [M]: d/dlogits of sum_k g_k * logp_k = sum_k g_k onehot_k - (sum_k g_k) softmax
        safe = targets.clamp(min=0).long()
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_h = torch.empty_like(hidden) if need_h else None  # [M, H]
        grad_w = torch.zeros(weight.shape, dtype=acc, device=weight.device) if need_w else None  # [V, H]
        for s in range(0, hidden.shape[0], ctx.chunk_size):
            e = min(s + ctx.chunk_size, hidden.shape[0])
            logits = softcap(F.linear(h[s:e], w).to(acc), ctx.cap)  # [C, V], recomputed
            grad_logits = (logits - lse[s:e, None]).exp_().mul_(-g_total[s:e, None])  # -(sum g) softmax  [C, V]
            grad_logits.scatter_add_(1, safe[:, s:e].T, g[:, s:e].T)  # + g_k at target k  [C, V]
            if ctx.cap is not None:  # chain rule through the cap: times 1 - tanh^2 = 1 - (z / cap)^2
                grad_logits.mul_(1 - (logits / ctx.cap) ** 2)
            grad_logits = grad_logits.to(ctx.head)
            del logits
            if need_h:
                grad_h[s:e] = grad_logits @ w  # [C, H]
            if need_w:
                grad_w += (grad_logits.T @ h[s:e]).to(acc)  # [V, H], summed over chunks in float32/64
            del grad_logits
        return grad_h, (grad_w.to(weight.dtype) if need_w else None), None, None, None


def token_logps(hidden: torch.Tensor, weight: torch.Tensor, targets, chunk_size: int = DEFAULT_CHUNK_SIZE,
                softcap: float | None = None, head=ChunkedTokenLogps):
    """log P(target | prefix) per position, without ever materializing the [N, T, V] logits.

    hidden [N, T, H]: the model's final hidden states (model(..., return_hidden=True)); weight [V, H]: the
    output head (model.lm_head.weight); targets [N, T] next-token targets or a tuple of such (scored with one
    logsumexp). Returns float32 [N, T] (float64 if hidden or weight is float64), or a tuple, 0 where the target
    is IGNORE_INDEX. softcap: the model's final_logit_softcapping (Gemma), applied to each chunk's logits.
    Differentiable w.r.t. hidden and weight (see ChunkedTokenLogps). head: the autograd Function that scores the
    chunks, ChunkedTokenLogps or minorpo/fast/compiled_head.py's CompiledChunkedTokenLogps (same arguments).
    """
    targets, single = _as_tuple(targets)
    if hidden.dim() != 3 or weight.dim() != 2 or hidden.shape[-1] != weight.shape[-1]:
        raise ValueError(f"token_logps: hidden {tuple(hidden.shape)} must be [N, T, H] and weight "
                         f"{tuple(weight.shape)} [V, H] with the same H")
    if chunk_size < 1:
        raise ValueError(f"token_logps: chunk_size must be >= 1, got {chunk_size}")
    N, T, H = hidden.shape
    _check_targets(targets, hidden.shape[:-1], weight.shape[0], "token_logps")
    stacked = torch.stack([t.reshape(N * T) for t in targets])  # [K, N*T]
    if hidden.device.type == "meta":  # no data on the meta device (bench_loss_memory.py): score every position
        scored = torch.arange(N * T, device=hidden.device)
    else:  # only positions with at least one target go through the output head
        scored = (stacked != IGNORE_INDEX).any(0).nonzero().squeeze(1)  # [M]
    logps = head.apply(hidden.reshape(N * T, H).index_select(0, scored), weight,
                       stacked[:, scored], chunk_size, softcap)  # [K, M]
    full = torch.zeros(len(targets), N * T, dtype=logps.dtype, device=logps.device).index_copy(1, scored, logps)
    out = tuple(full.view(len(targets), N, T).unbind(0))  # K x [N, T]
    return out[0] if single else out


def sequence_logps(token_logps: torch.Tensor, mask: torch.Tensor, *, average: bool = True,
                   name: str = "sequence") -> torch.Tensor:
    """Eq. 3: log P(y|x) = (1/m) sum_t log P(y_t | x, y_<t) over the m scored tokens of each row.

    token_logps [N, T], mask [N, T] (bool, or next-token targets: scored where != IGNORE_INDEX). Returns [N].
    average=False gives the plain sum (what DPO uses). A row with no scored token has no log P(y|x) (an empty
    response): that is an error, naming the row.
    """
    if mask.dtype != torch.bool:
        mask = mask != IGNORE_INDEX
    count = mask.sum(-1)  # [N]
    if (count == 0).any():
        rows = (count == 0).nonzero().flatten().tolist()
        raise ValueError(f"{name}: row(s) {rows} have no scored tokens (empty response?), so log P(y|x) of Eq. 3 is "
                         "undefined; drop such pairs when building the batch")
    total = torch.where(mask, token_logps, 0.0).sum(-1)  # [N]
    return total / count if average else total


def logit_sums(hidden: torch.Tensor, weight: torch.Tensor, cap: float | None = None,
               chunk_size: int = DEFAULT_CHUNK_SIZE) -> torch.Tensor:
    """Sum over the vocabulary of the logits at each position, = hidden @ weight.sum(0), in float32: [N, T].

    Used only for the logits/chosen and logits/rejected metrics TRL logs (a mean of all logits), which this gives
    without materializing the logits. (No gradient is needed for a metric; call it under torch.no_grad().)
    With a soft-cap (cap) the sum is no longer linear in the logits: then it is summed chunk by chunk.
    """
    acc = _accumulation_dtype(hidden.dtype, weight.dtype)
    if cap is None:
        return hidden.to(acc) @ weight.to(acc).sum(0)  # [N, T]
    flat = hidden.reshape(-1, hidden.shape[-1])  # [N*T, H]
    sums = [softcap(F.linear(flat[s:s + chunk_size], weight).to(acc), cap).sum(-1)  # [C]
            for s in range(0, flat.shape[0], chunk_size)]
    return torch.cat(sums).view(hidden.shape[:-1])  # [N, T]
