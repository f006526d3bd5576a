"""The ORPO loss (minorpo/loss.py): hand-computed cases, gradcheck per preset, the paper's gradient (Eq. 8-10) against
autograd and finite differences, the `official` preset against the official repository's formulas re-derived from
shared/PAPER.md, the a = 0 convention, baselines, errors, and the model-level functions against the logits-level ones.

Oracles are named in each test: hand arithmetic in docstrings (evaluated with Python's math module), central finite
differences in float64, torch.autograd.gradcheck, formulas re-derived here from PAPER.md, and the unchunked path.
"""

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import assert_close, logits_loss, model_loss, preset_loss

from minorpo.batches import PRESETS, collate_padded, collate_shared_prompt, get_conventions
from minorpo.data import TokenizedPair
from minorpo.forward import logps_from_logits
from minorpo.logprobs import IGNORE_INDEX
from minorpo.loss import (TokenLogps, dpo_loss, log1mexp, log_odds, log_odds_ratio, metric_shares, nll_loss,
                          objective_sums, odds_ratio_loss, odds_ratio_loss_grad, odds_ratio_loss_grad_logits,
                          orpo_gradient, probability_ratio_loss)

N_ = IGNORE_INDEX
LOG = math.log
TRL_METRICS = ["rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins", "logps/chosen",
               "logps/rejected", "logits/chosen", "logits/rejected", "nll_loss", "log_odds_ratio", "log_odds_chosen"]


def t64(*xs):
    return torch.tensor(xs, dtype=torch.float64)


# ---- 1. Eq. 4-7 by hand ------------------------------------------------------------------------------------------

def test_odds_ratio_by_hand():
    """a = log 0.5, b = log 0.25:
         odds_w = 0.5 / 0.5 = 1, odds_l = 0.25 / 0.75 = 1/3, OR = 3, log OR = log 3 = 1.098612,
         L_OR = -log sigmoid(log 3) = -log(3/4) = log(4/3) = 0.287682.
       a = b = log 0.3: OR = 1, log OR = 0, L_OR = -log(1/2) = log 2 = 0.693147.
       a = log 0.9, b = log 0.1: odds 9 and 1/9, OR = 81, L_OR = log(1 + 1/81) = log(82/81) = 0.012270.
       a = log 0.1, b = log 0.9: OR = 1/81, L_OR = log(1 + 81) = log 82 = 4.406719.
    Tolerance 1e-14 (float64; a handful of roundings)."""
    a, b = t64(LOG(0.5), LOG(0.3), LOG(0.9), LOG(0.1)), t64(LOG(0.25), LOG(0.3), LOG(0.1), LOG(0.9))
    assert_close(log_odds(t64(LOG(0.5), LOG(0.25))), t64(0.0, LOG(1 / 3)), rtol=0, atol=1e-14, what="log odds Eq. 4")
    assert_close(log_odds_ratio(a, b), t64(LOG(3), 0.0, LOG(81), -LOG(81)), rtol=0, atol=1e-14, what="log OR Eq. 5")
    assert_close(odds_ratio_loss(a, b), t64(LOG(4 / 3), LOG(2), LOG(82 / 81), LOG(82)), rtol=0, atol=1e-14,
                 what="L_OR Eq. 7")


def test_paper_gradient_by_hand():
    """a = log 0.5, b = log 0.25 (so log OR = log 3):
         delta = [1 + odds_w / odds_l]^-1 = 1 / (1 + 3) = 1/4                    (Eq. 9)
         h_chosen = 1 / (1 - 0.5) = 2,  h_rejected = -1 / (1 - 0.25) = -4/3       (Eq. 10)
         dL_OR/da = -delta * h_chosen = -1/2,  dL_OR/db = -delta * h_rejected = 1/3
    (minus: the paper's Eq. 8 prints +delta*h, the gradient of log sigmoid(log OR); see orpo_gradient).
    Check of the signs: raising a lowers L_OR, raising b raises it. Tolerance 1e-14 (float64)."""
    delta, h_w, h_l = orpo_gradient(t64(LOG(0.5)), t64(LOG(0.25)))
    assert_close(delta, t64(0.25), rtol=0, atol=1e-14, what="delta")
    assert_close(h_w, t64(2.0), rtol=0, atol=1e-14, what="h chosen")
    assert_close(h_l, t64(-4 / 3), rtol=0, atol=1e-14, what="h rejected")
    ga, gb = odds_ratio_loss_grad(t64(LOG(0.5)), t64(LOG(0.25)))
    assert_close(torch.stack([ga, gb]), t64(-0.5, 1 / 3)[:, None], rtol=0, atol=1e-14, what="dL/da, dL/db")


def test_nll_normalizations_by_hand():
    """Pair A: one chosen token, log 0.5; pair B: three, each log 0.125.
       token_mean    = (0.693147 + 3 * 2.079442) / 4 = 1.732868   (long sequences weigh more)
       sequence_mean = (0.693147 + 2.079442) / 2     = 1.386294   (every pair weighs the same)"""
    lp = t64(LOG(0.5), 0, 0, LOG(0.125), LOG(0.125), LOG(0.125)).view(2, 3)
    mask = torch.tensor([[True, False, False], [True, True, True]])
    assert_close(nll_loss(lp, mask, "token_mean"), t64((LOG(2) + 3 * LOG(8)) / 4)[0], rtol=0, atol=1e-14, what="tok")
    assert_close(nll_loss(lp, mask, "sequence_mean"), t64((LOG(2) + LOG(8)) / 2)[0], rtol=0, atol=1e-14, what="seq")


# ---- 2. The whole loss by hand, per preset ------------------------------------------------------------------------

P = [0.5, 0.25, 0.125, 0.125]  # every position predicts with these probabilities: V = 4, ids 0..3
EOS = 3  # = pad_token_id, as in the official code


def hand_batch():
    """prompt [2, 2], chosen response [0, EOS], rejected response [1, EOS]; each position's logits = log P."""
    pair = TokenizedPair([2, 2], [0, EOS], [1, EOS])
    batch = collate_padded([pair], pad_token_id=EOS)
    logits = torch.log(torch.tensor(P, dtype=torch.float64)).expand(1, 4, 4).clone()  # [B=1, T=4, V=4]
    return batch, logits


def test_full_loss_by_hand_per_preset():
    """Every target's log-prob is log P[token]: log 0.5 (id 0), log 0.25 (id 1), log 0.125 (ids 2 and 3).
    paper / llamafactory (lam 0.1): response tokens only.
        a = (log 0.5 + log 0.125) / 2 = log(1/16) / 2 = log 0.25;  b = (log 0.25 + log 0.125) / 2 = -2.5 ln 2
        P_w = 0.25, P_l = 2^-2.5 = 0.176777;  odds_w = 1/3, odds_l = 0.214737;  OR = 1.552285
        L_OR = log(1 + 1/OR) = 0.497261;  L_SFT = -a = 1.386294 (per-sequence mean = -a)
        L = 1.386294 + 0.1 * 0.497261 = 1.436020
    trl (lam 0.1): same a, b; NLL over prompt + response targets (ids 2, 0, 3 after the first token):
        L_SFT = (ln 8 + ln 2 + ln 8) / 3 = 7 ln 2 / 3 = 1.617343;  L = 1.617343 + 0.049726 = 1.667070
    official (lam 1.0, pad = EOS = 3): NLL drops every target with id 3 -> ids 2, 0: L_SFT = (ln 8 + ln 2)/2 = 2 ln 2;
        log P(y|x) also scores the pad (id 3) after each response:
        a = (ln 0.5 + 2 ln 0.125) / 3 = -7 ln 2 / 3,  b = (ln 0.25 + 2 ln 0.125) / 3 = -8 ln 2 / 3
        P_w = 2^(-7/3) = 0.198425, P_l = 2^(-8/3) = 0.157490, OR = 1.324263, L_OR = 0.562547
        L = 1.386294 + 0.562547 = 1.948841
    The formulas are evaluated here with Python's math; tolerance 1e-12 (float64 logits)."""
    batch, logits = hand_batch()

    def l_or(a, b):
        odds = lambda x: math.exp(x) / (1 - math.exp(x))  # noqa: E731
        return math.log(1 + odds(b) / odds(a))

    a, b = LOG(0.25), -2.5 * LOG(2)
    expected = {
        "paper": (-a + 0.1 * l_or(a, b), -a, a, b, 0.1),
        "llamafactory": (-a + 0.1 * l_or(a, b), -a, a, b, 0.1),
        "trl": (7 * LOG(2) / 3 + 0.1 * l_or(a, b), 7 * LOG(2) / 3, a, b, 0.1),
        "official": (2 * LOG(2) + l_or(-7 * LOG(2) / 3, -8 * LOG(2) / 3), 2 * LOG(2), -7 * LOG(2) / 3,
                     -8 * LOG(2) / 3, 1.0),
    }
    # the docstring's rounded numbers, as a check on the formulas typed above
    assert abs(expected["paper"][0] - 1.436020) < 1e-6 and abs(expected["trl"][0] - 1.667070) < 1e-6
    assert abs(expected["official"][0] - 1.948841) < 1e-6
    for preset, (loss, nll, a_, b_, lam) in expected.items():
        got, m = logits_loss(logits, logits.clone(), batch, preset, pad_token_id=EOS)
        assert_close(got, t64(loss)[0], rtol=0, atol=1e-12, what=f"{preset} loss")
        for name, value in [("nll_loss", nll), ("logps/chosen", a_), ("logps/rejected", b_),
                            ("rewards/chosen", lam * a_), ("rewards/margins", lam * (a_ - b_)),
                            ("rewards/accuracies", 1.0), ("odds_ratio_loss", l_or(a_, b_)),
                            ("log_odds_chosen", math.log(math.exp(a_) / (1 - math.exp(a_)))
                             - math.log(math.exp(b_) / (1 - math.exp(b_)))),
                            ("logits/chosen", sum(LOG(p) for p in P) / 4)]:
            assert abs(m[name] - value) < 1e-12, (preset, name, m[name], value)
        assert set(TRL_METRICS) <= set(m)


# ---- 3. Gradients ------------------------------------------------------------------------------------------------

def random_pairs(n=3, V=7, seed=0, eos=None):
    g = torch.Generator().manual_seed(seed)
    pairs = []
    for _ in range(n):
        lens = [int(torch.randint(1, 4, (1,), generator=g)) for _ in range(3)]
        ids = [torch.randint(0, V - 1, (k,), generator=g).tolist() for k in lens]
        if eos is not None:
            ids[1][-1] = ids[2][-1] = eos
        pairs.append(TokenizedPair(*ids))
    return pairs


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_gradcheck_full_loss_wrt_logits(preset):
    """torch.autograd.gradcheck (central finite differences, float64, default tolerances) of the full loss
    L_SFT + lam * mean L_OR w.r.t. the chosen and rejected logits, V = 7, 3 pairs of different lengths."""
    batch = collate_padded(random_pairs(eos=6), pad_token_id=6)
    g = torch.Generator().manual_seed(1)
    shape_c = (*batch["chosen_input_ids"].shape, 7)
    lc = torch.randn(shape_c, generator=g, dtype=torch.float64, requires_grad=True)
    lr = torch.randn(shape_c, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda c, r: logits_loss(c, r, batch, preset, lam=0.7, pad_token_id=6)[0], (lc, lr))


def central_difference(f, x, eps=1e-6):
    grad = torch.zeros_like(x)
    for i in range(x.numel()):
        e = torch.zeros_like(x).view(-1)
        e[i] = eps
        grad.view(-1)[i] = (f(x + e.view_as(x)) - f(x - e.view_as(x))) / (2 * eps)
    return grad


def test_delta_h_equals_autograd_and_finite_differences():
    """Eq. 8-10: -delta * h (the gradient of L_OR; delta * h is that of -L_OR) against autograd and against central
    finite differences (eps 1e-6), float64, on pairs from near-certain to very unlikely. Tolerances: autograd 1e-12
    relative (same function, other rounding); finite differences 1e-7 relative (truncation, eps^2 f''' / 6) + 1e-8
    absolute (cancellation: the summed loss f ~ 5 has an ulp of 9e-16, over 2 eps = 2e-6 that is 4e-10 per rounding,
    and f takes ~10 roundings)."""
    a = t64(LOG(0.5), -0.01, -3.0, -20.0, -0.7, -1e-3)
    b = t64(LOG(0.25), -0.02, -0.5, -1.0, -0.7, -5.0)
    delta, h_w, h_l = orpo_gradient(a, b)
    analytic = torch.stack([-delta * h_w, -delta * h_l])  # [2, B]
    x = torch.stack([a, b]).requires_grad_()
    odds_ratio_loss(x[0], x[1]).sum().backward()
    assert_close(analytic, x.grad, rtol=1e-12, atol=0, what="-delta*h vs autograd")
    fd = central_difference(lambda y: odds_ratio_loss(y[0], y[1]).sum(), torch.stack([a, b]))
    assert_close(analytic, fd, rtol=1e-7, atol=1e-8, what="-delta*h vs finite differences")


def test_delta_h_through_logits():
    """The gradient of sum_i L_OR_i w.r.t. the logits: analytic (Eq. 8-10 chained through Eq. 3's softmax) vs autograd
    vs central finite differences, float64, V = 5. Tolerances: autograd 1e-10 relative (the analytic chain forms
    softmax differences in another order); finite differences as in the test above."""
    g = torch.Generator().manual_seed(3)
    ct = torch.tensor([[N_, 1, 2, N_], [3, 0, N_, N_]])
    rt = torch.tensor([[N_, 4, N_, N_], [2, 2, 1, N_]])
    zc = torch.randn(2, 4, 5, generator=g, dtype=torch.float64)
    zr = torch.randn(2, 4, 5, generator=g, dtype=torch.float64)
    from minorpo.logprobs import sequence_logps, token_logps_reference

    def total(c, r):
        a = sequence_logps(token_logps_reference(c, ct), ct)
        b = sequence_logps(token_logps_reference(r, rt), rt)
        return odds_ratio_loss(a, b).sum()

    gc, gr = odds_ratio_loss_grad_logits(zc, ct, zr, rt)
    c, r = zc.clone().requires_grad_(), zr.clone().requires_grad_()
    total(c, r).backward()
    assert_close(gc, c.grad, rtol=1e-10, atol=1e-14, what="chosen logits: analytic vs autograd")
    assert_close(gr, r.grad, rtol=1e-10, atol=1e-14, what="rejected logits: analytic vs autograd")
    assert_close(gc, central_difference(lambda c: total(c, zr), zc), rtol=1e-7, atol=1e-8, what="chosen vs FD")
    assert_close(gr, central_difference(lambda r: total(zc, r), zr), rtol=1e-7, atol=1e-8, what="rejected vs FD")


# ---- 4. The official preset against the official formulas ---------------------------------------------------------

def test_official_preset_equals_official_formulas():
    """Oracle: the xfactlab/orpo computation as shared/PAPER.md section 3 describes it, re-derived here on the
    official data layout (every row right-padded to max_length with pad = eos; the prompt tokenized alone and padded
    the same way; two forward passes):
      log P(y|x): mask = chosen_mask[:, :-1] - prompt_mask[:, 1:] over log_softmax(logits[:, :-1]) gathered at
                  input_ids[:, 1:] - it reaches the first pad (= eos) unless the row filled max_length;
      NLL:        HF causal-LM loss with labels = input_ids, every id == pad set to -100 (so every eos), shifted,
                  one token mean over the batch (prompt + response);
      loss:       mean(nll - alpha * log(sigmoid(log_odds))), log_odds with log1p(-exp(.)); alpha = 1.0.
    Row 2 fills max_length exactly (truncated: no extra target); rows 0-1 end with eos, the pad id, so their final
    eos is scored once in log P(y|x) (as the response's last token) and once more as the extra target, but never
    in the NLL. Tolerance 1e-12: float64 logits, same formulas up to summation order."""
    V, pad, max_length = 9, 8, 8
    g = torch.Generator().manual_seed(5)
    rows = [([1, 2], [3, 4, pad], [5, pad]), ([6], [7, pad], [1, 1, 2, pad]), ([2, 3, 4], [5, 6, 7, 1, 2], [3, 3])]
    B = len(rows)

    def padded(seqs):
        ids = torch.full((B, max_length), pad)
        mask = torch.zeros(B, max_length, dtype=torch.long)
        for i, s in enumerate(seqs):
            ids[i, :len(s)] = torch.tensor(s)
            mask[i, :len(s)] = 1
        return ids, mask

    prompt_ids, prompt_mask = padded([p for p, _, _ in rows])
    pos_ids, pos_mask = padded([p + c for p, c, _ in rows])
    neg_ids, neg_mask = padded([p + r for p, _, r in rows])
    pos_logits = torch.randn(B, max_length, V, generator=g, dtype=torch.float64)
    neg_logits = torch.randn(B, max_length, V, generator=g, dtype=torch.float64)

    def official_logps(ids, mask, logits):
        m = mask[:, :-1] - prompt_mask[:, 1:]
        per_token = logits[:, :-1].log_softmax(-1).gather(2, (m * ids[:, 1:]).unsqueeze(2)).squeeze(2)
        return (per_token * m).sum(1) / m.sum(1)

    labels = pos_ids.clone()
    labels[labels == pad] = -100
    nll = F.cross_entropy(pos_logits[:, :-1].reshape(-1, V), labels[:, 1:].reshape(-1), ignore_index=-100)
    pos, neg = official_logps(pos_ids, pos_mask, pos_logits), official_logps(neg_ids, neg_mask, neg_logits)
    log_odds_ = (pos - neg) - (torch.log1p(-torch.exp(pos)) - torch.log1p(-torch.exp(neg)))
    ratio = torch.log(torch.sigmoid(log_odds_))
    official_loss = torch.mean(nll - 1.0 * ratio)

    ours_batch = collate_padded([TokenizedPair(*r) for r in rows], pad_token_id=pad)
    T = ours_batch["chosen_input_ids"].shape[1]  # our collator pads to the batch's longest row only: T = 8 here
    assert T == max_length
    ours_batch["chosen_truncated"] = pos_mask.sum(1) == max_length
    ours_batch["rejected_truncated"] = neg_mask.sum(1) == max_length
    loss, m = logits_loss(pos_logits, neg_logits, ours_batch, "official", pad_token_id=pad)
    assert_close(loss, official_loss, rtol=0, atol=1e-12, what="official loss")
    for name, value in [("logps/chosen", pos.mean()), ("logps/rejected", neg.mean()), ("nll_loss", nll),
                        ("log_odds_ratio", ratio.mean()), ("log_odds_chosen", log_odds_.mean())]:
        assert abs(m[name] - value.item()) < 1e-12, (name, m[name], value.item())
    # the quirk matters: without the extra target or with EOS in the NLL the numbers move
    for other in ("trl", "paper"):
        assert abs(logits_loss(pos_logits, neg_logits, ours_batch, other, lam=1.0)[0] - official_loss) > 1e-3


# ---- 5. a = 0 and other edges -------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_certain_responses(dtype):
    """The documented a = 0 convention (value -tiny, gradient straight through), which reproduces the one-sided limits:
    a = 0, b = log 0.5: L_OR = 0 (to ~1e-38), dL/da = -odds(y_l) = -1, dL/db = 0.
    a = 0, b = -3: dL/da = -e^-3 / (1 - e^-3) = -0.052396.
    a = -0.5, b = 0: L_OR finite and large: log odds(b = -tiny) = -tiny - log(tiny) ~ -log(tiny) (708.4 in float64,
        87.3 in float32), so L_OR = -log sigmoid(log odds(a) + log tiny) ~ -log(tiny) - log odds(a), with
        log odds(-0.5) = log(0.606531 / 0.393469) = 0.432752.
    a = b = 0: log OR = 0, L_OR = log 2. All finite. Tolerance 1e-5 relative: at float32's tiny (1.2e-38) the
    product delta * 1/(1 - P) is formed from numbers near the underflow limit, good to about 6 digits."""
    a = torch.tensor([0.0, 0.0, -0.5, 0.0], dtype=dtype, requires_grad=True)
    b = torch.tensor([LOG(0.5), -3.0, 0.0, 0.0], dtype=dtype, requires_grad=True)
    loss = odds_ratio_loss(a, b)
    loss.sum().backward()
    assert torch.isfinite(loss).all() and torch.isfinite(a.grad).all() and torch.isfinite(b.grad).all()
    tiny = torch.finfo(dtype).tiny
    assert loss[0] < 1e-30 and abs(loss[3].item() - LOG(2)) < 1e-6
    odds_b = lambda x: math.exp(x) / (1 - math.exp(x))  # noqa: E731
    assert_close(a.grad[:2], torch.tensor([-odds_b(LOG(0.5)), -odds_b(-3.0)], dtype=dtype), rtol=1e-5, atol=0,
                 what="dL/da at a = 0")
    assert abs(b.grad[0].item()) < 1e-30
    expected_2 = -LOG(tiny) - LOG(math.exp(-0.5) / (1 - math.exp(-0.5)))  # -log sigmoid(-x) = x + log(1 + e^-x)
    assert abs(loss[2].item() - expected_2) < 1e-4 * abs(expected_2)


def test_log1mexp_edges():
    """log1mexp(0) = -inf (P = 1: no room for 1 - P); log1mexp(-ln 2) = log(1/2) on both sides of the switch;
    log1mexp(-50) = log(1 - e^-50) ~ -e^-50 = -1.9287e-22 (a naive log(1 - exp) gives exactly 0 there)."""
    assert log1mexp(torch.tensor(0.0)).item() == -math.inf
    x = torch.tensor([-LOG(2) - 1e-12, -LOG(2) + 1e-12], dtype=torch.float64)
    assert_close(log1mexp(x), t64(-LOG(2), -LOG(2)), rtol=0, atol=1e-11, what="at the switch")
    assert_close(log1mexp(t64(-50.0)), t64(-math.exp(-50)), rtol=1e-15, atol=0, what="far tail")


# ---- 6. Baselines ------------------------------------------------------------------------------------------------

def test_baselines_by_hand():
    """Probability ratio (section 7.1), a = log 0.5, b = log 0.25, beta = 0.2: log PR = log 2,
       -log sigmoid(0.2 log 2) = log(1 + 2^-0.2) = 0.627593.
    DPO, beta = 0.1, policy sums (-3, -5), reference sums (-4, -4): r_w = 1, r_l = -1, margin 2,
       loss = -log sigmoid(0.2) = log(1 + e^-0.2) = 0.598139, rewards 0.1 and -0.1.
    SFT objective: the loss is L_SFT alone (the OR metrics are still computed).  Tolerance 1e-14 (float64)."""
    assert_close(probability_ratio_loss(t64(LOG(0.5)), t64(LOG(0.25)), beta=0.2), t64(LOG(1 + 2 ** -0.2)),
                 rtol=0, atol=1e-14, what="probability ratio")
    losses, rw, rl = dpo_loss(t64(-3.0), t64(-5.0), t64(-4.0), t64(-4.0), beta=0.1)
    assert_close(losses, t64(LOG(1 + math.exp(-0.2))), rtol=0, atol=1e-14, what="DPO")
    assert_close(torch.cat([rw, rl]), t64(0.1, -0.1), rtol=0, atol=1e-14, what="DPO rewards")
    batch, logits = hand_batch()
    sft, m = logits_loss(logits, logits, batch, "paper", method="sft")
    assert_close(sft, t64(-LOG(0.25))[0], rtol=0, atol=1e-12, what="SFT = NLL")
    assert m["odds_ratio_loss"] > 0
    pr, m = logits_loss(logits, logits, batch, "paper", lam=0.5, method="pr", beta=0.2)
    a, b = LOG(0.25), -2.5 * LOG(2)
    assert_close(pr, t64(-a + 0.5 * LOG(1 + math.exp(-0.2 * (a - b))))[0], rtol=0, atol=1e-12, what="PR objective")


# ---- 7. Errors a user can hit ------------------------------------------------------------------------------------

def test_errors_are_clear():
    batch, logits = hand_batch()
    with pytest.raises(ValueError, match=r"chosen_logps\[1\] = 0.5 > 0"):
        odds_ratio_loss(t64(-1.0, 0.5), t64(-1.0, -1.0))
    with pytest.raises(ValueError, match="unknown ORPO preset 'dpo'"):
        logits_loss(logits, logits, batch, "dpo")
    with pytest.raises(ValueError, match="'official' uses the pad token id"):
        logits_loss(logits, logits, batch, "official")
    with pytest.raises(KeyError, match=r"lacks \['rejected_labels'\]"):
        logits_loss(logits, logits, {k: v for k, v in batch.items() if k != "rejected_labels"})
    bad = dict(batch, chosen_labels=batch["chosen_labels"].clone())
    bad["chosen_labels"][0, 3] = 2  # label differs from the input id (3) at position 3
    with pytest.raises(ValueError, match="row 0, position 3: the labels .* disagree with input_ids"):
        logits_loss(logits, logits, bad, "trl")
    empty = dict(batch, rejected_labels=torch.full_like(batch["rejected_labels"], N_))
    with pytest.raises(ValueError, match=r"rejected responses: row\(s\) \[0\] have no scored tokens"):
        logits_loss(logits, logits, empty, "paper")
    with pytest.raises(ValueError, match="lambda must be >= 0"):
        logits_loss(logits, logits, batch, "paper", lam=-1)


# ---- 8. Model level: chunked, both layouts, both padding sides ----------------------------------------------------

TINY = dict(model_type="llama", vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=False)


def tiny_model():
    from minorpo.hf.config import ModelConfig
    from minorpo.models import build_model

    torch.manual_seed(0)
    return build_model(ModelConfig.from_hf(TINY)).eval()


def model_pairs(n=4, seed=0, eos=96):
    g = torch.Generator().manual_seed(seed)
    pairs = []
    for _ in range(n):
        P, C, R = (int(torch.randint(1, 7, (1,), generator=g)) for _ in range(3))
        ids = [torch.randint(3, 90, (k,), generator=g).tolist() for k in (P, C, R)]
        ids[1][-1] = ids[2][-1] = eos
        pairs.append(TokenizedPair(*ids))
    return pairs


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_model_level_equals_logits_level(preset):
    """forward.pair_logps (one 2B-row forward, hidden states, chunked log-probs with chunk 3) == the unchunked path on the
    logits of two separate forwards (the unchunked path), for right and left padding and the shared-prompt layout.
    Loss and every metric except, for trl / llamafactory, logits/* on another layout (those count padding positions
    by design). Tolerance 1e-5: float32 model, reductions and attention over different padding in other orders."""
    model = tiny_model()
    pairs = model_pairs()
    right = collate_padded(pairs, pad_token_id=96)
    with torch.no_grad():
        logits = {s: model(right[f"{s}_input_ids"], attention_mask=right[f"{s}_attention_mask"])
                  for s in ("chosen", "rejected")}
        ref_loss, ref = logits_loss(logits["chosen"], logits["rejected"], right, preset, pad_token_id=96)
        runs = {
            "right": model_loss(model, right, preset, pad_token_id=96, chunk_size=3),
            "left": model_loss(model, collate_padded(pairs, 96, "left", pad_to_multiple_of=16), preset,
                               pad_token_id=96, chunk_size=5),
            "shared": model_loss(model, collate_shared_prompt(pairs, 96), preset, pad_token_id=96, layout="shared"),
        }
    padding_dependent = {"logits/chosen", "logits/rejected"} if get_conventions(preset).logits_metric != "response" \
        else set()
    for layout, (loss, metrics) in runs.items():
        assert_close(loss, ref_loss, rtol=1e-5, atol=1e-5, what=f"{preset} {layout} loss")
        for name, value in ref.items():
            if layout != "right" and name in padding_dependent:
                continue
            assert abs(metrics[name] - value) < 1e-5 * max(1.0, abs(value)), (preset, layout, name)


def test_model_level_backward_matches_unchunked():
    """Parameter gradients of forward.pair_logps (chunked, custom backward) == those of the unchunked logits path, trl preset
    (prompt + response NLL, so prompt positions are scored too). Tolerance 1e-5 relative to the largest gradient
    entry: float32, different reduction order."""
    model = tiny_model()
    batch = collate_padded(model_pairs(seed=2), pad_token_id=96)
    model_loss(model, batch, "trl", chunk_size=4)[0].backward()
    chunked = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    logits = {s: model(batch[f"{s}_input_ids"], attention_mask=batch[f"{s}_attention_mask"])
              for s in ("chosen", "rejected")}
    logits_loss(logits["chosen"], logits["rejected"], batch, "trl")[0].backward()
    for n, p in model.named_parameters():
        scale = p.grad.abs().max().item()
        assert_close(chunked[n], p.grad, rtol=0, atol=1e-5 * max(scale, 1e-3), what=n)


def test_token_logps_container_roundtrip():
    """loss.batch_loss on hand-made TokenLogps (what tests/golden feeds it): the token-mean NLL of the trl
    preset pools the 3 tokens, the paper's averages per sequence. Oracle: hand arithmetic as in the NLL test."""
    chosen = t64(LOG(0.5), 0, 0, LOG(0.125), LOG(0.125), LOG(0.125)).view(2, 3)
    mask = torch.tensor([[True, False, False], [True, True, True]])
    tl = TokenLogps(chosen, mask, mask, chosen - 1.0, mask)
    _, m_trl = preset_loss(tl, "trl", 0.1)
    _, m_paper = preset_loss(tl, "paper", 0.1)
    assert abs(m_trl["nll_loss"] - (LOG(2) + 3 * LOG(8)) / 4) < 1e-14
    assert abs(m_paper["nll_loss"] - (LOG(2) + LOG(8)) / 2) < 1e-14
    assert "logits/chosen" not in m_trl  # unknown without logits


def test_accumulation_shares():
    """Gradient accumulation (train.py's step loop): objective_sums divided by the counts of a batch 4x this one's
    NLL tokens and 2x its pairs gives loss = 0.25 * L_SFT + lam * 0.5 * mean L_OR, with loss / nll_loss / sft_loss
    reported as those shares and the other metrics as 0.5 of their batch means. Oracle: the one-batch call's own
    terms, recombined by hand. Tolerance 1e-14 (float64)."""
    batch, logits = hand_batch()
    _, plain = logits_loss(logits, logits, batch, "trl", lam=0.3)
    tl = logps_from_logits(logits, logits, batch, "trl")
    nll, pairs, stats = objective_sums(tl, "orpo", 0.3, nll_normalization="token_mean")
    counts = {"nll": 4 * int(tl.nll_mask.sum()), "pairs": 2 * tl.chosen.shape[0]}
    loss = nll / counts["nll"] + pairs / counts["pairs"]
    m = metric_shares(loss, stats, counts)
    expected = 0.25 * plain["nll_loss"] + 0.3 * 0.5 * plain["odds_ratio_loss"]
    assert abs(loss.item() - expected) < 1e-14 and abs(m["loss"] - expected) < 1e-14
    assert abs(m["nll_loss"] - 0.25 * plain["nll_loss"]) < 1e-14 and m["sft_loss"] == m["nll_loss"]
    for name in ("odds_ratio_loss", "logps/chosen", "rewards/margins", "log_odds_chosen"):
        assert abs(m[name] - 0.5 * plain[name]) < 1e-14
