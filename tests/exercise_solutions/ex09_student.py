import torch

IGNORE_INDEX = -100


def grad_logits_of(logits, lse, targets, g):
    """g * (onehot(target) - softmax(logits)) per row."""
    grad = -torch.exp(logits - lse[:, None]) * g[:, None]
    return grad.scatter_add(1, targets.clamp(min=0)[:, None], g[:, None])


class ChunkedLogps(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, chunk_size):
        M = hidden.shape[0]
        out = torch.zeros(M, dtype=hidden.dtype)
        lse = torch.zeros(M, dtype=hidden.dtype)
        safe = targets.clamp(min=0)
        for s in range(0, M, chunk_size):
            e = min(s + chunk_size, M)
            logits = hidden[s:e] @ weight.T
            lse[s:e] = torch.logsumexp(logits, -1)
            out[s:e] = logits.gather(1, safe[s:e, None])[:, 0] - lse[s:e]
        ctx.save_for_backward(hidden, weight, targets, lse)
        ctx.chunk_size = chunk_size
        return out.masked_fill(targets == IGNORE_INDEX, 0.0)

    @staticmethod
    def backward(ctx, grad_out):
        hidden, weight, targets, lse = ctx.saved_tensors
        g = grad_out.masked_fill(targets == IGNORE_INDEX, 0.0)
        grad_h, grad_w = torch.zeros_like(hidden), torch.zeros_like(weight)
        for s in range(0, hidden.shape[0], ctx.chunk_size):
            e = min(s + ctx.chunk_size, hidden.shape[0])
            grad_logits = grad_logits_of(hidden[s:e] @ weight.T, lse[s:e], targets[s:e], g[s:e])
            grad_h[s:e] = grad_logits @ weight
            grad_w += grad_logits.T @ hidden[s:e]
        return grad_h, grad_w, None, None


def chunked_token_logps(hidden, weight, targets, chunk_size):
    return ChunkedLogps.apply(hidden, weight, targets, chunk_size)
