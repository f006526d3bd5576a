"""The decoder models, each written from scratch with transformers' parameter names.

llama.py is the one to read first (Llama 2/3, Mistral, Qwen2/2.5/3, SmolLM2); gemma3.py and opt.py list only where
their families depart from it. `build_model` picks the class from a config's model_type.
"""

import torch.nn as nn

from minorpo.hf.config import ModelConfig
from minorpo.models.gemma3 import Gemma3ForCausalLM
from minorpo.models.llama import LlamaForCausalLM
from minorpo.models.opt import OPTForCausalLM


def build_model(config: ModelConfig) -> nn.Module:
    """A randomly initialized model of config's architecture (load weights with minorpo.hf.loader)."""
    if config.model_type == "opt":
        return OPTForCausalLM(config)
    if config.model_type == "gemma3_text":
        return Gemma3ForCausalLM(config)
    if config.model_type in ("llama", "mistral", "qwen2", "qwen3"):
        return LlamaForCausalLM(config)
    raise ValueError(f"unsupported model_type {config.model_type!r}")
