from minorpo import loss


def orpo_batch_loss(chosen, chosen_mask, nll_mask, rejected, rejected_mask, lam, normalization):
    tl = loss.TokenLogps(chosen, chosen_mask, nll_mask, rejected, rejected_mask)
    return loss.batch_loss(tl, "orpo", lam, nll_normalization=normalization)[0]
