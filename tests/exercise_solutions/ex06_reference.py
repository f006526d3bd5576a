import torch

from minorpo.models.llama import apply_rope as _apply_rope
from minorpo.models.llama import rope_cos_sin


def apply_rope(x, position_ids, theta):
    hs = x.shape[-1]
    inv_freq = 1.0 / theta ** (torch.arange(0, hs, 2, dtype=torch.float64) / hs)
    freqs = position_ids[..., None].double() * inv_freq  # float64 angles: exact enough for a float64 x
    emb = torch.cat([freqs, freqs], dim=-1)
    if x.dtype != torch.float64:  # minorpo's own path: float32 angles, cast to x's dtype
        return _apply_rope(x, *rope_cos_sin(inv_freq.float(), position_ids, x.dtype))
    return _apply_rope(x, emb.cos(), emb.sin())
