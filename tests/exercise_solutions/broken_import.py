import torch

SCALE = undefined_name * 2


def log1mexp(x):
    return torch.log(-torch.expm1(x))
