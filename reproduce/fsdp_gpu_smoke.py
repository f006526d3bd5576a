"""--fsdp on one GPU (torchrun, 1 rank): it runs on CUDA (nccl + gloo, fused AdamW on DTensors, bf16 policy, CPU
offload with pinned memory) and gives the plain one-process run's result. The CPU tests (tests/test_fsdp.py) check
2 ranks against 1 process; what only a GPU can show is that the same code path works there.

    python reproduce/fsdp_gpu_smoke.py --out /tmp/fsdp_smoke       # reproduce/gpu_checks.sh runs it

Prints one PASS/FAIL line per check and exits 1 if any failed. Tiny random model (tests/tiny_models.py), ~1 min.
"""

import argparse
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--device", default="cuda", help="cpu: the same runs on a CPU (to check this script)")
    args = ap.parse_args()
    out = Path(args.out)
    import torch
    from safetensors.torch import load_file
    from tiny_runs import tiny_run_files
    folder, data = tiny_run_files(out / "inputs")
    common = ["train", "--model", str(folder), "--data", str(data), "--device", args.device, "--lora-r", "4",
              "--lora-alpha", "8", "--lr", "0.05", "--optimizer", "sgd", "--max-grad-norm", "0", "--warmup-steps", "0",
              "--schedule", "constant", "--preset", "trl", "--eval-pairs", "4", "--eval-every", "0", "--save-every",
              "2", "--max-length", "64", "--no-progress", "--max-steps", "3", "--batch-size", "4"]
    env = {**os.environ, "PYTHONPATH": f"{REPO}:{os.environ.get('PYTHONPATH', '')}"}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "1", "-m", "minorpo"]
    runs = {"plain": [sys.executable, "-m", "minorpo", *common],
            "fsdp": [*torchrun, *common, "--fsdp"],
            "fsdp-offload": [*torchrun, *common, "--fsdp", "--fsdp-cpu-offload", "--gradient-checkpointing"],
            "fsdp-bf16-full": [*torchrun, *common, "--fsdp", "--precision", "bf16", "--lora-r", "0",
                               "--optimizer", "adamw", "--lr", "1e-3"]}
    failed = 0
    for name, cmd in runs.items():
        r = subprocess.run([*cmd, "--out", str(out / name)], env=env, capture_output=True, text=True, timeout=300)
        ok = r.returncode == 0 and (out / name / "final" / "model.safetensors").exists()
        print(f"{'PASS' if ok else 'FAIL'} {name}: exit {r.returncode}" + ("" if ok else "\n" + r.stderr[-2000:]))
        failed += not ok
    for name in ("fsdp", "fsdp-offload"):  # SGD on one rank: the same arithmetic as the plain run, up to kernels
        try:
            a = load_file(out / "plain" / "adapter" / "adapter_model.safetensors")
            b = load_file(out / name / "adapter" / "adapter_model.safetensors")
            rel = max(((a[k] - b[k]).norm() / a[k].norm().clamp_min(1e-30)).item() for k in a)
        except Exception as e:  # a run above failed
            rel = float("inf")
            print(f"  ({name}: {type(e).__name__}: {e})")
        ok = rel < 1e-4  # float32 on CUDA: different kernel choices (SDPA backend) only; measured on CPU: 4e-7
        print(f"{'PASS' if ok else 'FAIL'} {name} adapter vs plain: max rel difference {rel:.2e} (tolerance 1e-4)")
        failed += not ok
    print(f"fsdp smoke: {len(runs) + 2 - failed} of {len(runs) + 2} checks passed on "
          f"{torch.cuda.get_device_name() if args.device.startswith('cuda') else args.device}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
