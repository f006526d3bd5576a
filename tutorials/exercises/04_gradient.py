"""Exercise 4 — Eq. 8-10: the gradient of L_OR by hand                              (goes with tutorial 2, section 6)

Differentiate L_OR = -log sigmoid(log OR) (exercise 3) with respect to a = log P(y_w|x) and b = log P(y_l|x)
yourself, with pen and paper first, then in code WITHOUT autograd (the grader calls your function under
torch.no_grad()). Two facts you need:

    d/dz [-log sigmoid(z)] = -sigmoid(-z)          d log odds / d log P = 1 + P / (1 - P) = 1 / (1 - P)

The paper names the pieces (Eq. 9-10):

    delta = sigmoid(-log OR) = [1 + odds(y_w|x) / odds(y_l|x)]^-1
    h     = grad a / (1 - P(y_w|x)) - grad b / (1 - P(y_l|x))

and prints the gradient as +delta * h (Eq. 8). Is that the gradient of L_OR, or of something else? Your
finite-difference check will tell you: the grader uses one.

Given: a, b [B] float64, each < 0. Do not import minorpo.
Returns: (delta, grad_a, grad_b), each [B] float64: grad_a = dL_OR_i/da_i, grad_b = dL_OR_i/db_i.
Check:  minorpo exercises check 4 04_gradient.py
"""

import torch


def or_gradient(a: torch.Tensor, b: torch.Tensor):
    """(delta, dL_OR/da, dL_OR/db) per pair, by the formula (no autograd)."""
    raise NotImplementedError("exercise 4: write or_gradient")
