import torch
from ex09_student import ChunkedLogps as _Right


class ChunkedLogps(_Right):
    @staticmethod
    def forward(ctx, hidden, weight, targets, chunk_size):
        M = hidden.shape[0]
        out = torch.zeros(M, dtype=hidden.dtype)
        lse = torch.zeros(M, dtype=hidden.dtype)
        for s in range(0, M - chunk_size + 1, chunk_size):  # the shorter last chunk is never computed
            logits = hidden[s:s + chunk_size] @ weight.T
            lse[s:s + chunk_size] = torch.logsumexp(logits, -1)
            out[s:s + chunk_size] = logits.gather(1, targets[s:s + chunk_size].clamp(min=0)[:, None])[:, 0] - lse[s:s + chunk_size]
        ctx.save_for_backward(hidden, weight, targets, lse)
        ctx.chunk_size = chunk_size
        return out.masked_fill(targets == -100, 0.0)


def chunked_token_logps(hidden, weight, targets, chunk_size):
    return ChunkedLogps.apply(hidden, weight, targets, chunk_size)
