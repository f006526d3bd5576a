"""Checks of exercise 6, rotary position embeddings in the rotate-half layout of Llama checkpoints: each pair
(x_i, x_{i+hs/2}) of a head turns by the angle position * theta^(-2i/hs).

Oracles: hand arithmetic (hs = 2: a plain 2-D rotation); complex multiplication in float64 (pair i as the complex
number x_i + j x_{i+hs/2}, times e^{j angle}) and the relative-position property of dot products; minorpo.models.llama's
rope_cos_sin and apply_rope for random inputs.
"""

import math

import torch
from hypothesis import strategies as st

from minorpo.exercises.harness import DTYPES, Failure, assert_close, call, check_tensor, for_all, need, test
from minorpo.models.llama import apply_rope as minorpo_apply_rope
from minorpo.models.llama import rope_cos_sin


def run(student, x, positions, theta):
    got = call(need(student, "apply_rope"), x.clone(), positions.clone(), theta, what="apply_rope(x, position_ids, theta)")
    return check_tensor(got, x.shape, x.dtype, "apply_rope(x, position_ids, theta)")


def complex_rope(x: torch.Tensor, positions: torch.Tensor, theta: float) -> torch.Tensor:
    """The rotation as complex multiplication, float64: independent of cos/sin bookkeeping."""
    hs = x.shape[-1]
    x = x.double()
    z = torch.complex(x[..., : hs // 2], x[..., hs // 2:])  # [B, nh, T, hs/2]
    freq = theta ** (-torch.arange(0, hs, 2, dtype=torch.float64) / hs)  # [hs/2]
    angle = positions.double()[:, None, :, None] * freq  # [B, 1, T, hs/2]
    w = z * torch.polar(torch.ones_like(angle), angle)
    return torch.cat([w.real, w.imag], dim=-1)


@test("hand case, hs = 2: (1, 0) at position 1 turns to (cos 1, sin 1); position 0 leaves x unchanged",
      hint="with hs = 2 there is one pair (x_0, x_1) and its frequency theta^0 = 1: a rotation by the position itself")
def hand_case(student):
    x = torch.tensor([1.0, 0.0], dtype=torch.float64).expand(1, 1, 2, 2).contiguous()  # [B=1, nh=1, T=2, hs=2]
    got = run(student, x, torch.tensor([[0, 1]]), 10000.0)
    expected = torch.tensor([[[[1.0, 0.0], [math.cos(1), math.sin(1)]]]], dtype=torch.float64)
    assert_close(got, expected, 1e-12, 1e-12, "apply_rope")


@test("the pairs are (x_i, x_{i+hs/2}): hs = 4, positions 1, frequencies 1 and 1/100",
      hint="Llama checkpoints rotate the two HALVES of each head: x_i pairs with x_{i+hs/2}, not with x_{i+1}")
def halves(student):
    x = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64).view(1, 1, 1, 4)
    got = run(student, x, torch.tensor([[1]]), 10000.0)  # theta^(-2i/hs): i = 0 -> 1, i = 1 -> 10000^(-1/2)
    assert_close(got, complex_rope(x, torch.tensor([[1]]), 10000.0), 1e-12, 1e-12, "apply_rope")


@test("the given position ids are used (the shared-prompt layout restarts them: 0 1 2 3 2 3)",
      hint="rotate token t by position_ids[b, t], not by its index t in the row")
def given_positions(student):
    torch.manual_seed(0)
    x = torch.randn(1, 2, 6, 8, dtype=torch.float64)
    positions = torch.tensor([[0, 1, 2, 3, 2, 3]])
    assert_close(run(student, x, positions, 10000.0), complex_rope(x, positions, 10000.0), 1e-12, 1e-12, "apply_rope")


@st.composite
def inputs(draw):
    B, nh, T, half = draw(st.integers(1, 2)), draw(st.integers(1, 3)), draw(st.integers(1, 5)), draw(st.integers(1, 4))
    values = [draw(st.floats(-2.0, 2.0)) for _ in range(B * nh * T * 2 * half)]
    positions = [[draw(st.integers(0, 64)) for _ in range(T)] for _ in range(B)]
    return (B, nh, T, 2 * half), values, positions


@test("random shapes and positions, float64 (vs complex multiplication) and float32 (vs minorpo.models.llama.apply_rope)",
      hint="the frequency of pair i is theta^(-2i/hs), i = 0 .. hs/2-1; angle = position * frequency; "
           "(x_i, x_{i+hs/2}) -> (x_i cos - x_{i+hs/2} sin, x_{i+hs/2} cos + x_i sin)")
def random_inputs(student):
    def body(case, theta):
        shape, values, pos = case
        x = torch.tensor(values, dtype=torch.float64).view(shape)
        positions = torch.tensor(pos)
        assert_close(run(student, x, positions, theta), complex_rope(x, positions, theta), 1e-10, 1e-10,
                     "apply_rope (float64)")
        x32 = x.float()
        inv_freq = 1.0 / theta ** (torch.arange(0, shape[-1], 2, dtype=torch.float32) / shape[-1])
        cos, sin = rope_cos_sin(inv_freq, positions, torch.float32)
        # float32: angles up to 64 rad carry ~64 * 6e-8 = 4e-6 rad of rounding, on values up to 2 * sqrt(2)
        assert_close(run(student, x32, positions, theta), minorpo_apply_rope(x32, cos, sin), 1e-5, 3e-5,
                     "apply_rope (float32)")

    for_all(body, case=inputs(), theta=st.sampled_from([10000.0, 500000.0, 100.0]))


@test("bfloat16 in, bfloat16 out, within bfloat16's precision of the exact rotation",
      hint="compute the angles in float32 (bfloat16 cannot hold position * frequency for positions past 256), "
           "then return x's dtype")
def bfloat16(student):
    torch.manual_seed(1)
    x = torch.randn(1, 2, 5, 8).to(torch.bfloat16)
    positions = torch.tensor([[0, 100, 300, 1000, 2000]])
    got = run(student, x, positions, 10000.0)
    # bf16 keeps 8 bits: inputs and outputs rounded to 2^-8 relative, of values up to ~3 in size
    assert_close(got, complex_rope(x, positions, 10000.0), 0.0, 5e-2, "apply_rope (bfloat16)")


@test("q . k after RoPE depends only on the distance between the two positions",
      hint="each pair is rotated by position * frequency; a dot product of two rotated pairs sees only the difference")
def relative(student):
    torch.manual_seed(2)
    q, k = torch.randn(1, 1, 1, 8, dtype=torch.float64), torch.randn(1, 1, 1, 8, dtype=torch.float64)
    dots = []
    for m, n in ((5, 2), (13, 10), (40, 37)):
        qm = run(student, q, torch.tensor([[m]]), 10000.0)
        kn = run(student, k, torch.tensor([[n]]), 10000.0)
        dots.append(float((qm * kn).sum()))
    if max(dots) - min(dots) > 1e-9:  # float64 rounding of a sum of 8 products: ~1e-15
        raise Failure("q . k differs between positions (5, 2), (13, 10), (40, 37) although each is 3 apart",
                      expected="three equal values", got=str(dots))
