"""Gemma 3 (text; Gemma Team 2025, "Gemma 3 Technical Report"), written as the departures from model.py's Llama.

Parameter names are transformers' Gemma3ForCausalLM, which are Llama's plus three norms per block:

    model.embed_tokens.weight                                  [V, C]
    model.layers.{i}.input_layernorm.weight                    [C]
    model.layers.{i}.self_attn.{q,k,v,o}_proj.weight           [nh*hs, C] / [nkv*hs, C] / [C, nh*hs]
    model.layers.{i}.self_attn.{q,k}_norm.weight               [hs]
    model.layers.{i}.post_attention_layernorm.weight           [C]
    model.layers.{i}.pre_feedforward_layernorm.weight          [C]
    model.layers.{i}.mlp.{gate,up,down}_proj.weight            [I, C] / [C, I]
    model.layers.{i}.post_feedforward_layernorm.weight         [C]
    model.norm.weight                                          [C]
    lm_head.weight                                             [V, C]   (the embedding, unless untied)

The departures, each applied in the code below where it says so:
  1. RMSNorm scales by (1 + w), not w (the stored weights are offsets from 1), and multiplies in float32 before
     casting back, where Llama casts first (GemmaRMSNorm);
  2. four norms per block: the attention and MLP outputs are normalized again before they join the residual
     stream ("sandwich" norm; Gemma3DecoderLayer);
  3. QK-norm: each query and key head is normalized (with GemmaRMSNorm) before RoPE (model.Attention, qk_norm);
  4. the attention scale is 1/sqrt(query_pre_attn_scalar), not 1/sqrt(head_dim) (model.Attention);
  5. the embeddings are multiplied by sqrt(hidden_size), rounded to the embedding's dtype (Gemma3ForCausalLM);
  6. the MLP is gated GELU (tanh approximation) instead of SiLU: model.MLP with hidden_act "gelu_pytorch_tanh";
  7. layers are sliding-window or global as config.layer_types says (5 local : 1 global in released models), and
     each kind has its own RoPE base: rope_local_theta (10k) for sliding layers, rope_theta (1M) with the
     optional linear scaling (4B and up) for global ones (Gemma3ForCausalLM.forward);
  8. the logits may be soft-capped, cap * tanh(logits / cap), when final_logit_softcapping is set (none of the
     released Gemma 3 models set it; logprobs.py applies the same cap in its chunked head);
  9. the output head is the embedding matrix (tie_word_embeddings defaults to true; every released model ties).
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn as nn

from minorpo.hf.config import ModelConfig
from minorpo.logprobs import softcap
from minorpo.models.llama import MLP, Attention, init_weights, prepare_attention, rope_cos_sin, rope_inv_freq, run_layers


class GemmaRMSNorm(nn.Module):
    """x / sqrt(mean(x^2) + eps) * (1 + weight), all in float32, then cast back (departure 1).

    The weight starts at 0 (= the identity scale). Llama's RMSNorm instead casts the normalized x back to the
    input dtype before multiplying by its weight: in bf16 the two round differently.
    """

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(dim))
        self.eps = eps

    def forward(self, x):
        y = x.float()
        y = y * torch.rsqrt(y.pow(2).mean(-1, keepdim=True) + self.eps)
        return (y * (1.0 + self.weight.float())).to(x.dtype)


class Gemma3DecoderLayer(nn.Module):
    def __init__(self, config: ModelConfig, layer: int):
        super().__init__()
        self.window = config.layer_window(layer)  # None = global (full causal) attention
        C, eps = config.hidden_size, config.rms_norm_eps
        self.input_layernorm = GemmaRMSNorm(C, eps)
        self.self_attn = Attention(config, layer, norm=GemmaRMSNorm)  # QK-norm and 1/sqrt(query_pre_attn_scalar)
        self.post_attention_layernorm = GemmaRMSNorm(C, eps)
        self.pre_feedforward_layernorm = GemmaRMSNorm(C, eps)
        self.mlp = MLP(config)  # gelu_pytorch_tanh: down(gelu_tanh(gate(x)) * up(x))
        self.post_feedforward_layernorm = GemmaRMSNorm(C, eps)

    def forward(self, x, rope, mask, kv_cache):
        cos, sin = rope[self.window]  # departure 7: this layer kind's own RoPE
        # departure 2: Llama's post_attention_layernorm is the MLP's input norm; here it normalizes the attention
        # OUTPUT, and the MLP has a norm on each side.
        x = x + self.post_attention_layernorm(self.self_attn(self.input_layernorm(x), cos, sin, mask, kv_cache))
        x = x + self.post_feedforward_layernorm(self.mlp(self.pre_feedforward_layernorm(x)))
        return x                                                                          # (B, T, C)


class Gemma3TextModel(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(Gemma3DecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = GemmaRMSNorm(config.hidden_size, config.rms_norm_eps)


class Gemma3ForCausalLM(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.gradient_checkpointing = False
        self.model = Gemma3TextModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        init_weights(self)
        for m in self.modules():
            if isinstance(m, GemmaRMSNorm):
                nn.init.zeros_(m.weight)
        if config.tie_word_embeddings:  # departure 9: the default
            self.lm_head.weight = self.model.embed_tokens.weight
        # departure 7: the local layers' RoPE is the same formula with another base and no scaling
        self.local_rope = dataclasses.replace(config, rope_theta=config.rope_local_theta, rope_scaling=None)

    @property
    def layers(self):
        return self.model.layers

    def forward(self, input_ids, attention_mask=None, position_ids=None, kv_cache=None, return_hidden=False):
        """Logits [B, T, V] (soft-capped if the config says so), or with return_hidden the final-norm hidden
        states [B, T, C] (then logits = softcap(lm_head(h))). Arguments as in model.LlamaForCausalLM.forward."""
        windows = {layer.window for layer in self.layers}
        position_ids, masks = prepare_attention(input_ids, attention_mask, position_ids, kv_cache, windows)
        x = self.model.embed_tokens(input_ids)                                            # (B, T, C)
        # departure 5: sqrt(C) as a number of the embedding's dtype (sqrt(640) = 25.298 is 25.25 in bf16, and the
        # checkpoints were trained with that rounding), times the embeddings in that dtype
        x = x * torch.tensor(math.sqrt(self.config.hidden_size), dtype=x.dtype)
        rope = {}
        for window in windows:  # departure 7: None = global layers, an int = sliding-window layers
            inv_freq = rope_inv_freq(self.config if window is None else self.local_rope, device=input_ids.device)
            rope[window] = rope_cos_sin(inv_freq, position_ids, x.dtype)                  # 2 x (B, T, hs)
        x = run_layers(self, x, (rope,), masks, kv_cache)
        x = self.model.norm(x)                                                            # (B, T, C)
        if return_hidden:
            return x
        return softcap(self.lm_head(x), self.config.final_logit_softcapping)  # departure 8   (B, T, V)

