"""Checkpoints that survive a crash.

A checkpoint is a folder `RUN/checkpoints/step-000120/` holding

    weights.safetensors   the trainable weights only (LoRA adapters, or every weight for full fine-tuning; with
                          bf16 weights and float32 masters, minorpo/master.py, the float32 masters)
    optimizer.pt          AdamW state (torch.save of the optimizer's state_dict)
    trainer_state.pt      step, scheduler state, RNG states (torch, CUDA, Python, NumPy), data position
    MANIFEST.json         size and SHA-256 of each file above, written last

It is written into a temporary folder and renamed into place, so a killed run never leaves a half-written
folder under a `step-*` name; and the manifest is checked before loading, so a file truncated or corrupted
later (a full disk, a bad copy) is detected and the previous checkpoint is used instead.
"""

import hashlib
import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

MANIFEST = "MANIFEST.json"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def rng_state() -> dict:
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": random.getstate(),
        "numpy": np.random.get_state(),
    }


def set_rng_state(state: dict):
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])


def trainable_state_dict(model: torch.nn.Module) -> dict:
    """Weights that training changes: those with requires_grad (LoRA A/B, or all of them)."""
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    return {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items() if k in names}


def save_checkpoint(run_dir, step: int, model, optimizer, scheduler, extra: dict, keep: int = 2,
                    weights: dict | None = None) -> Path:
    """Write checkpoint `step` atomically, then delete all but the newest `keep` complete ones.

    weights: the trainable weights to store (default: the model's; MasterWeights.state_dict() for float32 masters).
    """
    ckpt_root = Path(run_dir) / "checkpoints"
    ckpt_root.mkdir(parents=True, exist_ok=True)
    final = ckpt_root / f"step-{step:06d}"
    tmp = ckpt_root / f".step-{step:06d}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    weights = trainable_state_dict(model) if weights is None else weights
    save_file(weights, str(tmp / "weights.safetensors"), metadata={"format": "pt"})
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    torch.save({"step": step, "scheduler": scheduler.state_dict(), "rng": rng_state(), **extra},
               tmp / "trainer_state.pt")
    files = sorted(p.name for p in tmp.iterdir())
    manifest = {name: {"bytes": (tmp / name).stat().st_size, "sha256": _sha256(tmp / name)} for name in files}
    (tmp / MANIFEST).write_text(json.dumps({"step": step, "files": manifest}, indent=1))
    for p in tmp.iterdir():  # make the bytes durable before the rename publishes them
        with open(p, "rb") as f:
            os.fsync(f.fileno())
    if final.exists():  # a re-run of the same step after a resume: replace it
        shutil.rmtree(final)
    os.replace(tmp, final)
    for old in list_checkpoints(run_dir)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(run_dir) -> list:
    """Checkpoint folders by step, oldest first (temporary folders are ignored)."""
    root = Path(run_dir) / "checkpoints"
    if not root.exists():
        return []
    return sorted((p for p in root.iterdir() if p.is_dir() and p.name.startswith("step-")), key=lambda p: p.name)


def verify_checkpoint(path: Path) -> str:
    """'' if the checkpoint is complete and intact, else the reason it is not."""
    mpath = path / MANIFEST
    if not mpath.exists():
        return f"{mpath} missing"
    try:
        manifest = json.loads(mpath.read_text())["files"]
    except (ValueError, KeyError) as e:
        return f"{mpath} unreadable ({e})"
    for name, want in manifest.items():
        p = path / name
        if not p.exists():
            return f"{p} missing"
        if p.stat().st_size != want["bytes"]:
            return f"{p} has {p.stat().st_size} bytes, the manifest says {want['bytes']}"
        if _sha256(p) != want["sha256"]:
            return f"{p} checksum differs from the manifest"
    return ""


def latest_valid_checkpoint(run_dir, log=print):
    """The newest checkpoint that verifies; each one skipped is reported with its reason."""
    for path in reversed(list_checkpoints(run_dir)):
        problem = verify_checkpoint(path)
        if not problem:
            return path
        log(f"skipping damaged checkpoint {path.name}: {problem}")
    return None


def load_checkpoint(path: Path, model, optimizer, scheduler, master=None) -> dict:
    """Restore weights, optimizer, scheduler and RNG states; returns the trainer state (step, data position...).

    master: the run's MasterWeights, if it has float32 masters: they are set from the stored (float32) weights.
    """
    weights = load_file(str(path / "weights.safetensors"))
    expected = {n for n, p in model.named_parameters() if p.requires_grad}
    if set(weights) != expected:
        missing, extra = sorted(expected - set(weights)), sorted(set(weights) - expected)
        raise ValueError(f"{path}/weights.safetensors does not match this model's trainable weights "
                         f"(missing {missing[:3]}, unexpected {extra[:3]}): was the run started with other LoRA settings?")
    model.load_state_dict(weights, strict=False)
    if master is not None:
        master.load_state_dict(weights)
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True))
    state = torch.load(path / "trainer_state.pt", map_location="cpu", weights_only=False)  # our own file: RNG tuples
    scheduler.load_state_dict(state["scheduler"])
    set_rng_state(state["rng"])
    return state
