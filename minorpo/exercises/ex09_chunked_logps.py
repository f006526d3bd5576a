"""Checks of exercise 9, token log-probs from hidden states in chunks with a custom torch.autograd.Function that
recomputes each chunk's logits in backward (minorpo/logprobs.py's ChunkedTokenLogps, for one target per position).

Oracles: log_softmax over the whole [M, V] logits (minorpo.logprobs.token_logps_reference) and autograd through it,
in float64; minorpo.tools.memtrack.LiveTensorBytes for the memory the forward keeps and holds.
"""

import math

import torch
from hypothesis import strategies as st

from minorpo.exercises.harness import Failure, assert_close, call, check_tensor, for_all, need, test
from minorpo.logprobs import IGNORE_INDEX, token_logps_reference
from minorpo.tools.memtrack import LiveTensorBytes


def run(student, hidden, weight, targets, chunk_size):
    got = call(need(student, "chunked_token_logps"), hidden, weight, targets.clone(), chunk_size,
               what=f"chunked_token_logps(hidden, weight, targets, chunk_size={chunk_size})")
    return check_tensor(got, targets.shape, hidden.dtype, "chunked_token_logps")


def reference(hidden, weight, targets):
    return token_logps_reference((hidden @ weight.T)[None], targets[None])[0]  # [M]


@st.composite
def cases(draw):
    M, H, V = draw(st.integers(1, 12)), draw(st.integers(1, 5)), draw(st.integers(2, 10))
    chunk = draw(st.integers(1, 5))
    targets = [draw(st.one_of(st.integers(0, V - 1), st.just(IGNORE_INDEX))) for _ in range(M)]
    seed = draw(st.integers(0, 2**16))
    return M, H, V, chunk, targets, seed


def tensors(M, H, V, targets, seed):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(M, H, generator=g, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(V, H, generator=g, dtype=torch.float64, requires_grad=True)
    return hidden, weight, torch.tensor(targets, dtype=torch.long)


@test("hand case: M = 3 positions, V = 2, chunk_size = 2: log-probs and 0 where the target is -100",
      hint="logp = logit[target] - logsumexp(logits) per position; positions whose target is -100 give 0")
def hand_case(student):
    hidden = torch.tensor([[1.0], [0.0], [2.0]], dtype=torch.float64)
    weight = torch.tensor([[1.0], [-1.0]], dtype=torch.float64)  # logits (1, -1), (0, 0), (2, -2)
    targets = torch.tensor([0, 1, IGNORE_INDEX])
    # log(e / (e + 1/e)) = -log(1 + e^-2) = -0.126928; log(1/2) = -0.693147
    expected = torch.tensor([-math.log1p(math.exp(-2.0)), -math.log(2.0), 0.0], dtype=torch.float64)
    assert_close(run(student, hidden, weight, targets, 2), expected, 1e-12, 1e-12, "chunked_token_logps")


@test("random sizes and chunk sizes (M not a multiple of chunk_size): values equal log_softmax + gather",
      hint="loop over chunks start = 0, chunk_size, ... while start < M, the last chunk shorter: min(start + chunk, M)")
def random_values(student):
    def body(case):
        M, H, V, chunk, targets, seed = case
        hidden, weight, t = tensors(M, H, V, targets, seed)
        assert_close(run(student, hidden, weight, t, chunk).detach(), reference(hidden, weight, t).detach(),
                     1e-12, 1e-12, "chunked_token_logps")

    for_all(body, case=cases())


@test("random sizes: gradients w.r.t. hidden and weight equal autograd through log_softmax (float64)",
      hint="d logp / d logits = onehot(target) - softmax(logits), times the incoming gradient (0 where the target is "
           "-100); grad_weight sums the chunks' contributions, grad_hidden is per chunk")
def random_gradients(student):
    def body(case):
        M, H, V, chunk, targets, seed = case
        hidden, weight, t = tensors(M, H, V, targets, seed)
        upstream = torch.randn(M, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64)
        got = run(student, hidden, weight, t, chunk)
        if not got.requires_grad:
            raise Failure("the output does not require grad: no gradient can flow back to hidden and weight")
        g_h, g_w = call(torch.autograd.grad, got, (hidden, weight), upstream, allow_unused=True,
                        what="backward of your Function")
        e_h, e_w = torch.autograd.grad(reference(hidden, weight, t), (hidden, weight), upstream)
        if g_h is None or g_w is None:
            raise Failure("backward returned None for the gradient of " + ("hidden" if g_h is None else "weight"))
        assert_close(g_h, e_h, 1e-10, 1e-12, "gradient w.r.t. hidden")
        assert_close(g_w, e_w, 1e-10, 1e-12, "gradient w.r.t. weight")

    for_all(body, case=cases())


def has_custom_function(grad_fn) -> bool:
    seen, todo = set(), [grad_fn]
    while todo:
        node = todo.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, torch.autograd.function.BackwardCFunction):
            return True
        todo.extend(n for n, _ in node.next_functions)
    return False


@test("a custom autograd Function that keeps no [M, V] logits for backward and never holds them all at once",
      hint="save only hidden, weight, targets and the logsumexp per position (ctx.save_for_backward); recompute each "
           "chunk's logits in backward")
def memory(student):
    M, H, V, chunk = 64, 4, 256, 8  # all logits: 64 x 256 float64 = 128 KiB; one chunk's: 16 KiB
    hidden, weight, t = tensors(M, H, V, [i % V for i in range(M)], 0)
    with LiveTensorBytes() as mem:
        out = run(student, hidden, weight, t, chunk)
    if not has_custom_function(out.grad_fn):
        raise Failure("the output's graph has no custom torch.autograd.Function: autograd would keep every chunk's "
                      "logits for backward")
    full = M * V * 8
    if mem.live >= full // 2:
        raise Failure(f"after forward, {mem.live} bytes made by it are still alive: the logits of all positions are "
                      f"{full} bytes; keep only what backward cannot recompute cheaply")
    if mem.peak >= full:
        raise Failure(f"forward held {mem.peak} bytes at once, as much as all {M} x {V} logits ({full} bytes): "
                      "compute them chunk by chunk")
    with LiveTensorBytes() as mem:
        out.sum().backward()
    if mem.peak >= full:
        raise Failure(f"backward held {mem.peak} bytes at once, as much as all {M} x {V} logits ({full} bytes): "
                      "recompute and use them chunk by chunk")
