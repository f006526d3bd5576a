"""Tiny random transformers models, one per architecture minorpo supports, built in-process (no download).

`hf_model(arch)` builds the transformers model from a config (test-only oracle); `saved(arch, folder)` also
writes it with save_pretrained, the folder minorpo then loads. Every parameter is re-drawn at random (norm
weights around 1, biases nonzero), because transformers initializes biases to zero and norms to one, which
would hide a forgotten bias or a norm applied in the wrong place.
"""

from pathlib import Path

import torch

V = 256  # vocab
BASE = dict(vocab_size=V, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=128, bos_token_id=None, eos_token_id=None,
            pad_token_id=None)
OPT_BASE = dict(vocab_size=V, hidden_size=64, ffn_dim=96, num_hidden_layers=2, num_attention_heads=4,
                max_position_embeddings=128, bos_token_id=None, eos_token_id=None, pad_token_id=None,
                dropout=0.0)
GEMMA3 = dict(BASE, hidden_size=48, num_hidden_layers=3, head_dim=24, query_pre_attn_scalar=20, sliding_window=4,
              layer_types=["sliding_attention", "full_attention", "sliding_attention"], rope_theta=10000.0,
              rope_local_base_freq=100.0, rope_scaling={"rope_type": "linear", "factor": 4.0}, tie_word_embeddings=True)

# arch name -> (transformers config class name, kwargs). Sequences in the tests are 17-24 tokens long, so the
# sliding windows of 8 below really cut attention, and llama3 rope scaling with original context 32 puts the
# head_dim 16 frequencies in all three of its bands (wavelength 6.3 < 32/4: kept; 19.9: interpolated; 62.8 >
# 32/1: divided by the factor).
ARCHS = {
    "llama-tied": ("LlamaConfig", dict(BASE, tie_word_embeddings=True)),
    "llama3-untied": ("LlamaConfig", dict(BASE, tie_word_embeddings=False, rope_theta=10000.0, rope_scaling={
        "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 32})),
    "mistral": ("MistralConfig", dict(BASE, sliding_window=8, head_dim=32)),  # explicit head_dim != 64 / 4
    "qwen2": ("Qwen2Config", dict(BASE, tie_word_embeddings=False, use_sliding_window=True, sliding_window=8,
                                  max_window_layers=1)),  # q/k/v biases; layer 1 sliding, layer 0 full
    "qwen3": ("Qwen3Config", dict(BASE, tie_word_embeddings=True, head_dim=32, use_sliding_window=True,
                                  sliding_window=8, max_window_layers=1)),  # QK-norm, explicit head_dim 32 != 64/4
    # Gemma 3: layers sliding (window 4), global, sliding; head_dim 24 and query_pre_attn_scalar 20 both differ
    # from 48 / 4; each layer kind its own RoPE base, linear scaling (factor 4) on the global layer only; width 48,
    # so the embedding scale sqrt(48) = 6.928... is not exact in bf16 (6.9375).
    "gemma3": ("Gemma3TextConfig", GEMMA3),
    "gemma3-softcap-untied": ("Gemma3TextConfig", dict(GEMMA3, final_logit_softcapping=1.5, tie_word_embeddings=False)),
    "opt": ("OPTConfig", dict(OPT_BASE)),  # pre-LN, like OPT-125M / 1.3B
    "opt-350m": ("OPTConfig", dict(OPT_BASE, do_layer_norm_before=False, word_embed_proj_dim=32)),  # post-LN
}
LLAMA_FAMILY = ["llama-tied", "llama3-untied", "mistral", "qwen2", "qwen3", "gemma3", "gemma3-softcap-untied"]


def hf_model(arch: str, seed: int = 0, **overrides):
    import transformers

    cls_name, kwargs = ARCHS[arch]
    config = getattr(transformers, cls_name)(**{**kwargs, **overrides})
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="sdpa").eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.2 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
    return model


def saved(arch: str, folder, seed: int = 0, **overrides):
    """(transformers model, folder) with the model saved by save_pretrained in folder."""
    model = hf_model(arch, seed, **overrides)
    model.save_pretrained(str(folder))
    return model, Path(folder)


def hf_position_ids(attention_mask):
    """What minorpo derives from a padding mask (cumsum - 1, clamped at 0). transformers' Llama family does not
    derive positions from the mask in a plain forward, so tests pass these to it explicitly."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
