import torch


def log1mexp(x):
    return torch.log(1 - torch.exp(x))  # cancels near 0, rounds to log(1) = 0 far below
