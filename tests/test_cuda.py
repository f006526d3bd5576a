"""minorpo on CUDA: the checks a CPU run cannot make, in about a minute on one GPU (reproduce/gpu_checks.sh).

    python -m pytest -m cuda tests/test_cuda.py -v -s      # on a CUDA machine; skipped (with the reason) without one

The model forward against transformers, the ORPO loss and its gradient against a float64 CPU computation, the
two batch layouts against each other, bf16, fused AdamW, gradient checkpointing, checkpoint + resume, LoRA and
the merged export - all with tiny random models built in-process (tests/tiny_models.py), no download. Each check
prints what it measured, its tolerance and why (-s shows it).

Every test runs twice: on `cuda` (marked `cuda`) and on `cpu`, in the default run. On the CPU the checks compare
the CPU with itself (float32 vs float64, layouts, optimizers, resume, export) and must pass with the same
tolerances: that guards these tests between GPU sessions. The FlexAttention ones need CUDA (PyTorch's
FlexAttention has no CPU backward; tests/test_flex_attention.py checks its CPU forward).

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

import json
from pathlib import Path

import pytest
import torch

from minorpo.batches import collate, count_targets, pad_token_id
from minorpo.data import DataConfig, load_preferences
from minorpo.forward import ForwardSpec, pair_logps
from minorpo.hf.loader import load
from minorpo.hf.tokenizer import Tokenizer
from minorpo.loss import objective_sums
from minorpo.train import TrainConfig, train
from tiny_runs import pairs_of as _pairs, tiny_run_files
from tiny_models import hf_position_ids

CPU = torch.device("cpu")
DEVICES = ["cpu", pytest.param("cuda", marks=[
    pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device (torch.cuda)")])]


@pytest.fixture(scope="module", params=DEVICES)
def dev(request):
    """The device under test, with TF32 off while it is tested (float32 checks mean float32 arithmetic)."""
    flags = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    dev = torch.device(request.param)
    if dev.type == "cuda":
        print(f"\nhardware: {torch.cuda.get_device_name(dev)}; torch {torch.__version__}")
    yield dev
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = flags


def needs_cuda(dev):
    if dev.type != "cuda":
        pytest.skip("FlexAttention trains on CUDA only (no CPU backward); tests/test_flex_attention.py checks the "
                    "CPU forward")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """({arch: model folder} of three tiny random architectures, a file of 48 random pairs)."""
    root = tmp_path_factory.mktemp("cuda")
    runs = {arch: tiny_run_files(root / arch, seed=3, n=48, arch=arch) for arch in ("llama-tied", "qwen2", "mistral")}
    return {arch: folder for arch, (folder, _) in runs.items()}, runs["llama-tied"][1]


def rel(x, ref) -> float:
    x, ref = x.detach().double().cpu(), ref.detach().double().cpu()
    return float((x - ref).norm() / ref.norm().clamp_min(1e-300))


def check(name, value, tol, why, kind="<="):
    ok = value <= tol if kind == "<=" else value >= tol
    line = f"{name}: {value:.3g} ({kind} {tol}; {why})"
    print(f"\n{'PASS' if ok else 'FAIL'}  {line}", end="")
    assert ok, line


def padded_ids(B=3, T=24, V=256, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, V, (B, T), generator=g)
    mask = torch.ones(B, T, dtype=torch.long)
    for b in range(1, B):  # left padding of 3 and 6 tokens in rows 1 and 2
        mask[b, : 3 * b] = 0
    return ids, mask


# ------------------------------------------------------------------------------------------------------------------
# The forward


@pytest.mark.parametrize("arch", ["llama-tied", "qwen2", "mistral"])
def test_forward_vs_transformers(files, dev, arch):
    """minorpo vs transformers logits: float32 and bf16, padded rows."""
    transformers = pytest.importorskip("transformers")
    folder = files[0][arch]
    ids, mask = padded_ids()
    pos = hf_position_ids(mask)
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
            a = ours(ids.to(dev), attention_mask=mask.to(dev)).float()[keep.to(dev)]
            b = hf_d(input_ids=ids.to(dev), attention_mask=mask.to(dev), position_ids=pos.to(dev)).logits.float()
            b = b[keep.to(dev)]
        errs[dtype] = (rel(a, ref[keep]), rel(b, ref[keep]), rel(a, b))
    check(f"forward {arch} fp32: minorpo vs transformers, {dev}", errs[torch.float32][2], 1e-5, "float32 vs float32")
    check(f"forward {arch} fp32: minorpo {dev} vs float64 CPU", errs[torch.float32][0], 1e-5, "float32 vs float64")
    m, t = errs[torch.bfloat16][:2]
    check(f"forward {arch} bf16: minorpo error / transformers error (vs float64)", m / t, 1.5,
          f"bf16 as good as transformers' (minorpo {m:.2e}, transformers {t:.2e})")


# ------------------------------------------------------------------------------------------------------------------
# The loss and its gradient


def _batch(folder, data, layout, dev, n=6):
    tok = Tokenizer.from_dir(folder)
    pairs = load_preferences(str(data), tok, DataConfig(max_length=64)).examples[:n]
    pad = pad_token_id(tok)
    return pairs, pad, collate(pairs, pad, dev, layout)


def _loss_and_grads(files, dtype, dev, layout, preset="paper", autocast=False, chunk=7, attention="sdpa"):
    """ORPO loss (lambda 0.5, chunked log-probs with a chunk of 7 tokens: many chunks) and the flat gradient."""
    folder, data = files[0]["llama-tied"], files[1]
    model, _ = load(folder, dtype=dtype)
    model.to(dev)
    pairs, pad, batch = _batch(folder, data, layout, dev)
    spec = ForwardSpec(preset=preset, chunk_size=chunk, pad_id=pad, layout=layout, attention=attention)
    counts = count_targets(pairs, preset, pad)
    with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=autocast):  # as train.py's step loop
        nll, pair_sum, _ = objective_sums(pair_logps(model, batch, spec), "orpo", 0.5, 0.1, spec.nll_normalization)
        loss = nll / counts["nll"] + pair_sum / counts["pairs"]
    loss.backward()
    return loss.detach(), torch.cat([p.grad.reshape(-1) for p in model.parameters() if p.grad is not None])


@pytest.mark.parametrize("layout", ["padded", "shared"])
@pytest.mark.parametrize("preset", ["paper", "trl"])
def test_loss_and_grad_vs_float64(files, dev, preset, layout):
    ref_l, ref_g = _loss_and_grads(files, torch.float64, CPU, layout, preset)
    loss, grad = _loss_and_grads(files, torch.float32, dev, layout, preset)
    check(f"ORPO loss {preset}/{layout}: {dev} fp32 vs CPU float64", rel(loss, ref_l), 1e-5, "float32 vs float64")
    check(f"ORPO grad {preset}/{layout}: {dev} fp32 vs CPU float64", rel(grad, ref_g), 1e-4,
          "float32 vs float64, sums over positions")


@pytest.mark.parametrize("preset", ["paper", "trl"])
def test_shared_layout_equals_padded(files, dev, preset):
    lp, gp = _loss_and_grads(files, torch.float32, dev, "padded", preset)
    ls, gs = _loss_and_grads(files, torch.float32, dev, "shared", preset)
    check(f"shared vs padded layout {preset}, {dev} fp32: loss", rel(ls, lp), 1e-5, "float32 vs float32")
    check(f"shared vs padded layout {preset}, {dev} fp32: grad", rel(gs, gp), 1e-4, "float32, summed differently")


def test_loss_under_bf16_autocast(files, dev):
    ref_l, _ = _loss_and_grads(files, torch.float64, CPU, "shared")
    lb, gb = _loss_and_grads(files, torch.float32, dev, "shared", autocast=True)
    check(f"ORPO loss under bf16 autocast, {dev} vs CPU float64", rel(lb, ref_l), 2e-2, "bf16 operands")
    check("bf16 autocast gradient is finite", float(torch.isfinite(gb).all()), 1.0, "no NaN/inf", kind=">=")


def test_flex_attention_loss_and_grad(files, dev):
    needs_cuda(dev)
    ref_l, ref_g = _loss_and_grads(files, torch.float64, CPU, "shared")
    lf, gf = _loss_and_grads(files, torch.float32, dev, "shared", attention="flex")
    check("ORPO loss, shared layout, FlexAttention: CUDA fp32 vs CPU float64", rel(lf, ref_l), 1e-5,
          "float32 vs float64 (fails at ~1e-3 if FlexAttention's float32 matmuls use TF32)")
    check("ORPO grad, shared layout, FlexAttention: CUDA fp32 vs CPU float64", rel(gf, ref_g), 1e-4,
          "float32 vs float64, sums over positions")
    lfb, _ = _loss_and_grads(files, torch.float32, dev, "shared", autocast=True, attention="flex")
    check("ORPO loss, FlexAttention under bf16 autocast, CUDA vs CPU float64", rel(lfb, ref_l), 2e-2, "bf16 operands")


# ------------------------------------------------------------------------------------------------------------------
# The training loop: SGD and AdamW steps vs the CPU, checkpointing, resume, bf16, LoRA export


@pytest.fixture(scope="module")
def runs(files, dev, tmp_path_factory):
    """runs(name, device, **settings) -> (model, per-step losses) of a short train() run in runs.root / name (or
    / out), each run once per device."""
    folder, data = files[0]["llama-tied"], files[1]
    done = {}

    def run(name, device, out=None, **kw):
        if name not in done:
            done[name] = _train(folder, data, run.root / (out or name), device, **kw)
        return done[name]
    run.root = tmp_path_factory.mktemp(f"runs-{dev.type}")
    return run


def _train(folder, data, out, dev, **kw):
    model, tok = load(folder, dtype=torch.float32)
    base = dict(model=str(folder), data=str(data), out=str(out), lora_r=0, lr=0.05, optimizer="sgd",
                max_grad_norm=0.0, max_steps=3, warmup_steps=0, schedule="constant", eval_pairs=4, eval_every=0,
                save_every=-1, progress=False, max_length=64, lam=0.5, batch_size=4, device=dev.type, export=False)
    train(TrainConfig(**{**base, **kw}), model=model, tokenizer=tok, pairs=_pairs(data, tok))
    rows = [json.loads(x) for x in (Path(out) / "metrics.jsonl").read_text().splitlines()]
    return model, [r["loss"] for r in rows if r["step"] > 0]


def _params(model):
    return torch.cat([p.detach().double().cpu().reshape(-1) for p in model.parameters()])


def _update(model, files):
    m0, _ = load(files[0]["llama-tied"], dtype=torch.float32)
    return _params(model) - _params(m0)


def _max_rel(losses, ref):
    return max(abs(a - b) / abs(b) for a, b in zip(losses, ref))


def test_sgd_steps_vs_cpu(files, dev, runs):
    m_cpu, l_cpu = runs("sgd-cpu", CPU)
    m_dev, l_dev = runs("sgd", dev)
    check(f"3 SGD steps, {dev} fp32 vs CPU fp32: per-step loss", _max_rel(l_dev, l_cpu), 1e-5, "float32 vs float32")
    check(f"3 SGD steps, {dev} vs CPU: parameter update", rel(_update(m_dev, files), _update(m_cpu, files)), 1e-4,
          "float32, gradient sums")


def test_adamw_steps_vs_cpu(files, dev, runs):
    kw = dict(optimizer="adamw", lr=1e-3, max_grad_norm=1.0)
    m_a, l_a = runs("adamw-cpu", CPU, **kw)
    m_b, l_b = runs("adamw", dev, **kw)
    check(f"3 AdamW steps (fused on CUDA) on {dev} vs CPU AdamW: per-step loss", _max_rel(l_b, l_a), 1e-5,
          "same update rule, float32")
    check(f"3 AdamW steps (fused on CUDA) on {dev} vs CPU AdamW: parameter update",
          rel(_update(m_b, files), _update(m_a, files)), 1e-3,
          "Adam divides by sqrt(v): a gradient entry near eps flips its update's size, so looser than SGD's")


def test_cudnn_attention_switch_is_restored(dev, runs):
    flag = torch.backends.cuda.cudnn_sdp_enabled()
    runs("cudnn-on", dev, cudnn_attention=not flag, max_steps=1)
    check("train() sets PyTorch's cuDNN-attention switch back afterwards (1 = restored)",
          float(torch.backends.cuda.cudnn_sdp_enabled() == flag), 1.0, "process-wide switch", kind=">=")


def test_gradient_checkpointing(files, dev, runs):
    m_c, _ = runs("ckpt", dev, gradient_checkpointing=True)
    m_s, _ = runs("sgd", dev)
    check(f"gradient checkpointing on vs off, {dev}, 3 SGD steps: parameters",
          rel(_update(m_c, files), _update(m_s, files)), 1e-5, "the same kernels recomputed")


def test_flex_attention_training(files, dev, runs):
    """FlexAttention through train(): a new sequence length each step (dynamic compilation)."""
    needs_cuda(dev)
    m_s, l_s = runs("sgd-shared", dev, layout="shared")
    m_f, l_f = runs("sgd-flex", dev, layout="shared", attention="flex")
    check("3 SGD steps, shared layout, FlexAttention vs SDPA on CUDA: per-step loss", _max_rel(l_f, l_s), 1e-5,
          "float32 vs float32, other attention kernel")
    check("3 SGD steps, shared layout, FlexAttention vs SDPA on CUDA: parameter update",
          rel(_update(m_f, files), _update(m_s, files)), 1e-4, "float32, gradient sums")


def test_resume_equals_straight_run(dev, runs):
    """4 steps straight vs 2 steps + checkpoint + resume to 4 (AdamW, so optimizer state must come back)."""
    kw = dict(optimizer="adamw", lr=1e-3, max_grad_norm=1.0, max_steps=4)
    _, straight = runs("straight", dev, **kw)
    runs("first-half", dev, out="resumed", **{**kw, "max_steps": 2, "save_every": 2})
    _, resumed = runs("resumed", dev, **kw, resume="latest")
    check(f"checkpoint at step 2 + resume to 4 vs 4 straight steps, {dev}: per-step loss", _max_rel(resumed, straight),
          1e-6, "the same computation; GPU kernels here are deterministic at this size")


BF16_KW = dict(optimizer="adamw", lr=3e-3, max_grad_norm=1.0, max_steps=20)


def test_bf16_autocast_training(dev, runs):
    """bf16 autocast: 20 AdamW steps learn (the loss falls) and stay near the float32 run."""
    _, f32 = runs("f32", dev, **BF16_KW)
    _, b16 = runs("b16", dev, precision="bf16", **BF16_KW)
    check(f"bf16 autocast vs fp32, 20 AdamW steps on {dev}: max per-step loss rel. diff", _max_rel(b16, f32), 2e-2,
          "bf16 operands")
    check(f"bf16 training on {dev}: mean loss of the last 5 steps / first 5", sum(b16[-5:]) / sum(b16[:5]), 0.999,
          "it learns (the 40 training pairs repeat, so the loss must fall)")


def test_bf16_weights_with_float32_masters(dev, runs):
    """bf16 weights with float32 masters (minorpo/fast/master.py): the same 20 steps, bf16 everywhere but the
    optimizer; the checkpoint holds the masters, and the model is each master rounded."""
    from safetensors.torch import load_file
    _, f32 = runs("f32", dev, **BF16_KW)
    m_w, b16w = runs("b16w", dev, precision="bf16-weights", save_every=20, **BF16_KW)
    check(f"bf16 weights + fp32 masters vs fp32, 20 AdamW steps on {dev}: max per-step loss rel. diff",
          _max_rel(b16w, f32), 2e-2, "bf16 operands and activations")
    check(f"bf16 weights + fp32 masters on {dev}: mean loss of the last 5 steps / first 5",
          sum(b16w[-5:]) / sum(b16w[:5]), 0.999, "it learns", kind="<=")
    masters = load_file(str(runs.root / "b16w" / "checkpoints" / "step-000020" / "weights.safetensors"))
    named = dict(m_w.named_parameters())
    check("bf16 weights: model == bf16(float32 master) for every weight after 20 steps (count of mismatches)",
          float(sum(not torch.equal(named[n].detach().cpu(), w.to(torch.bfloat16)) for n, w in masters.items())
                + sum(named[n].dtype != torch.bfloat16 or w.dtype != torch.float32 for n, w in masters.items())),
          0.0, "the model is the rounded master, exactly")


def test_lora_export_loads_in_transformers(dev, runs):
    """LoRA trained in bf16: the merged folder loads in transformers and gives minorpo's logits."""
    transformers = pytest.importorskip("transformers")
    m_l, _ = runs("lora", dev, lora_r=4, lora_alpha=8, optimizer="adamw", lr=1e-2, precision="bf16", export=True)
    ids, mask = padded_ids()
    m_l.float().eval()
    hf = transformers.AutoModelForCausalLM.from_pretrained(runs.root / "lora" / "final", dtype=torch.float32,
                                                           attn_implementation="sdpa").to(dev).eval()
    with torch.no_grad():
        a = m_l(ids.to(dev), attention_mask=mask.to(dev))
        b = hf(input_ids=ids.to(dev), attention_mask=mask.to(dev), position_ids=hf_position_ids(mask).to(dev)).logits
    keep = mask.bool().to(dev)
    check(f"LoRA trained on {dev} (bf16), merged export loaded by transformers: logits vs minorpo+LoRA",
          rel(a[keep], b[keep]), 1e-5, "float32; merging W + (alpha/r) B A is exact up to rounding")
