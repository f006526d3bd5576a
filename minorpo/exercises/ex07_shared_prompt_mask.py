"""Checks of exercise 7, the shared-prompt layout: one row [prompt | chosen | rejected | padding] per pair, the
position ids (rejected restarts after the prompt) and the [B, T, T] attention mask (batches.py's docstring).

Oracles: the example of minorpo/batches.py's docstring, by hand; minorpo.batches.collate_shared_prompt for random
lengths.
"""

import torch
from hypothesis import strategies as st

from minorpo.batches import collate_shared_prompt
from minorpo.data import TokenizedPair
from minorpo.exercises.harness import Failure, call, check_tensor, for_all, need, test


def run(student, P, C, R, T):
    got = call(need(student, "shared_prompt_layout"), list(P), list(C), list(R), T,
               what="shared_prompt_layout(prompt_lengths, chosen_lengths, rejected_lengths, T)")
    if not isinstance(got, (tuple, list)) or len(got) != 2:
        raise Failure(f"shared_prompt_layout returned {type(got).__name__}, expected (position_ids, mask)")
    B = len(P)
    return (check_tensor(got[0], (B, T), torch.long, "position_ids"),
            check_tensor(got[1], (B, T, T), torch.bool, "mask"))


def minorpo_layout(P, C, R, T):
    pairs = [TokenizedPair([1] * p, [2] * c, [3] * r) for p, c, r in zip(P, C, R)]
    batch = collate_shared_prompt(pairs, 0)
    pad = T - batch["input_ids"].shape[1]  # collate pads to the longest row; pad further to T like it does
    pos = torch.nn.functional.pad(batch["position_ids"], (0, pad))
    mask = torch.zeros(len(P), T, T, dtype=torch.bool)
    q = torch.arange(T)
    for b, (p, c, r) in enumerate(zip(P, C, R)):
        seg = torch.full((T,), 3)
        seg[:p], seg[p:p + c], seg[p + c:p + c + r] = 0, 1, 2
        mask[b] = (q[None, :] <= q[:, None]) & ((seg[None, :] == 0) | (seg[None, :] == seg[:, None]))
    n = batch["attention_mask"].shape[1]
    assert torch.equal(mask[:, :n, :n], batch["attention_mask"])  # the definition above is minorpo's
    return pos, mask


def compare_masks(got, expected, P, C, R):
    if torch.equal(got, expected):
        return
    b, t, s = (int(i) for i in (got != expected).nonzero()[0])
    seg = lambda i: ("prompt" if i < P[b] else "chosen" if i < P[b] + C[b] else  # noqa: E731
                     "rejected" if i < P[b] + C[b] + R[b] else "padding")
    raise Failure(f"mask[{b}, {t}, {s}] is {bool(got[b, t, s])}, expected {bool(expected[b, t, s])}: query {t} "
                  f"({seg(t)}) {'may' if expected[b, t, s] else 'must not'} attend to key {s} ({seg(s)})",
                  input=f"prompt_lengths = {list(P)}, chosen_lengths = {list(C)}, rejected_lengths = {list(R)}",
                  expected=str(expected[b].int().tolist()), got=str(got[b].int().tolist()))


@test("hand case from batches.py: prompt 2, chosen 2, rejected 1 -> positions 0 1 2 3 2",
      hint="the rejected response continues from the prompt (position P + j), as if the chosen one were not there")
def hand_positions(student):
    pos, _ = run(student, [2], [2], [1], 5)
    if pos[0].tolist() != [0, 1, 2, 3, 2]:
        raise Failure("position_ids differ", input="P = 2, C = 2, R = 1, T = 5", expected="[0, 1, 2, 3, 2]",
                      got=str(pos[0].tolist()))


@test("hand case from batches.py: mask[b, t, s] = query t may attend to key s",
      hint="mask[b, t, s] is True when token t may READ token s: s <= t, and s is in the prompt or in t's own part")
def hand_mask(student):
    _, mask = run(student, [2], [2], [1], 5)
    expected = torch.tensor([[1, 0, 0, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 0, 0], [1, 1, 1, 1, 0], [1, 1, 0, 0, 1]],
                            dtype=torch.bool)[None]
    compare_masks(mask, expected, [2], [2], [1])


@test("no rejected token attends to a chosen token (nor the other way round)",
      hint="a plain causal mask lets the rejected response read the chosen one: allow only the prompt and the "
           "token's own response")
def responses_apart(student):
    P, C, R = [3, 1], [2, 4], [3, 1]
    _, mask = run(student, P, C, R, 10)
    for b in range(2):
        chosen = slice(P[b], P[b] + C[b])
        rejected = slice(P[b] + C[b], P[b] + C[b] + R[b])
        if mask[b, rejected, chosen].any() or mask[b, chosen, rejected].any():
            compare_masks(mask, minorpo_layout(P, C, R, 10)[1], P, C, R)


@st.composite
def lengths(draw):
    B = draw(st.integers(1, 3))
    P, C, R = ([draw(st.integers(1, 4)) for _ in range(B)] for _ in range(3))
    T = max(p + c + r for p, c, r in zip(P, C, R)) + draw(st.integers(0, 3))
    return P, C, R, T


@test("random lengths with padding (vs minorpo.batches.collate_shared_prompt)",
      hint="padding positions get position 0 and attend to the prompt and to earlier padding only (so that no "
           "attention row is empty)")
def random_lengths(student):
    def body(case):
        P, C, R, T = case
        pos, mask = run(student, P, C, R, T)
        want_pos, want_mask = minorpo_layout(P, C, R, T)
        if not torch.equal(pos, want_pos):
            b = int((pos != want_pos).any(1).nonzero()[0])
            raise Failure(f"position_ids of row {b} differ", expected=str(want_pos[b].tolist()), got=str(pos[b].tolist()))
        compare_masks(mask, want_mask, P, C, R)

    for_all(body, case=lengths())
