import torch


def sequence_logps(token_logps, mask):
    return torch.where(mask, token_logps, 0.0).sum() / mask.sum()  # one mean over the whole batch
