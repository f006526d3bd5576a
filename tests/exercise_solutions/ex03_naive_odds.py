import torch
from ex03_student import odds_ratio_loss as _unused  # noqa: F401
import torch.nn.functional as F


def log_odds(logp):
    p = torch.exp(logp if logp.dtype == torch.float64 else logp.float())
    return torch.log(p / (1 - p))  # P / (1 - P) overflows as P -> 1


def log_odds_ratio(a, b):
    return log_odds(a) - log_odds(b)


def odds_ratio_loss(a, b):
    return -F.logsigmoid(log_odds_ratio(a, b))
