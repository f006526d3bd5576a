"""Checks of exercise 10, exact gradient accumulation: each micro-batch's share of the loss of the whole batch, so
that the shares add up to it, value and gradient (minorpo/train.py's step loop; TRL #3716).

Oracles: hand arithmetic (two micro-batches of 1 and 3 NLL tokens); the loss of the whole batch taken at once with
minorpo.loss.nll_loss, and autograd through it, for random splits.
"""

import torch
from hypothesis import strategies as st

from minorpo import loss
from minorpo.exercises.harness import Failure, assert_close, call, check_tensor, for_all, need, test


def run(student, micro, lam, normalization):
    got = call(need(student, "micro_batch_losses"), micro, lam, normalization,
               what=f"micro_batch_losses(micro_batches, lam={lam}, normalization={normalization!r})")
    if not isinstance(got, (list, tuple)) or len(got) != len(micro):
        raise Failure(f"micro_batch_losses returned {type(got).__name__} of length {len(got) if hasattr(got, '__len__') else '?'}, "
                      f"expected a list of {len(micro)} losses, one per micro-batch")
    return [check_tensor(g, (), torch.float64, f"the loss of micro-batch {k}") for k, g in enumerate(got)]


def whole_batch_loss(micro, lam, normalization):
    """The loss of all micro-batches taken at once: rows padded to one length, minorpo's nll_loss."""
    T = max(m["chosen"].shape[1] for m in micro)
    chosen = torch.cat([torch.nn.functional.pad(m["chosen"], (0, T - m["chosen"].shape[1])) for m in micro])
    mask = torch.cat([torch.nn.functional.pad(m["nll_mask"], (0, T - m["nll_mask"].shape[1])) for m in micro])
    l_or = torch.cat([m["l_or"] for m in micro])
    return loss.nll_loss(chosen, mask, normalization) + lam * l_or.mean()  # Eq. 6 over the whole batch


def make(rows):
    """rows: per micro-batch, a list of (token log-probs, L_OR) per pair; leaves that require grad."""
    micro = []
    for mb in rows:
        T = max(len(v) for v, _ in mb)
        chosen = torch.tensor([v + [0.0] * (T - len(v)) for v, _ in mb], dtype=torch.float64, requires_grad=True)
        mask = torch.tensor([[t < len(v) for t in range(T)] for v, _ in mb])
        micro.append({"chosen": chosen, "nll_mask": mask,
                      "l_or": torch.tensor([l for _, l in mb], dtype=torch.float64, requires_grad=True)})
    return micro


HAND = [[([-1.0], 0.5)], [([-2.0, -2.0, -2.0], 1.5)]]  # two micro-batches of one pair each: 1 and 3 NLL tokens


@test("hand case, token_mean, lam = 1: micro-batches of 1 and 3 NLL tokens, shares 0.5 and 2.25 (total 2.75)",
      hint="divide each micro-batch's SUM of NLL terms by the token count of the WHOLE batch (4 here), not by its own "
           "count, and its sum of L_OR by the whole batch's number of pairs")
def hand_token_mean(student):
    shares = run(student, make(HAND), 1.0, "token_mean")
    # micro-batch 0: 1/4 + 0.5/2 = 0.5; micro-batch 1: 6/4 + 1.5/2 = 2.25; total 2.75
    assert_close(torch.stack(shares), torch.tensor([0.5, 2.25], dtype=torch.float64), 1e-12, 1e-12, "share per micro-batch")


@test("hand case, sequence_mean, lam = 1: shares 1/2 + 0.5/2 = 0.75 and 2/2 + 1.5/2 = 1.75 (total 2.5)",
      hint="sequence_mean: each pair's own token mean, summed over the micro-batch, divided by the whole batch's pairs")
def hand_sequence_mean(student):
    shares = run(student, make(HAND), 1.0, "sequence_mean")
    assert_close(torch.stack(shares), torch.tensor([0.75, 1.75], dtype=torch.float64), 1e-12, 1e-12, "share per micro-batch")


row = st.tuples(st.lists(st.floats(-10.0, -1e-3), min_size=1, max_size=5), st.floats(0.0, 5.0))


@test("random splits into micro-batches of uneven sizes: the shares add up to the whole batch's loss and gradient",
      hint="the sum over micro-batches must equal the loss of the whole batch at once: no mean of per-micro-batch "
           "means, no division by the number of micro-batches")
def random_splits(student):
    def body(rows, lam, normalization):
        micro = make(rows)
        shares = run(student, micro, lam, normalization)
        expected = whole_batch_loss(micro, lam, normalization)
        assert_close(sum(shares).detach(), expected.detach(), 1e-10, 1e-12, "sum of the shares")
        leaves = [t for m in micro for t in (m["chosen"], m["l_or"])]
        want = torch.autograd.grad(expected, leaves)
        got = call(torch.autograd.grad, sum(shares), leaves, allow_unused=True, what="backward of the shares")
        for k, (g, w) in enumerate(zip(got, want)):
            what = f"gradient w.r.t. micro-batch {k // 2}'s {'chosen log-probs' if k % 2 == 0 else 'L_OR'}"
            if g is None:
                raise Failure(f"{what}: none flows back (keep the shares differentiable)")
            assert_close(g, w, 1e-10, 1e-12, what)

    for_all(body, rows=st.lists(st.lists(row, min_size=1, max_size=3), min_size=1, max_size=4),
            lam=st.sampled_from([0.0, 0.1, 1.0]), normalization=st.sampled_from(["token_mean", "sequence_mean"]))
