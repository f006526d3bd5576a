"""Checks of exercise 4, Eq. 8-10: the gradient of L_OR with respect to a = log P(y_w|x) and b = log P(y_l|x),
written by hand (no autograd): delta = sigmoid(-log OR), dL/da = -delta / (1 - P_w), dL/db = +delta / (1 - P_l).

Oracles: hand arithmetic (P = 0.8 and 0.5); central finite differences of a plain-Python L_OR (math module,
float64); minorpo.loss.orpo_gradient.
"""

import math

import torch
from hypothesis import strategies as st

from minorpo import loss
from minorpo.exercises.harness import Failure, assert_close, call, check_tensor, for_all, need, test


def run(student, a, b):
    with torch.no_grad():  # by hand: no autograd
        got = call(need(student, "or_gradient"), a.clone(), b.clone(), what="or_gradient(a, b)")
    if not isinstance(got, (tuple, list)) or len(got) != 3:
        raise Failure(f"or_gradient(a, b) returned {type(got).__name__}, expected a tuple (delta, grad_a, grad_b)")
    return [check_tensor(g, a.shape, a.dtype, f"or_gradient(a, b)[{i}] ({n})")
            for i, (g, n) in enumerate(zip(got, ("delta", "grad_a", "grad_b")))]


def l_or(a: float, b: float) -> float:
    """L_OR in plain float64 arithmetic."""
    z = (a - b) - (math.log(-math.expm1(a)) - math.log(-math.expm1(b)))
    return -z + math.log1p(math.exp(z)) if z < 0 else math.log1p(math.exp(-z))


@test("hand case: P(y_w) = 0.8, P(y_l) = 0.5: delta = 1/(1 + 4) = 0.2, dL/da = -0.2/0.2 = -1, dL/db = 0.2/0.5 = 0.4",
      hint="delta = sigmoid(-log OR) = 1 / (1 + OR); d log odds / d log P = 1 / (1 - P)")
def hand_case(student):
    a = torch.tensor([math.log(0.8)], dtype=torch.float64)
    b = torch.tensor([math.log(0.5)], dtype=torch.float64)
    delta, ga, gb = run(student, a, b)
    assert_close(delta, torch.tensor([0.2], dtype=torch.float64), 1e-12, 0.0, "delta")
    assert_close(ga, torch.tensor([-1.0], dtype=torch.float64), 1e-12, 0.0, "grad_a = dL_OR/da")
    assert_close(gb, torch.tensor([0.4], dtype=torch.float64), 1e-12, 0.0, "grad_b = dL_OR/db")


pair = st.tuples(st.floats(-20.0, -1e-3), st.floats(-20.0, -1e-3))


@test("random pairs: grad_a and grad_b equal central finite differences of L_OR (float64)",
      hint="the gradient of L_OR = -log sigmoid(log OR) carries a minus sign the paper's Eq. 8 dropped: rising a "
           "must lower L_OR")
def finite_differences(student):
    def body(pairs):
        a = torch.tensor([p[0] for p in pairs], dtype=torch.float64)
        b = torch.tensor([p[1] for p in pairs], dtype=torch.float64)
        _, ga, gb = run(student, a, b)
        eps = 1e-6  # truncation ~eps^2 L''' and rounding ~1e-16 / eps: both below 1e-9 for these inputs
        fd_a = torch.tensor([(l_or(x + eps, y) - l_or(x - eps, y)) / (2 * eps) for x, y in pairs], dtype=torch.float64)
        fd_b = torch.tensor([(l_or(x, y + eps) - l_or(x, y - eps)) / (2 * eps) for x, y in pairs], dtype=torch.float64)
        assert_close(ga, fd_a, 1e-6, 1e-8, "grad_a vs finite differences")
        assert_close(gb, fd_b, 1e-6, 1e-8, "grad_b vs finite differences")

    for_all(body, pairs=st.lists(pair, min_size=1, max_size=5))


@test("random pairs: delta and the gradient equal minorpo.loss.orpo_gradient (float64), one value per pair",
      hint="delta = [1 + odds(y_w)/odds(y_l)]^-1 (Eq. 9) falls to 0 as the chosen odds dominate; 1 - P is "
           "-expm1(log P), exact even when P is close to 1")
def vs_minorpo(student):
    def body(pairs):
        a = torch.tensor([p[0] for p in pairs], dtype=torch.float64)
        b = torch.tensor([p[1] for p in pairs], dtype=torch.float64)
        delta, ga, gb = run(student, a, b)
        ref_delta, h_w, h_l = loss.orpo_gradient(a, b)
        assert_close(delta, ref_delta, 1e-10, 0.0, "delta")
        assert_close(ga, -ref_delta * h_w, 1e-10, 0.0, "grad_a")
        assert_close(gb, -ref_delta * h_l, 1e-10, 0.0, "grad_b")

    for_all(body, pairs=st.lists(pair, min_size=1, max_size=5))
