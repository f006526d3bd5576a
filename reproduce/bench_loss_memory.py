"""Peak memory of the token log-probs, chunked vs unchunked, at SmolLM2-135M scale (V = 49152, H = 576).

Claim (minorpo/logprobs.py): the chunked path never materializes the [N, T, V] float32 logits, so its peak memory
(forward + backward) grows with the chunk, not with N*T*V.

    python reproduce/bench_loss_memory.py [--tokens 16384] [--chunk-size 1024]
    python reproduce/bench_loss_memory.py --tokens 8192 --vocab 262144 --hidden 640   # Gemma 3 270M's head

What is measured: the peak of live tensor bytes created by the log-prob computation and its backward (the hidden
states and the output-head weight exist beforehand and are not counted), for
  unchunked: token_logps_reference(lm_head(hidden), targets), autograd keeping the full logits;
  chunked:   token_logps(hidden, weight, targets, chunk_size) (logits recomputed per chunk in backward).
On a CUDA GPU it runs for real and reports torch.cuda.max_memory_allocated. On a CPU a real run at this size would
take minutes and ~10 GB, so the shapes run on PyTorch's `meta` device (no data, no arithmetic) under
minorpo.tools.memtrack.LiveTensorBytes, which counts every tensor as it is created and freed - the same bytes an allocator
would be asked for, minus allocator rounding. A small real CPU run first checks that meta and CPU counts agree.
Every position is scored (as for a prompt + response NLL), the worst case. Runs in a few seconds on a CPU.
"""

import argparse
import platform
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
from minorpo.logprobs import token_logps, token_logps_reference  # noqa: E402
from minorpo.tools.memtrack import LiveTensorBytes  # noqa: E402


def run(device: str, n_tokens: int, hidden_size: int, vocab: int, dtype: torch.dtype, chunk_size: int | None) -> int:
    """Peak bytes of one forward + backward of the log-probs of n_tokens positions."""
    hidden = torch.randn(1, n_tokens, hidden_size, device=device, dtype=dtype, requires_grad=True)  # [1, N, H]
    weight = torch.randn(vocab, hidden_size, device=device, dtype=dtype, requires_grad=True)  # [V, H]
    targets = torch.randint(0, vocab, (1, n_tokens), device=device)  # [1, N]
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    with LiveTensorBytes() as mem:
        if chunk_size is None:
            logps = token_logps_reference(F.linear(hidden, weight), targets)  # [1, N]
        else:
            logps = token_logps(hidden, weight, targets, chunk_size=chunk_size)  # [1, N]
        logps.sum().backward()
    if device == "cuda":
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    return mem.peak


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tokens", type=int, default=16384, help="token positions N*T scored at once (default 16384)")
    p.add_argument("--vocab", type=int, default=49152, help="vocabulary size V (SmolLM2: 49152)")
    p.add_argument("--hidden", type=int, default=576, help="hidden size H (SmolLM2-135M: 576)")
    p.add_argument("--chunk-size", type=int, default=1024, help="positions per chunk (minorpo's default 1024)")
    args = p.parse_args()
    t0 = time.time()
    device = "cuda" if torch.cuda.is_available() else "meta"
    hardware = torch.cuda.get_device_name() if device == "cuda" else f"CPU ({platform.processor() or platform.machine()})"
    print(f"command: python reproduce/bench_loss_memory.py --tokens {args.tokens} --vocab {args.vocab} "
          f"--hidden {args.hidden} --chunk-size {args.chunk_size}")
    print(f"hardware: {hardware}; torch {torch.__version__}; measured on device '{device}'")

    if device == "meta":  # the meta-device count is trusted only because it equals a real count at a small size
        small = [(run(d, 512, 64, 2048, torch.float32, c)) for d in ("cpu", "meta") for c in (None, 128)]
        agree = small[:2] == small[2:]
        print(f"check, 512 tokens x V 2048 on cpu vs meta: {small[:2]} vs {small[2:]} bytes -> "
              f"{'identical' if agree else 'DIFFERENT'}")
        if not agree:
            return 1

    gib = 2 ** 30
    logits_bytes = args.tokens * args.vocab * 4
    print(f"\n{args.tokens} tokens x V {args.vocab}: one float32 logits tensor is {logits_bytes / gib:.2f} GiB")
    print(f"{'dtype':<9} {'path':<22} {'peak GiB':>9}")
    ok = True
    for dtype in (torch.float32, torch.bfloat16):
        name = str(dtype).replace("torch.", "")
        unchunked = run(device, args.tokens, args.hidden, args.vocab, dtype, None)
        chunked = run(device, args.tokens, args.hidden, args.vocab, dtype, args.chunk_size)
        bigger = run(device, args.tokens, args.hidden, args.vocab, dtype, 2 * args.chunk_size)
        double_n = run(device, 2 * args.tokens, args.hidden, args.vocab, dtype, args.chunk_size)
        print(f"{name:<9} {'unchunked':<22} {unchunked / gib:9.3f}")
        print(f"{name:<9} {f'chunked ({args.chunk_size})':<22} {chunked / gib:9.3f}   ratio unchunked/chunked = "
              f"{unchunked / chunked:.1f}x")
        print(f"{name:<9} {f'chunked ({2 * args.chunk_size})':<22} {bigger / gib:9.3f}   (+{(bigger - chunked) / gib:.3f}"
              f" GiB for {args.chunk_size} more positions per chunk)")
        print(f"{name:<9} {f'chunked, 2x tokens':<22} {double_n / gib:9.3f}   (+{(double_n - chunked) / gib:.3f} GiB "
              f"for {args.tokens} more tokens; unchunked would add >= {logits_bytes / gib:.2f})")
        ok &= unchunked > 4 * chunked and double_n - chunked < 0.1 * logits_bytes and bigger > chunked
    print(f"\nverdict: {'CONFIRMED' if ok else 'NOT CONFIRMED'} - the chunked peak grows with the chunk size, not with "
          f"tokens x vocabulary ({time.time() - t0:.1f} s)")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
