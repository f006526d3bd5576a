import torch
from ex09_student import ChunkedLogps as _Right


class ChunkedLogps(_Right):
    @staticmethod
    def backward(ctx, grad_out):
        hidden, weight, targets, lse = ctx.saved_tensors
        g = grad_out.masked_fill(targets == -100, 0.0)
        grad_h, grad_w = torch.zeros_like(hidden), torch.zeros_like(weight)
        for s in range(0, hidden.shape[0], ctx.chunk_size):
            e = min(s + ctx.chunk_size, hidden.shape[0])
            onehot = torch.zeros(e - s, weight.shape[0], dtype=hidden.dtype)
            grad_logits = onehot.scatter_add(1, targets[s:e].clamp(min=0)[:, None], g[s:e, None])  # - softmax missing
            grad_h[s:e] = grad_logits @ weight
            grad_w += grad_logits.T @ hidden[s:e]
        return grad_h, grad_w, None, None


def chunked_token_logps(hidden, weight, targets, chunk_size):
    return ChunkedLogps.apply(hidden, weight, targets, chunk_size)
