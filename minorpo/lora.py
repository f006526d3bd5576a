"""LoRA by hand (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models").

A frozen linear layer W (out x in) gets a trainable low-rank update:

    y = x W^T + b + (alpha / r) * dropout(x) A^T B^T          A: (r x in), B: (out x r)

- A starts Kaiming-uniform, B starts at zero, so at initialisation the model is exactly the base model.
- The base weight keeps its original key (`...q_proj.weight`), so a normal checkpoint loads unchanged;
  the adapter adds `...q_proj.lora_A.weight` and `...q_proj.lora_B.weight`, PEFT's own names (minorpo/hf/peft.py
  reads and writes PEFT adapter folders).
- `disabled=True` gives the base model back without a copy: that is DPO's reference model for free.
- merge / unmerge fold (alpha/r) B A into W and back. Both are idempotent. With bf16 base weights a
  merge-unmerge round trip is not bit-exact (the sum is rounded to bf16): keep the base in fp32 if that matters.
- q, k and v are separate linears here (no fused QKV), which avoids the index bugs fused-QKV LoRA is known for.
"""

import math
from contextlib import contextmanager

import torch
import torch.nn as nn
import torch.nn.functional as F

from minorpo.errors import UserError

# What "attention" means per architecture: Llama-family names and OPT's out_proj.
ATTENTION_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "out_proj")


class LoRALinear(nn.Module):
    """A linear layer with a frozen base weight and a trainable rank-r update."""

    def __init__(self, base: nn.Linear, r: int, alpha: float, dropout: float = 0.0, device=None):
        super().__init__()
        if r <= 0:
            raise ValueError(f"LoRA rank r must be positive, got {r}")
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight = base.weight  # same Parameter object: the key and the storage stay the base model's
        self.bias = base.bias
        self.weight.requires_grad_(False)
        if self.bias is not None:
            self.bias.requires_grad_(False)
        self.r, self.alpha = r, alpha
        self.scale = alpha / r
        # Adapter weights live in fp32 even if the base is bf16/fp16 (optimizer state follows the parameter
        # dtype); a float64 base (tests) keeps float64. `device`: where to create them (default: the base's; a
        # base on the meta device, minorpo/run/fsdp.py, still gets real, seeded adapters).
        dtype = torch.float64 if base.weight.dtype == torch.float64 else torch.float32
        device = base.weight.device if device is None else device
        self.lora_A = nn.Linear(self.in_features, r, bias=False, device=device, dtype=dtype)
        self.lora_B = nn.Linear(r, self.out_features, bias=False, device=device, dtype=dtype)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.merged = False
        self.disabled = False
        self.reset_lora_parameters()

    def reset_lora_parameters(self):
        # Same initialisation as PEFT and the reference implementation: A ~ Kaiming-uniform(a=sqrt(5)), B = 0.
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B.weight)

    def delta_weight(self) -> torch.Tensor:
        return self.scale * (self.lora_B.weight @ self.lora_A.weight)  # (out, r) @ (r, in) -> (out, in)

    def lora_out(self, x: torch.Tensor) -> torch.Tensor:
        h = self.lora_A(self.dropout(x).to(self.lora_A.weight.dtype))  # (..., r)
        return (self.lora_B(h) * self.scale).to(x.dtype)  # (..., out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.linear(x, self.weight, self.bias)
        if self.merged:
            # W already holds W0 + scale*BA; disabling must take the update back out.
            return y - self.lora_out(x) if self.disabled else y
        return y if self.disabled else y + self.lora_out(x)

    @torch.no_grad()
    def merge(self):
        if not self.merged:
            self.weight += self.delta_weight().to(self.weight.dtype)
            self.merged = True

    @torch.no_grad()
    def unmerge(self):
        if self.merged:
            self.weight -= self.delta_weight().to(self.weight.dtype)
            self.merged = False

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, r={self.r}, alpha={self.alpha}"


def _resolve_targets(model: nn.Module, targets) -> list:
    """Names (full module paths) of the nn.Linear layers to adapt.

    targets: "all-linear" (every nn.Linear except the output head, as PEFT does), "attention"
    (q/k/v/o, or OPT's out_proj), or a list of module-name suffixes such as ["q_proj", "v_proj"].
    """
    linears = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear) and not isinstance(m, LoRALinear)}
    linears = {n: m for n, m in linears.items() if not n.endswith(("lora_A", "lora_B"))}
    if targets == "all-linear":
        return [n for n in linears if n.split(".")[-1] != "lm_head"]
    suffixes = ATTENTION_TARGETS if targets == "attention" else tuple(targets)
    names = [n for n in linears if n.split(".")[-1] in suffixes]
    if not names:
        have = sorted({n.split(".")[-1] for n in linears})
        raise UserError(f"LoRA target modules {list(suffixes)} match no nn.Linear in the model; it has {have}")
    return names


def apply_lora(model: nn.Module, r: int = 16, alpha: float = 32.0, dropout: float = 0.0,
               targets="attention", device=None) -> list:
    """Replace the target linears with LoRALinear in place, freeze everything else. Returns the adapted names.

    After this call only the lora_A / lora_B weights have requires_grad=True. device: see LoRALinear.
    """
    names = _resolve_targets(model, targets)
    for p in model.parameters():
        p.requires_grad_(False)
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, LoRALinear(getattr(parent, child), r=r, alpha=alpha, dropout=dropout, device=device))
    model.lora_config = {"r": r, "alpha": alpha, "dropout": dropout, "target_modules": sorted({n.split(".")[-1] for n in names})}
    return names


def lora_layers(model: nn.Module):
    return [(n, m) for n, m in model.named_modules() if isinstance(m, LoRALinear)]


def lora_state_dict(model: nn.Module, state_dict: dict | None = None) -> dict:
    """Only the adapter weights, under minorpo's (= the model's) key names (from state_dict, default the model's)."""
    state_dict = model.state_dict() if state_dict is None else state_dict
    return {k: v for k, v in state_dict.items() if ".lora_A." in k or ".lora_B." in k}


def merge_lora(model: nn.Module):
    for _, m in lora_layers(model):
        m.merge()


def unmerge_lora(model: nn.Module):
    for _, m in lora_layers(model):
        m.unmerge()


@contextmanager
def lora_disabled(model: nn.Module):
    """Run the base model (all adapters off) inside the block: DPO's reference model at no memory cost."""
    layers = lora_layers(model)
    before = [m.disabled for _, m in layers]
    for _, m in layers:
        m.disabled = True
    try:
        yield model
    finally:
        for (_, m), d in zip(layers, before):
            m.disabled = d


def merged_state_dict(model: nn.Module, state_dict: dict | None = None) -> dict:
    """A pure function of the model's weights: base keys only, each adapted weight replaced by W + (alpha/r) B A.

    The model itself is not changed. The result loads into the plain (un-adapted) model, or into transformers.
    state_dict: the weights to merge (default the model's; fsdp.py passes the gathered full tensors).
    """
    full = model.state_dict() if state_dict is None else state_dict
    sd = {}
    adapted = dict(lora_layers(model))
    for k, v in full.items():
        if ".lora_A." in k or ".lora_B." in k:
            continue
        module_name, _, leaf = k.rpartition(".")
        m = adapted.get(module_name)
        if m is not None and leaf == "weight" and not m.merged:
            B, A = full[module_name + ".lora_B.weight"], full[module_name + ".lora_A.weight"]
            delta = m.scale * (B @ A)  # = m.delta_weight(), from these weights
            v = (v.float() + delta.float()).to(v.dtype)
        sd[k] = v.detach()
    return sd
