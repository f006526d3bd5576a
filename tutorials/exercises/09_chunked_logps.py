"""Exercise 9 — token log-probs in chunks, with a custom autograd Function           (goes with tutorial 5; logprobs.py)

ORPO needs log P(target | prefix) = logit[target] - logsumexp(logits) at every response position. Computing all
logits at once, hidden @ W^T, makes an [M, V] tensor (M positions, V ~ 50,000 vocabulary entries: gigabytes),
and autograd keeps it until backward. Do it in chunks of chunk_size positions instead, with a
torch.autograd.Function that keeps only what it cannot recompute cheaply:

    forward, per chunk c:   logits_c = hidden_c @ W^T            [C, V]
                            lse_c    = logsumexp(logits_c)       [C]
                            logp_c   = logits_c[target] - lse_c  [C]     (0 where the target is -100)
    backward, per chunk:    recompute logits_c from hidden_c; with g the incoming gradient [C],
                            d logp / d logits = onehot(target) - softmax(logits)
                            grad_logits_c = g * (onehot - softmax)   (0 rows where the target is -100)
                            grad_hidden_c = grad_logits_c @ W,   grad_W += grad_logits_c^T @ hidden_c

Save hidden, weight, targets and lse with ctx.save_for_backward; never all the logits. The last chunk may be
shorter than chunk_size.

Given: hidden [M, H], weight [V, H] (float64 in the grader; requires grad), targets [M] long (token ids, or -100),
chunk_size >= 1. Do not import minorpo.
Returns: logps [M] in hidden's dtype, differentiable w.r.t. hidden and weight through your Function.
Check:  minorpo exercises check 9 09_chunked_logps.py
"""

import torch

IGNORE_INDEX = -100


class ChunkedLogps(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, chunk_size):
        raise NotImplementedError("exercise 9: write ChunkedLogps.forward")

    @staticmethod
    def backward(ctx, grad_out):
        raise NotImplementedError("exercise 9: write ChunkedLogps.backward")


def chunked_token_logps(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk_size: int):
    """log P(targets) per position, computed chunk by chunk."""
    return ChunkedLogps.apply(hidden, weight, targets, chunk_size)
