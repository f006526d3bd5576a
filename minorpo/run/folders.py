"""Run folders: what `minorpo train --out RUN` may do with a folder that already holds a run, what `--resume`
accepts, the metrics log, and `--config run.json`.

A run folder is one holding config.json, metrics.jsonl or checkpoints/ (README.md lists what a run writes).
  * a new run never writes into one: `--resume` continues it, `--overwrite` deletes it first (only if it holds
    nothing a run does not write), anything else is refused before the model loads;
  * `--resume` compares the run's settings (config.json, plus the changes earlier resumes recorded in
    resumes.jsonl) with the new ones. Settings that decide what is computed (method, lr, LoRA, data, ...) must
    stay; RESUMABLE ones may change, and each change is appended to resumes.jsonl, config.json staying the
    record of how the run began;
  * a run that reached --max-steps and was exported is finished: --resume says so and trains nothing.
"""

import json
import platform
import shutil
import sys
import time
from dataclasses import dataclass, field, fields
from pathlib import Path

import torch

from minorpo.run.checkpoint import checkpoint_step, clean_temporary, latest_valid_checkpoint, verify_checkpoint
from minorpo.errors import UserError
from minorpo.run.fileio import atomic_write

RUN_MARKERS = ("config.json", "metrics.jsonl", "checkpoints")
RUN_ENTRIES = set(RUN_MARKERS) | {"run_info.json", "data_report.json", "resumes.jsonl", "adapter", "final", "plots",
                                  "tensorboard"}
# what a resumed run may change: how long it runs, how often it evaluates / saves / logs, and how (not what) it
# computes. max_steps: the lr schedule then decays towards the new end (train.lr_lambda).
RESUMABLE = ("max_steps", "eval_every", "save_every", "keep_checkpoints", "export", "export_dtype", "report_to",
             "threads", "device", "gradient_checkpointing", "chunk_size", "compile", "cudnn_attention",
             "fsdp_cpu_offload", "reshard_after_forward")
NOT_SETTINGS = ("out", "resume", "overwrite", "progress")  # where and how to run, not what: never compared


@dataclass
class Start:
    """Where train() starts: from scratch, or from `checkpoint` at `step`; or nothing to do (`finished`)."""
    checkpoint: Path | None = None
    step: int = 0
    finished: bool = False
    changes: dict = field(default_factory=dict)  # {setting: [saved, new]} a resume may make (RESUMABLE)


def markers(out: Path) -> list:
    return [m for m in RUN_MARKERS if (out / m).exists()]


def describe(out: Path) -> str:
    """'config.json, metrics.jsonl to step 40, checkpoints step-000020 step-000040' for messages."""
    parts = [m for m in markers(out) if m != "checkpoints"]
    steps = logged_steps(out / "metrics.jsonl")
    if steps:
        parts[parts.index("metrics.jsonl")] = f"metrics.jsonl to step {steps[-1]}"
    ckpts = sorted(p.name for p in (out / "checkpoints").glob("step-*")) if (out / "checkpoints").is_dir() else []
    if ckpts:
        parts.append("checkpoints " + " ".join(ckpts))
    return ", ".join(parts)


def read_rows(path: Path) -> list:
    """The rows of a metrics.jsonl (a line cut short by a kill is skipped)."""
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue
    return rows


def logged_steps(path: Path) -> list:
    if not path.exists():
        return []
    steps = [_step_of(line) for line in path.read_text().splitlines()]
    return [s for s in steps if s is not None]


def saved_settings(out: Path, defaults: dict) -> dict:
    """The settings the run follows now: config.json, then each change recorded in resumes.jsonl."""
    try:
        settings = {**defaults, **json.loads((out / "config.json").read_text())}
    except (OSError, ValueError) as e:
        raise UserError(f"--resume: cannot read {out / 'config.json'} ({e})") from None
    if (out / "resumes.jsonl").exists():
        for line in (out / "resumes.jsonl").read_text().splitlines():
            for key, (_, new) in json.loads(line).get("changes", {}).items():
                settings[key] = new
    return settings


def prepare(cfg, log=print, main=True) -> Start:
    """Check --out, --resume and --overwrite before anything slow happens; returns where to start.

    main: this process writes files (rank 0); the others only read.
    """
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file, not a folder")
    if cfg.resume and cfg.overwrite:
        raise UserError("--resume and --overwrite contradict each other: --resume continues the run in --out, "
                        "--overwrite deletes it")
    found = markers(out) if out.is_dir() else []
    if not found:
        if cfg.resume:
            raise UserError(f"--resume: {out} holds no run (no {', '.join(RUN_MARKERS)}); leave out --resume "
                            "to start one")
        return Start()
    if cfg.overwrite:
        others = sorted(p.name for p in out.iterdir() if p.name not in RUN_ENTRIES
                        and not (p.name.startswith(".") and ".tmp-" in p.name))
        if others:
            raise UserError(f"--overwrite: {out} also holds {', '.join(others[:5])}, which a minorpo run does "
                            "not write; nothing was deleted (move them, or choose another --out)")
        what = describe(out) if main else ""  # (another rank may be deleting it)
        if main:
            shutil.rmtree(out)
        log(f"--overwrite: deleted the previous run in {out} ({what})")
        return Start()
    if not cfg.resume:
        raise UserError(f"--out {out} already holds a run ({describe(out)}): --resume continues it, --overwrite "
                        "deletes it and starts again, or choose another --out")
    return _resume(cfg, out, log, main)


def _resume(cfg, out: Path, log, main) -> Start:
    defaults = {f.name: f.default for f in fields(cfg)}
    saved = saved_settings(out, defaults)
    changes = {f.name: [saved.get(f.name), getattr(cfg, f.name)] for f in fields(cfg)
               if f.name not in NOT_SETTINGS and saved.get(f.name) != getattr(cfg, f.name)}
    refused = {k: v for k, v in changes.items() if k not in RESUMABLE}
    if refused:
        listed = ", ".join(f"{k} {old!r} -> {new!r}" for k, (old, new) in refused.items())
        raise UserError(f"--resume: the run in {out} was trained with other settings: {listed}. A resumed run keeps "
                        f"them (config.json); it may change only {', '.join(RESUMABLE)}. To train with the new "
                        "settings, start a new run (another --out)")
    if main:
        clean_temporary(out, log)
    if cfg.resume == "latest":
        ckpt = latest_valid_checkpoint(out, log=log)
    else:
        ckpt = Path(cfg.resume)
        problem = verify_checkpoint(ckpt) if ckpt.is_dir() else "no such folder"
        if problem:
            raise UserError(f"--resume {ckpt}: not an intact checkpoint folder ({problem})")
    exported = (out / "final").exists() or not cfg.export
    if ckpt is None:
        steps = logged_steps(out / "metrics.jsonl")
        if steps and steps[-1] >= cfg.max_steps and exported:  # a run from before final checkpoints existed
            return _finished(out, steps[-1], cfg, log)
        first = cfg.save_every if 0 < cfg.save_every < cfg.max_steps else cfg.max_steps
        when = "it runs with --save-every -1, no checkpoints" if cfg.save_every < 0 else \
            f"the first checkpoint is written at step {first}"
        raise UserError(f"--resume: {out} has no intact checkpoint to resume from (metrics.jsonl reaches step "
                        f"{steps[-1] if steps else 'none'}; {when}): start it again with --overwrite")
    step = checkpoint_step(ckpt)
    if step > cfg.max_steps:
        raise UserError(f"--max-steps {cfg.max_steps} is below the step of the checkpoint ({ckpt}, step {step}): "
                        "a resumed run can only go on")
    if step == cfg.max_steps and exported:
        return _finished(out, step, cfg, log)
    if changes:
        log("resume: changed " + ", ".join(f"{k} {old!r} -> {new!r}" for k, (old, new) in changes.items())
            + f" (recorded in {out / 'resumes.jsonl'})")
    if main:
        with open(out / "resumes.jsonl", "a") as f:
            f.write(json.dumps({"step": step, "checkpoint": str(ckpt), "changes": changes,
                                "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}) + "\n")
    return Start(checkpoint=ckpt, step=step, changes=changes)


def _finished(out, step, cfg, log) -> Start:
    log(f"{out} is finished: it reached step {step} of --max-steps {cfg.max_steps}"
        f"{' and was exported (final/)' if cfg.export else ''}. Nothing to train; --resume with a larger "
        "--max-steps trains it further")
    return Start(step=step, finished=True)


def write_config(out: Path, cfg):
    """config.json: the settings a run began with (resume and overwrite are what a command did, not settings)."""
    own = list(vars(type(cfg)).get("__annotations__", {}))  # the class's own (teaching) fields first, then its groups'
    names = own + [f.name for f in fields(cfg) if f.name not in own]
    d = {n: getattr(cfg, n) for n in names if n not in ("resume", "overwrite")}
    atomic_write(out / "config.json", lambda p: Path(p).write_text(json.dumps(d, indent=2)))


def write_run_info(out: Path, device, world_size: int):
    """run_info.json: the command, the versions and the hardware a run (or its latest resume) ran on."""
    info = {"command": " ".join(sys.argv), "python": platform.python_version(), "torch": torch.__version__,
            "device": str(device), "cpu": platform.processor() or platform.machine(),
            "threads": torch.get_num_threads(), "world_size": world_size,
            "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None}
    atomic_write(out / "run_info.json", lambda p: Path(p).write_text(json.dumps(info, indent=2)))


def read_config_file(path, cls) -> dict:
    """The settings of `--config FILE`: a JSON object of `cls` (TrainConfig) fields, e.g. a run's config.json."""
    p = Path(path)
    try:
        d = json.loads(p.read_text())
    except OSError as e:
        raise UserError(f"--config {p}: cannot read it ({e.strerror})") from None
    except ValueError as e:
        raise UserError(f"--config {p}: not JSON ({e})") from None
    if not isinstance(d, dict):
        raise UserError(f"--config {p}: expected a JSON object of settings, got {type(d).__name__}")
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(k for k in d if k not in known)
    if unknown:
        raise UserError(f"--config {p}: unknown setting(s) {', '.join(unknown)} (settings are the names of "
                        "`minorpo train --help`'s options with _ for -, e.g. max_steps)")
    for k, v in d.items():
        want = known[k].type if isinstance(known[k].type, str) else known[k].type.__name__
        ok = {"bool": isinstance(v, bool), "int": isinstance(v, int) and not isinstance(v, bool),
              "float": isinstance(v, (int, float)) and not isinstance(v, bool), "str": isinstance(v, str)}.get(want, True)
        if not ok:
            raise UserError(f"--config {p}: {k} is {v!r}, expected {want}")
    return {k: float(v) if known[k].type in (float, "float") else v for k, v in d.items()}


class MetricsLog:
    """RUN/metrics.jsonl (always) and, with --report-to tensorboard, RUN/tensorboard/ event files.

    A fresh run starts an empty log; a resumed one first drops the rows after its checkpoint's step (they are
    logged again), so every step has exactly one row.
    """

    def __init__(self, out: Path, start_step: int, resumed: bool, report_to: str = "jsonl", main: bool = True):
        self.path, self.main, self.tb = out / "metrics.jsonl", main, None
        if not main:
            return
        keep = []
        if resumed and self.path.exists():
            keep = [line for line in self.path.read_text().splitlines()
                    if line.strip() and _step_of(line) is not None and _step_of(line) <= start_step]
        atomic_write(self.path, lambda p: Path(p).write_text("".join(line + "\n" for line in keep)))
        if report_to == "tensorboard":
            from torch.utils.tensorboard import SummaryWriter
            # purge_step: TensorBoard hides the events of the steps a resumed run logs again
            self.tb = SummaryWriter(str(out / "tensorboard"), purge_step=start_step + 1 if resumed else None)

    def write(self, row: dict):
        if not self.main:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
        if self.tb is not None:
            for k, v in row.items():
                if k != "step" and isinstance(v, (int, float)):
                    self.tb.add_scalar(k, v, global_step=row["step"])
            self.tb.flush()

    def close(self):
        if self.tb is not None:
            self.tb.close()


def _step_of(line: str):
    """The step of a metrics.jsonl line; None for a line cut short by a kill."""
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return None

