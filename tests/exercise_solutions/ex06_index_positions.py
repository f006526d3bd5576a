import torch
from ex06_student import apply_rope as _right


def apply_rope(x, position_ids, theta):
    T = x.shape[2]
    return _right(x, torch.arange(T).expand(x.shape[0], T), theta)  # the row index, not the given position ids
