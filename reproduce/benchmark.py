"""minorpo vs TRL's ORPOTrainer (+ PEFT LoRA) on the same work, side by side; and what each of minorpo's speed-ups
is worth on its own (--ablate).

    python reproduce/benchmark.py --model DIR_OR_HUB_ID --data FILE [--steps 8 --warmup 2] [--ablate] [--json OUT]

Claim (issue 7): on 2 CPU cores, SmolLM2-135M, ORPO + LoRA r=16 on q/k/v/o, 2 pairs a step, max length 256, HH-RLHF
rows, minorpo's median step time and peak RSS are both <= 0.6x TRL's; the shared-prompt layout is >= 1.2x faster
than the padded one at equal results. Issue 14: the same two goals on Gemma 3 270M (--model the Gemma fixture,
vocabulary 262,144; results/benchmark/README.md has the command).

The same work for both:
  * rows: the first --pool rows of --data that minorpo keeps and whose prompt + longer response fit in --max-length
    tokens, so that neither framework truncates anything (TRL cuts only responses, minorpo also prompts: cutting
    would give them different tokens). Both tokenize prompt and responses the same way (BOS before the prompt,
    EOS after each response, TRL's rule); the TRL child checks its token counts against minorpo's, row by row.
  * batches: minorpo runs first and records which pairs it put in each step (its seeded order); TRL then reads
    exactly those pairs in that order (train_sampling_strategy="sequential"), so every step of the two runs holds
    the same pairs. (Length bucketing, an --ablate variant, changes which pairs share a step; it is never used
    against TRL.)
  * model and optimization: float32 weights, LoRA r (alpha = 2r, no dropout) on q_proj, k_proj, v_proj, o_proj,
    AdamW (torch's, weight decay 0) at the same constant lr, gradient clipping at 1.0, ORPO lambda (TRL's beta)
    0.1, minorpo's `trl` loss preset (the NLL over prompt + chosen response as one token mean, TRL's default; the
    paper's choice is the response only), no gradient checkpointing and no bf16 for either (ORPOConfig's defaults
    turn both on; they are turned off so the two do the same arithmetic).
  * TRL's overheads that are not part of training are off: report_to="none", no evaluation, no logging
    (logging_strategy="no"), no saving; minorpo likewise runs with no evaluation, no checkpoints, no export.
    TRL tokenizes its dataset in ORPOTrainer's constructor, before the timed steps; minorpo tokenizes before
    train() is called. Neither is timed.
Each framework runs in its own subprocess, so peak memory is per framework: peak RSS from
resource.getrusage(RUSAGE_SELF).ru_maxrss in the child on a CPU (everything the process ever held: interpreter,
imports, weights, data, training), torch.cuda.max_memory_allocated on a GPU.

What is measured per run (steps after --warmup):
  step time   median wall time of one optimizer step: minorpo's own step_time (batch indices, collate, forward,
              backward, clip, AdamW, metrics); for TRL the time between consecutive on_step_end callbacks (all it
              does per step: data loading, forward, backward, clip, AdamW, its metric bookkeeping);
  pairs/s     pairs in the timed steps / their total time;
  tokens/s    real tokens / total time, where real tokens are those of the work as TRL defines it: prompt + chosen
              plus prompt + rejected, no padding, counted the same way for every run (so a layout that computes the
              prompt once does the same work in less time, not "fewer tokens");
  computed    tokens the model actually ran per step, padding included (batch shape), and the padding fraction;
  loss check  step-1 nll_loss and log_odds_ratio of every run (same weights at step 1, so they must agree to
              float32 rounding), and the largest relative difference of the per-step loss between runs that see
              the same batches (minorpo's LoRA init is seeded, so its runs follow the same trajectory).
--ablate runs each of minorpo's switches on its own, each in its own subprocess, on the same batches:
  padded, unchunked (chunk_size 0: the full [2B, T, V] logits) -> padded, chunked (the log-prob chunking)
  -> shared (the prompt once per pair) ; and length bucketing (length_buckets = all steps: the same pairs, sorted
  into batches of similar length) on each layout.
The machine is shared with other jobs here: the load average is recorded before each child; ratios measured in the
same invocation are what to compare. One heavy run at a time: the children run one after another.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as `python reproduce/benchmark.py` from a checkout without `pip install -e .`
    sys.path.insert(0, str(REPO))

# minorpo configurations: TrainConfig fields that differ from the common setting (see minorpo_child)
def variant(layout="shared", chunk_size=1024, unpadded=False, compile=False, length_buckets=0, cudnn_attention=False,
            precision=None, attention="sdpa"):
    """TrainConfig overrides of one minorpo configuration; precision None = the run's --precision."""
    out = {"layout": layout, "chunk_size": chunk_size, "unpadded": unpadded, "compile": compile,
           "length_buckets": length_buckets,  # length_buckets -1: one window over all the run's steps
           "cudnn_attention": cudnn_attention, "attention": attention}
    if precision is not None:
        out["precision"] = precision
    return out


MINORPO_BEST = variant("shared", unpadded=True, compile=True)
ABLATIONS = {  # each switch on its own (see EFFECTS); all but the buckets on the same batches
    "padded-unchunked": variant("padded", chunk_size=0),
    "padded": variant("padded"),
    "shared": variant("shared"),
    "shared-unpadded": variant("shared", unpadded=True),
    "shared-unpadded-compiled": MINORPO_BEST,
    "padded-buckets": variant("padded", length_buckets=-1),
    "shared-buckets": variant("shared", length_buckets=-1),
}
EFFECTS = [  # (what, from, to)
    ("chunked vs unchunked log-probs (padded)", "padded-unchunked", "padded"),
    ("shared-prompt vs padded layout", "padded", "shared"),
    ("unpadded rows (shared)", "shared", "shared-unpadded"),
    ("torch.compile (shared, unpadded)", "shared-unpadded", "shared-unpadded-compiled"),
    ("length buckets (padded)", "padded", "padded-buckets"),
    ("length buckets (shared)", "shared", "shared-buckets"),
]


# ----------------------------------------------------------------------------------------------------------------
# The plan: the rows both frameworks train on, in text, with minorpo's token counts


def data_config(max_length=None):
    from minorpo.data import DataConfig
    # BOS before the prompt and EOS after each response, always: TRL's ORPOTrainer adds both whatever the tokenizer
    # does, so forcing them in minorpo gives both frameworks the same tokens.
    return DataConfig(format="standard", template="raw", add_bos=True, add_eos=True, max_length=max_length,
                      strict=True)


def make_plan(model_dir: Path, data: str, max_length: int, pool: int, log=print) -> dict:
    """The first `pool` usable rows of `data` that need no truncation, as {prompt, chosen, rejected} text."""
    from minorpo.data import DataConfig, load_preferences
    from minorpo.hf.tokenizer import Tokenizer
    tok = Tokenizer.from_dir(model_dir)
    ds = load_preferences(data, tok, DataConfig(add_bos=True, add_eos=True, max_length=None))
    fit = [e for e in ds.examples if len(e.prompt_ids) + max(len(e.chosen_ids), len(e.rejected_ids)) <= max_length]
    if len(fit) < pool:
        raise SystemExit(f"{data}: only {len(fit)} of {len(ds.examples)} usable rows fit in --max-length {max_length} "
                         f"tokens; need --pool {pool}")
    rows = [{"prompt": e.texts[0], "chosen": e.texts[1], "rejected": e.texts[2], "where": e.where} for e in fit[:pool]]
    log(f"data: {ds.report.rows_read} rows read, {len(ds.examples)} usable, {len(fit)} fit in {max_length} tokens "
        f"without truncation; the first {pool} of those are the pool")
    return {"model_dir": str(model_dir), "rows": rows}


# ----------------------------------------------------------------------------------------------------------------
# Children: one framework, one configuration, one process


def trl_available(*also: str) -> bool:
    """Whether the TRL runs can happen: trl, datasets (trl_child builds a Dataset) and `also` import; else why not."""
    try:
        for name in ("trl", "datasets", *also):
            importlib.import_module(name)
    except ImportError as e:
        print(f"TRL runs skipped: {e}")
        return False
    return True


def peak_memory(device: str) -> int:
    """Peak bytes: GPU memory allocated by PyTorch, or the process's peak resident set size (Linux: KiB)."""
    import torch
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated()
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def minorpo_child(args, plan: dict, overrides: dict) -> dict:
    import torch

    from minorpo import train as train_module
    from minorpo.data import build_examples
    from minorpo.hf.loader import load
    from minorpo.train import TrainConfig, train

    torch.manual_seed(0)
    overrides = dict(overrides)
    precision = overrides.pop("precision", args.precision)
    dtype = torch.bfloat16 if precision == "bf16-weights" else torch.float32
    model, tok = load(plan["model_dir"], dtype=dtype)
    pairs = build_examples(((r["where"], r) for r in plan["rows"]), tok, data_config(args.max_length)).examples
    steps = args.warmup + args.steps
    if overrides.get("length_buckets") == -1:
        overrides["length_buckets"] = steps
    out = tempfile.mkdtemp(prefix="minorpo-bench-")
    cfg = TrainConfig(model=plan["model_dir"], data="(benchmark plan)", out=out, method="orpo", preset="trl",
                      lam=0.1, lora_r=args.lora_r, lora_alpha=2.0 * args.lora_r, lora_dropout=0.0,
                      lora_targets="attention", lr=args.lr, optimizer="adamw", weight_decay=0.0, warmup_steps=0,
                      schedule="constant", max_steps=steps, batch_size=args.batch_size, grad_accum=1,
                      max_grad_norm=1.0, seed=0, max_length=args.max_length, max_prompt_length=args.max_length,
                      eval_pairs=0, eval_every=0, save_every=-1, progress=False, export=False,
                      precision=precision, device=args.device, **overrides)
    # record what train() collates, step by step: which pairs, and the batch's shape (padding included)
    batches = []
    collate = train_module.collate  # train() calls it once per micro-batch: wrapped here, for this run only

    def recording(batch_pairs, *args, **kwargs):
        batch = collate(batch_pairs, *args, **kwargs)
        ids = batch["input_ids"] if "input_ids" in batch else batch["chosen_input_ids"]
        rows = ids.shape[0] * (1 if "input_ids" in batch else 2)
        batches.append({"where": [p.where for p in batch_pairs], "computed_tokens": rows * ids.shape[1]})
        return batch

    train_module.collate = recording
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    setup_memory = peak_memory(args.device)
    try:
        train(cfg, model=model, tokenizer=tok, pairs=pairs)
    finally:
        train_module.collate = collate
    metrics = [json.loads(line) for line in Path(out, "metrics.jsonl").read_text().splitlines()]
    metrics = [m for m in metrics if m["step"] > 0]
    by_where = {p.where: p for p in pairs}
    for b in batches:
        b["real_tokens"] = sum(2 * len(by_where[w].prompt_ids) + len(by_where[w].chosen_ids)
                               + len(by_where[w].rejected_ids) for w in b["where"])
    return {"step_times": [m["step_time"] for m in metrics], "loss": [m["loss"] for m in metrics],
            "nll_loss": [m["nll_loss"] for m in metrics], "log_odds_ratio": [m["log_odds_ratio"] for m in metrics],
            "batches": batches, "peak_memory": peak_memory(args.device), "setup_memory": setup_memory,
            "config": {k: getattr(cfg, k) for k in ("layout", "chunk_size", "unpadded", "length_buckets", "compile",
                                                    "precision", "lora_r", "lr", "batch_size", "max_length")},
            "token_counts": {p.where: [len(p.prompt_ids), len(p.chosen_ids), len(p.rejected_ids)] for p in pairs}}


def trl_child(args, plan: dict, order: list, token_counts: dict) -> dict:
    """TRL's ORPOTrainer over the rows named in `order` (the pairs minorpo trained on, step by step)."""
    import torch
    import transformers
    from datasets import Dataset
    from trl.experimental.orpo import ORPOConfig, ORPOTrainer

    cuda = args.device.startswith("cuda")
    # gpu_benchmark.py's word-level tokenizers need the plain fast class: AutoTokenizer picks the class by model_type
    # (Qwen2Tokenizer for a qwen2 config), which turns those word-level vocabularies into empty token lists
    tokenizer = getattr(transformers, plan.get("hf_tokenizer_class", "AutoTokenizer")).from_pretrained(plan["model_dir"])
    dtype = torch.bfloat16 if args.precision == "bf16-weights" else torch.float32
    model = transformers.AutoModelForCausalLM.from_pretrained(plan["model_dir"], dtype=dtype,
                                                              attn_implementation="sdpa")
    if cuda:
        model.to(args.device)
    rows = {r["where"]: r for r in plan["rows"]}
    dataset = Dataset.from_list([{k: rows[w][k] for k in ("prompt", "chosen", "rejected")} for w in order])
    peft_config = None
    if args.lora_r > 0:
        import peft
        peft_config = peft.LoraConfig(r=args.lora_r, lora_alpha=2 * args.lora_r, lora_dropout=0.0, bias="none",
                                      task_type="CAUSAL_LM", target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])
    steps = args.warmup + args.steps
    config = ORPOConfig(
        output_dir=tempfile.mkdtemp(prefix="trl-bench-"), beta=0.1, max_length=args.max_length,
        per_device_train_batch_size=args.batch_size, gradient_accumulation_steps=1, max_steps=steps,
        learning_rate=args.lr, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0,
        optim="adamw_torch", seed=0, train_sampling_strategy="sequential",
        bf16=args.precision != "fp32", gradient_checkpointing=False,
        report_to="none", logging_strategy="no", save_strategy="no", eval_strategy="no", disable_tqdm=True,
        dataloader_num_workers=0, remove_unused_columns=False, use_cpu=not cuda)

    class StepClock(transformers.TrainerCallback):
        def __init__(self):
            self.ends, self.setup_memory = [], None

        def on_train_begin(self, *a, **k):
            if cuda:
                torch.cuda.synchronize()
            self.setup_memory = peak_memory(args.device)
            self.ends.append(time.perf_counter())

        def on_step_end(self, *a, **k):
            if cuda:
                torch.cuda.synchronize()
            self.ends.append(time.perf_counter())

    clock = StepClock()
    trainer = ORPOTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer,
                          peft_config=peft_config, callbacks=[clock])
    # TRL's tokenization vs minorpo's, row by row (same text, same BOS/EOS rule -> same counts expected)
    ds = trainer.train_dataset
    mismatches = []
    for i, w in enumerate(order[:len(ds)]):
        p = len(ds[i]["prompt_input_ids"])
        counts = [p, len(ds[i]["chosen_input_ids"]) - p, len(ds[i]["rejected_input_ids"]) - p]
        if counts != token_counts[w]:
            mismatches.append({"where": w, "trl": counts, "minorpo": token_counts[w]})
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    trainer.train()
    stored = trainer._stored_metrics["train"]  # TRL keeps every step's metrics here (logged only on log steps)
    return {"step_times": [b - a for a, b in zip(clock.ends, clock.ends[1:])],
            "nll_loss": list(stored["nll_loss"]), "log_odds_ratio": list(stored["log_odds_ratio"]),
            "peak_memory": peak_memory(args.device), "setup_memory": clock.setup_memory,
            "token_mismatches": mismatches, "trl_version": __import__("trl").__version__}


# ----------------------------------------------------------------------------------------------------------------
# Parent: run the children one after another, summarize


def run_child(args, framework: str, plan_path: Path, extra: dict, timeout: float | None = None) -> dict:
    """Run this script as a child process for one framework/configuration; returns its result dict. A child that
    fails or runs past `timeout` seconds raises SystemExit with the end of its output."""
    with tempfile.TemporaryDirectory() as tmp:
        spec, result = Path(tmp, "spec.json"), Path(tmp, "result.json")
        spec.write_text(json.dumps({"framework": framework, "plan": str(plan_path), **extra}))
        cmd = [sys.executable, __file__, "--child", str(spec), "--child-result", str(result),
               "--steps", str(args.steps), "--warmup", str(args.warmup), "--batch-size", str(args.batch_size),
               "--max-length", str(args.max_length), "--lora-r", str(args.lora_r), "--lr", str(args.lr),
               "--device", args.device, "--precision", args.precision, "--threads", str(args.threads)]
        load = os.getloadavg()[0]
        t0 = time.time()
        # On the CPU, TORCHINDUCTOR_COMPILE_THREADS=1: torch.compile's code generation in the child itself, not in a
        # pool of worker processes whose memory the child's peak RSS would not count (on a GPU the memory measured
        # is the GPU's, so the pool may work in parallel)
        env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "PYTHONWARNINGS": "ignore"}
        if not args.device.startswith("cuda"):
            env["TORCHINDUCTOR_COMPILE_THREADS"] = "1"
        try:
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired as e:
            tail = (e.stdout or b"")[-3000:], (e.stderr or b"")[-3000:]
            raise SystemExit(f"{framework} child ran past {timeout:.0f} s:\n" + "\n".join(
                t.decode(errors="replace") if isinstance(t, bytes) else t for t in tail))
        if proc.returncode != 0:
            raise SystemExit(f"{framework} child failed (exit {proc.returncode}):\n{proc.stdout[-3000:]}\n"
                             f"{proc.stderr[-6000:]}")
        out = json.loads(result.read_text())
        out.update({"framework": framework, "wall_s": time.time() - t0, "load_before": load})
        return out


def add_run(results: dict, name: str, res: dict):
    """Keep a run; a repeat of it (--repeats) adds its step times and can only raise its peak memory."""
    if name not in results:
        res["step_times_all"] = [res["step_times"]]
        results[name] = res
    else:
        results[name]["step_times_all"].append(res["step_times"])
        results[name]["peak_memory"] = max(results[name]["peak_memory"], res["peak_memory"])
        results[name].setdefault("repeat_load_before", []).append(res["load_before"])


def summarize(res: dict, warmup: int, pairs_per_step: int) -> dict:
    """Median step time and rates over the steps after warm-up (of every repeat)."""
    runs = res.get("step_times_all", [res["step_times"]])
    times = [t for run in runs for t in run[warmup:]]
    batches = res.get("batches")
    total = sum(times)
    s = {"median_step_s": statistics.median(times), "mean_step_s": total / len(times),
         "pairs_per_s": pairs_per_step * len(times) / total, "peak_memory_bytes": res["peak_memory"],
         "setup_memory_bytes": res.get("setup_memory"), "timed_steps": len(times),
         "step1_nll_loss": res["nll_loss"][0], "step1_log_odds_ratio": res["log_odds_ratio"][0]}
    if batches:
        timed = batches[warmup:warmup + len(runs[0]) - warmup] * len(runs)
        real = sum(b["real_tokens"] for b in timed)
        computed = sum(b["computed_tokens"] for b in timed)
        ran = sum(b["computed_real"] for b in timed)  # non-padding tokens the model ran
        s.update({"tokens_per_s": real / total, "real_tokens": real, "computed_tokens": computed,
                  "padding_fraction": 1 - ran / computed})
    return s


def computed_real_tokens(batch: dict, counts: dict, layout: str) -> int:
    """Non-padding tokens the model ran for a batch: 2P + C + R per pair (padded) or P + C + R (shared)."""
    n = 0
    for w in batch["where"]:
        p, c, r = counts[w]
        n += (2 * p + c + r) if layout == "padded" else (p + c + r)
    return n


def fmt_bytes(b):
    return f"{b / 2**30:.2f} GiB" if b is not None else "-"


def print_table(rows: list, baseline: str | None):
    head = f"{'run':<28} {'median s/step':>13} {'pairs/s':>8} {'tokens/s':>9} {'peak mem':>10} {'pad frac':>8}"
    if baseline:
        head += f" {'time/' + baseline[:5]:>11} {'mem/' + baseline[:5]:>10}"
    print(head)
    base = next((r for n, r in rows if n == baseline), None)
    for name, s in rows:
        pad = f"{s['padding_fraction']:.2f}" if s.get("padding_fraction") is not None else "-"
        line = (f"{name:<28} {s['median_step_s']:13.3f} {s['pairs_per_s']:8.3f} {s['tokens_per_s']:9.1f} "
                f"{fmt_bytes(s['peak_memory_bytes']):>10} {pad:>8}")
        if base:
            line += f" {s['median_step_s'] / base['median_step_s']:11.3f} {s['peak_memory_bytes'] / base['peak_memory_bytes']:10.3f}"
        print(line)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="local model folder or hub id (transformers-format, safetensors)")
    p.add_argument("--data", help="preference data file (.jsonl/.jsonl.gz/.json/.parquet) or hub dataset id")
    p.add_argument("--steps", type=int, default=8, help="timed optimizer steps after warm-up (default 8)")
    p.add_argument("--warmup", type=int, default=2, help="untimed warm-up steps first (default 2)")
    p.add_argument("--batch-size", type=int, default=2, help="pairs per step (default 2)")
    p.add_argument("--max-length", type=int, default=256, help="max tokens of prompt + one response (default 256)")
    p.add_argument("--lora-r", type=int, default=16, help="LoRA rank on q/k/v/o_proj, alpha = 2r; 0 = full "
                                                           "fine-tuning (default 16)")
    p.add_argument("--lr", type=float, default=1e-4, help="AdamW learning rate, constant (default 1e-4)")
    p.add_argument("--pool", type=int, default=0, help="rows to draw steps from (default: 4 x the pairs needed)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16"],
                   help="fp32, or bf16 autocast for both frameworks (TRL: bf16=True) (default fp32)")
    p.add_argument("--layout", default=MINORPO_BEST["layout"], choices=["padded", "shared"],
                   help="minorpo's layout in the comparison with TRL (default shared)")
    p.add_argument("--chunk-size", type=int, default=MINORPO_BEST["chunk_size"],
                   help="minorpo's log-prob chunk in the comparison with TRL; 0 = unchunked (default 1024)")
    p.add_argument("--unpadded", action=argparse.BooleanOptionalAction, default=MINORPO_BEST["unpadded"],
                   help="minorpo's rows at their own length (shared layout) in the comparison with TRL (default on)")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=MINORPO_BEST["compile"],
                   help="minorpo's torch.compile of the decoder blocks in the comparison with TRL (default on)")
    p.add_argument("--threads", type=int, default=0,
                   help="torch threads in every child (default 0: torch's default, one per core)")
    p.add_argument("--repeats", type=int, default=1,
                   help="run the minorpo / TRL comparison this many times, alternating (default 1)")
    p.add_argument("--no-trl", action="store_true", help="skip TRL (also skipped when trl/peft are not installed)")
    p.add_argument("--ablate", action="store_true", help="also run each minorpo switch on its own (see above)")
    p.add_argument("--variants", help="with --ablate: a comma list of the ablation runs to make (default all: "
                                      + ", ".join(ABLATIONS) + ")")
    p.add_argument("--json", help="write all results here (JSON)")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--child-result", help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.child:  # one framework, one configuration, in this process
        if args.threads:
            import torch
            torch.set_num_threads(args.threads)
        spec = json.loads(Path(args.child).read_text())
        plan = json.loads(Path(spec["plan"]).read_text())
        if spec["framework"] == "trl":
            if not spec.get("cudnn_attention", True):  # the same switch as minorpo's --cudnn-attention
                import torch
                torch.backends.cuda.enable_cudnn_sdp(False)
            res = trl_child(args, plan, spec["order"], spec["token_counts"])
        else:
            res = minorpo_child(args, plan, spec["overrides"])
        Path(args.child_result).write_text(json.dumps(res))
        return 0

    if not args.model or not args.data:
        p.error("--model and --data are required")
    t_start = time.time()
    from minorpo.hf.loader import resolve
    import torch
    model_dir = resolve(args.model)
    steps = args.warmup + args.steps
    pool = args.pool or 4 * steps * args.batch_size
    command = "python reproduce/benchmark.py " + " ".join(sys.argv[1:] if argv is None else argv)
    hardware = (torch.cuda.get_device_name() if args.device.startswith("cuda")
                else f"CPU {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
                     f"torch threads {args.threads or torch.get_num_threads()}")
    print(f"command: {command}\nhardware: {hardware}; torch {torch.__version__}; python {platform.python_version()}")
    plan = make_plan(model_dir, args.data, args.max_length, pool)
    have_trl = not args.no_trl and trl_available("peft")

    results, summaries = {}, []
    with tempfile.TemporaryDirectory() as tmp:
        plan_path = Path(tmp, "plan.json")
        plan_path.write_text(json.dumps(plan))
        best = variant(args.layout, args.chunk_size, args.unpadded, args.compile)
        runs = [("minorpo", best)]
        if args.ablate:
            wanted = args.variants.split(",") if args.variants else list(ABLATIONS)
            unknown = [v for v in wanted if v not in ABLATIONS]
            if unknown:
                raise SystemExit(f"--variants: unknown {unknown}; known: {', '.join(ABLATIONS)}")
            runs += [(f"minorpo {name}", ABLATIONS[name]) for name in wanted if ABLATIONS[name] != best]
        for rep in range(args.repeats):  # repeats alternate minorpo and TRL, so a busy spell hits both
            tag = f" (repeat {rep + 1} of {args.repeats})" if args.repeats > 1 else ""
            for name, overrides in (runs if rep == 0 else runs[:1]):
                print(f"running {name}{tag} ...", flush=True)
                res = run_child(args, "minorpo", plan_path, {"overrides": overrides})
                for b in res["batches"]:
                    b["computed_real"] = computed_real_tokens(b, res["token_counts"], overrides["layout"])
                    if overrides["unpadded"]:  # the rows ran at their own lengths, not at the batch's shape
                        b["computed_tokens"] = b["computed_real"]
                add_run(results, name, res)
            ref = results["minorpo"]
            if have_trl:
                print(f"running TRL{tag} ...", flush=True)
                order = [w for b in ref["batches"][:steps] for w in b["where"]]
                res = run_child(args, "trl", plan_path, {"order": order, "token_counts": ref["token_counts"]})
                # the same pairs per step; TRL pads the 2B chosen + rejected rows to the batch's longest sequence
                counts = ref["token_counts"]
                res["batches"] = []
                for b in ref["batches"][:steps]:
                    longest = max(counts[w][0] + max(counts[w][1], counts[w][2]) for w in b["where"])
                    res["batches"].append({"where": b["where"], "real_tokens": b["real_tokens"],
                                           "computed_tokens": 2 * len(b["where"]) * longest,
                                           "computed_real": computed_real_tokens(b, counts, "padded")})
                add_run(results, "TRL", res)

    for name, res in results.items():
        summaries.append((name, summarize(res, args.warmup, args.batch_size)))

    print(f"\n{args.steps} timed steps after {args.warmup} warm-up"
          + (f" in each of {args.repeats} alternating repeats (ablations: the first only)" if args.repeats > 1 else "")
          + f", {args.batch_size} pairs/step, max length "
          f"{args.max_length}, LoRA r={args.lora_r} (q,k,v,o), precision {args.precision}, device {args.device}")
    print("tokens/s counts prompt+chosen and prompt+rejected tokens (no padding) for every run; peak mem is "
          + ("torch.cuda.max_memory_allocated" if args.device.startswith("cuda") else "peak RSS of the child process"))
    print_table(summaries, "TRL" if "TRL" in results else None)

    s = dict(summaries)
    verdicts, effects = {}, {}
    if "TRL" in results:
        t_ratio = s["minorpo"]["median_step_s"] / s["TRL"]["median_step_s"]
        m_ratio = s["minorpo"]["peak_memory_bytes"] / s["TRL"]["peak_memory_bytes"]
        mism = results["TRL"]["token_mismatches"]
        # the same pairs in every step of both runs: step-by-step ratios need no luck in which batches are timed
        mine = [t for run in results["minorpo"]["step_times_all"] for t in run[args.warmup:]]
        theirs = [t for run in results["TRL"]["step_times_all"] for t in run[args.warmup:]]
        paired = [a / b for a, b in zip(mine, theirs)]
        paired_median = statistics.median(paired)
        total_ratio = sum(mine) / sum(theirs)
        effects["minorpo vs TRL, step by step"] = {"median_of_step_time_ratios": paired_median,
                                                   "total_time_ratio": total_ratio, "step_time_ratios": paired}
        print(f"\nminorpo/TRL: median step time {t_ratio:.3f}x, peak memory {m_ratio:.3f}x, tokens/s "
              f"{s['minorpo']['tokens_per_s'] / s['TRL']['tokens_per_s']:.2f}x "
              f"(TRL {results['TRL']['trl_version']}; TRL's default NLL covers prompt + response, as the `trl` preset)")
        print(f"same batches step by step: median of the per-step time ratios {paired_median:.3f}x, total time "
              f"{total_ratio:.3f}x")
        print(f"token counts TRL vs minorpo: {len(mism)} of {len(order)} rows differ"
              + (f" (first: {mism[0]})" if mism else ""))
        print(f"step 1 (same weights): nll_loss minorpo {s['minorpo']['step1_nll_loss']:.6f} TRL "
              f"{s['TRL']['step1_nll_loss']:.6f}; log_odds_ratio minorpo {s['minorpo']['step1_log_odds_ratio']:.6f} "
              f"TRL {s['TRL']['step1_log_odds_ratio']:.6f}")
        verdicts["step_time_le_0.6x_trl"] = t_ratio <= 0.6
        verdicts["peak_memory_le_0.6x_trl"] = m_ratio <= 0.6
    if args.ablate:
        def get(name):  # an ablation's summary; the main minorpo run where the configurations coincide
            return s.get(f"minorpo {name}") or (s["minorpo"] if ABLATIONS[name] == best else None)

        same = [n for n, r in results.items() if n.startswith("minorpo") and "buckets" not in n]
        ref_loss = results["minorpo"]["loss"]
        worst = max(max(abs(a - b) / abs(b) for a, b in zip(results[n]["loss"], ref_loss)) for n in same)
        print(f"\nper-step loss of the runs on the same batches ({', '.join(same)}): largest relative difference "
              f"{worst:.2e}")
        for what, a, b in EFFECTS:
            sa, sb = get(a), get(b)
            if sa and sb:
                effects[what] = {"speedup_median_step": sa["median_step_s"] / sb["median_step_s"],
                                 "speedup_tokens_per_s": sb["tokens_per_s"] / sa["tokens_per_s"],
                                 "peak_memory_ratio": sb["peak_memory_bytes"] / sa["peak_memory_bytes"],
                                 "padding_fraction": [sa["padding_fraction"], sb["padding_fraction"]]}
                e = effects[what]
                print(f"{what:<40} speed-up {e['speedup_median_step']:.2f}x (median step), "
                      f"{e['speedup_tokens_per_s']:.2f}x (tokens/s); peak memory x{e['peak_memory_ratio']:.2f}; padding "
                      f"{sa['padding_fraction']:.2f} -> {sb['padding_fraction']:.2f}")
        layout = effects.get("shared-prompt vs padded layout")
        if layout:
            verdicts["shared_layout_ge_1.2x"] = layout["speedup_median_step"] >= 1.2
    for k, v in verdicts.items():
        print(f"verdict {k}: {'HOLDS' if v else 'DOES NOT HOLD'}")
    print(f"total time {time.time() - t_start:.0f} s")
    if args.json:
        out = {"command": command, "hardware": hardware, "torch": torch.__version__,
               "python": platform.python_version(), "args": {k: v for k, v in vars(args).items()
                                                             if not k.startswith("child")},
               "summaries": dict(summaries), "effects": effects, "verdicts": verdicts,
               "runs": {n: {k: v for k, v in r.items() if k != "token_counts"} for n, r in results.items()},
               "total_s": time.time() - t_start}
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=1))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
