"""FlexAttention for the shared-prompt layout (`--attention flex`): the same attention, fewer blocks computed.

With `--layout shared` each row holds prompt, chosen and rejected, and its [B, T, T] block mask (batches.py) rules
out many query/key pairs: the keys after the query, the chosen response for a rejected query, the padding. SDPA
with a dense mask computes all T x T scores anyway. FlexAttention (PyTorch >= 2.5) cuts the score matrix into
128 x 128 blocks and never computes a block in which no pair is allowed; a block that is allowed entirely runs
without reading the mask.

How it plugs into the model: forward.py turns the batch's dense mask into a `BlockMask` (block_mask below) and
passes it as the model's attention_mask; models/llama.py hands such a mask to `prepare_attention` and `attend`
here, and uses its own dense path for every other mask.

Same results: tests/test_flex_attention.py (forward against SDPA with the dense mask, float64; which blocks are
skipped; sliding windows; compiled blocks; autocast), tests/test_cuda.py (loss, gradient and training steps on
CUDA, since PyTorch's FlexAttention has no CPU backward).
"""

import functools

import torch

from minorpo.errors import UserError


def check(layout: str, device: torch.device | None = None) -> None:
    """Raise UserError if `--attention flex` cannot run: it needs the shared layout (the mask whose blocks it skips)
    and, to train (device given), CUDA."""
    if device is not None and device.type != "cuda":
        raise UserError(f"--attention flex trains on CUDA only (PyTorch's FlexAttention has no backward on "
                        f"{device.type}); use --attention sdpa")
    if layout != "shared":
        raise UserError("--attention flex needs --layout shared (it skips the blocks of the shared layout's mask)")


def is_block_mask(mask) -> bool:
    return type(mask).__name__ == "BlockMask"  # torch.nn.attention.flex_attention.BlockMask, without importing it


def block_mask(allowed: torch.Tensor):
    """FlexAttention's BlockMask for a [B, T, S] bool mask (True = query t may attend key s), e.g. the shared layout's.

    As in models/llama.py's dense masks, every query may see itself (a padding row stays finite).
    """
    from torch.nn.attention.flex_attention import create_block_mask
    B, T, S = allowed.shape
    itself = torch.arange(S, device=allowed.device)[None, :] == torch.arange(S - T, S, device=allowed.device)[:, None]
    allowed = allowed | itself                                                            # (B, T, S)

    def mask_mod(b, h, q_idx, kv_idx):
        return allowed[b, q_idx, kv_idx]

    return create_block_mask(mask_mod, B, None, T, S, device=allowed.device)


def sliding_window(mask, position_ids: torch.Tensor, window: int):
    """The BlockMask of a sliding-window layer: mask's pairs whose key is fewer than `window` positions before the
    query, positions counted in each sequence's own position_ids (as llama.prepare_attention does for dense masks,
    so a rejected token of the shared layout counts its distance to the prompt as if chosen were not there)."""
    from torch.nn.attention.flex_attention import create_block_mask
    base = mask.mask_mod
    B, T = position_ids.shape

    def mask_mod(b, h, q_idx, kv_idx):
        return base(b, h, q_idx, kv_idx) & (position_ids[b, q_idx] - position_ids[b, kv_idx] < window)

    return create_block_mask(mask_mod, B, None, T, T, device=position_ids.device)


def prepare_attention(input_ids, mask, position_ids, kv_cache, windows):
    """llama.prepare_attention for a BlockMask: (position_ids, {window: BlockMask}). Needs explicit position_ids
    (the shared layout's) and no KV cache."""
    B, T = input_ids.shape
    if position_ids is None or kv_cache is not None:
        raise ValueError("a FlexAttention BlockMask needs explicit position_ids and no KV cache (use a [B, T, S] "
                         "bool mask there)")
    if tuple(mask.shape[-2:]) != (T, T) or mask.shape[0] not in (1, B):
        raise ValueError(f"BlockMask of shape {tuple(mask.shape)} for {B} rows of {T} tokens")
    return position_ids, {w: mask if w is None else sliding_window(mask, position_ids, w) for w in windows}


def attend(q, k, v, mask, scale=None):
    """llama.attend with a BlockMask: blocks the mask rules out are never computed; GQA is built in."""
    device = q.device.type
    if torch.is_autocast_enabled(device):  # autocast casts SDPA's inputs to bf16; it does not know flex_attention
        dtype = torch.get_autocast_dtype(device)
        q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
    return _flex_attention(q.is_cuda)(q, k, v, block_mask=mask, scale=scale, enable_gqa=k.shape[1] != q.shape[1])


@functools.cache
def _flex_attention(cuda: bool):
    """flex_attention, compiled on CUDA (its fast form: one generated kernel per mask_mod) and plain on the CPU
    (a slow reference path that PyTorch provides for the forward only: tests compare it with SDPA there)."""
    from torch.nn.attention.flex_attention import flex_attention
    return torch.compile(flex_attention, dynamic=True) if cuda else flex_attention
