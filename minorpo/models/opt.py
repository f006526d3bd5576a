"""OPT (Zhang et al. 2022), the ORPO paper's own models (125M, 350M, 1.3B), written from scratch.

Parameter names are those of transformers' OPTForCausalLM:

    model.decoder.embed_tokens.weight                         [V, P]   (P = word_embed_proj_dim)
    model.decoder.embed_positions.weight                      [max_positions + 2, C]
    model.decoder.project_in.weight / project_out.weight      [C, P] / [P, C]   (OPT-350M only, no bias)
    model.decoder.layers.{i}.self_attn.{q,k,v,out}_proj.{weight,bias}   [C, C], [C]
    model.decoder.layers.{i}.self_attn_layer_norm.{weight,bias}         [C]
    model.decoder.layers.{i}.fc1.{weight,bias} / fc2.{weight,bias}      [F, C] / [C, F]
    model.decoder.layers.{i}.final_layer_norm.{weight,bias}             [C]
    model.decoder.final_layer_norm.{weight,bias}              [C]      (pre-LN models only)
    lm_head.weight                                            [V, P]   (tied to embed_tokens)

Where OPT departs from the Llama-family model in model.py:
  - learned absolute position embeddings, looked up at position + 2: fairseq reserved rows 0 and 1 (its padding
    convention), and the released weights keep that offset;
  - LayerNorm with bias, ReLU MLP (fc1 -> relu -> fc2), biases on every linear layer, no GQA;
  - the query is multiplied by hs^-0.5 *before* q k^T (as fairseq and transformers do), so SDPA gets scale=1;
  - OPT-125M/1.3B are pre-LN (norm, sublayer, add; a final LayerNorm at the end). OPT-350M is post-LN
    (sublayer, add, norm; no final LayerNorm) and works at width C = 1024 inside but embeds tokens at
    P = 512: project_in maps embeddings P -> C, project_out maps the last hidden state C -> P before lm_head;
  - no dropout (the checkpoints say 0.1; minorpo trains without it, like TRL's default disable_dropout=True).
"""

from __future__ import annotations

import torch.nn as nn

from minorpo.hf.config import ModelConfig
from minorpo.models.llama import activation, attend, init_weights, prepare_attention, run_layers

POSITION_OFFSET = 2  # OPT looks up position p at row p + 2 of embed_positions


class OPTAttention(nn.Module):
    def __init__(self, config: ModelConfig, layer: int):
        super().__init__()
        self.layer = layer
        C, bias = config.hidden_size, config.enable_bias
        self.nh, self.hs = config.num_attention_heads, config.hidden_size // config.num_attention_heads
        self.q_proj = nn.Linear(C, C, bias=bias)
        self.k_proj = nn.Linear(C, C, bias=bias)
        self.v_proj = nn.Linear(C, C, bias=bias)
        self.out_proj = nn.Linear(C, C, bias=bias)

    def forward(self, x, mask, kv_cache):
        B, T, C = x.shape
        q = (self.q_proj(x) * self.hs ** -0.5).view(B, T, self.nh, self.hs).transpose(1, 2)  # (B, nh, T, hs)
        k = self.k_proj(x).view(B, T, self.nh, self.hs).transpose(1, 2)                     # (B, nh, T, hs)
        v = self.v_proj(x).view(B, T, self.nh, self.hs).transpose(1, 2)                     # (B, nh, T, hs)
        if kv_cache is not None:
            k, v = kv_cache.update(self.layer, k, v)                                        # (B, nh, S, hs)
        y = attend(q, k, v, mask, scale=1.0)  # q already scaled                            # (B, nh, T, hs)
        return self.out_proj(y.transpose(1, 2).reshape(B, T, C))                            # (B, T, C)


class OPTDecoderLayer(nn.Module):
    window = None  # OPT has no sliding window

    def __init__(self, config: ModelConfig, layer: int):
        super().__init__()
        C, F_, affine = config.hidden_size, config.intermediate_size, config.layer_norm_elementwise_affine
        self.pre_ln = config.do_layer_norm_before
        self.self_attn = OPTAttention(config, layer)
        self.self_attn_layer_norm = nn.LayerNorm(C, elementwise_affine=affine)
        self.fc1 = nn.Linear(C, F_, bias=config.enable_bias)
        self.fc2 = nn.Linear(F_, C, bias=config.enable_bias)
        self.final_layer_norm = nn.LayerNorm(C, elementwise_affine=affine)
        self.act = activation(config.hidden_act)

    def forward(self, x, mask, kv_cache):
        if self.pre_ln:  # OPT-125M, 1.3B, ...: x + f(norm(x))
            x = x + self.self_attn(self.self_attn_layer_norm(x), mask, kv_cache)
            x = x + self.fc2(self.act(self.fc1(self.final_layer_norm(x))))
        else:            # OPT-350M: norm(x + f(x))
            x = self.self_attn_layer_norm(x + self.self_attn(x, mask, kv_cache))
            x = self.final_layer_norm(x + self.fc2(self.act(self.fc1(x))))
        return x                                                                            # (B, T, C)


class OPTDecoder(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        C, P = config.hidden_size, config.word_embed_proj_dim or config.hidden_size
        self.embed_tokens = nn.Embedding(config.vocab_size, P)
        self.embed_positions = nn.Embedding(config.max_position_embeddings + POSITION_OFFSET, C)
        self.project_in = nn.Linear(P, C, bias=False) if P != C else None
        self.project_out = nn.Linear(C, P, bias=False) if P != C else None
        has_final_norm = config.do_layer_norm_before and not config.remove_final_layer_norm
        self.final_layer_norm = (nn.LayerNorm(C, elementwise_affine=config.layer_norm_elementwise_affine)
                                 if has_final_norm else None)
        self.layers = nn.ModuleList(OPTDecoderLayer(config, i) for i in range(config.num_hidden_layers))


class OPTForCausalLM(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.gradient_checkpointing = False
        self.model = nn.Module()
        self.model.decoder = OPTDecoder(config)
        P = config.word_embed_proj_dim or config.hidden_size
        self.lm_head = nn.Linear(P, config.vocab_size, bias=False)
        init_weights(self)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.decoder.embed_tokens.weight

    @property
    def layers(self):
        return self.model.decoder.layers

    def forward(self, input_ids, attention_mask=None, position_ids=None, kv_cache=None, return_hidden=False):
        """Logits [B, T, V], or with return_hidden the hidden states [B, T, P] fed to lm_head.

        Same arguments as LlamaForCausalLM.forward (see llama.prepare_attention).
        """
        dec = self.model.decoder
        position_ids, masks = prepare_attention(input_ids, attention_mask, position_ids, kv_cache)
        x = dec.embed_tokens(input_ids)                                                     # (B, T, P)
        if dec.project_in is not None:
            x = dec.project_in(x)                                                           # (B, T, C)
        x = x + dec.embed_positions(position_ids + POSITION_OFFSET)                         # (B, T, C)
        x = run_layers(self, x, (), masks, kv_cache)
        if dec.final_layer_norm is not None:
            x = dec.final_layer_norm(x)
        if dec.project_out is not None:
            x = dec.project_out(x)                                                          # (B, T, P)
        if return_hidden:
            return x
        return self.lm_head(x)                                                              # (B, T, V)
