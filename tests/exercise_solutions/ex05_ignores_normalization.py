from ex05_student import orpo_batch_loss as _right


def orpo_batch_loss(chosen, chosen_mask, nll_mask, rejected, rejected_mask, lam, normalization):
    return _right(chosen, chosen_mask, nll_mask, rejected, rejected_mask, lam, "sequence_mean")  # always
