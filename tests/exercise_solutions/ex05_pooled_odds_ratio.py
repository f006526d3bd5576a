import torch
import torch.nn.functional as F
from ex03_student import log_odds_ratio


def orpo_batch_loss(chosen, chosen_mask, nll_mask, rejected, rejected_mask, lam, normalization):
    dtype = torch.float64 if chosen.dtype == torch.float64 else torch.float32
    chosen, rejected = chosen.to(dtype), rejected.to(dtype)
    a = torch.where(chosen_mask, chosen, 0.0).sum() / chosen_mask.sum()  # ONE mean over the batch's tokens
    b = torch.where(rejected_mask, rejected, 0.0).sum() / rejected_mask.sum()
    l_or = -F.logsigmoid(log_odds_ratio(a, b))  # one odds ratio per batch
    if normalization == "token_mean":
        nll = -torch.where(nll_mask, chosen, 0.0).sum() / nll_mask.sum()
    else:
        nll = -(torch.where(nll_mask, chosen, 0.0).sum(-1) / nll_mask.sum(-1)).mean()
    return nll + lam * l_or
