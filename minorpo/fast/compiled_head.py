"""The output head's per-chunk elementwise work compiled (`minorpo train --compile`): the same log-probs.

logprobs.ChunkedTokenLogps (read it first) computes each chunk's logits [C, V] with a matmul, then makes one pass
over that block, and one [C, V] temporary, per elementwise operation: in forward the cast to float32 and the
logsumexp; in backward the softmax, the scaling by the upstream gradient, the target terms and the cast back.
CompiledChunkedTokenLogps takes the same arguments and runs the same steps, the elementwise ones as
torch.compile'd kernels that read each [C, V] block once. The matmuls are unchanged.

It is chosen explicitly: logprobs.token_logps(..., head=CompiledChunkedTokenLogps), which the training loop's
forward does when its ForwardSpec says compiled_head (set by --compile).

Same results: tests/test_logprobs.py::test_compiled_head_equals_plain_path (float64 to 1e-12; float32 to a few
ulps, the reason written there).
"""

import functools

import torch
import torch.nn.functional as F

from minorpo.logprobs import IGNORE_INDEX, _accumulation_dtype, _head_dtype, softcap


def _chunk_lse(logits: torch.Tensor, acc: torch.dtype, cap: float | None) -> torch.Tensor:
    """logsumexp over the vocabulary of the (soft-capped) logits in the accumulation dtype: [C, V] -> [C]."""
    return torch.logsumexp(softcap(logits.to(acc), cap), dim=-1)


def _chunk_grad_logits(logits, lse, g, g_total, safe, cap):
    """d(sum_k g_k logp_k)/d logits = sum_k g_k onehot(target_k) - (sum_k g_k) softmax, in one expression so
    that compiled it is one pass over the [C, V] block. logits [C, V] (head dtype, before any cap), lse [C], g
    [K, C] and g_total [C] (accumulation dtype), safe [K, C] target ids. Returns [C, V] in the logits' dtype."""
    z = softcap(logits.to(lse.dtype), cap)                                                     # [C, V]
    grad = torch.exp(z - lse[:, None]) * -g_total[:, None]                                     # [C, V]
    vocab = torch.arange(logits.shape[1], device=logits.device)                                # [V]
    for k in range(safe.shape[0]):  # K = 1 or 2 target tensors: unrolled when compiled
        grad = grad + torch.where(vocab[None, :] == safe[k][:, None], g[k][:, None], 0.0)       # [C, V]
    if cap is not None:  # chain rule through cap * tanh(x / cap): times 1 - tanh^2 = 1 - (z / cap)^2
        grad = grad * (1 - (z / cap) ** 2)
    return grad.to(logits.dtype)


@functools.cache
def _compiled(fn):
    return torch.compile(fn, dynamic=True)  # the last chunk of a call is shorter: dynamic C


class CompiledChunkedTokenLogps(torch.autograd.Function):
    """logprobs.ChunkedTokenLogps with each chunk's elementwise work compiled; same arguments, same results."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, chunk_size, cap=None):
        acc = _accumulation_dtype(hidden.dtype, weight.dtype)
        head = _head_dtype(hidden, weight)
        h, w = hidden.to(head), weight.to(head)
        M = hidden.shape[0]
        safe = targets.clamp(min=0).long()  # [K, M]; IGNORE_INDEX gathers token 0, zeroed below
        out = torch.empty(targets.shape, dtype=acc, device=hidden.device)  # [K, M]
        lse = torch.empty(M, dtype=acc, device=hidden.device)  # [M]
        for s in range(0, M, chunk_size):
            e = min(s + chunk_size, M)
            logits = F.linear(h[s:e], w)  # [C, V] in the head dtype
            lse[s:e] = _compiled(_chunk_lse)(logits, acc, cap)  # [C]: the cast and logsumexp in one pass
            out[:, s:e] = softcap(logits.gather(1, safe[:, s:e].T).T.to(acc), cap) - lse[s:e]  # [K, C] (exact)
        out = out.masked_fill(targets == IGNORE_INDEX, 0.0)
        ctx.save_for_backward(hidden, weight, targets, lse)
        ctx.chunk_size, ctx.head, ctx.cap = chunk_size, head, cap
        return out

    @staticmethod
    def backward(ctx, grad_out):  # grad_out [K, M]
        hidden, weight, targets, lse = ctx.saved_tensors
        acc = lse.dtype
        h, w = hidden.to(ctx.head), weight.to(ctx.head)
        g = grad_out.to(acc).masked_fill(targets == IGNORE_INDEX, 0.0)  # [K, M]
        g_total = g.sum(0)  # [M]
        safe = targets.clamp(min=0).long()
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_h = torch.empty_like(hidden) if need_h else None  # [M, H]
        grad_w = torch.zeros(weight.shape, dtype=acc, device=weight.device) if need_w else None  # [V, H]
        for s in range(0, hidden.shape[0], ctx.chunk_size):
            e = min(s + ctx.chunk_size, hidden.shape[0])
            # one compiled pass: softmax, scale, target terms, cast to the head dtype
            grad_logits = _compiled(_chunk_grad_logits)(F.linear(h[s:e], w), lse[s:e], g[:, s:e],
                                                        g_total[s:e], safe[:, s:e], ctx.cap)  # [C, V]
            if need_h:
                grad_h[s:e] = grad_logits @ w  # [C, H]
            if need_w:
                grad_w += (grad_logits.T @ h[s:e]).to(acc)  # [V, H], summed over chunks in float32/64
            del grad_logits
        return grad_h, (grad_w.to(weight.dtype) if need_w else None), None, None, None
