import torch


def micro_batch_losses(micro_batches, lam, normalization):  # each micro-batch's own loss, summed: k times too large
    out = []
    for m in micro_batches:
        picked = torch.where(m["nll_mask"], m["chosen"], 0.0)
        nll = -picked.sum() / m["nll_mask"].sum() if normalization == "token_mean" else \
            -(picked.sum(-1) / m["nll_mask"].sum(-1)).mean()
        out.append(nll + lam * m["l_or"].mean())
    return out
