import torch


def shared_prompt_layout(prompt_lengths, chosen_lengths, rejected_lengths, T):
    B = len(prompt_lengths)
    pos = torch.zeros(B, T, dtype=torch.long)
    seg = torch.full((B, T), 3)
    for b, (P, C, R) in enumerate(zip(prompt_lengths, chosen_lengths, rejected_lengths)):
        pos[b, :P + C] = torch.arange(P + C)
        pos[b, P + C:P + C + R] = torch.arange(P, P + R)
        seg[b, :P], seg[b, P:P + C], seg[b, P + C:P + C + R] = 0, 1, 2
    q = torch.arange(T)
    causal = q[None, :] <= q[:, None]
    return pos, causal & ((seg[:, None, :] == 0) | (seg[:, None, :] == seg[:, :, None]))
