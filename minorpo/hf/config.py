"""ModelConfig: the few numbers that define a decoder-only model, read from a transformers config.json.

minorpo supports three families (see models/llama.py, gemma3.py and opt.py):
  - "llama", "mistral", "qwen2", "qwen3" (Llama 2/3/3.1, Mistral, Qwen2/2.5/3, SmolLM2): RMSNorm, RoPE, GQA, SwiGLU;
    Qwen3 adds a per-head RMSNorm on queries and keys (qk_norm).
  - "gemma3_text" (Gemma 3, text only): the Llama block with the departures listed in gemma3.py.
  - "opt" (the ORPO paper's own models): learned positions, LayerNorm, ReLU, pre-LN or OPT-350M's post-LN.

`ModelConfig.from_hf(d)` reads both config.json dialects: transformers 4.x (`rope_theta` and `rope_scaling` at
top level) and transformers 5.x (`rope_parameters = {"rope_theta": ..., "rope_type": ..., ...}`).
Gemma 3 has its own RoPE dialects: `rope_theta` (global layers) and `rope_local_base_freq` (sliding layers) at top
level, or `rope_parameters = {"full_attention": {...}, "sliding_attention": {...}}`; and its layer types either
as `layer_types` or the older `sliding_window_pattern` (every n-th layer global).
`to_hf()` writes a dict that transformers can read back (keys we do not model are carried over untouched).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from minorpo.errors import UserError

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3", "gemma3_text", "opt")
SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3")
ARCHITECTURES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM",
                 "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM", "gemma3_text": "Gemma3ForCausalLM",
                 "opt": "OPTForCausalLM"}
# model types that are close relatives of supported ones but are not supported: what to say instead
UNSUPPORTED_RELATIVES = {
    "gemma3": "a multimodal Gemma 3 checkpoint (it has a vision_config); minorpo supports the text-only "
              "gemma3_text models (Gemma 3 270M and 1B, or a text-only export)",
    "qwen3_moe": "Qwen3-MoE (mixture-of-experts MLPs, num_experts); minorpo supports the dense qwen3 models",
}


class ConfigError(UserError):
    """A config.json that minorpo cannot (or will not) turn into a model."""


@dataclass
class ModelConfig:
    model_type: str                      # one of SUPPORTED_MODEL_TYPES
    vocab_size: int
    hidden_size: int                     # width of the residual stream
    intermediate_size: int               # MLP width (OPT calls it ffn_dim)
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int             # < num_attention_heads means grouped-query attention (GQA)
    head_dim: int                        # usually hidden_size // num_attention_heads, but may be explicit
    max_position_embeddings: int
    hidden_act: str = "silu"             # "silu" for the Llama family, "relu" for OPT
    tie_word_embeddings: bool = False    # lm_head shares its weight with the input embedding
    # --- Llama family ---
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: dict | None = None     # None, or {"rope_type": "linear"|"llama3", "factor": ..., ...}
    attention_bias: bool = False         # biases on q/k/v_proj (Llama's flag, always True for Qwen2)
    attention_out_bias: bool = False     # bias on o_proj (Llama: same flag as q/k/v; Qwen2: never)
    mlp_bias: bool = False               # biases on gate/up/down_proj
    sliding_window: int | None = None    # Mistral / Qwen2: a query sees only the last `sliding_window` keys
    layer_types: list[str] | None = None  # per layer "full_attention" | "sliding_attention" (Qwen2/3, Gemma 3)
    qk_norm: bool = False                # Qwen3, Gemma 3: RMSNorm over head_dim on each query and key head
    # --- Gemma 3 (gemma3.py) ---
    query_pre_attn_scalar: float | None = None  # attention scale 1/sqrt(this) instead of 1/sqrt(head_dim)
    rope_local_theta: float | None = None       # RoPE base of the sliding-window layers (rope_theta: global ones)
    final_logit_softcapping: float | None = None  # logits -> cap * tanh(logits / cap)
    # --- OPT ---
    do_layer_norm_before: bool = True    # False for OPT-350M (post-LN)
    word_embed_proj_dim: int | None = None  # != hidden_size for OPT-350M (project_in / project_out)
    enable_bias: bool = True             # OPT linear biases
    layer_norm_elementwise_affine: bool = True
    remove_final_layer_norm: bool = False  # OPT's `_remove_final_layer_norm` (old checkpoints)
    # --- special tokens (informative; generation reads eos_token_id) ---
    bos_token_id: int | list[int] | None = None
    eos_token_id: int | list[int] | None = None
    pad_token_id: int | None = None
    generation_eos_token_id: int | list[int] | None = None  # from generation_config.json (not written back)
    # every key of the original config.json, so to_hf() does not lose what we do not model
    raw: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def is_opt(self) -> bool:
        return self.model_type == "opt"

    @property
    def is_gemma(self) -> bool:
        return self.model_type == "gemma3_text"

    def layer_window(self, i: int) -> int | None:
        """The sliding-window size of layer i, or None for full (causal) attention."""
        if self.sliding_window is None:
            return None
        if self.layer_types is None:
            return self.sliding_window
        return self.sliding_window if self.layer_types[i] == "sliding_attention" else None

    # ------------------------------------------------------------------ reading config.json
    @classmethod
    def from_hf(cls, d: dict[str, Any]) -> "ModelConfig":
        model_type = d.get("model_type")
        if model_type in UNSUPPORTED_RELATIVES:
            raise ConfigError(f"model_type {model_type!r} is {UNSUPPORTED_RELATIVES[model_type]}")
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise ConfigError(f"unsupported model_type {model_type!r} in config.json; minorpo supports "
                              f"{', '.join(SUPPORTED_MODEL_TYPES)}")
        _check_architectures(d)
        common = dict(
            model_type=model_type,
            vocab_size=_req(d, "vocab_size"),
            hidden_size=_req(d, "hidden_size"),
            num_hidden_layers=_req(d, "num_hidden_layers"),
            num_attention_heads=_req(d, "num_attention_heads"),
            max_position_embeddings=_req(d, "max_position_embeddings"),
            tie_word_embeddings=d.get("tie_word_embeddings", model_type in ("opt", "gemma3_text")),
            bos_token_id=d.get("bos_token_id"),
            eos_token_id=d.get("eos_token_id"),
            pad_token_id=d.get("pad_token_id"),
            raw=dict(d),
        )
        if model_type == "opt":
            return cls(
                **common,
                intermediate_size=_req(d, "ffn_dim"),
                num_key_value_heads=d["num_attention_heads"],
                head_dim=d["hidden_size"] // d["num_attention_heads"],
                hidden_act=d.get("activation_function", "relu"),
                do_layer_norm_before=d.get("do_layer_norm_before", True),
                word_embed_proj_dim=d.get("word_embed_proj_dim") or d["hidden_size"],
                enable_bias=d.get("enable_bias", True),
                layer_norm_elementwise_affine=d.get("layer_norm_elementwise_affine", True),
                remove_final_layer_norm=d.get("_remove_final_layer_norm", False),
            )

        if model_type == "gemma3_text":
            return cls._gemma3_from_hf(d, common)
        # Llama family. RoPE settings live either at top level (transformers 4) or in rope_parameters (5).
        params = d.get("rope_parameters") or {}
        rope_theta = float(params.get("rope_theta", d.get("rope_theta", 10000.0)))
        scaling = _rope_scaling(d.get("rope_scaling") or (params if params else None), "rope_scaling")
        heads = d["num_attention_heads"]
        head_dim = d.get("head_dim") or d["hidden_size"] // heads
        act = d.get("hidden_act", "silu")
        if model_type in ("qwen2", "qwen3"):
            if model_type == "qwen2":  # biases on q/k/v, never on o
                bias, out_bias, mlp_bias = True, False, False
            else:  # Qwen3: no biases unless attention_bias (then on q/k/v and o, as in Llama)
                bias = out_bias = bool(d.get("attention_bias", False))
                mlp_bias = False
            window = d.get("sliding_window") if d.get("use_sliding_window", False) else None
            layer_types = d.get("layer_types")
            if window is not None and layer_types is None:   # transformers' rule when layer_types is absent
                layer_types = ["sliding_attention" if i >= d.get("max_window_layers", 28) else "full_attention"
                               for i in range(d["num_hidden_layers"])]
        elif model_type == "mistral":
            bias = out_bias = mlp_bias = False
            window, layer_types = d.get("sliding_window"), None
        else:  # llama
            bias = out_bias = bool(d.get("attention_bias", False))
            mlp_bias = bool(d.get("mlp_bias", False))
            window, layer_types = None, None
        return cls(
            **common,
            intermediate_size=_req(d, "intermediate_size"),
            num_key_value_heads=d.get("num_key_value_heads") or heads,
            head_dim=head_dim,
            hidden_act=act,
            rms_norm_eps=float(d.get("rms_norm_eps", 1e-6)),
            rope_theta=rope_theta,
            rope_scaling=scaling,
            attention_bias=bias,
            attention_out_bias=out_bias,
            mlp_bias=mlp_bias,
            sliding_window=window,
            layer_types=layer_types,
            qk_norm=model_type == "qwen3",
        )

    @classmethod
    def _gemma3_from_hf(cls, d: dict[str, Any], common: dict) -> "ModelConfig":
        """Gemma 3 (text): transformers' Gemma3TextConfig defaults, both RoPE dialects, both layer-type dialects."""
        if d.get("use_bidirectional_attention"):
            raise ConfigError("use_bidirectional_attention=true (an EmbeddingGemma-style encoder) is not supported: "
                              "minorpo trains causal decoders")
        if d.get("attn_logit_softcapping") is not None:  # Gemma 2 used it; transformers' Gemma 3 never applies it
            raise ConfigError(f"attn_logit_softcapping={d['attn_logit_softcapping']} is not supported for "
                              "gemma3_text: transformers' Gemma 3 ignores it, so no released Gemma 3 uses it and "
                              "minorpo will not guess whether to apply it")
        n = _req(d, "num_hidden_layers")
        layer_types = d.get("layer_types")
        if layer_types is None:  # older configs: every `sliding_window_pattern`-th layer is global
            pattern = d.get("sliding_window_pattern", 6)
            layer_types = ["sliding_attention" if (i + 1) % pattern else "full_attention" for i in range(n)]
        if len(layer_types) != n or set(layer_types) - {"sliding_attention", "full_attention"}:
            raise ConfigError(f"layer_types must list 'sliding_attention' or 'full_attention' for each of the {n} "
                              f"layers, got {layer_types}")
        params = d.get("rope_parameters") or {}
        if params and not set(params) <= {"full_attention", "sliding_attention"}:
            raise ConfigError("rope_parameters of gemma3_text must be keyed by layer type ('full_attention', "
                              f"'sliding_attention'), got keys {sorted(params)}")
        full = dict(params.get("full_attention") or {})
        full.update(d.get("rope_scaling") or {})  # transformers 4's rope_scaling applies to the global layers
        local = params.get("sliding_attention") or {}
        if _rope_scaling(local, "rope_parameters.sliding_attention") is not None:
            raise ConfigError("rope_parameters.sliding_attention: minorpo supports only default RoPE on Gemma 3's "
                              f"sliding-window layers, got rope_type {local.get('rope_type')!r}")
        bias = bool(d.get("attention_bias", False))
        return cls(
            **common,
            intermediate_size=_req(d, "intermediate_size"),
            num_key_value_heads=d.get("num_key_value_heads") or d["num_attention_heads"],
            head_dim=d.get("head_dim") or 256,
            hidden_act=d.get("hidden_activation") or d.get("hidden_act") or "gelu_pytorch_tanh",
            rms_norm_eps=float(d.get("rms_norm_eps", 1e-6)),
            rope_theta=float(full.get("rope_theta", d.get("rope_theta", 1_000_000.0))),
            rope_scaling=_rope_scaling(full, "rope_parameters.full_attention"),
            rope_local_theta=float(local.get("rope_theta", d.get("rope_local_base_freq", 10_000.0))),
            attention_bias=bias,
            attention_out_bias=bias,
            sliding_window=d.get("sliding_window", 4096),
            layer_types=list(layer_types),
            qk_norm=True,
            query_pre_attn_scalar=d.get("query_pre_attn_scalar", 256),  # kept as written: transformers wants an int
            final_logit_softcapping=d.get("final_logit_softcapping"),
        )

    # ------------------------------------------------------------------ writing config.json
    def to_hf(self) -> dict[str, Any]:
        d = dict(self.raw)
        d.update(
            model_type=self.model_type,
            architectures=[ARCHITECTURES[self.model_type]],
            vocab_size=self.vocab_size,
            hidden_size=self.hidden_size,
            num_hidden_layers=self.num_hidden_layers,
            num_attention_heads=self.num_attention_heads,
            max_position_embeddings=self.max_position_embeddings,
            tie_word_embeddings=self.tie_word_embeddings,
            bos_token_id=self.bos_token_id,
            eos_token_id=self.eos_token_id,
            pad_token_id=self.pad_token_id,
        )
        if self.is_opt:
            d.update(
                ffn_dim=self.intermediate_size,
                activation_function=self.hidden_act,
                do_layer_norm_before=self.do_layer_norm_before,
                word_embed_proj_dim=self.word_embed_proj_dim,
                enable_bias=self.enable_bias,
                layer_norm_elementwise_affine=self.layer_norm_elementwise_affine,
                _remove_final_layer_norm=self.remove_final_layer_norm,
            )
            return d
        # Both RoPE dialects, so transformers 4 and 5 read the same thing.
        d.pop("rope_parameters", None)
        if self.is_gemma:
            d.update(
                intermediate_size=self.intermediate_size,
                num_key_value_heads=self.num_key_value_heads,
                head_dim=self.head_dim,
                hidden_activation=self.hidden_act,
                rms_norm_eps=self.rms_norm_eps,
                rope_theta=self.rope_theta,
                rope_local_base_freq=self.rope_local_theta,
                rope_scaling=dict(self.rope_scaling) if self.rope_scaling else None,
                attention_bias=self.attention_bias,
                sliding_window=self.sliding_window,
                layer_types=list(self.layer_types),
                query_pre_attn_scalar=self.query_pre_attn_scalar,
                final_logit_softcapping=self.final_logit_softcapping,
                attn_logit_softcapping=None,
            )
            return d
        d.update(
            intermediate_size=self.intermediate_size,
            num_key_value_heads=self.num_key_value_heads,
            head_dim=self.head_dim,
            hidden_act=self.hidden_act,
            rms_norm_eps=self.rms_norm_eps,
            rope_theta=self.rope_theta,
            rope_scaling=dict(self.rope_scaling) if self.rope_scaling else None,
        )
        if self.model_type == "llama":
            d.update(attention_bias=self.attention_bias, mlp_bias=self.mlp_bias)
        if self.model_type in ("mistral", "qwen2", "qwen3"):
            d["sliding_window"] = self.sliding_window
        if self.model_type == "qwen3":
            d["attention_bias"] = self.attention_bias
        if self.model_type in ("qwen2", "qwen3"):
            d["use_sliding_window"] = self.sliding_window is not None
            if self.layer_types is not None:
                d["layer_types"] = list(self.layer_types)
        return d


def _check_architectures(d: dict) -> None:
    """config.json's `architectures` (the transformers class) must be of the family its model_type names: a
    GPT2LMHeadModel config with model_type llama is a broken file, not a Llama."""
    ours = ARCHITECTURES.get(d["model_type"])
    archs = d.get("architectures") or []
    family = re.compile(r"(For[A-Z]\w*|LMHeadModel|Model)$")
    if ours and archs and not any(family.sub("", a) == family.sub("", ours) for a in archs if isinstance(a, str)):
        raise ConfigError(f"architectures {archs} does not match model_type {d['model_type']!r} (whose class is "
                          f"{ours}); fix one of the two fields")


def _rope_scaling(scaling: dict | None, where: str) -> dict | None:
    """None for plain RoPE, else the scaling dict {"rope_type": "linear"|"llama3", "factor": ..., ...}."""
    if not scaling:
        return None
    rope_type = scaling.get("rope_type", scaling.get("type", "default"))
    if rope_type not in SUPPORTED_ROPE_TYPES:
        raise ConfigError(f"unsupported RoPE type {rope_type!r} in config.json ({where}); minorpo supports "
                          f"{', '.join(SUPPORTED_ROPE_TYPES)}")
    if rope_type == "default":
        return None
    return {k: v for k, v in {**scaling, "rope_type": rope_type}.items() if k not in ("type", "rope_theta")}


def _req(d: dict, key: str):
    if key not in d:
        raise ConfigError(f"config.json has no {key!r} (model_type {d.get('model_type')!r})")
    return d[key]
