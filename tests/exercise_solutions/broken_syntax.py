import torch


def log1mexp(x)
    return torch.log(-torch.expm1(x))
