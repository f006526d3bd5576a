"""Exercise 2 — Eq. 3: the mean log-probability of each response                   (goes with tutorial 2, section 2)

ORPO scores a response by the mean of its tokens' log-probabilities (the log of their geometric mean):

    log P(y|x) = (1/m) sum_{t in mask} log P(y_t | x, y_<t)        m = the number of masked tokens of the row

A batch holds rows of different lengths, padded (on the left or the right) to one length T. Positions outside
the mask are padding and may hold anything, even -inf or NaN. A row with no masked token at all is an empty
response: raise ValueError (naming the row) instead of dividing by 0.

Given: token_logps [N, T] float (float64, float32 or bfloat16), mask [N, T] bool. Do not import minorpo.
Returns: [N], one value per row, in token_logps' dtype.
Check:  minorpo exercises check 2 02_sequence_logps.py
"""

import torch


def sequence_logps(token_logps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Eq. 3: the mean of each row's masked token log-probs, [N, T] -> [N]."""
    raise NotImplementedError("exercise 2: write sequence_logps")
