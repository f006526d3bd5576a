"""Exercise 1 — log1mexp: log(1 - e^x) without losing it near 0            (goes with tutorial 1, section 4)

ORPO's odds are P / (1 - P) with P = e^a, a = log P(y|x) <= 0, so it needs log(1 - e^a) in log space:

    log1mexp(x) = log(1 - e^x),   x <= 0           (log1mexp(0) = log 0 = -inf)

Written naively, torch.log(1 - torch.exp(x)), it fails twice: near x = 0 (a confident model: e^x rounds to 1,
1 - e^x to 0) and far below 0 (1 - e^x rounds to 1). Write a version accurate for every x <= 0, in float64,
float32 and bfloat16, whose gradient is finite and correct everywhere x < 0.

Given: torch (torch.exp, torch.expm1, torch.log, torch.log1p, torch.where). Do not import minorpo: the grader
compares your function with minorpo's.
Returns: a tensor of x's shape and dtype.
Check:  minorpo exercises check 1 01_log1mexp.py
"""

import torch


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - e^x) elementwise, for x <= 0."""
    raise NotImplementedError("exercise 1: write log1mexp")
