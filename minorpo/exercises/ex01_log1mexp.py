"""Checks of exercise 1, log1mexp(x) = log(1 - e^x) for x <= 0.

Oracles: Python's math module in float64 (math.log(-math.expm1(x)), math.log1p(-math.exp(x)): each accurate in
its own range) for the hand cases and the gradient; minorpo.loss.log1mexp on the float64 input for random inputs.
"""

import math

import torch
from hypothesis import strategies as st

from minorpo.exercises.harness import (DTYPES, Failure, assert_close, call, check_tensor, for_all, need, test,
                                       to_tensor)
from minorpo.loss import log1mexp as reference

# Relative tolerance per dtype: a careful float32 implementation is within a few ulps (2^-24 = 6e-8) and the
# cancellation it must avoid loses every digit, so 1e-5 separates the two; bf16 keeps 8 bits (2^-8 = 4e-3).
RTOL = {"float64": 1e-12, "float32": 1e-5, "bfloat16": 2e-2}


def atol(dtype: str) -> float:
    """Below the smallest normal number (1.2e-38 in float32) a dtype has fewer digits: absolute error there."""
    return torch.finfo(DTYPES[dtype]).tiny


def exact(x: float) -> float:
    """log(1 - e^x) in float64, each formula where it is accurate (x = 0 gives -inf)."""
    if x == 0:
        return -math.inf
    return math.log(-math.expm1(x)) if x > -math.log(2) else math.log1p(-math.exp(x))


def run(student, values, dtype):
    x = to_tensor(values, dtype)
    got = call(need(student, "log1mexp"), x.clone(), what="log1mexp(x)")
    return x, check_tensor(got, x.shape, x.dtype, "log1mexp(x)")


@test("hand cases in float64: log(1 - 1/2), log(1 - 3/4), x = 0",
      hint="log1mexp(x) = log(1 - e^x): at x = log(1/2), 1 - e^x = 1/2; at x = 0 it is log(0) = -inf")
def hand_cases(student):
    x, got = run(student, [math.log(0.5), math.log(0.75), 0.0], "float64")
    assert_close(got, torch.tensor([math.log(0.5), math.log(0.25), -math.inf], dtype=torch.float64), 1e-12, 0.0,
                 "log1mexp(x)")


@test("near 0 in float32: x = -1e-9, -1e-6, -1e-3",
      hint="near 0, e^x rounds to 1 and 1 - e^x cancels; torch.expm1(x) computes e^x - 1 without that cancellation")
def near_zero(student):
    values = [-1e-9, -1e-6, -1e-3]
    x, got = run(student, values, "float32")
    assert_close(got, torch.tensor([exact(v) for v in x.double().tolist()]), RTOL["float32"], 0.0, "log1mexp(x)")


@test("far below 0 in float32: x = -20, -40, -80",
      hint="far below 0, 1 - e^x rounds to 1 and its log to 0; torch.log1p(y) computes log(1 + y) for tiny y")
def far_from_zero(student):
    x, got = run(student, [-20.0, -40.0, -80.0], "float32")
    assert_close(got, torch.tensor([exact(v) for v in x.double().tolist()]), RTOL["float32"], 0.0, "log1mexp(x)")


@test("random x in [-100, 0] in float64, float32 and bfloat16, shape and dtype kept (vs minorpo.loss.log1mexp)",
      hint="each of the two formulas is accurate on one side of x = -ln 2 (Maechler 2012): use each only there")
def random_inputs(student):
    def body(values, dtype):
        x, got = run(student, values, dtype)
        assert_close(got, reference(x.double()), RTOL[dtype], atol(dtype), "log1mexp(x)")

    for_all(body, values=st.lists(st.floats(-100.0, 0.0), min_size=1, max_size=6),
            dtype=st.sampled_from(list(DTYPES)))


@test("gradient: finite and equal to -e^x / (1 - e^x), also at x = -1e-9 in float32",
      hint="torch.where differentiates both branches: one that is -inf where it is not selected gives 0 * inf = NaN "
           "in backward; feed each branch only inputs it is accurate for")
def gradient(student):
    values = [-1e-9, -0.5, -1.0, -30.0]
    x = torch.tensor(values, dtype=torch.float32, requires_grad=True)
    y = call(need(student, "log1mexp"), x, what="log1mexp(x)")
    check_tensor(y, x.shape, x.dtype, "log1mexp(x)")
    if not y.requires_grad:
        raise Failure("no gradient flows back to x: keep the computation in torch operations on x")
    call(y.sum().backward, what="backward through log1mexp")
    xs = x.detach().double().tolist()
    expected = torch.tensor([-math.exp(v) / -math.expm1(v) for v in xs])  # d/dx log(1 - e^x)
    assert_close(x.grad, expected, 1e-4, 0.0, "d log1mexp(x) / dx")  # float32 derivative: a few ulps of 1e9
