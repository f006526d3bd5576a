"""Files for `minorpo conformance`: another implementation's collated batch, and its logged metrics.

Batch files (--batch, --dump-batch) hold the padded layout of minorpo/batches.py, as TRL's ORPO collator builds
it: chosen_input_ids, chosen_attention_mask, chosen_labels, rejected_input_ids, rejected_attention_mask,
rejected_labels, each [B, T] (T may differ between chosen and rejected; labels = input ids on response tokens,
-100 elsewhere). As safetensors (`.safetensors`) or JSON (a dict of nested lists). Pickles (`.pt`, `.pkl`, `.bin`)
are refused: loading one can run arbitrary code.

Metrics files (--metrics-json): a JSON dict {name: value}; a trainer's log (TRL's trainer_state.json, whose
"log_history" is a list of such dicts); or JSON lines, one dict per line. --log-entry picks the entry (default:
the first that has a loss).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from minorpo.errors import UserError
from minorpo.logprobs import IGNORE_INDEX

BATCH_KEYS = ("chosen_input_ids", "chosen_attention_mask", "chosen_labels",
              "rejected_input_ids", "rejected_attention_mask", "rejected_labels")
PICKLE_SUFFIXES = (".pt", ".pth", ".pkl", ".pickle", ".bin", ".ckpt")
# what trainers log besides the loss and its metrics; skipped when reading a log entry
BOOKKEEPING = {"epoch", "step", "learning_rate", "grad_norm", "total_flos", "train_runtime", "train_loss",
               "train_samples_per_second", "train_steps_per_second", "num_tokens", "num_input_tokens_seen",
               "eval_runtime", "eval_samples_per_second", "eval_steps_per_second", "global_step", "lr", "time"}


def _refuse_pickle(path: Path, flag: str) -> None:
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise UserError(f"{flag} {path}: a pickle ({path.suffix}) can run arbitrary code when loaded, so it is not "
                        "read; "
                        "save the batch as .safetensors (safetensors.torch.save_file) or .json")


def load_batch(path) -> dict[str, torch.Tensor]:
    """A padded-layout batch from a .safetensors or .json file, checked: every key present, shapes consistent."""
    path = Path(path)
    _refuse_pickle(path, "--batch")
    if not path.is_file():
        raise UserError(f"--batch {path}: no such file")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        try:
            raw = load_file(str(path))
        except Exception as e:  # a truncated or foreign file
            raise UserError(f"--batch {path}: not a readable safetensors file ({e})") from None
    elif path.suffix == ".json":
        try:
            raw = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise UserError(f"--batch {path}: not valid JSON ({e})") from None
        if not isinstance(raw, dict):
            raise UserError(f"--batch {path}: expected a JSON object of {{key: [[ids]]}}")
    else:
        raise UserError(f"--batch {path}: expected a .safetensors or .json file")
    missing = [k for k in BATCH_KEYS if k not in raw]
    if missing:
        raise UserError(f"--batch {path}: missing key(s) {missing} (has {sorted(raw)}); expected {list(BATCH_KEYS)}")
    batch = {}
    for key in BATCH_KEYS:
        try:
            batch[key] = torch.as_tensor(raw[key]).long()
        except (TypeError, ValueError, RuntimeError):
            raise UserError(f"--batch {path}: {key} is not a rectangular array of integers") from None
        if batch[key].dim() != 2:
            raise UserError(f"--batch {path}: {key} has shape {tuple(batch[key].shape)}, expected [B, T]")
    for side in ("chosen", "rejected"):
        shape = batch[f"{side}_input_ids"].shape
        for key in (f"{side}_attention_mask", f"{side}_labels"):
            if batch[key].shape != shape:
                raise UserError(f"--batch {path}: {key} has shape {tuple(batch[key].shape)} but {side}_input_ids "
                                f"has {tuple(shape)}")
    if batch["chosen_input_ids"].shape[0] != batch["rejected_input_ids"].shape[0]:
        raise UserError(f"--batch {path}: {batch['chosen_input_ids'].shape[0]} chosen rows but "
                        f"{batch['rejected_input_ids'].shape[0]} rejected rows")
    for side in ("chosen", "rejected"):
        if ((batch[f"{side}_labels"] != IGNORE_INDEX).sum(1) == 0).any():
            row = int(((batch[f"{side}_labels"] != IGNORE_INDEX).sum(1) == 0).nonzero()[0])
            raise UserError(f"--batch {path}: {side}_labels row {row} has no response token (all -100)")
    return batch


def dump_batch(batch: dict, path) -> None:
    """Write the padded-layout keys of a batch to .safetensors or .json (for another implementation to read)."""
    path = Path(path)
    _refuse_pickle(path, "--dump-batch")
    tensors = {k: batch[k].detach().cpu().long().contiguous() for k in BATCH_KEYS}
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file
        save_file(tensors, str(path))
    elif path.suffix == ".json":
        path.write_text(json.dumps({k: v.tolist() for k, v in tensors.items()}) + "\n")
    else:
        raise UserError(f"--dump-batch {path}: expected a .safetensors or .json file name")


def load_metrics(path, entry: int | None = None) -> dict[str, float]:
    """{name: value} from a metrics dict, a trainer_state.json (log_history) or JSON lines; names not mapped."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"--metrics-json {path}: no such file")
    text = path.read_text()
    try:
        content = json.loads(text)
        entries = content["log_history"] if isinstance(content, dict) and "log_history" in content else [content]
    except json.JSONDecodeError:
        try:
            entries = [json.loads(line) for line in text.splitlines() if line.strip()]
        except json.JSONDecodeError as e:
            raise UserError(f"--metrics-json {path}: neither JSON nor JSON lines ({e})") from None
    if not entries or not all(isinstance(e, dict) for e in entries):
        raise UserError(f"--metrics-json {path}: expected a dict of metrics, a trainer_state.json or JSON lines of "
                        "dicts")
    if entry is None:
        with_loss = [i for i, e in enumerate(entries) if "loss" in e or "train/loss" in e or "eval_loss" in e]
        entry = with_loss[0] if with_loss else 0
    if not -len(entries) <= entry < len(entries):
        raise UserError(f"--log-entry {entry}: {path} has {len(entries)} entries")
    chosen = entries[entry]
    out = {}
    for name, value in chosen.items():
        if name in BOOKKEEPING or not isinstance(value, (int, float)) or isinstance(value, bool):
            continue
        out[name] = float(value)
    return out
