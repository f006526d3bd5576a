"""Exercise 5 — Eq. 6: the ORPO loss of a batch, under a chosen convention          (goes with tutorial 2, sections 4-5)

A batch of B preference pairs arrives as per-token log-probabilities (what a model gives; tutorial 2 computes
them), with masks saying which tokens count for what:

    chosen [B, Tc], rejected [B, Tr]     log P(token | prefix) per position (padding holds arbitrary numbers)
    chosen_mask, rejected_mask           bool, the response tokens of Eq. 3: a_i = log P(y_w|x), b_i = log P(y_l|x)
    nll_mask [B, Tc]                     bool, the tokens L_SFT covers (the chosen response, or prompt + response)

    L = L_SFT + lam * (1/B) sum_i L_OR_i(a_i, b_i)                               (Eq. 6, Eq. 7 for L_OR)

    L_SFT, normalization = "token_mean":    -(sum of the log-probs of ALL nll_mask tokens of the batch) / their count
                           "sequence_mean": (1/B) sum_i -(mean of row i's nll_mask tokens)

The paper's own reading is sequence_mean (each pair weighs the same); TRL and the official code use token_mean
(a long response weighs more). Your functions of exercises 2 and 3 are useful: paste them in.

Given: the tensors above (float64, float32 or bfloat16), lam >= 0, normalization. Do not import minorpo.
Returns: a 0-dim tensor, float32 (float64 for float64 inputs; upcast bfloat16 before any arithmetic).
Check:  minorpo exercises check 5 05_batch_loss.py
"""

import torch
import torch.nn.functional as F


def orpo_batch_loss(chosen: torch.Tensor, chosen_mask: torch.Tensor, nll_mask: torch.Tensor, rejected: torch.Tensor,
                    rejected_mask: torch.Tensor, lam: float, normalization: str) -> torch.Tensor:
    """Eq. 6 for a batch: L_SFT (normalized as asked) + lam * mean over pairs of L_OR."""
    raise NotImplementedError("exercise 5: write orpo_batch_loss")
