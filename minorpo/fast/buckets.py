"""Length buckets (`--length-buckets N`): batches of pairs of similar length, so less padding.

Without it, a step's pairs are the next global batch of a seeded per-epoch permutation (train.step_indices), so a
batch mixes short and long rows and is padded to its longest. With it, the pairs of N consecutive steps are
sorted by length and dealt out as N batches, the batches in a seeded order. Each window of N steps trains exactly
the pairs of the same steps without bucketing; only who shares a batch (and so the padding) changes.
"""

import torch


def bucketed_step_indices(lengths: list, step: int, global_batch: int, seed: int, window: int,
                          step_indices) -> list:
    """The data indices of optimizer step `step` with length bucketing over windows of `window` steps.

    lengths: each pair's row length; step_indices: the unbucketed order (train.step_indices). Still a pure function
    of the step, so resume stays exact.
    """
    w, k = divmod(step, window)
    pool = sorted(step_indices(len(lengths), w, global_batch * window, seed), key=lambda i: lengths[i])  # stable
    g = torch.Generator().manual_seed(seed * 1_000_003 + 500_009 + w)
    b = int(torch.randperm(window, generator=g)[k])  # which of the window's batches this step takes
    return pool[b * global_batch:(b + 1) * global_batch]
