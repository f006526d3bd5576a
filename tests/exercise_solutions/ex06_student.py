import torch


def apply_rope(x, position_ids, theta):
    hs = x.shape[-1]
    inv_freq = theta ** (-torch.arange(0, hs, 2, dtype=torch.float64) / hs)  # [hs/2]
    angle = position_ids.double()[:, None, :, None] * inv_freq  # [B, 1, T, hs/2]
    cos, sin = angle.cos(), angle.sin()
    x1, x2 = x.double()[..., : hs // 2], x.double()[..., hs // 2:]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).to(x.dtype)
