import torch


def chunked_token_logps(hidden, weight, targets, chunk_size):  # all logits at once, kept by autograd
    logp = torch.log_softmax(hidden @ weight.T, -1)
    return logp.gather(1, targets.clamp(min=0)[:, None])[:, 0].masked_fill(targets == -100, 0.0)
