"""Property tests (hypothesis) of the ORPO loss and the chunked log-probs.

Oracles: the sign of the derivative (math: dL_OR/da = -delta/(1 - P_w) < 0, dL_OR/db = delta/(1 - P_l) > 0);
exact antisymmetry of the formula; IEEE finiteness; a 60-digit decimal evaluation of log(1 - e^x) and the naive
float64 formula within its own error bound; the unchunked reference path; and the same pairs laid out with other
padding lengths and sides.
"""

import math
from decimal import Decimal, getcontext

import torch
from conftest import assert_close, logits_loss, preset_loss
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from minorpo.batches import PRESETS, collate_padded, get_conventions
from minorpo.data import TokenizedPair
from minorpo.logprobs import IGNORE_INDEX, token_logps, token_logps_reference
from minorpo.loss import TokenLogps, log1mexp, log_odds_ratio, odds_ratio_loss

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
U = 2.0 ** -53  # float64 unit roundoff

# mean log-probs anywhere in [-1e4, -1e-12], spread over magnitudes (uniform floats alone would rarely go near 0)
logp = st.one_of(st.floats(min_value=-1e4, max_value=-1e-12),
                 st.floats(min_value=-12, max_value=4).map(lambda e: -(10.0 ** e)))


@SETTINGS
@given(a=logp, b=logp)
def test_or_loss_decreases_in_a_and_increases_in_b(a, b):
    """Strictly monotone: autograd's dL_OR/da < 0 and dL_OR/db > 0 (float64) wherever delta = sigmoid(-log OR) does
    not underflow (log OR < 700), and the values are ordered (non-strictly, float64) when a or b moves up by 1%."""
    x = torch.tensor([a, b], dtype=torch.float64, requires_grad=True)
    loss = odds_ratio_loss(x[:1], x[1:])
    loss.sum().backward()
    if log_odds_ratio(x[:1].detach(), x[1:].detach()).item() < 700:
        assert x.grad[0] < 0 and x.grad[1] > 0, (a, b, x.grad)
    up_a = odds_ratio_loss(torch.tensor([a * 0.99], dtype=torch.float64), torch.tensor([b], dtype=torch.float64))
    up_b = odds_ratio_loss(torch.tensor([a], dtype=torch.float64), torch.tensor([b * 0.99], dtype=torch.float64))
    assert up_a.item() <= loss.item() <= up_b.item()


@SETTINGS
@given(a=logp, b=logp)
def test_log_odds_ratio_antisymmetric(a, b):
    """log OR(a, b) = -log OR(b, a), exactly (bit for bit), in float32 and float64: (a - b) and the log1mexp difference
    are each negated exactly by IEEE subtraction."""
    for dtype in (torch.float32, torch.float64):
        x, y = torch.tensor([a], dtype=dtype), torch.tensor([b], dtype=dtype)
        assert log_odds_ratio(x, y).item() == -log_odds_ratio(y, x).item()


@SETTINGS
@given(a=logp, b=logp, lam=st.floats(min_value=0, max_value=10))
def test_loss_and_grad_finite_float32_and_bf16(a, b, lam):
    """For a, b anywhere in [-1e4, -1e-12]: L_OR and its gradient finite in float32, and from bf16 inputs (upcast to
    float32 inside; the bf16 leaf gets a finite bf16 gradient). Also the full loss (one-token responses carrying a and
    b) under every preset."""
    for dtype in (torch.float32, torch.bfloat16):
        x = torch.tensor([a], dtype=dtype, requires_grad=True)
        y = torch.tensor([b], dtype=dtype, requires_grad=True)
        loss = odds_ratio_loss(x, y)
        assert loss.dtype == torch.float32
        loss.sum().backward()
        for v in (loss, x.grad, y.grad):
            assert torch.isfinite(v.float()).all(), (dtype, a, b, loss, x.grad, y.grad)
    c = torch.tensor([[a]], requires_grad=True)
    r = torch.tensor([[b]], requires_grad=True)
    mask = torch.tensor([[True]])
    for preset in PRESETS:
        total, metrics = preset_loss(TokenLogps(c, mask, mask, r, mask), preset, lam)
        total.backward()
        assert math.isfinite(total.item()) and all(math.isfinite(v) for v in metrics.values())
        assert torch.isfinite(c.grad).all() and torch.isfinite(r.grad).all()
        c.grad = r.grad = None


def log1mexp_decimal(x: float) -> float:
    """log(1 - e^x) to ~40 significant digits (Python's decimal), rounded to float64 at the end. Near x = 0, 1 - e^x
    cancels about -log10|x| leading digits, so the working precision is 40 digits plus those; far below 0, y = e^x is
    tiny and log(1 - y) = -(y + y^2/2 + ... + y^5/5) to 1e-50 relative (y < 1e-10)."""
    getcontext().prec = 40 + max(0, int(-math.log10(-x)) + 1)
    y = Decimal(x).exp()
    if y < Decimal("1e-10"):
        return float(-sum(y ** k / k for k in range(1, 6)))
    return float((1 - y).ln())


@SETTINGS
@given(x=st.one_of(st.floats(min_value=-1e4, max_value=-1e-300), st.floats(-300, 4).map(lambda e: -(10.0 ** e))))
def test_log1mexp_stable(x):
    """Stable log1mexp vs (1) a 40-digit decimal evaluation: within 4 ulps everywhere in [-1e4, -1e-300] (4 subnormal
    steps where the result is subnormal);
    (2) the naive float64 log(1 - exp(x)) wherever the naive one is accurate, i.e. within the naive formula's own
    error bound: exp(x) and the subtraction each err by <= u relative, which log turns into an absolute error of
    about 2u / (1 - e^x), plus u relative for log itself (u = 2^-53). Near x = 0 that bound is loose (the naive
    formula is not accurate there) - the decimal oracle covers it."""
    stable = log1mexp(torch.tensor(x, dtype=torch.float64)).item()
    exact = log1mexp_decimal(x)
    # + 4 subnormal steps: below x = -708 the result e^x is subnormal, where float64 has absolute spacing 5e-324
    assert abs(stable - exact) <= 4 * U * abs(exact) + 4 * math.ulp(0.0), (x, stable, exact)
    if -math.expm1(x) > 0:  # 1 - e^x is not 0 in float64
        naive = math.log(1 - math.exp(x)) if 1 - math.exp(x) > 0 else -math.inf
        bound = 4 * U / -math.expm1(x) + 4 * U * abs(stable)
        if math.isfinite(naive):
            assert abs(stable - naive) <= bound, (x, stable, naive, bound)


@settings(max_examples=60, deadline=None)
@given(N=st.integers(1, 3), T=st.integers(1, 7), H=st.integers(1, 6), V=st.integers(2, 13),
       K=st.integers(1, 3), chunk=st.integers(1, 25), seed=st.integers(0, 10_000))
def test_chunked_equals_unchunked_any_chunk(N, T, H, V, K, chunk, seed):
    """token_logps (chunked) == token_logps_reference (unchunked) for any shapes and chunk size (smaller than, equal
    to, or larger than the scored positions), with 1-3 target tensors and random ignored positions; values and the
    gradients w.r.t. hidden and weight. float64; tolerance 1e-12 (reduction order only)."""
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(N, T, H, generator=g, dtype=torch.float64)
    weight = torch.randn(V, H, generator=g, dtype=torch.float64)
    targets = []
    for _ in range(K):
        t = torch.randint(0, V, (N, T), generator=g)
        t[torch.rand(N, T, generator=g) < 0.5] = IGNORE_INDEX
        targets.append(t)
    h1, w1 = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    h2, w2 = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    got = token_logps(h1, w1, tuple(targets), chunk_size=chunk)
    ref = token_logps_reference(h2 @ w2.T, tuple(targets))
    for k in range(K):
        assert_close(got[k], ref[k], rtol=0, atol=1e-12, what=f"values, targets[{k}]")
    weights = [torch.randn(N, T, generator=g, dtype=torch.float64) for _ in range(K)]
    sum((w * x).sum() for w, x in zip(weights, got)).backward()
    sum((w * x).sum() for w, x in zip(weights, ref)).backward()
    assert_close(h1.grad, h2.grad, rtol=0, atol=1e-12, what="grad hidden")
    assert_close(w1.grad, w2.grad, rtol=0, atol=1e-12, what="grad weight")


def place_logits(batch, content, side, V, g):
    """Logits for a padded batch: each real token position gets its content row (content[b][j] for the j-th real
    token of row b), padding positions get large random junk that would change any result that read it."""
    ids = batch[f"{side}_input_ids"]
    mask = batch[f"{side}_attention_mask"].bool()
    logits = 50 * torch.randn(*ids.shape, V, generator=g, dtype=torch.float64)
    for b in range(ids.shape[0]):
        positions = mask[b].nonzero().flatten()
        logits[b, positions] = content[b][: len(positions)]
    return logits


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), extra=st.integers(0, 9), side=st.sampled_from(["left", "right"]),
       preset=st.sampled_from(sorted(PRESETS)))
def test_results_independent_of_padding_length_and_side(seed, extra, side, preset):
    """The same pairs, with the same logits at every real token, give the same loss and metrics whatever the padding
    length (the batch's longest row + 0..9) and side, even though padding positions hold large random logits. Except
    the logits/* metrics of trl and llamafactory, which average over padding positions by design (as TRL / LLaMA-
    Factory do). float64; tolerance 1e-12."""
    V, eos = 9, 8
    g = torch.Generator().manual_seed(seed)
    pairs = []
    for _ in range(3):
        P, C, R = (int(torch.randint(1, 5, (1,), generator=g)) for _ in range(3))
        ids = [torch.randint(0, V, (k,), generator=g).tolist() for k in (P, C, R)]
        ids[1][-1] = eos
        pairs.append(TokenizedPair(*ids))
    content = {s: [torch.randn(20, V, generator=g, dtype=torch.float64) for _ in pairs] for s in ("chosen", "rejected")}
    base = collate_padded(pairs, pad_token_id=eos)
    T = base["chosen_input_ids"].shape[1]
    other = collate_padded(pairs, pad_token_id=eos, padding_side=side, pad_to_multiple_of=T + extra)
    results = []
    for batch in (base, other):
        logits = {s: place_logits(batch, content[s], s, V, g) for s in ("chosen", "rejected")}
        results.append(logits_loss(logits["chosen"], logits["rejected"], batch, preset, pad_token_id=eos))
    (loss0, m0), (loss1, m1) = results
    assert_close(loss1, loss0, rtol=0, atol=1e-12, what=f"{preset} loss, {side} +{extra}")
    skip = set() if get_conventions(preset).logits_metric == "response" else {"logits/chosen", "logits/rejected"}
    for name in m0:
        if name not in skip:
            assert abs(m0[name] - m1[name]) <= 1e-12 * max(1.0, abs(m0[name])), (name, m0[name], m1[name])
