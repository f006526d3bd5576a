"""Token log-probs (minorpo/logprobs.py): hand cases, chunked == unchunked (values and gradients), gradcheck of the
hand-written backward, bf16 inputs, errors, and memory: the chunked path's peak grows with the chunk, not with N*T*V.

Oracles: hand arithmetic (docstrings), the unchunked reference path (itself checked by hand), torch.autograd.gradcheck
(central finite differences, float64), and exact byte counts of live tensors (minorpo.tools.memtrack.LiveTensorBytes,
deterministic on CPU).
"""

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import assert_close

from minorpo.fast.compiled_head import CompiledChunkedTokenLogps
from minorpo.logprobs import (IGNORE_INDEX, ChunkedTokenLogps, logit_sums, sequence_logps, shift_labels, token_logps,
                              token_logps_reference)
from minorpo.tools.memtrack import LiveTensorBytes

N_ = IGNORE_INDEX


def test_shift_labels_by_hand():
    """labels aligned with input_ids -> targets aligned with the positions that predict them.
    Row 0 (right padded):  labels [-100, -100, 7, 8, -100] -> targets [-100, 7, 8, -100, -100].
    Row 1 (left padded, mask [0, 1, 1, 1, 1]): the pad at position 0 must not predict the first real token, which
    here (a prompt+response NLL, labels = input ids) is 5: targets [-100, 6, 7, 8, -100]."""
    labels = torch.tensor([[N_, N_, 7, 8, N_], [0, 5, 6, 7, 8]])
    mask = torch.tensor([[1, 1, 1, 1, 0], [0, 1, 1, 1, 1]])
    assert shift_labels(labels).tolist()[0] == [N_, 7, 8, N_, N_]
    assert shift_labels(labels, mask).tolist() == [[N_, 7, 8, N_, N_], [N_, 6, 7, 8, N_]]


def test_reference_by_hand():
    """One position, V = 4, logits = log([0.5, 0.25, 0.125, 0.125]) + 3 (a constant shift changes nothing):
    log P(token 0) = log 0.5 = -0.693147, log P(token 1) = log 0.25 = -1.386294, log P(token 3) = log 0.125;
    an ignored target gives 0. Oracle: the arithmetic above; tolerance 1e-6 = float32 rounding of log/exp."""
    row = torch.log(torch.tensor([0.5, 0.25, 0.125, 0.125])) + 3.0
    logits = row.expand(1, 4, 4)  # [N=1, T=4, V=4]
    targets = torch.tensor([[0, 1, 3, N_]])
    got = token_logps_reference(logits, targets)
    assert got.dtype == torch.float32
    assert_close(got, torch.tensor([[math.log(0.5), math.log(0.25), math.log(0.125), 0.0]]), rtol=0, atol=1e-6,
                 what="hand log-probs")
    # the same through the chunked path: hidden = logits rows, weight = identity (lm_head(h) = h)
    got_chunked = token_logps(logits.clone(), torch.eye(4), targets, chunk_size=1)
    assert_close(got_chunked, got, rtol=0, atol=1e-6, what="chunked, identity head")


def test_sequence_logps_eq3_by_hand():
    """Eq. 3: mean over the scored tokens. Row 0 scores log 0.5 and log 0.125: (-0.693147 - 2.079442) / 2 =
    log(0.25) = -1.386294 (the geometric mean of 0.5 and 0.125 is 0.25). Row 1 scores one token, log 0.25.
    average=False gives the sums: log(0.0625), log(0.25). Tolerance 1e-6: float32 rounding."""
    lp = torch.tensor([[math.log(0.5), 0.0, math.log(0.125)], [0.0, math.log(0.25), 0.0]])
    mask = torch.tensor([[True, False, True], [False, True, False]])
    assert_close(sequence_logps(lp, mask), torch.tensor([math.log(0.25)] * 2), rtol=0, atol=1e-6, what="Eq. 3")
    assert_close(sequence_logps(lp, mask, average=False), torch.tensor([math.log(0.0625), math.log(0.25)]),
                 rtol=0, atol=1e-6, what="sums")
    targets = torch.tensor([[3, N_, 4], [N_, 2, N_]])  # targets work as a mask too
    assert_close(sequence_logps(lp, targets), torch.tensor([math.log(0.25)] * 2), rtol=0, atol=1e-6, what="targets")


def test_sequence_logps_empty_row_names_it():
    with pytest.raises(ValueError, match=r"chosen: row\(s\) \[1\] have no scored tokens"):
        sequence_logps(torch.zeros(2, 3), torch.tensor([[True, False, False], [False, False, False]]), name="chosen")


def _random_case(N=3, T=6, H=5, V=11, K=2, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(N, T, H, generator=g, dtype=dtype)
    weight = torch.randn(V, H, generator=g, dtype=dtype)
    targets = []
    for _ in range(K):
        t = torch.randint(0, V, (N, T), generator=g)
        t[torch.rand(N, T, generator=g) < 0.4] = N_  # ignored positions
        targets.append(t)
    targets[0][0] = N_  # a row with no target at all in the first tensor
    return hidden, weight, tuple(targets)


@pytest.mark.parametrize("chunk_size", [1, 2, 5, 7, 1000])
def test_chunked_equals_reference_values_and_grads(chunk_size):
    """Chunked == unchunked, in float64, for chunk sizes that divide, do not divide, and exceed the scored positions,
    with two target tensors scored at once. Oracle: token_logps_reference on lm_head logits (hidden @ W.T) with
    autograd. Tolerance 1e-12: float64, only the order of the logsumexp/matmul reductions differs."""
    hidden, weight, targets = _random_case()
    h1, w1 = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    h2, w2 = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    got = token_logps(h1, w1, targets, chunk_size=chunk_size)
    ref = token_logps_reference(h2 @ w2.T, targets)
    for k in range(2):
        assert_close(got[k], ref[k], rtol=0, atol=1e-12, what=f"targets[{k}] values")
        assert (got[k][targets[k] == N_] == 0).all()
    upstream = torch.randn(2, *targets[0].shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    (sum((u * x).sum() for u, x in zip(upstream, got))).backward()
    (sum((u * x).sum() for u, x in zip(upstream, ref))).backward()
    assert_close(h1.grad, h2.grad, rtol=0, atol=1e-12, what="grad hidden")
    assert_close(w1.grad, w2.grad, rtol=0, atol=1e-12, what="grad weight")


def test_chunked_backward_gradcheck():
    """The hand-written backward of ChunkedTokenLogps against central finite differences (gradcheck, float64,
    its default eps 1e-6 / atol 1e-5 / rtol 1e-3), chunks of 3 over 9 positions, two target tensors."""
    hidden, weight, targets = _random_case(N=1, T=9, H=4, V=7)
    stacked = torch.stack([t.reshape(-1) for t in targets])
    h = hidden.reshape(9, 4).requires_grad_()
    w = weight.requires_grad_()
    assert torch.autograd.gradcheck(lambda h, w: ChunkedTokenLogps.apply(h, w, stacked, 3), (h, w))
    # and through the public function (position selection, index_copy) with a frozen head (LoRA: lm_head frozen)
    h3 = hidden.clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda h: token_logps(h, weight.detach(), targets, chunk_size=2), (h3,))


@pytest.mark.slow  # inductor compiles two small kernels (C++ code generation): ~20 s on 2 CPU cores
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_compiled_head_equals_plain_path(dtype):
    """With CompiledChunkedTokenLogps (minorpo/fast/compiled_head.py; minorpo train --compile) the per-chunk logsumexp
    and softmax gradient run as compiled fused kernels. Oracle: the plain chunked path (itself checked against the
    reference and gradcheck above), same inputs, two target tensors with ignored positions and a chunk that leaves a
    shorter last chunk (dynamic size).
    float64: 1e-12 absolute (the same operations, fused: another order at most within one element's expression);
    float32: log-probs of size ~5 to 1e-6 absolute (a few float32 ulps); gradients to 1e-5 of the tensor's largest
    entry, not entry by entry: the compiled logsumexp may differ from ATen's by an ulp (1e-6 at lse ~ 8), which
    scales every softmax term of a row alike, so a gradient entry that is a small difference of large terms
    (measured: 0.036, off by 3e-6) carries the error of the large ones. A wrong term (a missed target, a softmax
    not scaled by the upstream gradient) changes the gradient by order 1."""
    hidden, weight, targets = _random_case(N=2, T=20, H=16, V=301, K=2, dtype=dtype)
    out = {}
    for name, head in (("plain", ChunkedTokenLogps), ("compiled", CompiledChunkedTokenLogps)):
        h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
        got = token_logps(h, w, targets, chunk_size=16, head=head)
        upstream = torch.randn(2, *targets[0].shape, dtype=dtype, generator=torch.Generator().manual_seed(3))
        sum((u * x).sum() for u, x in zip(upstream, got)).backward()
        out[name] = (got, h.grad, w.grad)
    tol = dict(rtol=0, atol=1e-12) if dtype == torch.float64 else dict(rtol=0, atol=1e-6)
    for k in range(2):
        assert_close(out["compiled"][0][k], out["plain"][0][k], **tol, what=f"log-probs targets[{k}]")
    for i, what in ((1, "grad hidden"), (2, "grad weight")):
        ref = out["plain"][i]
        atol = 1e-12 if dtype == torch.float64 else 1e-5 * ref.abs().max().item()
        assert_close(out["compiled"][i], ref, rtol=0, atol=atol, what=what)


def test_bf16_inputs_accumulate_in_float32():
    """bf16 hidden and weight: the logits are the bf16 values lm_head gives (same F.linear call), but logsumexp and
    the output are float32. Oracle: float64 log_softmax of those same bf16 logits; tolerance 1e-5, float32 rounding
    of a logsumexp over V = 300 (a bf16 logsumexp would be off by ~1e-2).
    Gradients (bf16, like the parameters): oracle 1 is autograd through the unchunked bf16 path (the same bf16
    matmuls, so equal up to one bf16 ulp: rtol 2^-7); oracle 2 is the float64 gradient at the same bf16 point,
    within bf16 rounding of entries up to ~4 (one ulp there is 2^-5 = 0.031: atol 0.031)."""
    hidden, weight, targets = _random_case(N=2, T=8, H=16, V=300, K=1, dtype=torch.float32)
    targets = targets[0]
    targets[0] = torch.arange(8)  # every position scored, so the chunk's F.linear sees the same rows as below
    targets[1] = torch.arange(8, 16)
    h = hidden.bfloat16().requires_grad_()
    w = weight.bfloat16().requires_grad_()
    got = token_logps(h, w, targets, chunk_size=16)
    assert got.dtype == torch.float32
    bf16_logits = F.linear(h.detach().reshape(16, 16), w.detach()).reshape(2, 8, 300)
    oracle = token_logps_reference(bf16_logits.double(), targets)
    assert_close(got.double(), oracle, rtol=0, atol=1e-5, what="bf16 inputs, float32 accumulation")
    got.sum().backward()
    assert h.grad.dtype == torch.bfloat16 and w.grad.dtype == torch.bfloat16
    h_ref, w_ref = h.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()
    token_logps_reference(F.linear(h_ref, w_ref), targets).sum().backward()
    assert_close(h.grad.float(), h_ref.grad.float(), rtol=2 ** -7, atol=0, what="bf16 grad hidden vs unchunked bf16")
    assert_close(w.grad.float(), w_ref.grad.float(), rtol=2 ** -7, atol=0, what="bf16 grad weight vs unchunked bf16")
    h64, w64 = h.detach().double().requires_grad_(), w.detach().double().requires_grad_()
    token_logps_reference(h64 @ w64.T, targets).sum().backward()
    assert h64.grad.abs().max() < 8  # the ulp bound below assumes entries under 8
    assert_close(h.grad.double(), h64.grad, rtol=0, atol=2 ** -5, what="bf16 grad hidden vs float64")
    assert_close(w.grad.double(), w64.grad, rtol=0, atol=2 ** -5, what="bf16 grad weight vs float64")


def test_autocast_runs_forward_and_backward_matmuls_in_bf16():
    """Under torch.autocast(bf16) with float32 hidden and weight (bf16 training: float32 master weights), the head's
    matmuls must be bf16 in forward AND backward. A custom Function's backward runs outside the autocast region, so
    without care the recomputed logits would be float32 while the forward's logsumexp came from bf16 logits (a
    softmax that does not sum to 1), and on a GPU the backward's three matmuls would run in slow float32.
    Oracle 1: the same function on explicitly bf16 inputs with autocast off - the same bf16 matmuls, so values and
    the hidden gradient are bit-equal (tolerance 0); the weight gradient is summed over 3 chunks in float32 either
    way and only the bf16 call rounds that sum to bf16 at the end, so the autocast one rounded to bf16 is bit-equal.
    Oracle 2: autograd through the unchunked path under autocast (lm_head as transformers runs it): the same bf16
    matmuls up to summation order. Hidden gradient: rtol 2^-7 (one bf16 ulp). Weight gradient: the reference
    rounds one sum over all 16 positions to bf16, the chunked path rounds each of its 6 chunk partials (then adds
    them in float32), so entries that cancel can differ by up to ~7 half-ulps of the largest partial:
    atol 2^-5 x max |grad| (a float32 backward matmul instead of bf16 is not caught here but by oracle 1)."""
    hidden, weight, targets = _random_case(N=2, T=8, H=16, V=300, K=1, dtype=torch.float32)
    targets = targets[0]
    h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = token_logps(h, w, targets, chunk_size=3)
    got.sum().backward()
    assert h.grad.dtype == torch.float32 and w.grad.dtype == torch.float32
    hb, wb = hidden.bfloat16().requires_grad_(), weight.bfloat16().requires_grad_()
    want = token_logps(hb, wb, targets, chunk_size=3)
    want.sum().backward()
    assert torch.equal(got, want)
    assert torch.equal(h.grad, hb.grad.float()), "grad hidden: backward matmul not in the forward's bf16"
    assert torch.equal(w.grad.bfloat16(), wb.grad), "grad weight: backward matmul not in the forward's bf16"
    h2, w2 = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref = token_logps_reference(F.linear(h2, w2), targets)
    ref.sum().backward()
    assert_close(got, ref, rtol=0, atol=1e-5, what="autocast values vs unchunked autocast")
    assert_close(h.grad, h2.grad, rtol=2 ** -7, atol=1e-6, what="autocast grad hidden vs unchunked autocast")
    assert_close(w.grad, w2.grad, rtol=0, atol=2 ** -5 * w2.grad.abs().max().item(),
                 what="autocast grad weight vs unchunked autocast")


def test_logit_sums():
    """sum over V of hidden @ W.T == hidden @ W.sum(0). Oracle: the full logits summed; tolerance 1e-12 (float64)."""
    hidden, weight, _ = _random_case()
    assert_close(logit_sums(hidden, weight), (hidden @ weight.T).sum(-1), rtol=0, atol=1e-12, what="logit sums")


def test_errors_name_the_tensor_and_position():
    hidden, weight, (t, _) = _random_case()
    bad = t.clone()
    bad[2, 4] = 11  # V = 11: out of range
    with pytest.raises(ValueError, match=r"targets\[2, 4\] = 11 is not a token id in \[0, 11\)"):
        token_logps(hidden, weight, bad)
    with pytest.raises(ValueError, match=r"shape \(3, 5\), expected \(3, 6\)"):
        token_logps(hidden, weight, t[:, :5])
    with pytest.raises(ValueError, match="same H"):
        token_logps(hidden, weight[:, :4], t)
    with pytest.raises(TypeError, match="integer"):
        token_logps(hidden, weight, t.double())


# ---- memory ------------------------------------------------------------------------------------------------------

H, V = 32, 4096


def _peak(n_tokens: int, chunk_size: int | None):
    """(peak live bytes over forward+backward, live bytes held between forward and backward) - counted exactly."""
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(1, n_tokens, H, generator=g, requires_grad=True)
    weight = torch.randn(V, H, generator=g, requires_grad=True)
    targets = torch.randint(0, V, (1, n_tokens), generator=g)
    with LiveTensorBytes() as mem:
        if chunk_size is None:
            logps = token_logps_reference(F.linear(hidden, weight), targets)
        else:
            logps = token_logps(hidden, weight, targets, chunk_size=chunk_size)
        held = mem.live  # what the autograd graph keeps for backward (plus the [1, n] output)
        logps.sum().backward()
    return mem.peak, held


def test_chunked_memory_grows_with_chunk_not_with_tokens_times_vocab():
    """Oracle: exact live-tensor byte counts (LiveTensorBytes). One [C, V] float32 block is C * V * 4 bytes.
    - Between forward and backward the chunked path holds no logits at all: less than one [128, V] block, while
      the unchunked one holds at least the [M, V] logits (autograd keeps the log-softmax output).
    - At a fixed chunk, doubling the tokens M (1024 -> 2048) adds far less than M * V * 4 (the unchunked growth):
      only [M, H]-sized tensors and the [V, H] weight gradient (written once) stay.
    - At fixed M, doubling the chunk (64 -> 128) adds about one to four [64, V] blocks (logits, softmax/grad,
      and their float copies in flight), and the unchunked peak is above 2 * M * V * 4."""
    block = 4 * V  # bytes per position of a float32 [*, V] row
    peak_c1, held_c1 = _peak(1024, 64)
    peak_c2, held_c2 = _peak(2048, 64)
    peak_big_chunk, _ = _peak(1024, 128)
    peak_ref1, held_ref1 = _peak(1024, None)
    peak_ref2, _ = _peak(2048, None)
    assert held_c1 < 128 * block and held_c2 < 128 * block  # no logits kept for backward
    assert held_ref1 >= 1024 * block
    assert peak_ref2 - peak_ref1 >= 1024 * block  # unchunked grows with M * V
    assert peak_c2 - peak_c1 < 0.1 * 1024 * block  # chunked does not
    assert 1 * 64 * block <= peak_big_chunk - peak_c1 <= 4 * 64 * block  # it grows with the chunk
    assert peak_ref1 > 2 * 1024 * block and peak_c1 < peak_ref1 / 5
