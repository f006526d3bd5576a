"""Exercise 3 — Eq. 4-7: log odds, the log odds ratio and L_OR                   (goes with tutorial 1, sections 2-3)

From a = log P(y_w|x) and b = log P(y_l|x) (Eq. 3, one value per pair, each < 0):

    Eq. 4   odds(y|x) = P / (1 - P)               log odds = log P - log(1 - P) = a - log(1 - e^a)
    Eq. 5   OR = odds(y_w|x) / odds(y_l|x)         log OR = log odds(y_w|x) - log odds(y_l|x)
    Eq. 7   L_OR = -log sigmoid(log OR)

Work in log space: P / (1 - P) overflows as P -> 1 (a confident model: a = -1e-9 rounds P to exactly 1 in
float32), and sigmoid(z) underflows to 0 for very negative z. Your log1mexp of exercise 1 is useful: paste it in.

Given: a, b [B] float (float64, float32 or bfloat16). Compute in float32 at least (upcast bfloat16 inputs);
float64 stays float64. Do not import minorpo.
Returns: one value per pair, [B] (no mean over the batch), float32 (float64 for float64 inputs).
Check:  minorpo exercises check 3 03_odds_ratio.py
"""

import torch
import torch.nn.functional as F


def log_odds(logp: torch.Tensor) -> torch.Tensor:
    """Eq. 4 in log space: log(P / (1 - P)) from logp = log P < 0."""
    raise NotImplementedError("exercise 3: write log_odds")


def log_odds_ratio(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Eq. 5 in log space, per pair: log odds(y_w|x) - log odds(y_l|x)."""
    raise NotImplementedError("exercise 3: write log_odds_ratio")


def odds_ratio_loss(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Eq. 7, per pair: L_OR = -log sigmoid(log OR)."""
    raise NotImplementedError("exercise 3: write odds_ratio_loss")
