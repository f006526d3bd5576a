"""ModelConfig: the few numbers that define a decoder-only model, read from a transformers config.json.

minorpo supports two families (see model.py and opt.py):
  - "llama", "mistral", "qwen2" (Llama 2/3/3.1, Mistral, Qwen2/2.5, SmolLM2): RMSNorm, RoPE, GQA, SwiGLU.
  - "opt" (the ORPO paper's own models): learned positions, LayerNorm, ReLU, pre-LN or OPT-350M's post-LN.

`ModelConfig.from_hf(d)` reads both config.json dialects: transformers 4.x (`rope_theta` and `rope_scaling` at
top level) and transformers 5.x (`rope_parameters = {"rope_theta": ..., "rope_type": ..., ...}`).
`to_hf()` writes a dict that transformers can read back (keys we do not model are carried over untouched).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from .errors import UserError

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "opt")
SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3")
ARCHITECTURES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM",
                 "qwen2": "Qwen2ForCausalLM", "opt": "OPTForCausalLM"}


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
    layer_types: list[str] | None = None  # per layer "full_attention" | "sliding_attention" (Qwen2)
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
            tie_word_embeddings=d.get("tie_word_embeddings", model_type == "opt"),
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

        # Llama family. RoPE settings live either at top level (transformers 4) or in rope_parameters (5).
        params = d.get("rope_parameters") or {}
        rope_theta = float(params.get("rope_theta", d.get("rope_theta", 10000.0)))
        scaling = d.get("rope_scaling") or (params if params else None)
        if scaling is not None:
            rope_type = scaling.get("rope_type", scaling.get("type", "default"))
            if rope_type not in SUPPORTED_ROPE_TYPES:
                raise ConfigError(f"unsupported RoPE type {rope_type!r} in config.json; minorpo supports "
                                  f"{', '.join(SUPPORTED_ROPE_TYPES)}")
            scaling = None if rope_type == "default" else {
                k: v for k, v in {**scaling, "rope_type": rope_type}.items() if k not in ("type", "rope_theta")}
        heads = d["num_attention_heads"]
        head_dim = d.get("head_dim") or d["hidden_size"] // heads
        act = d.get("hidden_act", "silu")
        if model_type == "qwen2":
            bias, out_bias, mlp_bias = True, False, False
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
        if self.model_type in ("mistral", "qwen2"):
            d["sliding_window"] = self.sliding_window
        if self.model_type == "qwen2":
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


def _req(d: dict, key: str):
    if key not in d:
        raise ConfigError(f"config.json has no {key!r} (model_type {d.get('model_type')!r})")
    return d[key]
