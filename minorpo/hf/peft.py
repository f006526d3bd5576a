"""PEFT's LoRA adapter format, written and read without importing peft.

An adapter folder holds adapter_config.json (r, lora_alpha, target_modules, ...) and adapter_model.safetensors,
whose keys are "base_model.model.<module path>.lora_A.weight" (r, in) and ".lora_B.weight" (out, r). minorpo's
LoRA layers already use those module paths (minorpo/lora.py), so exporting is adding the prefix and importing is
taking it off (and PEFT's in-memory ".default" adapter name, which some saved adapters carry).
"""

import json
from pathlib import Path

import torch.nn as nn

from minorpo.errors import MissingFileError, UserError
from minorpo.lora import apply_lora, lora_state_dict
from minorpo.run.fileio import atomic_write

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."


def save_peft_adapter(model: nn.Module, out_dir, base_model_name_or_path: str = "",
                      state_dict: dict | None = None) -> Path:
    """Write a PEFT-loadable LoRA adapter folder; state_dict as lora.lora_state_dict."""
    from safetensors.torch import save_file

    cfg = getattr(model, "lora_config", None)
    if cfg is None:
        raise ValueError("model has no LoRA adapters (call apply_lora first)")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {PEFT_PREFIX + k: v.detach().contiguous().cpu() for k, v in lora_state_dict(model, state_dict).items()}
    adapter_config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": str(base_model_name_or_path),
        "r": cfg["r"],
        "lora_alpha": cfg["alpha"],
        "lora_dropout": cfg["dropout"],
        "target_modules": cfg["target_modules"],
        "bias": "none",
        "fan_in_fan_out": False,
        "use_rslora": False,
        "use_dora": False,
        "init_lora_weights": True,
        "inference_mode": True,
        "modules_to_save": None,
    }
    atomic_write(out / ADAPTER_WEIGHTS, lambda p: save_file(tensors, str(p), metadata={"format": "pt"}))
    atomic_write(out / ADAPTER_CONFIG, lambda p: Path(p).write_text(json.dumps(adapter_config, indent=2)))
    return out


def read_adapter_config(path: Path) -> dict:
    """adapter_config.json, checked for what minorpo can apply: plain LoRA with r, lora_alpha, target_modules."""
    try:
        cfg = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"{path} is not valid JSON: {e}") from e
    if not isinstance(cfg, dict):
        raise UserError(f"{path}: expected a JSON object, found {type(cfg).__name__}")
    if cfg.get("peft_type", "LORA") != "LORA":
        raise UserError(f"{path}: peft_type {cfg.get('peft_type')!r} is not LORA")
    if cfg.get("use_rslora") or cfg.get("use_dora") or cfg.get("fan_in_fan_out"):
        raise UserError(f"{path}: rsLoRA, DoRA and fan_in_fan_out adapters are not supported")
    missing = [k for k in ("r", "lora_alpha", "target_modules") if k not in cfg]
    if missing:
        raise UserError(f"{path}: missing {', '.join(missing)}")
    return cfg


def load_peft_adapter(model: nn.Module, adapter_dir, dropout: float = None) -> list:
    """Apply LoRA from a PEFT adapter folder to a plain minorpo model (strict: every tensor must match)."""
    from safetensors.torch import load_file

    adapter_dir = Path(adapter_dir)
    cfg_path, w_path = adapter_dir / ADAPTER_CONFIG, adapter_dir / ADAPTER_WEIGHTS
    for p in (cfg_path, w_path):
        if not p.exists():
            raise MissingFileError(f"{p} not found: a PEFT adapter folder needs {ADAPTER_CONFIG} and {ADAPTER_WEIGHTS}")
    cfg = read_adapter_config(cfg_path)
    targets = cfg["target_modules"]
    if isinstance(targets, str):
        targets = "all-linear" if targets == "all-linear" else [targets]
    apply_lora(model, r=cfg["r"], alpha=cfg["lora_alpha"],
               dropout=cfg.get("lora_dropout", 0.0) if dropout is None else dropout, targets=targets)
    tensors = load_file(str(w_path))
    own = lora_state_dict(model)
    got = {}
    for k, v in tensors.items():
        name = k[len(PEFT_PREFIX):] if k.startswith(PEFT_PREFIX) else k
        name = name.replace(".lora_A.default.", ".lora_A.").replace(".lora_B.default.", ".lora_B.")
        if name not in own:
            raise UserError(f"{w_path}: tensor {k!r} has no place in the model (no LoRA layer {name!r})")
        if own[name].shape != v.shape:
            raise UserError(f"{w_path}: tensor {k!r} has shape {tuple(v.shape)}, the model expects "
                            f"{tuple(own[name].shape)}")
        got[name] = v
    missing = sorted(set(own) - set(got))
    if missing:
        raise UserError(f"{w_path}: missing LoRA tensors, e.g. {missing[:3]} ({len(missing)} in all)")
    model.load_state_dict(got, strict=False)
    return sorted(got)
