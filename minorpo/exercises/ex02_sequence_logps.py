"""Checks of exercise 2, Eq. 3: log P(y|x) = (1/m) sum_t log P(y_t | x, y_<t) over each row's m masked tokens.

Oracles: hand arithmetic (the 4-token example of tutorial 1); minorpo.logprobs.sequence_logps on the float64
input for random batches.
"""

import math

import torch
from hypothesis import strategies as st

from minorpo.exercises.harness import DTYPES, Failure, assert_close, call, check_tensor, for_all, need, test
from minorpo.logprobs import sequence_logps as reference

# A sum of up to 8 values of one sign loses at most ~8 roundings of its dtype: 1e-5 in float32, 3e-2 in bf16.
RTOL = {"float64": 1e-12, "float32": 1e-5, "bfloat16": 3e-2}


def run(student, logps, mask):
    got = call(need(student, "sequence_logps"), logps.clone(), mask.clone(), what="sequence_logps(token_logps, mask)")
    return check_tensor(got, (logps.shape[0],), logps.dtype, "sequence_logps(token_logps, mask)")


@test("hand case: the geometric mean of 0.5, 0.8, 0.9, 0.4, and a row of 2 tokens",
      hint="Eq. 3 is a mean over the row's masked tokens: sum them, divide by how many there are")
def hand_case(student):
    logps = torch.tensor([[0.5, 0.8, 0.9, 0.4], [0.5, 0.25, 1.0, 1.0]], dtype=torch.float64).log()
    mask = torch.tensor([[True, True, True, True], [True, True, False, False]])
    # (log .5 + log .8 + log .9 + log .4) / 4 = -0.48446; (log .5 + log .25) / 2 = -1.03972
    expected = torch.tensor([math.log(0.5 * 0.8 * 0.9 * 0.4) / 4, math.log(0.5 * 0.25) / 2], dtype=torch.float64)
    assert_close(run(student, logps, mask), expected, 1e-12, 0.0, "sequence_logps")


@test("padding does not count: a row of 2 tokens padded to 4 has the mean of its 2 tokens",
      hint="divide by the number of masked tokens of the row (mask.sum(-1)), not by the row's length T")
def padding_ignored(student):
    logps = torch.tensor([[-1.0, -2.0, -0.0, -0.0]], dtype=torch.float64)
    mask = torch.tensor([[True, True, False, False]])
    assert_close(run(student, logps, mask), torch.tensor([-1.5], dtype=torch.float64), 1e-12, 0.0, "sequence_logps")


@test("padded positions holding -inf or NaN do not change the result",
      hint="0 * -inf and 0 * NaN are NaN: select the masked values (torch.where) instead of multiplying by the mask")
def garbage_in_padding(student):
    logps = torch.tensor([[-1.0, -2.0, -math.inf], [-3.0, math.nan, math.nan]], dtype=torch.float32)
    mask = torch.tensor([[True, True, False], [True, False, False]])
    assert_close(run(student, logps, mask), torch.tensor([-1.5, -3.0]), 1e-6, 0.0, "sequence_logps")


@test("a row with no masked token raises ValueError (an empty response has no log P(y|x))",
      hint="check mask.sum(-1) for zeros and raise ValueError naming the row, instead of dividing by 0")
def empty_row(student):
    logps = torch.zeros(2, 3)
    mask = torch.tensor([[True, False, False], [False, False, False]])
    try:
        need(student, "sequence_logps")(logps, mask)
    except ValueError:
        return
    except NotImplementedError:
        raise Failure("sequence_logps raised NotImplementedError: not written yet (the stub still raises it)") from None
    except Exception as e:
        raise Failure(f"sequence_logps raised {type(e).__name__} ({e}), expected ValueError", input="row 1 has no "
                      "masked token") from None
    raise Failure("sequence_logps returned instead of raising ValueError", input="row 1 has no masked token")


@st.composite
def batches(draw):
    rows, T = draw(st.integers(1, 4)), draw(st.integers(1, 8))
    logps = [[draw(st.floats(-20.0, 0.0)) for _ in range(T)] for _ in range(rows)]
    lengths = [draw(st.integers(1, T)) for _ in range(rows)]
    left = draw(st.booleans())  # left or right padding
    mask = [[(T - n <= t) if left else (t < n) for t in range(T)] for n in lengths]
    pad = draw(st.sampled_from([0.0, -1e4, -math.inf]))
    logps = [[v if m else pad for v, m in zip(r, mr)] for r, mr in zip(logps, mask)]
    return logps, mask


@test("random batches: uneven lengths, left or right padding, float64/float32/bfloat16 (vs minorpo)",
      hint="one mean per row over that row's own masked tokens, wherever they sit in the row (left or right padding)")
def random_batches(student):
    def body(batch, dtype):
        values, mask_values = batch
        logps = torch.tensor(values, dtype=torch.float64).to(DTYPES[dtype])
        mask = torch.tensor(mask_values)
        expected = reference(logps.double(), mask)
        assert_close(run(student, logps, mask), expected, RTOL[dtype], 0.0, "sequence_logps")

    for_all(body, batch=batches(), dtype=st.sampled_from(list(DTYPES)))
