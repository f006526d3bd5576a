"""Exercise 10 — exact gradient-accumulation normalization                        (goes with tutorial 5; train.py)

A batch too large for memory is split into micro-batches; each is run forward and backward and the gradients
add up before one optimizer step. That is only the gradient of the whole batch if each micro-batch's loss is
its SHARE of the whole batch's loss:

    whole batch:  L = L_SFT + lam * (1/N) sum_{i in batch} L_OR_i                         (N pairs in the batch)
                  L_SFT, "token_mean":    -(sum of all NLL token log-probs of the batch) / (all NLL tokens, K)
                         "sequence_mean": (1/N) sum_i -(mean of pair i's NLL token log-probs)
    micro-batch k:  its own sums divided by the WHOLE batch's K and N, so that  sum_k L_k = L.

Dividing each micro-batch by its own counts and then by the number of micro-batches looks the same and is not:
a micro-batch with few tokens then weighs too much (TRL fixed that bug in #3716).

Given: micro_batches, a list of dicts, each {"chosen": [b, T] float64 token log-probs (requires grad),
"nll_mask": [b, T] bool, "l_or": [b] float64 per-pair L_OR (requires grad)}; lam >= 0; normalization.
Do not import minorpo.
Returns: a list with one 0-dim float64 tensor per micro-batch (differentiable), adding up to L.
Check:  minorpo exercises check 10 10_accumulation.py
"""

import torch


def micro_batch_losses(micro_batches: list, lam: float, normalization: str) -> list:
    """Each micro-batch's share of the whole batch's loss (Eq. 6)."""
    raise NotImplementedError("exercise 10: write micro_batch_losses")
