"""Fully sharded data parallelism (`--fsdp`, under torchrun) with PyTorch's FSDP2 (`fully_shard`).

Without --fsdp every rank holds the whole model, its gradients and AdamW state (16 bytes a parameter in float32:
a 7B model needs 112 GB per GPU). FSDP (Zhao et al. 2023, "PyTorch FSDP"; ZeRO-3 in Rajbhandari et al. 2020)
gives each of N ranks 1/N of every parameter, gradient and optimizer state, and gathers a block's full weights
only while that block runs:

    forward, per block     all-gather the block's shards -> full weights, run it, free them again
    backward, per block    all-gather again, compute the gradients, reduce-scatter them: each rank keeps the
                           *sum* over ranks of its own 1/N (minorpo normalizes by the global batch, train.py,
                           so the sum is the gradient of the whole batch, as in run/distributed.py's sum_gradients)
    optimizer.step()       AdamW on the local shards only (they are DTensors; clipping sees the global norm)

train.py's loop is unchanged apart from a few `if cfg.fsdp:` lines; the parameter names stay the model's, so
checkpoints, the PEFT adapter and the merged export keep theirs. What this file adds:
  - build(): the model built on the meta device (no memory), sharded, and each rank's rows read from the
    safetensors files (f.get_slice reads just those rows): no rank ever holds the whole model;
  - the sharding itself: one FSDP unit per decoder block plus the root (embedding, final norm, head);
  - sharded checkpoints (torch.distributed.checkpoint, each rank writes its shards) with exact resume;
  - export(): full tensors gathered one parameter at a time into rank 0's CPU memory, written as today.

Options: `--precision bf16` is FSDP's MixedPrecisionPolicy: blocks all-gathered and computed in bf16, the float32
shards are the master weights, gradients reduced in float32 (autocast stays on as without --fsdp).
`--fsdp-cpu-offload` keeps the shards, gradients and AdamW state in CPU memory (the GPU holds only the blocks in
use); `--no-reshard-after-forward` keeps each block's full weights from forward to backward (ZeRO-2-like: one
all-gather less per block, more memory). reproduce/fsdp_memory.py measures what each rank holds.
"""

import json
import math
import os
import shutil
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from safetensors.torch import load_file, save_file
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict, get_state_dict,
                                                     set_state_dict)
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import CPUOffloadPolicy, FSDPModule, MixedPrecisionPolicy, OffloadPolicy, fully_shard

from minorpo.run.checkpoint import publish, rng_state, set_rng_state
from minorpo.errors import UserError
from minorpo.run.distributed import Distributed


def check(cfg):
    """Refuse what --fsdp cannot do, before any slow work."""
    if not cfg.fsdp:
        if cfg.fsdp_cpu_offload or not cfg.reshard_after_forward:
            raise UserError("--fsdp-cpu-offload and --no-reshard-after-forward are options of --fsdp")
        return
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        raise UserError("--fsdp shards the model over torchrun's processes: run it as "
                        "`torchrun --nproc-per-node N -m minorpo train --fsdp ...` (N = 1 works too)")
    if cfg.precision == "bf16-weights":
        raise UserError("--fsdp: use --precision bf16 (FSDP's mixed precision: bf16 compute, float32 shards as "
                        "master weights), not bf16-weights")
    if cfg.method == "dpo" and cfg.lora_r == 0:
        raise UserError("--fsdp --method dpo needs LoRA (--lora-r > 0): its reference is the model with the "
                        "adapters off; a sharded frozen copy for full fine-tuning is not implemented")


class ShardedDistributed(Distributed):
    """Distributed (minorpo/run/distributed.py) for --fsdp: a process group even for one rank, a device mesh, and
    no explicit all-reduce (the gradients were reduce-scattered during backward)."""

    mesh = None

    def start(self):  # build() calls it, then train() again
        if not dist.is_initialized():  # CPU offload on CUDA: collectives on CPU tensors go through gloo
            dist.init_process_group(backend="cuda:nccl,cpu:gloo" if self.backend == "nccl" else "gloo")
        if self.mesh is None:
            self.mesh = init_device_mesh("cuda" if self.backend == "nccl" else "cpu", (self.world,))

    def broadcast_parameters(self, params):
        pass  # every rank read its own shards from the same file (build)

    def sum_gradients(self, params):
        pass  # FSDP summed them during backward (reduce-scatter, see shard)

    def close(self):
        """As Distributed.close, once nothing holds the process group any more, or destroy_process_group cannot stop
        gloo's worker threads (see Distributed.start; tests/test_fsdp.py checks). Two things do (PyTorch 2.13): the
        sharded model, kept by its own reference cycles until a garbage collection, and the device mesh, kept by
        DTensor's sharding caches, whose _pg_registry holds the group."""
        if dist.is_initialized():
            import gc
            gc.collect()
            if self.mesh is not None:
                self.mesh._pg_registry.clear()
            dist.destroy_process_group()


def shard(model, cfg, mesh, device):
    """fully_shard each decoder block, then the root (what is left: embedding, final norm, output head)."""
    mp = (MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if cfg.precision == "bf16"
          else MixedPrecisionPolicy())
    offload = CPUOffloadPolicy(pin_memory=device.type == "cuda") if cfg.fsdp_cpu_offload else OffloadPolicy()
    for layer in model.layers:
        fully_shard(layer, mesh=mesh, reshard_after_forward=cfg.reshard_after_forward, mp_policy=mp,
                    offload_policy=offload)
    # The root keeps its full weights after forward: the chunked output head (logprobs.py) reads
    # model.lm_head.weight after model(...) has returned, which would otherwise be a shard again.
    fully_shard(model, mesh=mesh, reshard_after_forward=False, mp_policy=mp, offload_policy=offload)
    for m in model.modules():  # per FSDP unit (the setters do not recurse)
        if isinstance(m, FSDPModule):
            m.set_gradient_divide_factor(1.0)  # sum over ranks, not FSDP's default mean
            m.set_force_sum_reduction_for_comms(True)  # as a plain SUM (gloo has no PREMUL_SUM)
    return model


def build(cfg, device, ddp, folder, model=None):
    """The sharded model: read from the checkpoint folder shard by shard, or `model` (already loaded) sharded."""
    from minorpo.lora import apply_lora
    if model is not None:
        folder = None
        model.to(device)
    else:
        from minorpo.hf.loader import read_config
        from minorpo.models import build_model
        with torch.device("meta"):  # shapes only: no memory, no initialization
            model = build_model(read_config(folder))
    expected = {k: v.shape for k, v in model.state_dict().items()}  # the base model's tensors, full shapes
    if cfg.lora_r > 0:  # adapters created on the real device, drawn from the same seeded RNG as without --fsdp
        targets = cfg.lora_targets if cfg.lora_targets in ("attention", "all-linear") else cfg.lora_targets.split(",")
        apply_lora(model, r=cfg.lora_r, alpha=cfg.lora_alpha, dropout=cfg.lora_dropout, targets=targets,
                   device=device)
    adapters = {n: p.detach().clone() for n, p in model.named_parameters() if not p.is_meta} if folder else {}
    ddp.start()  # after the meta-device build (see Distributed.start)
    shard(model, cfg, ddp.mesh, device)
    if folder is not None:
        model.to_empty(device="cpu" if cfg.fsdp_cpu_offload else device)  # allocates this rank's shards only
        _load_shards(model, folder, expected, adapters, ddp)
    return model


@torch.no_grad()
def _load_shards(model, folder, expected, adapters, ddp):
    """Copy each rank's rows of every tensor into its shard: FSDP splits dim 0 as torch.chunk does (chunks of
    ceil(n / world) rows, rank r gets chunk r), and f.get_slice reads just those rows from the safetensors file."""
    from minorpo.hf.loader import load_state_dict

    def rows(n):
        size = math.ceil(n / ddp.world)
        return min(n, ddp.rank * size), min(n, (ddp.rank + 1) * size)

    def read(f, key, name):
        start, stop = rows(expected[name][0])
        return f.get_slice(key)[start:stop]

    tied = model.config.tie_word_embeddings
    dtype = torch.float32  # the shards are the master weights (precision bf16: FSDP casts them per forward)
    state = load_state_dict(folder, expected, tied, dtype, "cpu", read=read)
    for name, p in model.named_parameters():  # DTensors; a tied head shares the embedding's (listed once)
        local = p.to_local()
        if name in adapters:
            start, stop = rows(adapters[name].shape[0])
            local.copy_(adapters[name][start:stop])
        else:
            local.copy_(state[name])


# ----------------------------------------------------------------------------------------------------------
# checkpoints: RUN/checkpoints/step-N/ holds DCP's files (.metadata and one __RANK_0.distcp per rank, written in
# parallel: the trainable weights and AdamW state, sharded), trainer_state.json and .safetensors (step, scheduler,
# every rank's RNG states) and MANIFEST.json, published by checkpoint.publish (temporary folder, checksums, fsync,
# rename). Unlike checkpoint.py's files, one of DCP's is a pickle: PyTorch 2.13 reads .metadata with pickle.load
# (the tensors with torch.load(weights_only=True)), so resume --fsdp checkpoints you wrote, not ones from elsewhere.
# The ranks must share the run folder's file system (one machine, or a shared mount).

OPTIONS = StateDictOptions(ignore_frozen_params=True)  # LoRA: the frozen base is not saved (it is cfg.model)


def save_checkpoint(run_dir, step, model, optimizer, scheduler, extra: dict, keep: int, ddp) -> Path:
    root = Path(run_dir) / "checkpoints"
    final, tmp = root / f"step-{step:06d}", root / f".step-{step:06d}.tmp-fsdp"  # clean_temporary's pattern
    if ddp.main:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    dist.barrier()
    model_sd, optim_sd = get_state_dict(model, optimizer, options=OPTIONS)
    dcp.save({"model": model_sd, "optimizer": optim_sd}, checkpoint_id=str(tmp))
    rngs = [None] * ddp.world
    dist.all_gather_object(rngs, rng_state())
    if ddp.main:
        save_file({f"rank{r}.{k}": t for r, (tensors, _) in enumerate(rngs) for k, t in tensors.items()},
                  str(tmp / "trainer_state.safetensors"))
        values = {"step": step, **extra, "scheduler": scheduler.state_dict(), "world_size": ddp.world,
                  "rng": [v for _, v in rngs]}
        (tmp / "trainer_state.json").write_text(json.dumps(values))
        publish(tmp, final, step, run_dir, keep)
    dist.barrier()
    return final


def load_checkpoint(path: Path, model, optimizer, scheduler, ddp) -> dict:
    """Restore the shards, AdamW state, scheduler and this rank's RNG. (DCP can also load into another world size;
    minorpo's tests resume at the same one only, the case that is bit-exact.)"""
    if not (path / ".metadata").exists():
        raise UserError(f"{path} is not an --fsdp checkpoint (no .metadata): resume it without --fsdp")
    model_sd, optim_sd = get_state_dict(model, optimizer, options=OPTIONS)  # the layout to load into
    dcp.load({"model": model_sd, "optimizer": optim_sd}, checkpoint_id=str(path))
    # strict=False: the frozen base weights are not in it (dcp.load above already failed on any missing key)
    set_state_dict(model, optimizer, model_state_dict=model_sd, optim_state_dict=optim_sd,
                   options=StateDictOptions(ignore_frozen_params=True, strict=False))
    state = json.loads((path / "trainer_state.json").read_text())
    scheduler.load_state_dict(state["scheduler"])
    r = ddp.rank if ddp.rank < state["world_size"] else 0  # another world size: rank 0's RNG for the new ranks
    tensors = load_file(str(path / "trainer_state.safetensors"))
    set_rng_state({k.split(".", 1)[1]: t for k, t in tensors.items() if k.startswith(f"rank{r}.")}, state["rng"][r])
    return state


def export(model, tokenizer, cfg, out: Path, ddp, source):
    """RUN/adapter and RUN/final as without --fsdp (in --export-dtype), written by rank 0. Every rank takes part in
    gathering: the full tensors are all-gathered one parameter at a time and moved to rank 0's CPU memory
    (cpu_offload=True: the other ranks keep nothing), so no GPU holds more than one full parameter beyond its
    shards; rank 0's CPU memory holds the whole model (float32: 4 bytes a parameter) while it is written."""
    from minorpo.hf.loader import DTYPES, save, source_dtype
    from minorpo.lora import merged_state_dict
    from minorpo.hf.peft import save_peft_adapter
    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if not ddp.main:
        return
    dtype = source_dtype(source) if cfg.export_dtype == "auto" else DTYPES[cfg.export_dtype]
    if cfg.lora_r > 0:
        save_peft_adapter(model, out / "adapter", base_model_name_or_path=cfg.model, state_dict=full)
        save(model, tokenizer, out / "final", state_dict=merged_state_dict(model, full), dtype=dtype, source=source)
    else:
        save(model, tokenizer, out / "final", state_dict=full, dtype=dtype, source=source)
    print(f"exported: {'adapter in ' + str(out / 'adapter') + ', ' if cfg.lora_r else ''}merged model ({dtype}) "
          f"in {out / 'final'}")
