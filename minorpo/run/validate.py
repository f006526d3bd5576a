"""Checks of a training run's settings before anything slow happens (model load, tokenization, evaluation).

`check_train_config(cfg)` raises UserError naming the flag as the user typed it (--max-length, not
TrainConfig.max_length). train() calls it first, so a library caller gets the same checks as the command line.
Checks that read files read only small ones (a model folder's config.json, the listing of a data folder).
"""

from __future__ import annotations

import math
from dataclasses import fields

from minorpo.errors import MissingFileError, UserError
from minorpo.fast import flex


def flag(name: str) -> str:
    """The command-line flag of a TrainConfig field: max_length -> --max-length."""
    return "--" + name.replace("_", "-")


# field -> (test, what it must be); a field absent here is checked only by its type and choices
RANGES = {
    "lam": (lambda v: v >= 0, "a weight >= 0 (the paper uses 0.1-1.0)"),
    "beta": (lambda v: v > 0, "> 0"),
    "lora_r": (lambda v: v >= 0, "a rank >= 0 (0 = full fine-tuning)"),
    "lora_dropout": (lambda v: 0 <= v < 1, "a probability in [0, 1)"),
    "lr": (lambda v: v > 0, "a learning rate > 0"),
    "weight_decay": (lambda v: v >= 0, ">= 0"),
    "warmup_steps": (lambda v: v >= 0, ">= 0"),
    "max_steps": (lambda v: v >= 1, ">= 1 (a run of 0 steps trains nothing)"),
    "batch_size": (lambda v: v >= 1, ">= 1"),
    "grad_accum": (lambda v: v >= 1, ">= 1"),
    "max_grad_norm": (lambda v: v >= 0, ">= 0 (0 = no clipping)"),
    "max_length": (lambda v: v >= 2, ">= 2 (one prompt token and one response token)"),
    "max_prompt_length": (lambda v: v >= 0, ">= 0 (0 = half of --max-length)"),
    "eval_pairs": (lambda v: v >= 0, ">= 0"),
    "eval_every": (lambda v: v >= 0, ">= 0 (0 = only at the start and end)"),
    "max_pairs": (lambda v: v >= 0, ">= 0 (0 = all)"),
    "chunk_size": (lambda v: v >= 0, ">= 0 (0 = unchunked)"),
    "length_buckets": (lambda v: v >= 0, ">= 0 (0 = off)"),
    "save_every": (lambda v: v >= -1, ">= 0, or -1 (never)"),
    "threads": (lambda v: v >= 0, ">= 0 (0 = torch's default)"),
    "keep_checkpoints": (lambda v: v >= 1, ">= 1"),
}


def check_fields(cfg, names=None) -> None:
    """Types, choices and ranges of cfg's fields (all, or those in `names`)."""
    for f in fields(cfg):
        if names is not None and f.name not in names:
            continue
        value = getattr(cfg, f.name)
        choices = f.metadata.get("choices")
        if choices and value not in choices:
            raise UserError(f"{flag(f.name)} {value!r}: expected one of {', '.join(choices)}")
        if isinstance(value, float) and not math.isfinite(value):
            raise UserError(f"{flag(f.name)} {value}: expected a finite number")
        if f.name in RANGES and not RANGES[f.name][0](value):
            raise UserError(f"{flag(f.name)} {value:g}: must be {RANGES[f.name][1]}")
    if cfg.max_prompt_length > cfg.max_length:  # equal: the prompt may use the whole budget (no separate cap)
        raise UserError(f"--max-prompt-length {cfg.max_prompt_length} must be <= --max-length {cfg.max_length} "
                        f"(the prompt is part of the sequence)")


def check_train_config(cfg, model: bool = True, data: bool = True) -> None:
    """Raise UserError for the first setting of cfg (a TrainConfig) that cannot work. model/data=False: the
    caller passes the model / the pairs in, so cfg.model / cfg.data are not read."""
    check_fields(cfg)
    for name in ("model", "data"):
        if not getattr(cfg, name):
            raise UserError(f"{flag(name)} is required")
    if cfg.lora_r > 0 and not cfg.lora_alpha > 0:
        raise UserError(f"--lora-alpha {cfg.lora_alpha:g}: must be > 0 (the LoRA update is scaled by alpha/r)")
    if cfg.lora_r > 0 and not all(t.strip() for t in cfg.lora_targets.split(",")):
        raise UserError(f"--lora-targets {cfg.lora_targets!r}: expected 'attention', 'all-linear' or a comma list "
                        f"of module names")
    if cfg.unpadded and cfg.layout != "shared":
        raise UserError("--unpadded needs --layout shared")
    if cfg.chunk_size == 0 and cfg.layout != "padded":
        raise UserError("--chunk-size 0 (unchunked log-probs) works with --layout padded only")
    device = check_device(cfg.device)
    if cfg.attention == "flex":
        flex.check(cfg.layout, device)
    if cfg.report_to == "tensorboard":
        import importlib.util
        if importlib.util.find_spec("tensorboard") is None:
            raise UserError("--report-to tensorboard needs the tensorboard package: pip install tensorboard (or "
                            "pip install 'minorpo[tensorboard]'); metrics.jsonl is written either way")
    if model:
        check_local_model(cfg.model, lora_targets=cfg.lora_targets if cfg.lora_r > 0 else None)
    if data:
        check_local_data(cfg.data, split=cfg.split or None, data_files=cfg.data_files or None)
    if cfg.eval_data:
        check_local_data(cfg.eval_data, "--eval-data", split=cfg.eval_split or None)
    if cfg.fsdp or cfg.fsdp_cpu_offload or not cfg.reshard_after_forward:
        from minorpo.run.fsdp import check  # what --fsdp and its options need (imported only when they are used)
        check(cfg)


def check_device(name: str, option: str = "--device"):
    """The torch.device of a --device value ('auto' = CUDA if present), or UserError if it is not usable here."""
    import torch

    from minorpo.run.distributed import pick_device
    if name == "auto":
        return pick_device(name)
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise UserError(f"{option} {name!r}: not a device (expected auto, cpu, cuda, cuda:N or mps)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"{option} {name}: no CUDA GPU is visible to PyTorch here (torch.cuda.is_available() is "
                            f"False; torch {torch.__version__}); use {option} cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UserError(f"{option} {name}: there are only {torch.cuda.device_count()} CUDA device(s)")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"{option} {name}: the MPS backend is not available here; use {option} cpu")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise UserError(f"{option} {name!r}: minorpo runs on cpu, cuda or mps")
    return device


def check_local_model(name: str, option: str = "--model", lora_targets: str | None = None) -> None:
    """A model given as a local folder must hold config.json (readable by minorpo), tokenizer.json and weights;
    lora_targets (--lora-targets) must name layers the model has, which a weightless copy on the meta device tells.

    Hub ids are checked when they are fetched (minorpo.hf.loader.resolve)."""
    import torch

    from minorpo.hf.loader import read_config, resolve, weight_files
    from minorpo.lora import _resolve_targets
    from minorpo.models import build_model
    folder = resolve(name, local_only=True)
    if folder is None:
        return
    config = read_config(folder)
    if lora_targets is not None:
        with torch.device("meta"):
            skeleton = build_model(config)
        targets = lora_targets if lora_targets in ("attention", "all-linear") else lora_targets.split(",")
        try:
            _resolve_targets(skeleton, targets)
        except UserError as e:
            raise UserError(f"--lora-targets {lora_targets}: {e}") from None
    if not (folder / "tokenizer.json").is_file():
        raise MissingFileError(f"{option} {name}: {folder / 'tokenizer.json'} not found (minorpo needs a fast "
                               f"tokenizer file, tokenizer.json)")
    weight_files(folder)


def check_local_data(source, option: str = "--data", **select) -> None:
    """A data source given as a local path must exist and (a folder) hold a file matching the selection."""
    from minorpo.hf.datafiles import resolve_files
    from minorpo.run.fileio import is_local_path
    if is_local_path(source):
        try:
            resolve_files(source, **select)
        except UserError as e:
            raise type(e)(f"{option}: {e}") from None
