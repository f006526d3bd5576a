import torch


def or_gradient(a, b):
    log_or = (a - b) - (torch.log(-torch.expm1(a)) - torch.log(-torch.expm1(b)))
    delta = torch.sigmoid(-log_or)
    return delta, -delta / -torch.expm1(a), delta / -torch.expm1(b)
