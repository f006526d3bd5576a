"""minorpo on CUDA: the checks the CPU test suite cannot make, in about a minute on one GPU.

The tests (tests/) run on the CPU only, so that CI needs no GPU. This script repeats the ones that matter on a CUDA
device: the model forward against transformers, the ORPO loss and its gradient against a float64 CPU computation,
the two batch layouts against each other, bf16, fused AdamW, gradient checkpointing, checkpoint + resume, LoRA
and the merged export - all with tiny random models built in-process (tests/tiny_models.py), no download.

Each check prints what it measured, the tolerance and why, and PASS or FAIL; a failing check does not stop the
others. Exit status 1 if any failed. --json writes every number.

  python reproduce/cuda_check.py [--device cuda] [--json results.json]

Oracles and tolerances (float32 checks are run with TF32 off, so float32 matmuls really are float32):
  * float32 vs float32 computed another way (transformers, the other layout, another device): relative error
    ||x - ref|| / ||ref|| <= 1e-5. float32 rounding is 6e-8 per operation; sums of a few hundred terms through two
    layers stay near 1e-6, and a real mistake (a wrong mask, a missing bias) moves logits by 1e-2 or more.
  * float32 on CUDA vs float64 on the CPU: <= 1e-5 for the loss, <= 1e-4 for the gradient (a gradient entry is a
    sum over every position, with cancellation: its relative error is larger than the loss's).
  * bf16: bf16 has 8 significant bits (relative rounding 4e-3). minorpo's bf16 error against the float64 reference
    must be at most 1.5x transformers' bf16 error on the same input (transformers is the oracle of "as good as
    bf16 allows"), and the bf16 training loss within 2e-2 of float32's.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
for p in (REPO, REPO / "tests"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

import torch  # noqa: E402

RESULTS = []


def rel(x, ref) -> float:
    x, ref = x.detach().double().cpu(), ref.detach().double().cpu()
    return float((x - ref).norm() / ref.norm().clamp_min(1e-300))


def check(name, value, tol, why, kind="<="):
    ok = value <= tol if kind == "<=" else value >= tol
    RESULTS.append({"check": name, "measured": value, "tolerance": f"{kind} {tol}", "why": why, "pass": bool(ok)})
    print(f"{'PASS' if ok else 'FAIL'}  {name}: {value:.3g} ({kind} {tol}; {why})", flush=True)


def run(name, fn):
    t0 = time.time()
    try:
        fn()
    except Exception as e:  # one broken check must not hide the others
        traceback.print_exc()
        RESULTS.append({"check": name, "error": f"{type(e).__name__}: {e}", "pass": False})
        print(f"FAIL  {name}: {type(e).__name__}: {e}", flush=True)
    print(f"      ({name}: {time.time() - t0:.1f} s)", flush=True)


# ------------------------------------------------------------------------------------------------------------------


def setup(root: Path):
    """{arch: model folder} of three tiny random architectures, and a file of 48 random pairs."""
    from test_train import tiny_run_files
    runs = {arch: tiny_run_files(root / arch, seed=3, n=48, arch=arch) for arch in ("llama-tied", "qwen2", "mistral")}
    return {arch: folder for arch, (folder, _) in runs.items()}, runs["llama-tied"][1]


def padded_ids(B=3, T=24, V=256, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, V, (B, T), generator=g)
    mask = torch.ones(B, T, dtype=torch.long)
    for b in range(1, B):  # left padding of 3 and 6 tokens in rows 1 and 2
        mask[b, : 3 * b] = 0
    return ids, mask


def check_forward(folders, dev):
    """minorpo vs transformers logits on CUDA: float32 and bf16, padded rows, three architectures."""
    import transformers
    from tiny_models import hf_position_ids

    from minorpo.hf.loader import load
    ids, mask = padded_ids()
    pos = hf_position_ids(mask)
    for arch, folder in folders.items():
        hf = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float64, attn_implementation="sdpa")
        with torch.no_grad():  # float64 reference on the CPU
            ref = hf(input_ids=ids, attention_mask=mask, position_ids=pos).logits
        keep = mask.bool()  # padded positions' logits are not defined the same way by both: compare real ones
        errs = {}
        for dtype in (torch.float32, torch.bfloat16):
            hf_d = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, attn_implementation="sdpa")
            hf_d.to(dev).eval()
            ours, _ = load(folder, dtype=dtype)
            ours.to(dev).eval()
            with torch.no_grad():
                a = ours(ids.to(dev), attention_mask=mask.to(dev)).float()
                b = hf_d(input_ids=ids.to(dev), attention_mask=mask.to(dev), position_ids=pos.to(dev)).logits.float()
            errs[dtype] = (rel(a[keep.to(dev)], ref[keep]), rel(b[keep.to(dev)], ref[keep]), rel(a[keep.to(dev)],
                                                                                               b[keep.to(dev)]))
        check(f"forward {arch} fp32: minorpo vs transformers, CUDA", errs[torch.float32][2], 1e-5, "float32 vs float32")
        check(f"forward {arch} fp32: minorpo CUDA vs float64 CPU", errs[torch.float32][0], 1e-5, "float32 vs float64")
        m, t = errs[torch.bfloat16][:2]
        check(f"forward {arch} bf16: minorpo error / transformers error (vs float64)", m / t, 1.5,
              f"bf16 as good as transformers' (minorpo {m:.2e}, transformers {t:.2e})")


def _batch(folder, data, layout, dev, n=6):
    from minorpo import objective
    from minorpo.data import DataConfig, load_preferences
    from minorpo.hf.tokenizer import Tokenizer
    tok = Tokenizer.from_dir(folder)
    pairs = load_preferences(str(data), tok, DataConfig(max_length=64)).examples[:n]
    pad = objective.pad_token_id(tok)
    collate = objective.collate_shared if layout == "shared" else objective.collate
    return pairs, pad, collate(pairs, pad, dev)


def _loss_and_grads(folder, data, dtype, dev, layout, preset="paper", autocast=False, chunk=7, attention="sdpa"):
    from minorpo import objective
    from minorpo.hf.loader import load
    model, _ = load(folder, dtype=dtype)
    model.to(dev)
    pairs, pad, batch = _batch(folder, data, layout, dev)
    spec = objective.LossSpec(method="orpo", lam=0.5, preset=preset, chunk_size=chunk, pad_id=pad, layout=layout,
                              attention=attention)
    counts = objective.count_targets(pairs, spec)
    with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=autocast):
        loss, _ = objective.loss_and_metrics(model, batch, spec, counts)
    loss.backward()
    return loss.detach(), torch.cat([p.grad.reshape(-1) for p in model.parameters() if p.grad is not None])


def check_loss(folders, data, dev):
    """ORPO loss and gradient on CUDA (chunked log-probs, chunk of 7 tokens: many chunks) vs float64 CPU."""
    folder = folders["llama-tied"]
    for preset in ("paper", "trl"):
        for layout in ("padded", "shared"):
            ref_l, ref_g = _loss_and_grads(folder, data, torch.float64, torch.device("cpu"), layout, preset)
            l, g = _loss_and_grads(folder, data, torch.float32, dev, layout, preset)
            check(f"ORPO loss {preset}/{layout}: CUDA fp32 vs CPU float64", rel(l, ref_l), 1e-5, "float32 vs float64")
            check(f"ORPO grad {preset}/{layout}: CUDA fp32 vs CPU float64", rel(g, ref_g), 1e-4,
                  "float32 vs float64, sums over positions")
        lp, gp = _loss_and_grads(folder, data, torch.float32, dev, "padded", preset)
        ls, gs = _loss_and_grads(folder, data, torch.float32, dev, "shared", preset)
        check(f"shared vs padded layout {preset}, CUDA fp32: loss", rel(ls, lp), 1e-5, "float32 vs float32")
        check(f"shared vs padded layout {preset}, CUDA fp32: grad", rel(gs, gp), 1e-4, "float32, summed differently")
    ref_l, _ = _loss_and_grads(folder, data, torch.float64, torch.device("cpu"), "shared")
    lb, gb = _loss_and_grads(folder, data, torch.float32, dev, "shared", autocast=True)
    check("ORPO loss under bf16 autocast, CUDA vs CPU float64", rel(lb, ref_l), 2e-2, "bf16 operands")
    check("bf16 autocast gradient is finite", float(torch.isfinite(gb).all()), 1.0, "no NaN/inf", kind=">=")
    if dev.type != "cuda":  # FlexAttention has no CPU backward; tests/test_flex_attention.py checks its CPU forward
        print("(FlexAttention checks skipped: CUDA only)")
        return
    _, ref_g = _loss_and_grads(folder, data, torch.float64, torch.device("cpu"), "shared")
    lf, gf = _loss_and_grads(folder, data, torch.float32, dev, "shared", attention="flex")
    check("ORPO loss, shared layout, FlexAttention: CUDA fp32 vs CPU float64", rel(lf, ref_l), 1e-5,
          "float32 vs float64 (fails at ~1e-3 if FlexAttention's float32 matmuls use TF32)")
    check("ORPO grad, shared layout, FlexAttention: CUDA fp32 vs CPU float64", rel(gf, ref_g), 1e-4,
          "float32 vs float64, sums over positions")
    lfb, _ = _loss_and_grads(folder, data, torch.float32, dev, "shared", autocast=True, attention="flex")
    check("ORPO loss, FlexAttention under bf16 autocast, CUDA vs CPU float64", rel(lfb, ref_l), 2e-2, "bf16 operands")


def _train(folder, data, out, dev, **kw):
    from minorpo.hf.loader import load
    from minorpo.train import TrainConfig, train
    from test_train import _pairs
    model, tok = load(folder, dtype=torch.float32)
    base = dict(model=str(folder), data=str(data), out=str(out), lora_r=0, lr=0.05, optimizer="sgd",
                max_grad_norm=0.0, max_steps=3, warmup_steps=0, schedule="constant", eval_pairs=4, eval_every=0,
                save_every=-1, progress=False, max_length=64, lam=0.5, batch_size=4, device=dev.type, export=False)
    base.update(kw)
    cfg = TrainConfig(**base)
    last = train(cfg, model=model, tokenizer=tok, pairs=_pairs(data, tok))
    rows = [json.loads(x) for x in (Path(out) / "metrics.jsonl").read_text().splitlines()]
    return model, last, [r["loss"] for r in rows if r["step"] > 0]


def _params(model):
    return torch.cat([p.detach().double().cpu().reshape(-1) for p in model.parameters()])


def check_training(folders, data, dev, root: Path):
    """The training loop on CUDA: SGD and AdamW steps vs the CPU, checkpointing, resume, bf16, LoRA export."""
    from minorpo.hf.loader import load
    folder = folders["llama-tied"]
    cpu = torch.device("cpu")
    m_cpu, _, l_cpu = _train(folder, data, root / "sgd-cpu", cpu)
    m_gpu, _, l_gpu = _train(folder, data, root / "sgd-gpu", dev)
    check("3 SGD steps, CUDA fp32 vs CPU fp32: per-step loss", max(abs(a - b) / abs(b) for a, b in zip(l_gpu, l_cpu)),
          1e-5, "float32 vs float32")
    m0, _ = load(folder, dtype=torch.float32)
    upd_cpu, upd_gpu = _params(m_cpu) - _params(m0), _params(m_gpu) - _params(m0)
    check("3 SGD steps, CUDA vs CPU: parameter update", rel(upd_gpu, upd_cpu), 1e-4, "float32, gradient sums")
    m_a, _, l_a = _train(folder, data, root / "adamw-cpu", cpu, optimizer="adamw", lr=1e-3, max_grad_norm=1.0)
    m_b, _, l_b = _train(folder, data, root / "adamw-gpu", dev, optimizer="adamw", lr=1e-3, max_grad_norm=1.0)
    check("3 AdamW steps (fused on CUDA) vs CPU AdamW: per-step loss",
          max(abs(a - b) / abs(b) for a, b in zip(l_b, l_a)), 1e-5, "same update rule, float32")
    check("3 AdamW steps (fused on CUDA) vs CPU AdamW: parameter update",
          rel(_params(m_b) - _params(m0), _params(m_a) - _params(m0)), 1e-3,
          "Adam divides by sqrt(v): a gradient entry near eps flips its update's size, so looser than SGD's")
    flag = torch.backends.cuda.cudnn_sdp_enabled()
    _train(folder, data, root / "cudnn-on", dev, cudnn_attention=not flag, max_steps=1)
    check("train() sets PyTorch's cuDNN-attention switch back afterwards (1 = restored)",
          float(torch.backends.cuda.cudnn_sdp_enabled() == flag), 1.0, "process-wide switch", kind=">=")
    m_c, _, _ = _train(folder, data, root / "ckpt-gpu", dev, gradient_checkpointing=True)
    check("gradient checkpointing on vs off, CUDA, 3 SGD steps: parameters",
          rel(_params(m_c) - _params(m0), upd_gpu), 1e-5, "the same kernels recomputed")
    if dev.type == "cuda":  # FlexAttention through train(): a new sequence length each step (dynamic compilation)
        m_s, _, l_s = _train(folder, data, root / "sgd-shared", dev, layout="shared")
        m_f, _, l_f = _train(folder, data, root / "sgd-flex", dev, layout="shared", attention="flex")
        check("3 SGD steps, shared layout, FlexAttention vs SDPA on CUDA: per-step loss",
              max(abs(a - b) / abs(b) for a, b in zip(l_f, l_s)), 1e-5, "float32 vs float32, other attention kernel")
        check("3 SGD steps, shared layout, FlexAttention vs SDPA on CUDA: parameter update",
              rel(_params(m_f) - _params(m0), _params(m_s) - _params(m0)), 1e-4, "float32, gradient sums")
    # resume: 4 steps straight vs 2 steps + checkpoint + resume to 4 (AdamW, so optimizer state must come back)
    kw = dict(optimizer="adamw", lr=1e-3, max_grad_norm=1.0, max_steps=4)
    _, _, straight = _train(folder, data, root / "straight", dev, **kw)
    _train(folder, data, root / "resumed", dev, **{**kw, "max_steps": 2, "save_every": 2})
    _, _, resumed = _train(folder, data, root / "resumed", dev, **kw, resume="latest")
    check("checkpoint at step 2 + resume to 4 vs 4 straight steps, CUDA: per-step loss",
          max(abs(a - b) / abs(b) for a, b in zip(resumed, straight)), 1e-6,
          "the same computation; GPU kernels here are deterministic at this size")
    # bf16 autocast: 20 AdamW steps learn (loss falls) and stay near the float32 run
    kw = dict(optimizer="adamw", lr=3e-3, max_grad_norm=1.0, max_steps=20)
    _, _, f32 = _train(folder, data, root / "f32", dev, **kw)
    _, _, b16 = _train(folder, data, root / "b16", dev, precision="bf16", **kw)
    check("bf16 autocast vs fp32, 20 AdamW steps on CUDA: max per-step loss rel. diff",
          max(abs(a - b) / abs(b) for a, b in zip(b16, f32)), 2e-2, "bf16 operands")
    check("bf16 training on CUDA: mean loss of the last 5 steps / first 5", (sum(b16[-5:]) / sum(b16[:5])), 0.999,
          "it learns (the 40 training pairs repeat, so the loss must fall)")
    # bf16 weights with float32 masters (minorpo/fast/master.py): the same 20 steps, bf16 everywhere but the optimizer
    m_w, _, b16w = _train(folder, data, root / "b16w", dev, precision="bf16-weights", save_every=20, **kw)
    check("bf16 weights + fp32 masters vs fp32, 20 AdamW steps on CUDA: max per-step loss rel. diff",
          max(abs(a - b) / abs(b) for a, b in zip(b16w, f32)), 2e-2, "bf16 operands and activations")
    check("bf16 weights + fp32 masters on CUDA: mean loss of the last 5 steps / first 5",
          (sum(b16w[-5:]) / sum(b16w[:5])), 0.999, "it learns", kind="<=")
    from safetensors.torch import load_file
    masters = load_file(str(root / "b16w" / "checkpoints" / "step-000020" / "weights.safetensors"))
    named = dict(m_w.named_parameters())
    check("bf16 weights: model == bf16(float32 master) for every weight after 20 steps (count of mismatches)",
          float(sum(not torch.equal(named[n].detach().cpu(), w.to(torch.bfloat16)) for n, w in masters.items())
                + sum(named[n].dtype != torch.bfloat16 or w.dtype != torch.float32 for n, w in masters.items())),
          0.0, "the model is the rounded master, exactly")
    # LoRA + export on CUDA: the merged folder loads in transformers and gives minorpo's logits
    import transformers
    m_l, _, _ = _train(folder, data, root / "lora", dev, lora_r=4, lora_alpha=8, optimizer="adamw", lr=1e-2,
                       precision="bf16", export=True)
    ids, mask = padded_ids()
    m_l.float().eval()
    hf = transformers.AutoModelForCausalLM.from_pretrained(root / "lora" / "final", dtype=torch.float32,
                                                           attn_implementation="sdpa").to(dev).eval()
    from tiny_models import hf_position_ids
    with torch.no_grad():
        a = m_l(ids.to(dev), attention_mask=mask.to(dev))
        b = hf(input_ids=ids.to(dev), attention_mask=mask.to(dev), position_ids=hf_position_ids(mask).to(dev)).logits
    keep = mask.bool().to(dev)
    check("LoRA trained on CUDA (bf16), merged export loaded by transformers: logits vs minorpo+LoRA", rel(a[keep],
          b[keep]), 1e-5, "float32; merging W + (alpha/r) B A is exact up to rounding")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda", help="cuda (default); cpu runs the same checks on the CPU "
                                                     "(a smoke test of this script, not a CUDA check)")
    ap.add_argument("--json", help="write every check's numbers here")
    args = ap.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("no CUDA device (see --help; --device cpu smoke-tests the script)")
    torch.backends.cuda.matmul.allow_tf32 = False  # float32 checks mean float32 arithmetic
    torch.backends.cudnn.allow_tf32 = False
    dev = torch.device(args.device)
    hardware = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "CPU"
    print(f"hardware: {hardware}; torch {torch.__version__}", flush=True)
    t0 = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        folders, data = setup(root)
        run("forward", lambda: check_forward(folders, dev))
        run("loss", lambda: check_loss(folders, data, dev))
        run("training", lambda: check_training(folders, data, dev, root))
    failed = [r for r in RESULTS if not r["pass"]]
    print(f"{len(RESULTS) - len(failed)} of {len(RESULTS)} checks passed in {time.time() - t0:.0f} s on {hardware}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"hardware": hardware, "torch": torch.__version__,
                                               "results": RESULTS}, indent=1))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
