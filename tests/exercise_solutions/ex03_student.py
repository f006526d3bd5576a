import math

import torch
import torch.nn.functional as F


def log1mexp(x):
    far = x < -math.log(2)
    return torch.where(far, torch.log1p(-torch.exp(torch.where(far, x, -1.0))),
                       torch.log(-torch.expm1(torch.where(far, -1.0, x))))


def _up(x):
    return x if x.dtype == torch.float64 else x.float()


def log_odds(logp):
    logp = _up(logp)
    return logp - log1mexp(logp)


def log_odds_ratio(a, b):
    return log_odds(a) - log_odds(b)


def odds_ratio_loss(a, b):
    return -F.logsigmoid(log_odds_ratio(a, b))
