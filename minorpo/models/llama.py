"""The Llama-family decoder (Llama 2/3/3.1, Mistral, Qwen2/2.5/3, SmolLM2), written from scratch.

Parameter names are exactly those of transformers' LlamaForCausalLM, so a checkpoint loads with a 1:1 map:

    model.embed_tokens.weight                                  [V, C]
    model.layers.{i}.input_layernorm.weight                    [C]
    model.layers.{i}.self_attn.{q,k,v,o}_proj.weight (.bias)   [nh*hs, C] / [nkv*hs, C] / [C, nh*hs]
    model.layers.{i}.self_attn.{q,k}_norm.weight               [hs]    (Qwen3 only)
    model.layers.{i}.post_attention_layernorm.weight           [C]
    model.layers.{i}.mlp.{gate,up,down}_proj.weight            [I, C] / [C, I]
    model.norm.weight                                          [C]
    lm_head.weight                                             [V, C]  (the same tensor as embed_tokens if tied)

Where this model departs from the textbook transformer (Vaswani et al. 2017):
  - pre-norm with RMSNorm (no mean subtraction, no bias), computed in float32 as transformers does;
  - rotary position embeddings (RoPE, Su et al. 2021) instead of added position vectors, in the "rotate half"
    layout: transformers' conversion scripts permuted the q/k weights of Meta's interleaved layout so that
    rotating the two halves of each head is equivalent (llama2.c's export.py undoes that permutation);
  - grouped-query attention: nkv < nh key/value heads, each shared by nh/nkv query heads;
  - SwiGLU MLP: down(silu(gate(x)) * up(x)), no biases (Llama's mlp_bias flag aside);
  - Qwen2 adds biases to q/k/v; Mistral and some Qwen2 layers attend only within a sliding window;
  - Qwen3 drops the biases and normalizes each query and key head with its own RMSNorm before RoPE (QK-norm);
  - Gemma 3 is this model with the departures listed in gemma3.py;
  - no dropout anywhere: these checkpoints use none, and minorpo trains OPT without it too (TRL's ORPOTrainer
    also disables dropout by default).

The attention-mask and KV-cache plumbing below (`KVCache`, `prepare_attention`) is shared with opt.py and gemma3.py;
a FlexAttention mask (`--attention flex`) is handed to minorpo/fast/flex.py.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from minorpo.fast import flex
from minorpo.hf.config import ModelConfig

ACTIVATIONS = {
    "silu": F.silu,
    "relu": F.relu,
    "gelu": F.gelu,
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
}


def activation(name: str):
    if name not in ACTIVATIONS:
        raise ValueError(f"unsupported activation {name!r}; minorpo supports {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]


# ----------------------------------------------------------------------------------------------------------
# Masks, positions and the KV cache (shared by both model families)

class KVCache:
    """Keys and values of the tokens seen so far, one (k, v) pair per layer, plus their position ids.

    keys[i], values[i]: [B, nkv, S, hs]; positions: [B, S]. The model appends to it on each forward call.
    """

    def __init__(self):
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []
        self.positions: torch.Tensor | None = None

    def __len__(self) -> int:  # number of cached tokens S
        return 0 if self.positions is None else self.positions.shape[1]

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Append this step's k, v of one layer; return all keys and values of that layer."""
        if layer == len(self.keys):
            self.keys.append(k)
            self.values.append(v)
        else:
            self.keys[layer] = torch.cat([self.keys[layer], k], dim=2)      # (B, nkv, S, hs)
            self.values[layer] = torch.cat([self.values[layer], v], dim=2)  # (B, nkv, S, hs)
        return self.keys[layer], self.values[layer]


def prepare_attention(input_ids, attention_mask, position_ids, kv_cache, windows=(None,)):
    """Turn the caller's mask into what scaled_dot_product_attention wants: one mask per attention window.

    attention_mask: None (causal) | [B, S] 0/1 padding mask (S = cached + new tokens) | [B, T, S] bool block mask
    (the shared-prompt layout's, batches.py; needs position_ids) | a FlexAttention BlockMask (minorpo/fast/flex.py).
    Returns (position_ids [B, T], masks: {window: bool [B, 1, T, S] or None}). A mask of None means plain causal
    attention over T == S tokens (or one new token that sees every cached one): SDPA's is_causal.
    """
    if flex.is_block_mask(attention_mask):
        return flex.prepare_attention(input_ids, attention_mask, position_ids, kv_cache, windows)
    B, T = input_ids.shape
    past = len(kv_cache) if kv_cache is not None else 0
    S = past + T
    block = attention_mask is not None and attention_mask.dim() == 3
    if attention_mask is not None and tuple(attention_mask.shape) != ((B, T, S) if block else (B, S)):
        kind = "block mask [B, T, S]" if block else "padding mask [B, S] (S = cached + new tokens)"
        raise ValueError(f"attention_mask has shape {tuple(attention_mask.shape)}; a {kind} here must "
                         f"have shape {(B, T, S) if block else (B, S)}")
    if position_ids is None:
        if block:
            raise ValueError("a [B, T, S] block attention_mask needs explicit position_ids")
        if attention_mask is None:
            position_ids = torch.arange(past, S, device=input_ids.device).expand(B, T)      # (B, T)
        else:  # count real tokens so left-padded rows still start at 0; pads get 0 (never used)
            position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, past:]    # (B, T)
    elif tuple(position_ids.shape) != (B, T):
        raise ValueError(f"position_ids has shape {tuple(position_ids.shape)}, expected {(B, T)}")
    key_positions = position_ids                                                          # (B, S)
    if kv_cache is not None:
        if kv_cache.positions is not None:
            key_positions = torch.cat([kv_cache.positions, position_ids], dim=1)          # (B, S)
        kv_cache.positions = key_positions
    return position_ids, {w: dense_mask(attention_mask, position_ids, key_positions, w) for w in windows}


def dense_mask(attention_mask, position_ids, key_positions, window):
    """The bool [B, 1, T, S] mask of one window (True = may attend), or None for plain causal attention."""
    (B, T), S = position_ids.shape, key_positions.shape[1]
    past, device = S - T, position_ids.device
    block = attention_mask is not None and attention_mask.dim() == 3
    if attention_mask is None and (past == 0 or T == 1) and (window is None or S <= window):
        return None
    if block:
        allowed = attention_mask.bool()                                                   # (B, T, S)
    else:
        q_idx = torch.arange(past, S, device=device)
        allowed = (torch.arange(S, device=device)[None, :] <= q_idx[:, None]).expand(B, T, S)
        if attention_mask is not None:
            allowed = allowed & attention_mask.bool()[:, None, :]                         # (B, T, S)
    if window is not None:  # Mistral/Qwen2 sliding window: keep keys fewer than `window` positions back
        distance = position_ids[:, :, None] - key_positions[:, None, :]                   # (B, T, S)
        allowed = allowed & (distance < window)
    # A query with no visible key (a padding row) would make softmax return NaN, and NaN * 0 is still NaN in
    # the backward pass. Letting every query see itself keeps those rows finite; real rows are unchanged
    # since a real token always sees itself anyway. With a padding mask, only queries that see nothing get
    # this: a right-padding query then attends to the real tokens alone, as in transformers (whose pad rows
    # TRL's and LLaMA-Factory's logits/* metrics average over; minorpo/tools/conventions.py).
    itself = torch.arange(S, device=device)[None, :] == torch.arange(past, S, device=device)[:, None]  # (T, S)
    allowed = allowed | (itself if block else itself & ~allowed.any(-1, keepdim=True))
    return allowed[:, None]                                                               # (B, 1, T, S)


def run_layers(model, x, layer_args, masks, kv_cache):
    """Run the decoder blocks, with per-block activation checkpointing when asked for and training."""
    use_ckpt = model.gradient_checkpointing and model.training and torch.is_grad_enabled() and kv_cache is None
    for i, layer in enumerate(model.layers):
        mask = masks[layer.window]
        if use_ckpt:  # recompute this block's activations in the backward pass instead of storing them
            x = checkpoint(layer, x, *layer_args, mask, None, use_reentrant=False)
        else:
            x = layer(x, *layer_args, mask, kv_cache)
    return x


def attend(q, k, v, mask, scale=None):
    """softmax(q k^T * scale + mask) v through PyTorch's fused kernel. q: (B, nh, T, hs), k/v: (B, nkv, S, hs)."""
    if flex.is_block_mask(mask):
        return flex.attend(q, k, v, mask, scale)
    if k.shape[1] != q.shape[1]:  # GQA: query head j reads key/value head j // (nh / nkv)
        rep = q.shape[1] // k.shape[1]
        k = k.repeat_interleave(rep, dim=1)                                                # (B, nh, S, hs)
        v = v.repeat_interleave(rep, dim=1)                                                # (B, nh, S, hs)
    is_causal = mask is None and q.shape[2] > 1
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal, scale=scale)


# ----------------------------------------------------------------------------------------------------------
# Rotary position embeddings

def rope_inv_freq(config: ModelConfig, device=None) -> torch.Tensor:
    """The RoPE frequencies theta^(-2i/hs), i = 0..hs/2-1, with Llama-3.1's or linear scaling applied."""
    hs = config.head_dim
    inv_freq = 1.0 / (config.rope_theta ** (torch.arange(0, hs, 2, dtype=torch.int64, device=device).float() / hs))
    scaling = config.rope_scaling
    if scaling is None:
        return inv_freq                                                                   # (hs/2,)
    if scaling["rope_type"] == "linear":  # positions divided by `factor`
        return inv_freq / scaling["factor"]
    # "llama3" (Llama 3.1): wavelengths longer than the original context are stretched by `factor`, shorter than
    # original/high_freq_factor are kept, and those in between interpolate smoothly.
    factor = scaling["factor"]
    low, high = scaling["low_freq_factor"], scaling["high_freq_factor"]
    old_context = scaling["original_max_position_embeddings"]
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > old_context / low, inv_freq / factor, inv_freq)
    smooth = (old_context / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    is_medium = ~(wavelen < old_context / high) & ~(wavelen > old_context / low)
    return torch.where(is_medium, smoothed, scaled)                                       # (hs/2,)


def rope_cos_sin(inv_freq, position_ids, dtype):
    """cos and sin of position * frequency, computed in float32 then cast. Both (B, T, hs)."""
    freqs = position_ids[..., None].float() * inv_freq.float()                            # (B, T, hs/2)
    emb = torch.cat([freqs, freqs], dim=-1)                                               # (B, T, hs)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def apply_rope(x, cos, sin):
    """Rotate each (x_i, x_{i+hs/2}) pair of every head by its angle. x: (B, nh, T, hs), cos/sin: (B, T, hs)."""
    return x * cos[:, None] + rotate_half(x) * sin[:, None]


# ----------------------------------------------------------------------------------------------------------
# The blocks

class RMSNorm(nn.Module):
    """x / sqrt(mean(x^2) + eps) * weight, with the normalization done in float32 (as transformers does)."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


class Attention(nn.Module):
    def __init__(self, config: ModelConfig, layer: int, norm=RMSNorm):
        super().__init__()
        self.layer = layer
        self.nh, self.nkv, self.hs = config.num_attention_heads, config.num_key_value_heads, config.head_dim
        C = config.hidden_size
        self.q_proj = nn.Linear(C, self.nh * self.hs, bias=config.attention_bias)
        self.k_proj = nn.Linear(C, self.nkv * self.hs, bias=config.attention_bias)
        self.v_proj = nn.Linear(C, self.nkv * self.hs, bias=config.attention_bias)
        self.o_proj = nn.Linear(self.nh * self.hs, C, bias=config.attention_out_bias)
        if config.qk_norm:  # Qwen3 / Gemma 3: each head's query and key vector normalized over its hs entries
            self.q_norm = norm(self.hs, config.rms_norm_eps)
            self.k_norm = norm(self.hs, config.rms_norm_eps)
        # softmax scale: 1/sqrt(hs), or Gemma 3's 1/sqrt(query_pre_attn_scalar) (None = SDPA's 1/sqrt(hs))
        s = config.query_pre_attn_scalar
        self.scale = None if s is None else s ** -0.5

    def forward(self, x, cos, sin, mask, kv_cache):
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.nh, self.hs).transpose(1, 2)                   # (B, nh, T, hs)
        k = self.k_proj(x).view(B, T, self.nkv, self.hs).transpose(1, 2)                  # (B, nkv, T, hs)
        v = self.v_proj(x).view(B, T, self.nkv, self.hs).transpose(1, 2)                  # (B, nkv, T, hs)
        if hasattr(self, "q_norm"):  # QK-norm comes before RoPE, so it sees the unrotated vectors
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if kv_cache is not None:
            k, v = kv_cache.update(self.layer, k, v)                                      # (B, nkv, S, hs)
        y = attend(q, k, v, mask, self.scale)                                             # (B, nh, T, hs)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, self.nh * self.hs))            # (B, T, C)


class MLP(nn.Module):
    """SwiGLU (Shazeer 2020): down(act(gate(x)) * up(x))."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        C, I = config.hidden_size, config.intermediate_size
        self.gate_proj = nn.Linear(C, I, bias=config.mlp_bias)
        self.up_proj = nn.Linear(C, I, bias=config.mlp_bias)
        self.down_proj = nn.Linear(I, C, bias=config.mlp_bias)
        self.act = activation(config.hidden_act)

    def forward(self, x):
        return self.down_proj(self.act(self.gate_proj(x)) * self.up_proj(x))              # (B, T, C)


class DecoderLayer(nn.Module):
    def __init__(self, config: ModelConfig, layer: int):
        super().__init__()
        self.window = config.layer_window(layer)  # None = full causal attention
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = Attention(config, layer)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = MLP(config)

    def forward(self, x, cos, sin, mask, kv_cache):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask, kv_cache)
        x = x + self.mlp(self.post_attention_layernorm(x))
        return x                                                                          # (B, T, C)


class LlamaModel(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)


class LlamaForCausalLM(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.gradient_checkpointing = False
        self.model = LlamaModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        init_weights(self)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    @property
    def layers(self):
        return self.model.layers

    def forward(self, input_ids, attention_mask=None, position_ids=None, kv_cache=None, return_hidden=False):
        """Logits [B, T, V], or with return_hidden the final-norm hidden states [B, T, C] (lm_head(h) = logits).

        See prepare_attention for attention_mask and position_ids; kv_cache (a KVCache) is read and extended.
        """
        windows = {layer.window for layer in self.layers}
        position_ids, masks = prepare_attention(input_ids, attention_mask, position_ids, kv_cache, windows)
        x = self.model.embed_tokens(input_ids)                                            # (B, T, C)
        inv_freq = rope_inv_freq(self.config, device=input_ids.device)
        cos, sin = rope_cos_sin(inv_freq, position_ids, x.dtype)                          # (B, T, hs)
        x = run_layers(self, x, (cos, sin), masks, kv_cache)
        x = self.model.norm(x)                                                            # (B, T, C)
        if return_hidden:
            return x
        return self.lm_head(x)                                                            # (B, T, V)


def init_weights(model: nn.Module, std: float = 0.02):
    """Random init for models trained from scratch (transformers' scheme: N(0, 0.02), zero biases).

    A loaded model overwrites all of it; on the meta device (the loader builds there) this costs nothing.
    """
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, mean=0.0, std=std)
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)
