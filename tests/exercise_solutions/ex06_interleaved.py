import torch


def apply_rope(x, position_ids, theta):  # Meta's interleaved pairs (x_2i, x_2i+1): not the checkpoints' layout
    hs = x.shape[-1]
    inv_freq = theta ** (-torch.arange(0, hs, 2, dtype=torch.float64) / hs)
    angle = position_ids.double()[:, None, :, None] * inv_freq
    cos, sin = angle.cos(), angle.sin()
    x1, x2 = x.double()[..., 0::2], x.double()[..., 1::2]
    return torch.stack([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).flatten(-2).to(x.dtype)
