import torch


def micro_batch_losses(micro_batches, lam, normalization):
    tokens = sum(int(m["nll_mask"].sum()) for m in micro_batches)
    pairs = sum(len(m["l_or"]) for m in micro_batches)
    out = []
    for m in micro_batches:
        picked = torch.where(m["nll_mask"], m["chosen"], 0.0)
        if normalization == "token_mean":
            nll = -picked.sum() / tokens
        else:
            nll = -(picked.sum(-1) / m["nll_mask"].sum(-1)).sum() / pairs
        out.append(nll + lam * m["l_or"].sum() / pairs)
    return out
