"""The training loop: ORPO, and SFT and DPO for comparison. Read it top to bottom.

    minorpo train --model M --data D --method orpo --lam 0.1 --lora-r 16 --out runs/orpo

What one optimizer step does (global batch = batch_size x grad_accum x world_size pairs):
  1. take the step's pairs from a seeded per-epoch permutation (so the data position is a function of the step),
     optionally bucketed by length (--length-buckets), and lay them out padded or prompt-shared (--layout),
  2. for each micro-batch: one forward over chosen and rejected rows, the loss of the method, backward,
     with the loss *normalized by the whole global batch's pair and token counts* so that accumulating
     micro-batches (or ranks) gives exactly the gradient of the whole batch taken at once,
  3. sum the gradients over ranks (torchrun), clip their norm, AdamW step, learning-rate schedule step (with
     --precision bf16-weights and full fine-tuning the step updates float32 master weights, which are then
     rounded into the bf16 model: minorpo/fast/master.py),
  4. log metrics (TRL's names) to RUN/metrics.jsonl; evaluate held-out pairs every eval_every steps;
     checkpoint every save_every steps (atomically; --resume continues from the newest intact one).
At the end: the LoRA adapter as a PEFT folder (RUN/adapter) and a merged, transformers-loadable model (RUN/final).

Under torchrun the same script runs data-parallel: each rank takes its share of every global batch, the ranks'
gradients are summed before the optimizer step, rank 0 alone writes files (minorpo/run/distributed.py). With
--fsdp (minorpo/run/fsdp.py) the ranks hold shards of the model instead of copies.
"""

import copy
import functools
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from minorpo.batches import collate, count_targets, pad_token_id, row_length
from minorpo.errors import UserError
from minorpo.fast.buckets import bucketed_step_indices
from minorpo.fast.config import SpeedConfig
from minorpo.fast.master import MasterWeights
from minorpo.forward import ForwardSpec, evaluate, pair_logps, reference_logps
from minorpo.hf.loader import DTYPES, load_model, resolve, save, source_dtype
from minorpo.hf.peft import save_peft_adapter
from minorpo.hf.tokenizer import Tokenizer
from minorpo.lora import apply_lora, merged_state_dict
from minorpo.loss import metric_shares, objective_sums
from minorpo.run import folders
from minorpo.run.checkpoint import load_checkpoint, save_checkpoint
from minorpo.run.config import RunConfig, setting
from minorpo.run.distributed import Distributed, pick_device
from minorpo.run.pairs import DataSettings, load_pairs
from minorpo.run.progress import Progress
from minorpo.run.validate import check_train_config


@dataclass
class TrainConfig(RunConfig, SpeedConfig, DataSettings):
    """The settings of a run. The fields below are the training itself; the inherited ones are machinery, each
    group in its own room: data sources (minorpo/run/pairs.py), speed and precision switches (minorpo/fast/config.py),
    the run folder, devices and processes (minorpo/run/config.py). One flag per field: `minorpo train --help`."""
    # --- what to train
    model: str = setting("", "hub id or local folder (config.json + *.safetensors + tokenizer.json)")
    data: str = setting("", "preference data: a local .jsonl/.json/.jsonl.gz/.parquet file or a hub dataset id")
    method: str = setting("orpo", "orpo (L_SFT + lam*L_OR, Eq. 6), sft (NLL of chosen only), dpo (beta, reference = "
                                  "base model), pr (section 7.1's probability-ratio variant: L_SFT + lam * -log "
                                  "sigmoid(beta * (a - b)))", ["orpo", "sft", "dpo", "pr"])
    lam: float = setting(0.1, "ORPO's lambda, the weight of the odds-ratio term (TRL calls it beta; paper uses "
                              "0.1-1.0)")
    beta: float = setting(0.1, "DPO's beta (--method dpo), or the probability ratio's beta (--method pr)")
    preset: str = setting("paper", "loss conventions (which tokens the NLL covers, how it is normalized): see "
                                   "minorpo/batches.py", ["paper", "trl", "official", "llamafactory"])
    max_length: int = setting(512, "max tokens of prompt + response")
    max_prompt_length: int = setting(0, "prompts longer than this are cut by --prompt-truncation (0 = half of "
                                        "max_length)")
    eval_pairs: int = setting(64, "pairs held out for evaluation (a seeded split of --data, never trained on; or the "
                                  "first N of --eval-data)")
    # --- LoRA (r = 0 means full fine-tuning)
    lora_r: int = setting(16, "LoRA rank; 0 = full fine-tuning of every weight")
    lora_alpha: float = setting(32.0, "LoRA alpha: the update is scaled by alpha/r")
    lora_dropout: float = setting(0.0, "dropout on the LoRA input")
    lora_targets: str = setting("attention", "'attention' (q,k,v,o), 'all-linear', or a comma list of module names")
    # --- optimization
    lr: float = setting(8e-6, "peak learning rate (paper: 8e-6 for full ORPO fine-tuning; LoRA usually needs more)")
    optimizer: str = setting("adamw", "adamw, or sgd (plain gradient descent: its update shows the gradient itself, "
                                      "which the tests use)", ["adamw", "sgd"])
    weight_decay: float = setting(0.0, "AdamW weight decay")
    warmup_steps: int = setting(10, "linear warmup steps from 0 to lr")
    schedule: str = setting("cosine", "decay after warmup (to 0 at max_steps)", ["cosine", "linear", "constant"])
    max_steps: int = setting(100, "optimizer steps to run")
    batch_size: int = setting(2, "pairs per micro-batch (per rank)")
    grad_accum: int = setting(1, "micro-batches per optimizer step")
    max_grad_norm: float = setting(1.0, "clip the global gradient norm (0 = no clipping)")
    seed: int = setting(0, "seed for data order, LoRA init and dropout")


# ----------------------------------------------------------------------------------------------------------
# small pieces


def lr_lambda(cfg: TrainConfig):
    """Multiplier of the peak lr at a step: linear warmup, then cosine / linear decay to 0 at max_steps."""
    def f(step):
        if step < cfg.warmup_steps:
            return (step + 1) / (cfg.warmup_steps + 1)
        if cfg.schedule == "constant":
            return 1.0
        progress = (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps)
        progress = min(1.0, progress)
        return 0.5 * (1 + math.cos(math.pi * progress)) if cfg.schedule == "cosine" else 1.0 - progress
    return f


def step_indices(n: int, step: int, global_batch: int, seed: int) -> list:
    """The data indices of optimizer step `step`: a fresh seeded permutation each epoch, consumed in order.

    The position in the data is a pure function of the step, so resuming at step s needs nothing else.
    """
    start = step * global_batch
    return [epoch_order(n, seed, pos // n)[pos % n] for pos in range(start, start + global_batch)]


@functools.lru_cache(maxsize=4)
def epoch_order(n: int, seed: int, epoch: int) -> list:
    """The seeded permutation of epoch `epoch` (cached: drawn once, not once per pair)."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g).tolist()


def eval_due(cfg: TrainConfig, step: int) -> bool:
    """Evaluate after this step? Every eval_every steps and after the last one (eval_every 0: only at step 0)."""
    return bool(cfg.eval_every) and (step % cfg.eval_every == 0 or step == cfg.max_steps)


# ----------------------------------------------------------------------------------------------------------
# the run


def train(cfg: TrainConfig, model=None, tokenizer=None, pairs=None) -> dict:
    """Run training; returns the final metrics. `model`, `tokenizer` and tokenized `pairs` may be passed in
    (the tests do) instead of being loaded from cfg.model / cfg.data.

    Whatever happens, the process group (torchrun) is closed and PyTorch's process-wide cuDNN-attention switch is
    set back to what it was (and so is the thread count --threads sets): a notebook that trains and then generates
    gets its own settings back. What train() does with an existing run folder in cfg.out: minorpo/run/folders.py.
    """
    check_train_config(cfg, model=model is None, data=pairs is None)  # every setting, before anything slow (minorpo/run/validate.py)
    device = pick_device(cfg.device)
    fsdp = None
    if cfg.fsdp:  # the sharded path (minorpo/run/fsdp.py): imported only when used, FSDP's own imports are slow
        from minorpo.run import fsdp
    ddp = fsdp.ShardedDistributed(device) if cfg.fsdp else Distributed(device)
    start = folders.prepare(cfg, log=print if ddp.main else (lambda *a, **k: None), main=ddp.main)  # before the model loads
    if start.finished:
        rows = folders.read_rows(Path(cfg.out) / "metrics.jsonl")
        return rows[-1] if rows else {}
    cudnn_before, threads_before = torch.backends.cuda.cudnn_sdp_enabled(), torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    try:
        return _train(cfg, device, ddp, fsdp, model, tokenizer, pairs, start)
    finally:
        ddp.close()
        torch.backends.cuda.enable_cudnn_sdp(cudnn_before)
        torch.set_num_threads(threads_before)


def _train(cfg: TrainConfig, device, ddp, fsdp, model, tokenizer, pairs, start: folders.Start) -> dict:
    """train()'s body: model, data, optimizer, the loop, the export. fsdp: minorpo.run.fsdp with --fsdp, else None."""
    if device.type == "cuda":
        torch.backends.cuda.enable_cudnn_sdp(cfg.cudnn_attention)
    if device.type == "cuda" and ddp.world > 1:
        device = torch.device("cuda", ddp.local_rank)
        torch.cuda.set_device(device)
    out = Path(cfg.out)
    log = print if ddp.main else (lambda *a, **k: None)
    torch.manual_seed(cfg.seed)

    # --- tokenizer and data first: a mistake in the data is reported before the model loads
    source = Path(cfg.model)  # the model folder (a hub id: its local copy)
    if model is None or tokenizer is None:
        source = resolve(cfg.model, cfg.revision or None)
        tokenizer = tokenizer or Tokenizer.from_dir(source)
    if cfg.chat_template and tokenizer.chat_template is None:
        raise UserError(f"--chat-template: the tokenizer of {cfg.model} has no chat template (none in "
                        f"tokenizer_config.json or chat_template.jinja); train on raw text without the flag")
    if pairs is None:
        pairs = load_pairs(cfg, tokenizer, out if ddp.main else None, log)
    eval_set = load_pairs(cfg, tokenizer, None, log, eval_data=True) if cfg.eval_data else None
    # --- data: the tokenized pairs, and a seeded held-out split of them unless --eval-data gave the held-out pairs
    if cfg.max_pairs:
        pairs = pairs[: cfg.max_pairs]
    if eval_set is not None:
        train_set = pairs
    else:
        split = torch.randperm(len(pairs), generator=torch.Generator().manual_seed(12345)).tolist()
        eval_set = [pairs[i] for i in split[: cfg.eval_pairs]]
        train_set = [pairs[i] for i in split[cfg.eval_pairs:]]
    if not train_set:
        raise UserError(f"--data {cfg.data}: no training pairs left: {len(pairs)} usable pairs, all {cfg.eval_pairs} "
                        f"held out for evaluation (--eval-pairs); lower --eval-pairs or pass --eval-data")
    global_batch = cfg.batch_size * cfg.grad_accum * ddp.world
    log(f"data: {len(train_set)} training pairs, {len(eval_set)} held out; global batch {global_batch} pairs "
        f"({cfg.batch_size} x {cfg.grad_accum} accumulation x {ddp.world} ranks)")

    # --- model
    if cfg.fsdp:  # read shard by shard into a sharded model, LoRA included
        model = fsdp.build(cfg, device, ddp, source, model)
    else:
        if model is None:
            dtype = torch.bfloat16 if cfg.precision == "bf16-weights" else torch.float32
            model = load_model(source, dtype=dtype)
        model.to(device)
        if cfg.precision == "bf16-weights":  # a model passed in as float32 (the loader above already gives bf16)
            model.to(dtype=torch.bfloat16)
        if cfg.lora_r > 0:
            targets = cfg.lora_targets if cfg.lora_targets in ("attention", "all-linear") else cfg.lora_targets.split(",")
            apply_lora(model, r=cfg.lora_r, alpha=cfg.lora_alpha, dropout=cfg.lora_dropout, targets=targets)
            model.to(device)
    model.gradient_checkpointing = cfg.gradient_checkpointing
    reference = None
    if cfg.method == "dpo" and cfg.lora_r == 0:  # full fine-tuning: DPO needs a frozen copy as its reference
        reference = copy.deepcopy(model).eval().requires_grad_(False)
    if cfg.compile:  # in place: parameter names (checkpoints, export) stay the same; one graph serves every block
        for layer in model.layers:
            layer.compile(dynamic=True)
    params = [p for p in model.parameters() if p.requires_grad]
    n_trainable = sum(p.numel() for p in params)
    n_total = sum(p.numel() for p in model.parameters())
    log(f"model: {n_total/1e6:.1f}M parameters, {n_trainable/1e6:.3f}M trainable "
        f"({'LoRA r=%d' % cfg.lora_r if cfg.lora_r else 'full fine-tuning'}), device {device}, precision {cfg.precision}")
    ddp.start()  # after the model is built (see Distributed.start)
    ddp.broadcast_parameters(params)
    master = None
    if cfg.precision == "bf16-weights" and cfg.lora_r == 0:  # the optimizer updates float32 copies (master.py)
        master = MasterWeights([(n, p) for n, p in model.named_parameters() if p.requires_grad])
        params = master.params

    pad_id = pad_token_id(tokenizer)

    # --- optimizer, schedule, resume
    if cfg.optimizer == "adamw":
        # On CUDA, the fused kernel: one launch updates every parameter (the default, foreach, launches a handful
        # of kernels per group of tensors). Same update rule; on the CPU the default is kept.
        optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay,
                                      fused=True if device.type == "cuda" else None)
    else:
        optimizer = torch.optim.SGD(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg))
    start_step = 0
    if start.checkpoint is not None:
        state = (fsdp.load_checkpoint(start.checkpoint, model, optimizer, scheduler, ddp) if cfg.fsdp
                 else load_checkpoint(start.checkpoint, model, optimizer, scheduler, master=master))
        start_step = state["step"]
        log(f"resumed from {start.checkpoint} (step {start_step}, {state['pairs_seen']} pairs seen)")
    if ddp.main:
        out.mkdir(parents=True, exist_ok=True)
        if start.checkpoint is None:
            folders.write_config(out, cfg)  # a resumed run keeps its config.json (changes: RUN/resumes.jsonl)
        folders.write_run_info(out, device, ddp.world)  # command, versions, hardware

    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.precision == "bf16")
    spec = ForwardSpec(preset=cfg.preset, chunk_size=cfg.chunk_size, pad_id=pad_id, layout=cfg.layout,
                       unpadded=cfg.unpadded, attention=cfg.attention, compiled_head=cfg.compile)
    lengths = [row_length(p, cfg.layout) for p in train_set]

    def held_out(step):
        if not eval_set:
            return {}
        model.eval()
        with torch.no_grad(), autocast:
            ev = evaluate(model, eval_set, spec, batch_size=cfg.batch_size, device=device, on_batch=bar.eval_batch)
        model.train()
        ev = ddp.mean_dict(ev) if ddp.world > 1 else ev
        return {f"eval_{k}": v for k, v in ev.items()}

    # --- the loop
    metrics = folders.MetricsLog(out, start_step, resumed=start.checkpoint is not None, report_to=cfg.report_to,
                              main=ddp.main)
    evals = sum(eval_due(cfg, s) for s in range(start_step + 1, cfg.max_steps + 1)) + (start_step == 0)
    bar = Progress(cfg, start_step, global_batch, len(eval_set), evals, ddp.main)
    model.train()
    last = {}
    if start_step == 0:
        last = held_out(0)
        metrics.write({"step": 0, **last})
    t_start = time.time()
    for step in range(start_step, cfg.max_steps):
        t0 = time.time()
        if cfg.length_buckets:
            idx = bucketed_step_indices(lengths, step, global_batch, cfg.seed, cfg.length_buckets, step_indices)
        else:
            idx = step_indices(len(train_set), step, global_batch, cfg.seed)
        mine = idx[ddp.rank::ddp.world]  # this rank's share of the global batch
        micro = [mine[i * cfg.batch_size:(i + 1) * cfg.batch_size] for i in range(cfg.grad_accum)]
        # the counts of the WHOLE global batch (all micro-batches, all ranks): its pairs, and its NLL tokens under
        # a token mean (its pairs under a sequence mean)
        counts = count_targets([train_set[i] for i in idx], cfg.preset, pad_id)
        sums = {}
        for k, chunk in enumerate(micro):
            batch = collate([train_set[i] for i in chunk], pad_id, device, cfg.layout)
            if cfg.fsdp:  # reduce-scatter the gradients in the last micro-batch's backward only
                model.set_requires_gradient_sync(k == len(micro) - 1)
            with autocast:
                tl = pair_logps(model, batch, spec)  # per-token log-probs of chosen and rejected (forward.py)
                ref = reference_logps(model, batch, spec, reference) if cfg.method == "dpo" else None
                nll_sum, pair_sum, stats = objective_sums(tl, cfg.method, cfg.lam, cfg.beta, spec.nll_normalization,
                                                          ref)  # sums over this micro-batch (loss.py)
            # Exact gradient accumulation: this micro-batch's sums over the GLOBAL batch's counts, so the micro-batch
            # (and rank) losses add up to the loss of the whole batch. Dividing each micro-batch by its own counts and
            # averaging is the bug TRL fixed in #3716: micro-batches with few tokens would weigh too much.
            loss = nll_sum / counts["nll"] + pair_sum / counts["pairs"]
            loss.backward()  # gradients add up over micro-batches
            for key, v in metric_shares(loss, stats, counts).items():
                sums[key] = sums.get(key, 0.0) + v
        ddp.sum_gradients(params)  # and over ranks
        grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm if cfg.max_grad_norm > 0 else float("inf"))
        if cfg.fsdp:
            grad_norm = grad_norm.full_tensor()  # a DTensor: the norm over all ranks' shards
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if master is not None:
            master.copy_to_model()
        lr = scheduler.get_last_lr()[0]
        scheduler.step()
        row = {k: v * ddp.world for k, v in ddp.mean_dict(sums).items()}  # the shares summed over ranks
        row.update({"step": step + 1, "epoch": (step + 1) * global_batch / len(train_set), "lr": lr,
                    "grad_norm": float(grad_norm), "step_time": time.time() - t0})
        bar.step(step + 1, row["loss"], lr)
        if eval_due(cfg, step + 1):
            row.update(held_out(step + 1))
        metrics.write(row)
        last = row
        due = cfg.save_every >= 0 and (step + 1 == cfg.max_steps or (cfg.save_every and (step + 1) % cfg.save_every == 0))
        if cfg.fsdp and due:  # every rank writes its shards
            fsdp.save_checkpoint(out, step + 1, model, optimizer, scheduler, {"pairs_seen": (step + 1) * global_batch},
                                 keep=cfg.keep_checkpoints, ddp=ddp)
        elif ddp.main and due:
            save_checkpoint(out, step + 1, model, optimizer, scheduler,
                            {"pairs_seen": (step + 1) * global_batch}, keep=cfg.keep_checkpoints,
                            weights=master.state_dict() if master is not None else None)
        if ddp.world > 1:
            dist.barrier()
    bar.close()
    metrics.close()

    # --- export
    if cfg.fsdp and cfg.export:  # every rank gathers, rank 0 writes
        fsdp.export(model, tokenizer, cfg, out, ddp, source)
    elif ddp.main and cfg.export:
        if cfg.export_dtype != "auto":
            dtype = DTYPES[cfg.export_dtype]
        else:  # the checkpoint's own dtype; a model passed in without a folder: its parameters' dtype
            dtype = source_dtype(source) if source.is_dir() else next(model.parameters()).dtype
        if cfg.lora_r > 0:
            save_peft_adapter(model, out / "adapter", base_model_name_or_path=cfg.model)
            save(model, tokenizer, out / "final", state_dict=merged_state_dict(model), dtype=dtype, source=source)
        else:
            save(model, tokenizer, out / "final", dtype=dtype, source=source)
        log(f"done: {cfg.max_steps - start_step} steps in {time.time() - t_start:.1f}s; "
            f"{'adapter in ' + str(out / 'adapter') + ', ' if cfg.lora_r else ''}merged model ({dtype}) in {out / 'final'}")
    return last

