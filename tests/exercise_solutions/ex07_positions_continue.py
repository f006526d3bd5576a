import torch
from ex07_student import shared_prompt_layout as _right


def shared_prompt_layout(prompt_lengths, chosen_lengths, rejected_lengths, T):
    _, mask = _right(prompt_lengths, chosen_lengths, rejected_lengths, T)
    pos = torch.zeros(len(prompt_lengths), T, dtype=torch.long)
    for b, (P, C, R) in enumerate(zip(prompt_lengths, chosen_lengths, rejected_lengths)):
        pos[b, :P + C + R] = torch.arange(P + C + R)  # rejected continues after the chosen response
    return pos, mask
