import math

import torch


def log1mexp(x):
    x = x.double()  # computes in float64 and forgets to cast back
    return torch.where(x < -math.log(2), torch.log1p(-torch.exp(x.clamp(max=-1))), torch.log(-torch.expm1(x.clamp(min=-1))))
