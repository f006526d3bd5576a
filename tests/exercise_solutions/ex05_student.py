import torch
import torch.nn.functional as F
from ex03_student import log_odds_ratio


def mean(x, mask):
    return torch.where(mask, x, 0.0).sum(-1) / mask.sum(-1)


def orpo_batch_loss(chosen, chosen_mask, nll_mask, rejected, rejected_mask, lam, normalization):
    dtype = torch.float64 if chosen.dtype == torch.float64 else torch.float32
    chosen, rejected = chosen.to(dtype), rejected.to(dtype)
    a, b = mean(chosen, chosen_mask), mean(rejected, rejected_mask)
    l_or = -F.logsigmoid(log_odds_ratio(a, b))
    if normalization == "token_mean":
        nll = -torch.where(nll_mask, chosen, 0.0).sum() / nll_mask.sum()
    else:
        nll = -mean(chosen, nll_mask).mean()
    return nll + lam * l_or.mean()
