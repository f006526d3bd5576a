import dataclasses
from minorpo import loss as L


def orpo_batch_loss(chosen, chosen_mask, nll_mask, rejected, rejected_mask, lam, normalization):
    conv = dataclasses.replace(L.PRESETS["paper"], nll_normalization=normalization)
    return L.loss_from_token_logps(L.TokenLogps(chosen, chosen_mask, nll_mask, rejected, rejected_mask), lam, conv)[0]
