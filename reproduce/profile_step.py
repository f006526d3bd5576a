"""Where a minorpo training step spends its time on a GPU: phase timings and the profiler's top operations.

  python reproduce/profile_step.py [--model qwen2.5-0.5b] [--steps 8] [--precision bf16-weights] [--attention flex]
                                  [--out DIR]

One bf16 full fine-tuning ORPO step (the training loop's own pieces: collate, forward.pair_logps, loss.objective_sums, backward,
clipping, fused AdamW) on a random-weight model of the given shape (reproduce/gpu_benchmark.py's SHAPES) and random
rows of varying length, timed phase by phase with a device synchronization between phases:
  prep      count_targets + collate (CPU) and the copy to the GPU
  forward   model forward, chunked log-probs, loss and metrics
  backward  loss.backward()
  optim     gradient clipping, AdamW step, zero_grad
Each configuration runs every batch twice in a row: the second pass sees a sequence length it has seen before, so
a cost paid once per new shape (kernel plans built per shape, autotuning) shows as first-pass minus second-pass.
Configurations: SDPA with and without cuDNN's attention kernel (with --attention flex: FlexAttention only). Then
torch.profiler over the last configuration's steps: the top operations by GPU time and by CPU time (tables written
to DIR). --precision bf16 (default) is autocast over float32 weights; bf16-weights keeps the weights in bf16 and
updates float32 masters (minorpo/fast/master.py), as `minorpo train --precision bf16-weights --lora-r 0`.
--model tiny --device cpu runs it on a CPU in seconds (a smoke test; CPU numbers say nothing about a GPU).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchmark  # noqa: E402
import gpu_benchmark  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="qwen2.5-0.5b", help="a shape of reproduce/gpu_benchmark.py (default qwen2.5-0.5b)")
    ap.add_argument("--steps", type=int, default=6, help="distinct batches per configuration (default 6)")
    ap.add_argument("--batch-size", type=int, default=8, help="pairs per batch (default 8)")
    ap.add_argument("--layout", default="shared", choices=["shared", "padded"])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--precision", default="bf16", choices=["bf16", "bf16-weights"])
    ap.add_argument("--attention", default="sdpa", choices=["sdpa", "flex"], help="flex needs --layout shared and CUDA")
    ap.add_argument("--out", default=None, help="folder for the profiler tables")
    args = ap.parse_args(argv)
    import torch

    from minorpo.batches import collate, count_targets, pad_token_id
    from minorpo.data import build_examples
    from minorpo.forward import ForwardSpec, pair_logps
    from minorpo.loss import objective_sums
    from minorpo.hf.loader import load
    dev = torch.device(args.device)
    cuda = dev.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    tiny = args.model == "tiny"
    with tempfile.TemporaryDirectory() as tmp:
        shape = gpu_benchmark.SHAPES[args.model]
        folder = gpu_benchmark.write_model(shape, Path(tmp, "m"))
        lens = ((4, 20), (2, 12)) if tiny else ((64, 640), (32, 320))
        data = gpu_benchmark.write_rows(Path(tmp, "d.jsonl"), 4 * args.steps * args.batch_size, shape["vocab_size"], *lens)
        plan = benchmark.make_plan(folder, str(data), 48 if tiny else 1024, args.steps * args.batch_size)
        model, tok = load(folder, dtype=torch.bfloat16 if args.precision == "bf16-weights" else torch.float32)
    model.to(dev).train()
    pairs = build_examples(((r["where"], r) for r in plan["rows"]), tok, benchmark.data_config()).examples
    batches = [pairs[i * args.batch_size:(i + 1) * args.batch_size] for i in range(args.steps)]
    pad = pad_token_id(tok)
    spec = ForwardSpec(preset="trl", pad_id=pad, layout=args.layout, attention=args.attention)
    params = [p for p in model.parameters() if p.requires_grad]
    master = None
    if args.precision == "bf16-weights":  # the optimizer updates float32 copies, as train() does
        from minorpo.fast.master import MasterWeights
        master = MasterWeights([(n, p) for n, p in model.named_parameters() if p.requires_grad])
        params = master.params
    opt = torch.optim.AdamW(params, lr=1e-5, fused=True if cuda else None)
    autocast = torch.autocast(dev.type, dtype=torch.bfloat16, enabled=args.precision == "bf16")

    def step(bp, times):
        sync()
        t0 = time.perf_counter()
        counts = count_targets(bp, "trl", pad)
        batch = collate(bp, pad, dev, args.layout)
        sync()
        t1 = time.perf_counter()
        with autocast:
            nll, pair_sum, _ = objective_sums(pair_logps(model, batch, spec), "orpo", 0.1, 0.1, "token_mean")
            loss = nll / counts["nll"] + pair_sum / counts["pairs"]
        sync()
        t2 = time.perf_counter()
        loss.backward()
        sync()
        t3 = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if master is not None:
            master.copy_to_model()
        sync()
        t4 = time.perf_counter()
        for k, v in zip(("prep", "forward", "backward", "optim"), (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
            times.setdefault(k, []).append(v)
        times.setdefault("total", []).append(t4 - t0)
        times.setdefault("T", []).append(batch["input_ids" if "input_ids" in batch else "chosen_input_ids"].shape[1])

    configs = [("cudnn attention allowed", True), ("cudnn attention off", False)] if cuda else [("cpu", None)]
    if args.attention == "flex":  # cuDNN is an SDPA kernel: nothing to switch
        configs = [("flex attention", None)]
    step(batches[0], {})  # first-ever step: CUDA context, cuBLAS handles, allocator
    for name, cudnn in configs:
        if cudnn is not None:
            torch.backends.cuda.enable_cudnn_sdp(cudnn)
        first, second = {}, {}
        for bp in batches:
            step(bp, first)
            step(bp, second)
        print(f"\n{args.model}, {args.precision}, {name}: median seconds per phase over {len(batches)} batches "
              f"(T {min(first['T'])}-{max(first['T'])})")
        print(f"{'pass':<28}" + "".join(f"{k:>10}" for k in ("prep", "forward", "backward", "optim", "total")))
        for label, t in (("first time at this length", first), ("same batch again", second)):
            print(f"{label:<28}" + "".join(f"{statistics.median(t[k]):10.4f}" for k in ("prep", "forward", "backward",
                                                                                        "optim", "total")))
    from torch.profiler import ProfilerActivity, profile
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        for bp in batches[:3]:
            step(bp, {})
    ka = prof.key_averages()
    gpu = ""
    for key in ("self_device_time_total", "self_cuda_time_total") if cuda else ():
        try:
            gpu = ka.table(sort_by=key, row_limit=25, max_name_column_width=60)
            break
        except Exception as e:  # the key's name changed across torch versions
            print(f"profiler table by {key}: {e}")
    cpu = ka.table(sort_by="self_cpu_time_total", row_limit=25, max_name_column_width=60)
    n_kernels = sum(e.count for e in ka if e.device_type.name == "CUDA")
    n_ops = sum(e.count for e in ka if e.device_type.name == "CPU")
    print(f"\nprofiler, 3 steps ({configs[-1][0]}): {n_kernels} GPU kernel launches, {n_ops} CPU-side events")
    print(gpu)
    print(cpu[:6000])
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        Path(args.out, "profile_tables.txt").write_text(gpu + "\n\n" + cpu)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
