"""Checks of exercise 5, Eq. 6 for a batch: L = L_SFT + lam * mean_i L_OR_i, with L_SFT under a chosen convention
(token_mean: one mean pooled over the batch's NLL tokens; sequence_mean: each row's mean, then the mean of rows).

Oracles: a plain-Python loop over pairs and tokens (math module, float64) for hand cases; minorpo's
loss.batch_loss, with the chosen NLL normalization, for random batches.
"""

import math

import torch
from hypothesis import strategies as st

from minorpo import loss
from minorpo.exercises.harness import DTYPES, assert_close, call, check_tensor, for_all, need, test

# float32 sums of <= 24 log-probs of one sign and a log OR (exercise 3's bound): 1e-5 relative, 1e-4 absolute.
TOL = {"float64": (1e-10, 1e-10), "float32": (1e-5, 1e-4), "bfloat16": (1e-5, 1e-4)}  # bf16 inputs: float32 math


def python_loss(chosen, chosen_mask, nll_mask, rejected, rejected_mask, lam, normalization):
    """The loss in plain Python: every sum written out."""
    def mean(row, mask):
        vals = [v for v, m in zip(row, mask) if m]
        return sum(vals) / len(vals)

    def log_odds(p):
        return p - math.log(-math.expm1(p))

    l_or = []
    for cw, mw, rl, ml in zip(chosen, chosen_mask, rejected, rejected_mask):
        z = log_odds(mean(cw, mw)) - log_odds(mean(rl, ml))
        l_or.append(math.log1p(math.exp(-z)) if z > 0 else -z + math.log1p(math.exp(z)))
    if normalization == "token_mean":
        toks = [v for row, m in zip(chosen, nll_mask) for v, k in zip(row, m) if k]
        nll = -sum(toks) / len(toks)
    else:
        nll = -sum(mean(row, m) for row, m in zip(chosen, nll_mask)) / len(chosen)
    return nll + lam * sum(l_or) / len(l_or)


def run(student, batch, lam, normalization):
    got = call(need(student, "orpo_batch_loss"), *(t.clone() for t in batch), lam, normalization,
               what=f"orpo_batch_loss(..., lam={lam}, normalization={normalization!r})")
    dtype = torch.float64 if batch[0].dtype == torch.float64 else torch.float32
    return check_tensor(got, (), dtype, "orpo_batch_loss")


def tensors(chosen, chosen_mask, nll_mask, rejected, rejected_mask, dtype=torch.float64):
    return (torch.tensor(chosen, dtype=torch.float64).to(dtype), torch.tensor(chosen_mask), torch.tensor(nll_mask),
            torch.tensor(rejected, dtype=torch.float64).to(dtype), torch.tensor(rejected_mask))


# Two pairs of different lengths; -7 marks padding. Pair 0: chosen 1 token, rejected 2; pair 1: chosen 3, rejected 1.
HAND = ([[-0.5, -7.0, -7.0], [-1.0, -2.0, -3.0]], [[True, False, False], [True, True, True]],
        [[True, False, False], [True, True, True]],
        [[-2.0, -4.0], [-0.25, -7.0]], [[True, True], [True, False]])


@test("hand case, sequence_mean, lam = 0.5: two pairs of different lengths",
      hint="one log odds ratio per PAIR from that pair's own means a_i, b_i (Eq. 3); then the mean of L_OR_i")
def hand_sequence_mean(student):
    expected = python_loss(*HAND, 0.5, "sequence_mean")
    assert_close(run(student, tensors(*HAND), 0.5, "sequence_mean"), torch.tensor(expected, dtype=torch.float64),
                 1e-12, 1e-12, "loss")


@test("hand case, token_mean, lam = 0.5: the NLL is one mean over all 4 NLL tokens of the batch",
      hint="token_mean pools: -(sum of the log-probs of all NLL tokens of the batch) / (their number)")
def hand_token_mean(student):
    expected = python_loss(*HAND, 0.5, "token_mean")
    assert_close(run(student, tensors(*HAND), 0.5, "token_mean"), torch.tensor(expected, dtype=torch.float64),
                 1e-12, 1e-12, "loss")


@test("the NLL covers nll_mask (here the prompt too, as TRL does), the log odds chosen_mask",
      hint="L_SFT uses nll_mask; log P(y_w|x) of Eq. 3 uses chosen_mask: they differ when the NLL covers the prompt")
def nll_mask_differs(student):
    c, cm, _, r, rm = HAND
    nm = [[True, True, True], [True, True, True]]  # pretend positions 1-2 of row 0 are prompt tokens
    c = [[-0.5, -0.1, -0.2], c[1]]
    for norm in ("token_mean", "sequence_mean"):
        expected = python_loss(c, cm, nm, r, rm, 0.5, norm)
        assert_close(run(student, tensors(c, cm, nm, r, rm), 0.5, norm), torch.tensor(expected, dtype=torch.float64),
                     1e-12, 1e-12, f"loss ({norm})")


@st.composite
def batches(draw):
    B = draw(st.integers(1, 4))
    Tc, Tr = draw(st.integers(1, 6)), draw(st.integers(1, 6))
    logp = st.floats(-12.0, -1e-4)

    def side(T):
        lengths = [draw(st.integers(1, T)) for _ in range(B)]
        vals = [[draw(logp) if t < n else -50.0 for t in range(T)] for n in lengths]  # -50: padding
        return vals, [[t < n for t in range(T)] for n in lengths]

    chosen, chosen_mask = side(Tc)
    rejected, rejected_mask = side(Tr)
    prompt_too = draw(st.booleans())  # NLL over prompt + response: every position of the row here
    nll_mask = [[True] * Tc for _ in range(B)] if prompt_too else chosen_mask
    if prompt_too:
        chosen = [[v if v != -50.0 else -1.0 for v in row] for row in chosen]
    return chosen, chosen_mask, nll_mask, rejected, rejected_mask


@test("random batches: uneven lengths, both normalizations, lam in {0, 0.1, 1}, float64/float32/bf16 (vs minorpo)",
      hint="a_i and b_i from each row's own mask (Eq. 3), one L_OR per pair, their mean; L_SFT over nll_mask, "
           "normalized as asked; upcast bfloat16 to float32 before any arithmetic")
def random_batches(student):
    def body(batch, lam, normalization, dtype):
        t = tensors(*batch, dtype=DTYPES[dtype])
        c, cm, nm, r, rm = (x.double() if x.dtype.is_floating_point else x for x in t)
        expected, _ = loss.batch_loss(loss.TokenLogps(c, cm, nm, r, rm), "orpo", lam, nll_normalization=normalization)
        rtol, atol = TOL[dtype]
        assert_close(run(student, t, lam, normalization), expected, rtol, atol, "loss")

    for_all(body, batch=batches(), lam=st.sampled_from([0.0, 0.1, 1.0]),
            normalization=st.sampled_from(["token_mean", "sequence_mean"]), dtype=st.sampled_from(list(DTYPES)))
