"""Checks of exercise 3, Eq. 4-7 in log space: log odds, the log odds ratio and L_OR = -log sigmoid(log OR).

Oracles: hand arithmetic (P = 0.8 and 0.5: odds 4 and 1, tutorial 1); Python's math module in float64 for the
near-certain and the extreme pairs; minorpo.loss on the float64 inputs for random pairs.
"""

import math

import torch
from hypothesis import strategies as st

from minorpo import loss
from minorpo.exercises.harness import DTYPES, Failure, assert_close, call, check_tensor, for_all, need, test

# float32: the log OR is a difference of terms up to ~70 in size (log odds of a = -1e-30), each rounded to
# 2^-24 relative: ~2e-5 absolute. L_OR's derivative is at most 1 in size, so the same bound holds for it.
ATOL = {"float64": 1e-10, "float32": 5e-5, "bfloat16": 5e-5}  # bf16 inputs are upcast: float32 arithmetic


def out_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def run(student, name, *args):
    what = f"{name}({', '.join('ab'[:len(args)]) if len(args) == 2 else 'logp'})"
    got = call(need(student, name), *(x.clone() for x in args), what=what)
    return check_tensor(got, args[0].shape, out_dtype(args[0].dtype), what)


def exact_log_odds(a: float) -> float:
    return a - (math.log(-math.expm1(a)) if a > -math.log(2) else math.log1p(-math.exp(a)))


def exact_l_or(z: float) -> float:
    return -z + math.log1p(math.exp(z)) if z < 0 else math.log1p(math.exp(-z))  # log(1 + e^-z), no overflow


@test("hand case: P(y_w) = 0.8, P(y_l) = 0.5: log odds log 4 and 0, log OR = log 4, L_OR = log 1.25; swapped log 5",
      hint="odds = P / (1 - P); OR = odds_w / odds_l; L_OR = -log sigmoid(log OR) = log(1 + 1/OR)")
def hand_case(student):
    a = torch.tensor([math.log(0.8), math.log(0.5)], dtype=torch.float64)
    b = torch.tensor([math.log(0.5), math.log(0.8)], dtype=torch.float64)
    assert_close(run(student, "log_odds", a), torch.tensor([math.log(4), 0.0], dtype=torch.float64), 1e-12, 1e-12,
                 "log_odds")
    assert_close(run(student, "log_odds_ratio", a, b), torch.tensor([math.log(4), -math.log(4)], dtype=torch.float64),
                 1e-12, 1e-12, "log_odds_ratio")
    assert_close(run(student, "odds_ratio_loss", a, b), torch.tensor([math.log(1.25), math.log(5)],
                                                                     dtype=torch.float64), 1e-12, 1e-12, "odds_ratio_loss")


@test("near-certain responses in float32: a = -1e-9, b = -2e-9 give log OR = log 2, not inf - inf",
      hint="P / (1 - P) overflows when P rounds to 1: stay in log space, log odds = a - log(1 - e^a), with an "
           "accurate log(1 - e^a) (exercise 1)")
def near_certain(student):
    a, b = torch.tensor([-1e-9]), torch.tensor([-2e-9])
    z = exact_log_odds(a.double().item()) - exact_log_odds(b.double().item())  # ~ log((1/1e-9) / (1/2e-9))
    assert_close(run(student, "log_odds_ratio", a, b), torch.tensor([z]), 0.0, ATOL["float32"], "log_odds_ratio")
    assert_close(run(student, "odds_ratio_loss", a, b), torch.tensor([exact_l_or(z)]), 0.0, ATOL["float32"],
                 "odds_ratio_loss")


@test("a certain rejected response in float32 (a = -30, b = -1e-35): L_OR is large (~110), not inf",
      hint="sigmoid(-110) underflows to 0 in float32 and log(0) = -inf: use F.logsigmoid or softplus, which never "
           "form the sigmoid")
def extreme_pair(student):
    a, b = torch.tensor([-30.0]), torch.tensor([-1e-35])
    z = exact_log_odds(a.double().item()) - exact_log_odds(b.double().item())
    assert_close(run(student, "odds_ratio_loss", a, b), torch.tensor([exact_l_or(z)]), 1e-5, ATOL["float32"],
                 "odds_ratio_loss")


logps = st.floats(-30.0, -1e-30)


@test("random pairs, float64/float32/bfloat16: one value per pair (vs minorpo.loss)",
      hint="stay in log space: log odds = a - log(1 - e^a) with an accurate log(1 - e^a) (exercise 1), and "
           "L_OR = softplus(-log OR); upcast bfloat16 to float32 before any arithmetic")
def random_pairs(student):
    def body(pairs, dtype):
        a = torch.tensor([p[0] for p in pairs], dtype=torch.float64).to(DTYPES[dtype])
        b = torch.tensor([p[1] for p in pairs], dtype=torch.float64).to(DTYPES[dtype])
        if (a == 0).any() or (b == 0).any():  # rounded to 0 in bfloat16: P = 1, no finite odds; not asked for
            return
        a64, b64 = a.double(), b.double()
        tol = ATOL[dtype]
        assert_close(run(student, "log_odds", a), loss.log_odds(a64), 1e-5, tol, "log_odds")
        assert_close(run(student, "log_odds_ratio", a, b), loss.log_odds_ratio(a64, b64), 1e-5, tol, "log_odds_ratio")
        assert_close(run(student, "odds_ratio_loss", a, b), loss.odds_ratio_loss(a64, b64), 1e-5, tol, "odds_ratio_loss")

    for_all(body, pairs=st.lists(st.tuples(logps, logps), min_size=1, max_size=5), dtype=st.sampled_from(list(DTYPES)))


@test("L_OR falls as the chosen response gains odds, and is log 2 at log OR = 0",
      hint="L_OR = -log sigmoid(log OR): minus sign, and sigmoid of the log odds ratio itself")
def direction(student):
    a = torch.tensor([-3.0, -2.0, -1.0, -0.5], dtype=torch.float64)
    b = torch.full_like(a, -1.0)
    got = run(student, "odds_ratio_loss", a, b)
    if not bool((torch.diff(got) < 0).all()):
        raise Failure("odds_ratio_loss does not fall as a = log P(y_w|x) rises with b fixed", input="a = "
                      f"{a.tolist()}, b = -1", got=str(got.tolist()))
    assert_close(got[2:3], torch.tensor([math.log(2)], dtype=torch.float64), 1e-12, 1e-12, "odds_ratio_loss at a = b")
