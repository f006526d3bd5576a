"""minorpo vs TRL's ORPOTrainer on a GPU: bf16, full fine-tuning, random-weight models of SmolLM2-135M and
Qwen2.5-0.5B shapes; tokens/s, model-FLOPs utilization (MFU) and peak memory.

Claim (issue 7): on a GPU, minorpo reaches >= 1.5x TRL's tokens/s and >= 40% MFU for full fine-tuning at 0.5B.

Measured on one H100 80GB HBM3 (torch 2.11+cu130, transformers 5.17, TRL 1.16; 2026-11-27; batch 8 pairs, prompts
64-640 and responses 32-320 tokens, 20 timed steps after 3 warm-up; reproduce/results/gpu/README.md has every run):
  Qwen2.5-0.5B shape: minorpo 44,744 tokens/s vs TRL 25,719 = 1.74x (HOLDS; 1.52x against TRL with cuDNN
  attention off too), peak memory 23.5 vs 49.3 GiB = 0.48x; MFU 9.5% eager, 12.6% with --compile (>= 40%: DOES
  NOT HOLD). SmolLM2-135M shape: 56,188 vs 29,449 tokens/s = 1.91x, memory 0.52x. Step-1 NLL equal to 3e-6.

How to run it: reproduce/gpu_checks.sh (this benchmark, then tests/test_cuda.py; about 5 minutes). On a
machine without trl or datasets (such as this project's lent GPU machines, see the device tool's README), put
their wheels in .whl/ at the repository root first:
       python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \\
         --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \\
         -d .whl trl==1.16.0 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19
  (datasets 5.2 wants pyarrow >= 24; download pyarrow into .whl/extra/ if the machine's is older.)
Each run is its own child process (loading, warm-up, timed steps); a failed or cut-off run is reported and the
others go on (--budget, --child-timeout). Without trl the TRL runs are skipped (--no-trl does the same).

What runs: the models are built from the configs below (no download; speed does not depend on weight values),
saved once in a temporary folder with a word-level tokenizer over the model's vocabulary; rows are random words
with prompt / response lengths drawn uniformly from --prompt-len / --response-len (each word one token). Then
reproduce/benchmark.py's machinery runs minorpo (the --variants: by default layout shared, rows padded to the batch's
longest - one forward per micro-batch, as a GPU wants -, chunked log-probs, eager, cuDNN attention off, precision
bf16 = autocast over float32 weights; then bf16 weights with float32 masters (shared-bf16w, minorpo/fast/master.py),
FlexAttention (shared-flex, --attention flex), the two together compiled, compiled alone, padded layout; cuDNN
attention allowed on request) and TRL (ORPOConfig bf16=True, the same autocast)
on the same batches, AdamW, lr 1e-5, no LoRA (full fine-tuning), no gradient checkpointing: see that script's
docstring for how the two are made equal.

MFU = model FLOPs / (step time x peak). Model FLOPs of a step = sum over the rows the framework computes, padding
excluded, of   6 N T + 12 L d T^2   (T = the row's tokens, N = parameters used in matmuls: all parameters except
the input embedding, the tied output head counted once; L layers, d = heads x head size). 6 N T is the forward
(2 N T) and backward (4 N T) of the weights' matmuls; 12 L d T^2 the attention scores and weighted sums, forward
and backward, counted for all T^2 query-key pairs as in PaLM (Chowdhery et al. 2022, appendix B) although causal
attention needs half. TRL computes rows prompt+chosen and prompt+rejected; minorpo's shared layout one row
prompt+chosen+rejected (fewer FLOPs for the same pairs: that saving shows in tokens/s, not in MFU). Peak: H100
SXM bf16 dense 989 TFLOP/s (--peak-tflops for another GPU; H200 has the same).
tokens/s counts prompt+chosen and prompt+rejected tokens for both (the work as TRL defines it).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
from argparse import Namespace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmark.py beside this file
import benchmark  # noqa: E402

H100_BF16_DENSE_TFLOPS = 989.0

# transformers config.json of each shape (values from the published checkpoints' configs)
SHAPES = {
    "smollm2-135m": {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 49152, "hidden_size": 576,
        "intermediate_size": 1536, "num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3,
        "hidden_act": "silu", "max_position_embeddings": 8192, "rms_norm_eps": 1e-5, "rope_theta": 100000.0,
        "rope_scaling": None, "tie_word_embeddings": True, "attention_bias": False, "mlp_bias": False,
        "bos_token_id": 0, "eos_token_id": 1, "pad_token_id": 2},
    "qwen2.5-0.5b": {
        "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "vocab_size": 151936, "hidden_size": 896,
        "intermediate_size": 4864, "num_hidden_layers": 24, "num_attention_heads": 14, "num_key_value_heads": 2,
        "hidden_act": "silu", "max_position_embeddings": 32768, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0,
        "rope_scaling": None, "tie_word_embeddings": True, "use_sliding_window": False, "sliding_window": 32768,
        "max_window_layers": 24, "bos_token_id": 0, "eos_token_id": 1, "pad_token_id": 2},
    "tiny": {  # --tiny: a test that the script runs, in seconds on a CPU
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 300, "hidden_size": 64,
        "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
        "hidden_act": "silu", "max_position_embeddings": 512, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
        "rope_scaling": None, "tie_word_embeddings": True, "attention_bias": False, "mlp_bias": False,
        "bos_token_id": 0, "eos_token_id": 1, "pad_token_id": 2},
}
SPECIALS = ["<s>", "</s>", "<pad>", "<unk>"]  # ids 0-3: bos, eos, pad, unk


def write_model(shape: dict, folder: Path, seed: int = 0) -> Path:
    """A random-weight checkpoint folder (config.json, model.safetensors, word-level tokenizer)."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers

    from minorpo.hf.config import ModelConfig
    from minorpo.hf.loader import save
    from minorpo.models import build_model

    torch.manual_seed(seed)
    model = build_model(ModelConfig.from_hf(shape))  # N(0, 0.02) weights (model.init_weights)
    save(model, None, folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg.update({k: shape[k] for k in ("architectures", "bos_token_id", "eos_token_id", "pad_token_id")})
    (folder / "config.json").write_text(json.dumps(cfg, indent=2))
    vocab = {t: i for i, t in enumerate(SPECIALS)}
    vocab.update({f"w{i}": i for i in range(len(SPECIALS), shape["vocab_size"])})
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.add_special_tokens(SPECIALS)
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>",
        "unk_token": "<unk>", "model_max_length": shape["max_position_embeddings"]}))
    return folder


def write_rows(path: Path, n: int, vocab: int, prompt_len: tuple, response_len: tuple, seed: int = 0) -> Path:
    """n standard-format rows of random words w4..w{V-1}; lengths uniform in the given (low, high) ranges."""
    rng = random.Random(seed)

    def words(lo, hi):
        return " ".join(f"w{rng.randrange(len(SPECIALS), vocab)}" for _ in range(rng.randint(lo, hi)))

    with open(path, "w") as f:
        for _ in range(n):
            f.write(json.dumps({"prompt": words(*prompt_len), "chosen": " " + words(*response_len),
                                "rejected": " " + words(*response_len)}) + "\n")
    return path


def matmul_params(shape: dict) -> int:
    """N of the MFU formula: every parameter except the input embedding; a tied output head counted once."""
    C, I, L = shape["hidden_size"], shape["intermediate_size"], shape["num_hidden_layers"]
    hs = C // shape["num_attention_heads"]
    q, kv = shape["num_attention_heads"] * hs, shape["num_key_value_heads"] * hs
    per_layer = C * q + 2 * C * kv + q * C + 3 * C * I  # q, k, v, o, gate, up, down (biases and norms: negligible)
    return L * per_layer + shape["vocab_size"] * C  # + the output head


def step_flops(shape: dict, row_lengths: list) -> float:
    """6 N T + 12 L d T^2 summed over the rows one step computes (see the module docstring)."""
    N, L, d = matmul_params(shape), shape["num_hidden_layers"], shape["hidden_size"]
    return sum(6 * N * T + 12 * L * d * T * T for T in row_lengths)


def rows_computed(batch: dict, counts: dict, layout: str) -> list:
    """Row lengths (no padding) a step runs: P+C and P+R per pair (padded layout, TRL) or P+C+R (shared)."""
    out = []
    for w in batch["where"]:
        p, c, r = counts[w]
        out += [p + c + r] if layout == "shared" else [p + c, p + r]
    return out


VARIANTS = {  # minorpo configurations (benchmark.variant); the first one named is the headline "minorpo" run
    "shared": dict(layout="shared"),  # prompt once per pair, rows padded to the batch's longest, eager
    "shared-compiled": dict(layout="shared", compile=True),  # + torch.compile of each decoder block
    # bf16 weights with float32 master copies (minorpo/fast/master.py): no autocast re-casting of weights each forward
    "shared-bf16w": dict(layout="shared", precision="bf16-weights"),
    "shared-bf16w-compiled": dict(layout="shared", precision="bf16-weights", compile=True),
    # FlexAttention with the shared layout's block mask (--attention flex): masked 128x128 blocks skipped
    "shared-flex": dict(layout="shared", attention="flex"),
    "shared-bf16w-flex": dict(layout="shared", precision="bf16-weights", attention="flex"),
    "shared-bf16w-flex-compiled": dict(layout="shared", precision="bf16-weights", attention="flex", compile=True),
    "shared-unpadded": dict(layout="shared", unpadded=True),  # one forward per row, no padding at all
    "padded": dict(layout="padded"),  # chosen and rejected rows, as TRL lays them out
    # with cuDNN's attention kernel allowed (--cudnn-attention; off by default, see minorpo train --help)
    "shared-cudnn": dict(layout="shared", cudnn_attention=True),
    "padded-cudnn": dict(layout="padded", cudnn_attention=True),
}


def measured_matmul_tflops(device) -> float:
    """Dense bf16 rate of this GPU as torch reaches it: an 8192^3 matrix product on random data, median of 10."""
    import torch
    a, b = (torch.randn(8192, 8192, device=device, dtype=torch.bfloat16) for _ in range(2))
    for _ in range(3):
        a @ b
    times = []
    for _ in range(10):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        a @ b
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return 2 * 8192 ** 3 / statistics.median(times) / 1e12


def summarize_run(res: dict, shape: dict, counts: dict, layout: str, warmup: int, steps: int, peak: float) -> dict:
    """Median step time, tokens/s, TFLOP/s and MFU over the timed steps of one run."""
    timed = list(range(warmup, min(steps, len(res["step_times"]))))
    total = sum(res["step_times"][i] for i in timed)
    flops = sum(step_flops(shape, rows_computed(res["batches"][i], counts, layout)) for i in timed)
    real = sum(res["batches"][i]["real_tokens"] for i in timed)
    return {"median_step_s": statistics.median(res["step_times"][i] for i in timed), "timed_steps": len(timed),
            "tokens_per_s": real / total, "tflops_per_s": flops / total / 1e12, "mfu": flops / total / (peak * 1e12),
            "peak_memory_bytes": res["peak_memory"], "step1_nll_loss": res["nll_loss"][0],
            "token_mismatches": len(res.get("token_mismatches", [])), "child_wall_s": res.get("wall_s")}


def print_tables(results: dict, args, precision: str):
    for name, r in results.items():
        if not isinstance(r, dict) or "summary" not in r:
            continue
        print(f"\n{name} (N = {r['matmul_params'] / 1e6:.1f}M in matmuls), batch {args.batch_size} pairs, "
              f"{args.steps} timed steps, precision {precision}, full fine-tuning")
        print(f"{'run':<24} {'median s/step':>13} {'tokens/s':>10} {'TFLOP/s':>8} {'MFU':>6} {'peak mem':>10}")
        for fw, s in r["summary"].items():
            print(f"{fw:<24} {s['median_step_s']:13.4f} {s['tokens_per_s']:10.0f} {s['tflops_per_s']:8.1f} "
                  f"{100 * s['mfu']:5.1f}% {benchmark.fmt_bytes(s['peak_memory_bytes']):>10}")
        for fw, err in r.get("errors", {}).items():
            print(f"{fw:<24} FAILED: {err.splitlines()[0][:150]}")
        m, t = r["summary"].get("minorpo"), r["summary"].get("TRL")
        if t and t["token_mismatches"]:
            print(f"TRL tokenized {t['token_mismatches']} rows differently from minorpo: NOT the same work, the "
                  "ratios below compare nothing")
        if m and t:
            print(f"minorpo/TRL tokens/s {m['tokens_per_s'] / t['tokens_per_s']:.2f}x, peak memory "
                  f"{m['peak_memory_bytes'] / t['peak_memory_bytes']:.2f}x; step-1 NLL {m['step1_nll_loss']:.5f} "
                  f"vs {t['step1_nll_loss']:.5f}; token count mismatches {t['token_mismatches']}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="qwen2.5-0.5b,smollm2-135m", help="comma list of: " + ", ".join(SHAPES))
    ap.add_argument("--variants", default="shared,shared-bf16w,shared-flex,shared-bf16w-flex-compiled,shared-compiled,"
                                          "shared-bf16w-compiled,padded",
                    help="minorpo configurations, comma list of: " + ", ".join(VARIANTS) + " (default %(default)s); "
                         "the first is the headline 'minorpo' run compared with TRL")
    ap.add_argument("--device", default="cuda", help="cuda (default), or cpu with --tiny for a smoke test")
    ap.add_argument("--tiny", action="store_true", help="a tiny model and short rows (smoke test: seconds on a CPU)")
    ap.add_argument("--steps", type=int, default=20, help="timed steps after warm-up (default 20)")
    ap.add_argument("--warmup", type=int, default=3, help="untimed warm-up steps (default 3)")
    ap.add_argument("--batch-size", type=int, default=8, help="pairs per step (default 8)")
    ap.add_argument("--max-length", type=int, default=1024, help="max prompt + response tokens (default 1024)")
    ap.add_argument("--prompt-len", default="64,640", help="prompt length range, words (default 64,640)")
    ap.add_argument("--response-len", default="32,320", help="response length range, words (default 32,320)")
    ap.add_argument("--lr", type=float, default=1e-5, help="AdamW learning rate (default 1e-5)")
    ap.add_argument("--peak-tflops", type=float, default=H100_BF16_DENSE_TFLOPS,
                    help="the GPU's dense bf16 peak, TFLOP/s (default 989: H100/H200 SXM)")
    ap.add_argument("--no-trl", action="store_true", help="measure minorpo alone")
    ap.add_argument("--trl-nocudnn", action="store_true", help="also run TRL with cuDNN's attention kernel switched "
                                                               "off, as minorpo runs by default (after the variants)")
    ap.add_argument("--child-timeout", type=float, default=300, help="seconds before a run is stopped (default 300)")
    ap.add_argument("--budget", type=float, default=0, help="seconds: start no new run after this (0: no limit)")
    ap.add_argument("--json", help="write results here (rewritten after every run, so a cut-off run keeps the rest)")
    args = ap.parse_args(argv)
    t_start = time.time()
    import torch
    if args.tiny:
        args.models, args.steps, args.warmup, args.batch_size = "tiny", 2, 1, 2
        args.max_length, args.prompt_len, args.response_len = 48, "4,20", "2,12"
        if args.variants == ap.get_default("variants"):  # no compilation in a smoke test
            args.variants = "shared,shared-bf16w,padded"
    variants = args.variants.split(",")
    for v in variants:
        if v not in VARIANTS:
            ap.error(f"--variants: unknown {v!r}; choose from {', '.join(VARIANTS)}")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run on a GPU machine (see the docstring), or use --device cpu --tiny")
    have_trl = not args.no_trl and benchmark.trl_available()
    cuda = args.device.startswith("cuda")
    hardware = torch.cuda.get_device_name() if cuda else "CPU"
    print(f"command: python reproduce/gpu_benchmark.py {' '.join(sys.argv[1:] if argv is None else argv)}")
    print(f"hardware: {hardware}; torch {torch.__version__}", flush=True)
    measured_peak = measured_matmul_tflops(args.device) if cuda else None
    if measured_peak:
        print(f"bf16 8192^3 matmul on this GPU: {measured_peak:.0f} TFLOP/s (MFU below is against "
              f"{args.peak_tflops:.0f}, the datasheet's dense peak)", flush=True)
    precision = "fp32" if args.tiny else "bf16"
    bench_args = Namespace(steps=args.steps, warmup=args.warmup, batch_size=args.batch_size,
                           max_length=args.max_length, lora_r=0, lr=args.lr, device=args.device,
                           precision=precision, threads=0)
    lo_p, hi_p = (int(x) for x in args.prompt_len.split(","))
    lo_r, hi_r = (int(x) for x in args.response_len.split(","))
    steps = args.warmup + args.steps
    models = args.models.split(",")
    results = {}

    def save():
        if args.json:
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(json.dumps({
                "args": vars(args), "hardware": hardware, "torch": torch.__version__,
                "measured_matmul_tflops": measured_peak, "wall_s": time.time() - t_start, "results": results},
                indent=1, default=str))

    # the runs, model by model, most important first: the headline minorpo run, TRL, then the other variants
    jobs = [(m, v) for m in models for v in [variants[0]] + (["TRL"] if have_trl else []) + variants[1:]
            + (["TRL-nocudnn"] if have_trl and args.trl_nocudnn else [])]
    with tempfile.TemporaryDirectory() as tmp:
        plans = {}
        for name in models:
            shape = SHAPES[name]
            folder = write_model(shape, Path(tmp, name))
            data = write_rows(Path(tmp, f"{name}.jsonl"), 8 * steps * args.batch_size, shape["vocab_size"],
                              (lo_p, hi_p), (lo_r, hi_r))
            plan_path = Path(tmp, f"{name}-plan.json")
            plan = benchmark.make_plan(folder, str(data), args.max_length, 2 * steps * args.batch_size)
            plan["hf_tokenizer_class"] = "PreTrainedTokenizerFast"  # see benchmark.trl_child
            plan_path.write_text(json.dumps(plan))
            plans[name] = plan_path
            results[name] = {"summary": {}, "errors": {}, "runs": {}, "matmul_params": matmul_params(shape)}
        for name, what in jobs:
            r = results[name]
            label = what if what.startswith("TRL") else ("minorpo" if what == variants[0] else f"minorpo {what}")
            if args.budget and time.time() - t_start > args.budget:
                r["errors"][label] = f"not run: --budget {args.budget:.0f} s spent"
                print(f"{name}: {label} skipped (budget spent)", flush=True)
                continue
            ref = r["runs"].get("minorpo")
            print(f"{name}: {label} ...", flush=True)
            try:
                if what.startswith("TRL"):
                    if ref is None:
                        raise SystemExit("no minorpo run to take the batches from")
                    order = [w for b in ref["batches"][:steps] for w in b["where"]]
                    res = benchmark.run_child(bench_args, "trl", plans[name],
                                              {"order": order, "token_counts": ref["token_counts"],
                                               "cudnn_attention": what != "TRL-nocudnn"},
                                              timeout=args.child_timeout)
                    res["batches"] = [{"where": b["where"], "real_tokens": b["real_tokens"]}
                                      for b in ref["batches"][:steps]]
                    layout = "padded"
                else:
                    overrides = benchmark.variant(**VARIANTS[what])
                    res = benchmark.run_child(bench_args, "minorpo", plans[name], {"overrides": overrides},
                                              timeout=args.child_timeout)
                    layout = VARIANTS[what]["layout"]
                counts = (ref or res)["token_counts"]
                r["runs"][label] = res
                r["summary"][label] = summarize_run(res, SHAPES[name], counts, layout, args.warmup, steps,
                                                    args.peak_tflops)
                s = r["summary"][label]
                print(f"  {s['median_step_s']:.4f} s/step, {s['tokens_per_s']:.0f} tokens/s, MFU "
                      f"{100 * s['mfu']:.1f}%, peak {benchmark.fmt_bytes(s['peak_memory_bytes'])} "
                      f"(child {res.get('wall_s', 0):.0f} s)", flush=True)
            except SystemExit as e:  # a failed run is reported, the others go on
                r["errors"][label] = str(e)
                print(f"  FAILED: {str(e)[-2500:]}", flush=True)
            save()
    big = results.get("qwen2.5-0.5b", {}).get("summary", {})
    if big.get("minorpo") and not args.tiny:
        verdict = {"mfu_ge_40pct_0.5b": max(s["mfu"] for k, s in big.items() if k != "TRL") >= 0.40}
        if "TRL" in big and not big["TRL"]["token_mismatches"]:
            verdict["tokens_per_s_ge_1.5x_trl_0.5b"] = big["minorpo"]["tokens_per_s"] >= 1.5 * big["TRL"]["tokens_per_s"]
        results["verdicts"] = verdict
    for r in results.values():
        for run in r.get("runs", {}).values() if isinstance(r, dict) and "runs" in r else []:
            run.pop("token_counts", None)
    save()
    print_tables(results, args, precision)
    for k, v in results.get("verdicts", {}).items():
        print(f"verdict {k}: {'HOLDS' if v else 'DOES NOT HOLD'}")
    print(f"total time {time.time() - t_start:.0f} s")
    if args.json:
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
