import torch


def micro_batch_losses(micro_batches, lam, normalization):  # TRL before #3716: own means / number of micro-batches
    k = len(micro_batches)
    out = []
    for m in micro_batches:
        picked = torch.where(m["nll_mask"], m["chosen"], 0.0)
        if normalization == "token_mean":
            nll = -picked.sum() / m["nll_mask"].sum()
        else:
            nll = -(picked.sum(-1) / m["nll_mask"].sum(-1)).mean()
        out.append((nll + lam * m["l_or"].mean()) / k)
    return out
