"""Exercise 7 — the shared-prompt layout: position ids and attention mask          (goes with tutorial 3; batches.py)

ORPO runs each pair's prompt twice in the usual layout (once with each response). The shared-prompt layout puts
[prompt | chosen | rejected | padding] in ONE row, and a mask makes each response see only the prompt and itself,
so both get exactly the log-probs they would get in rows of their own. With P, C, R the three lengths:

    position_ids   prompt 0..P-1, chosen P..P+C-1, rejected P..P+R-1 (restarting after the prompt), padding 0
    mask[b, t, s]  True when query t may attend to key s:  s <= t  and  (s is a prompt token, or s and t are in the
                   same part). A padding position attends to the prompt and to earlier padding (so no row is empty).

Example (P = 2, C = 2, R = 1, T = 5; rows = queries t, columns = keys s):
    positions 0 1 2 3 2        p0: 1 0 0 0 0    p1: 1 1 0 0 0    c0: 1 1 1 0 0    c1: 1 1 1 1 0    r0: 1 1 0 0 1

Given: prompt_lengths, chosen_lengths, rejected_lengths (lists of B ints >= 1), T (>= every P + C + R). Do not
import minorpo.
Returns: (position_ids [B, T] torch.long, mask [B, T, T] torch.bool).
Check:  minorpo exercises check 7 07_shared_prompt_mask.py
"""

import torch


def shared_prompt_layout(prompt_lengths: list, chosen_lengths: list, rejected_lengths: list, T: int):
    """(position_ids [B, T], mask [B, T, T]) of the shared-prompt layout."""
    raise NotImplementedError("exercise 7: write shared_prompt_layout")
