"""Checkpoints that survive a crash, in files that hold data only (no pickle).

A checkpoint is a folder `RUN/checkpoints/step-000120/` holding

    weights.safetensors        the trainable weights only (LoRA adapters, or every weight for full fine-tuning;
                               with bf16 weights and float32 masters, minorpo/fast/master.py, the float32 masters)
    trainer_state.safetensors  the tensors of the trainer state: AdamW's moments and step counts
                               ("optimizer.<param index>.<name>") and the torch / CUDA RNG states ("rng.*")
    trainer_state.json         the rest: step, data position (pairs seen; the data order itself is a pure function
                               of seed and step, train.step_indices), scheduler state, the optimizer's param groups,
                               Python's RNG state
    MANIFEST.json              size and SHA-256 of each file above, written last

Loading needs no pickle: torch.load (which can run code from a pickle) is not used. It is written into a
temporary folder and renamed into place, so a killed run never leaves a half-written folder under a `step-*`
name (the next start removes the temporary folder: clean_temporary); and the manifest is checked before
loading, so a file truncated or corrupted later (a full disk, a bad copy) is detected and the previous
checkpoint is used instead.
"""

import hashlib
import json
import os
import random
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from minorpo.errors import UserError

MANIFEST = "MANIFEST.json"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def rng_state() -> tuple[dict, dict]:
    """(tensors, JSON values): torch and CUDA RNG states as byte tensors, Python's as a list. (NumPy's is not
    saved: nothing in minorpo draws from it. A checkpoint written when it was has a "numpy" entry; it is ignored.)"""
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        tensors.update({f"rng.cuda.{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    version, words, gauss = random.getstate()
    return tensors, {"python": [version, list(words), gauss]}


def set_rng_state(tensors: dict, values: dict):
    torch.set_rng_state(tensors["rng.torch"])
    cuda = [tensors[k] for k in sorted((k for k in tensors if k.startswith("rng.cuda.")), key=lambda k: int(k[9:]))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    version, words, gauss = values["python"]
    random.setstate((version, tuple(words), gauss))


def optimizer_state(optimizer) -> tuple[dict, dict]:
    """(tensors, JSON values) of optimizer.state_dict(): per-parameter tensors by "optimizer.<index>.<name>",
    everything else (param groups, non-tensor per-parameter values) as JSON."""
    sd = optimizer.state_dict()
    tensors, other = {}, {}
    for idx, entry in sd["state"].items():
        for name, v in entry.items():
            if torch.is_tensor(v):
                tensors[f"optimizer.{idx}.{name}"] = v.detach().contiguous().cpu()
            else:
                other.setdefault(str(idx), {})[name] = v
    return tensors, {"param_groups": sd["param_groups"], "state": other}


def optimizer_state_dict(tensors: dict, values: dict) -> dict:
    """optimizer_state's inverse: the dict optimizer.load_state_dict takes."""
    state = {int(i): dict(v) for i, v in values["state"].items()}
    for key, t in tensors.items():
        if key.startswith("optimizer."):
            idx, name = key[len("optimizer."):].split(".", 1)
            state.setdefault(int(idx), {})[name] = t
    return {"state": state, "param_groups": values["param_groups"]}


def read_optimizer_state(path: Path) -> dict:
    """The optimizer state_dict a checkpoint holds (what optimizer.load_state_dict takes)."""
    tensors, values = read_trainer_state(path)
    return optimizer_state_dict(tensors, values["optimizer"])


def read_trainer_state(path: Path) -> tuple[dict, dict]:
    """(tensors, JSON values) of a checkpoint's trainer state."""
    path = Path(path)
    if not (path / "trainer_state.json").exists() and (path / "trainer_state.pt").exists():
        raise UserError(f"{path} was written by an older minorpo (trainer_state.pt, a pickle file, which minorpo "
                        "no longer loads): start the run again (--overwrite)")
    return (load_file(str(path / "trainer_state.safetensors")),
            json.loads((path / "trainer_state.json").read_text()))


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
    opt_tensors, opt_values = optimizer_state(optimizer)
    rng_tensors, rng_values = rng_state()
    save_file({**opt_tensors, **rng_tensors}, str(tmp / "trainer_state.safetensors"))
    values = {"step": step, **extra, "scheduler": scheduler.state_dict(), "optimizer": opt_values, "rng": rng_values}
    (tmp / "trainer_state.json").write_text(json.dumps(values))
    return publish(tmp, final, step, run_dir, keep)


def publish(tmp: Path, final: Path, step: int, run_dir, keep: int) -> Path:
    """Make the finished folder `tmp` checkpoint `final`: a manifest of its files' sizes and checksums, fsync, one
    atomic rename, then delete all but the newest `keep` checkpoints. (fsdp.save_checkpoint publishes this way too.)"""
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


def clean_temporary(run_dir, log=print):
    """Remove the temporary folders of checkpoint writes that a killed run left behind."""
    for tmp in sorted(Path(run_dir, "checkpoints").glob(".step-*.tmp-*")):
        shutil.rmtree(tmp, ignore_errors=True)
        log(f"removed {tmp}, the unfinished write of a checkpoint")


def checkpoint_step(path: Path) -> int:
    """The step of a checkpoint folder (from its manifest)."""
    return int(json.loads((Path(path) / MANIFEST).read_text())["step"])


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
    shapes = {n: p.shape for n, p in model.named_parameters() if p.requires_grad}
    wrong = sorted(n for n in set(weights) & expected if weights[n].shape != shapes[n])
    if set(weights) != expected or wrong:
        missing, extra = sorted(expected - set(weights)), sorted(set(weights) - expected)
        raise UserError(f"{path}/weights.safetensors does not match this model's trainable weights (missing "
                        f"{missing[:3]}, unexpected {extra[:3]}, other shape {wrong[:3]}): is it a checkpoint of "
                        "another run (other LoRA settings, another model)?")
    model.load_state_dict(weights, strict=False)
    if master is not None:
        master.load_state_dict(weights)
    tensors, values = read_trainer_state(path)
    optimizer.load_state_dict(optimizer_state_dict(tensors, values["optimizer"]))
    scheduler.load_state_dict(values["scheduler"])
    set_rng_state(tensors, values["rng"])
    return values
