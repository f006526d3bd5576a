"""The settings of a run that are not the training itself: its folder, checkpoints, logs, export, device and
processes. TrainConfig (minorpo/train.py) inherits them, so a run has one flat config: one config.json, one flag
per field (`minorpo train --help` lists them in groups). None of them changes what a step computes.
"""

from dataclasses import dataclass, field

from minorpo.hf.loader import DTYPES


def setting(default, help: str, choices=None):
    """A config field with its --help text (and the values it may take): the command line is built from these."""
    return field(default=default, metadata={"help": help, **({"choices": list(choices)} if choices else {})})


@dataclass
class RunConfig:
    out: str = setting("runs/minorpo", "run folder: metrics.jsonl, checkpoints/, adapter/, final/, plots")
    device: str = setting("auto", "auto (CUDA if present), cpu, cuda, cuda:1, ...")
    threads: int = setting(0, "CPU threads for torch (torch.set_num_threads; 0 = torch's default, one per core); on a "
                              "busy machine fewer threads can be faster")
    # --- evaluation, checkpoints, logs
    eval_every: int = setting(25, "evaluate every N steps (and at the start and end)")
    save_every: int = setting(50, "checkpoint every N steps and at the last step (0 = only at the last step; -1 = "
                                  "never, for sweeps and benchmarks that need only metrics)")
    keep_checkpoints: int = setting(2, "how many checkpoints to keep")
    resume: str = setting("", "continue the run in --out: from its newest intact checkpoint (--resume), or from the "
                              "checkpoint folder PATH (--resume PATH); refuses changed settings except those "
                              "minorpo/run/folders.py lists (e.g. a larger --max-steps)")
    overwrite: bool = setting(False, "delete the run already in --out and start again (without it, and without "
                                     "--resume, an existing run is never touched)")
    progress: bool = setting(True, "show a progress bar with ETA (training and evaluation)")
    report_to: str = setting("jsonl", "jsonl: RUN/metrics.jsonl only; tensorboard: also RUN/tensorboard/ (needs pip "
                                      "install tensorboard); metrics.jsonl is always written", ["jsonl", "tensorboard"])
    export: bool = setting(True, "write RUN/adapter and the merged RUN/final at the end (--no-export: benchmarks and "
                                 "sweeps that only need metrics)")
    export_dtype: str = setting("auto", "dtype of the weights in RUN/final: auto = the dtype of the model's own "
                                        "checkpoint (bf16 for a bf16 model), or float32, bfloat16, float16",
                                ["auto", *DTYPES])
    # --- sharding over torchrun's processes (minorpo/run/fsdp.py)
    fsdp: bool = setting(False, "under torchrun: shard parameters, gradients and AdamW state over the ranks (PyTorch "
                                "FSDP2, minorpo/run/fsdp.py) instead of replicating them")
    fsdp_cpu_offload: bool = setting(False, "with --fsdp: keep the shards, gradients and optimizer state in CPU memory")
    reshard_after_forward: bool = setting(True, "with --fsdp: free each block's gathered weights after its forward "
                                                "(--no-reshard-after-forward keeps them until backward: ZeRO-2-like)")
