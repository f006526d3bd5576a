"""Exercise 6 — rotary position embeddings (RoPE)                                 (goes with tutorial 3, section 2)

Llama-family models tell attention where each token is by ROTATING its query and key vectors (Su et al. 2021).
Each head's vector of size hs is cut into hs/2 pairs, and pair i turns by the angle  position * freq_i  with

    freq_i = theta^(-2i / hs),   i = 0 .. hs/2 - 1        (theta = 10000 for Llama 2, 500000 for Llama 3)

In the "rotate half" layout of transformers' checkpoints, pair i is (x_i, x_{i + hs/2}) — the two HALVES of the
head, not neighbours — and turns as

    x_i        -> x_i cos(angle) - x_{i+hs/2} sin(angle)
    x_{i+hs/2} -> x_{i+hs/2} cos(angle) + x_i sin(angle)

Use the position ids you are given: the shared-prompt layout (exercise 7) restarts them after the prompt.
Then q . k depends only on how far apart the two tokens are (the grader checks that too).

Given: x [B, nh, T, hs] (float64, float32 or bfloat16; hs even), position_ids [B, T] long, theta float.
Compute the angles in float32 at least. Do not import minorpo.
Returns: the rotated x, same shape and dtype.
Check:  minorpo exercises check 6 06_rope.py
"""

import torch


def apply_rope(x: torch.Tensor, position_ids: torch.Tensor, theta: float) -> torch.Tensor:
    """Rotate each pair (x_i, x_{i+hs/2}) of every head by position * theta^(-2i/hs)."""
    raise NotImplementedError("exercise 6: write apply_rope")
