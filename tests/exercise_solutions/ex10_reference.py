from minorpo import loss


def micro_batch_losses(micro_batches, lam, normalization):
    """Each micro-batch's means times its share of the global counts (train.py divides its sums by them)."""
    tokens = sum(int(m["nll_mask"].sum()) for m in micro_batches)
    pairs = sum(len(m["l_or"]) for m in micro_batches)
    out = []
    for m in micro_batches:
        n = len(m["l_or"])
        w_nll = int(m["nll_mask"].sum()) / tokens if normalization == "token_mean" else n / pairs
        out.append(loss.nll_loss(m["chosen"], m["nll_mask"], normalization) * w_nll + lam * m["l_or"].mean() * n / pairs)
    return out
