"""Float32 master weights for bf16 full fine-tuning (minorpo/fast/master.py, `--precision bf16-weights --lora-r 0`).

Oracles: hand arithmetic on the same float32 numbers (an SGD step, a sum of two gradients: bit-equal, since the
same float32 operations are done in the same order); bf16's spacing (8 significant bits) for why the masters
are needed; the float32 run of the same batch for the training loop (bf16 tolerance explained there); an
uninterrupted run for resume (bit-equal: CPU arithmetic is deterministic).
"""

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from minorpo.run.checkpoint import list_checkpoints, read_optimizer_state
from minorpo.fast.master import MasterWeights
from tiny_runs import train_tiny as _run


def _tiny_bf16(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.Tanh(), torch.nn.Linear(32, 4)).to(torch.bfloat16)


def _bf16_grads(model, x):
    """The bf16 gradients of a fresh copy of `model` on input x (the oracle for what the hook receives)."""
    import copy
    twin = copy.deepcopy(model)
    twin(x).float().pow(2).sum().backward()
    return [p.grad.clone() for p in twin.parameters()]


def test_sgd_step_updates_the_float32_master_then_rounds_the_model():
    model = _tiny_bf16()
    x = torch.randn(8, 16).to(torch.bfloat16)
    want_grads = _bf16_grads(model, x)
    master = MasterWeights(list(model.named_parameters()))
    before = [m.detach().clone() for m in master.params]
    assert all(m.dtype == torch.float32 for m in master.params)
    assert all(torch.equal(m, p.float()) for m, p in zip(before, model.parameters()))  # exact: bf16 -> fp32

    model(x).float().pow(2).sum().backward()
    for p, m, g in zip(model.parameters(), master.params, want_grads):
        assert p.grad is None                        # the hook moved it away (and freed it)
        assert m.grad.dtype == torch.float32
        assert torch.equal(m.grad, g.float())        # the same bf16 gradient, widened exactly
    lr = 0.01
    opt = torch.optim.SGD(master.params, lr=lr)
    opt.step()
    master.copy_to_model()
    for b, m, g, p in zip(before, master.params, want_grads, model.parameters()):
        assert torch.equal(m.detach(), b.add(g.float(), alpha=-lr))  # SGD in float32 (add_ with alpha, as torch.optim.SGD): bit-equal
        assert torch.equal(p.detach(), m.detach().to(torch.bfloat16))  # the model is the rounded master


def test_micro_batch_gradients_add_up_in_float32():
    """Two backward passes before a step: master.grad is the float32 sum of the two bf16 gradients (bit-equal
    to adding them by hand in float32), not their bf16 sum, which rounds (shown to differ on this data)."""
    model = _tiny_bf16(1)
    x1, x2 = torch.randn(8, 16).to(torch.bfloat16), torch.randn(8, 16).to(torch.bfloat16)
    g1, g2 = _bf16_grads(model, x1), _bf16_grads(model, x2)
    master = MasterWeights(list(model.named_parameters()))
    model(x1).float().pow(2).sum().backward()
    model(x2).float().pow(2).sum().backward()
    for m, a, b in zip(master.params, g1, g2):
        assert torch.equal(m.grad, a.float() + b.float())
    assert any(not torch.equal((a + b).float(), a.float() + b.float()) for a, b in zip(g1, g2))


def test_updates_below_bf16_resolution_are_kept_by_the_master():
    """Why the masters exist. One AdamW step of lr 1e-5 moves each weight by about lr (Adam's first step is
    lr * g / (|g| + eps) = lr * sign(g) where |g| >> eps). bf16 spaces numbers near 0.02 by 2^-13 = 1.2e-4, so
    applied to bf16 weights directly almost every update rounds to no change; the float32 masters move by lr."""
    lr = 1e-5
    model = _tiny_bf16(2)
    x = torch.randn(8, 16).to(torch.bfloat16)

    plain = _tiny_bf16(2)  # AdamW straight on the bf16 weights
    start = [p.detach().clone() for p in plain.parameters()]
    opt = torch.optim.AdamW(plain.parameters(), lr=lr, weight_decay=0.0)
    plain(x).float().pow(2).sum().backward()
    opt.step()
    moved = sum(int((p.detach() != s).sum()) for p, s in zip(plain.parameters(), start))
    total = sum(s.numel() for s in start)
    print(f"\nAdamW on bf16 weights, lr {lr}: {moved} of {total} weights changed")
    assert moved / total < 0.05

    master = MasterWeights(list(model.named_parameters()))
    before = [m.detach().clone() for m in master.params]
    opt = torch.optim.AdamW(master.params, lr=lr, weight_decay=0.0)
    model(x).float().pow(2).sum().backward()
    grads = [m.grad.clone() for m in master.params]
    opt.step()
    for b, m, g in zip(before, master.params, grads):
        step = (m.detach() - b).abs()
        big = g.abs() > 1e-3  # |g| >> eps = 1e-8: the step is lr to within lr * eps / |g| plus float32 rounding of b
        assert big.any()
        # float32 spacing for |b| < 1 is at most 2^-24 = 6e-8, so the measured step is lr to within ~1e-7 (1%)
        assert torch.allclose(step[big], torch.full_like(step[big], lr), rtol=0, atol=1.3e-7)


@pytest.fixture(scope="module")
def fp32_full_step1(tiny_run_inputs, tmp_path_factory):
    _, last = _run(tiny_run_inputs, tmp_path_factory.mktemp("fp32full") / "run", max_steps=1, lora_r=0, lr=1e-3)
    return last


def test_full_fine_tuning_in_bf16_weights(tiny_run_inputs, tmp_path, fp32_full_step1):
    """train() with bf16 weights and full fine-tuning: the step-1 loss is the fp32 run's to bf16 accuracy (same
    tolerance and reasoning as test_train_precision.test_bf16_step1_loss_close_to_fp32: rtol 2^-7); the model
    is bf16 throughout; the checkpoint holds float32 masters of which the model is the bf16 rounding; AdamW's
    moments are float32, one set per weight; and the weights moved."""
    out = tmp_path / "run"
    model, last = _run(tiny_run_inputs, out, torch.bfloat16, max_steps=2, lora_r=0, lr=1e-3,
                       precision="bf16-weights", save_every=1)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    ref = fp32_full_step1["loss"]
    print(f"\nbf16 weights, full FT: step-1 loss {rows[1]['loss']:.7f}, fp32 {ref:.7f}")
    assert abs(rows[1]["loss"] - ref) <= 2 ** -7 * abs(ref) and rows[1]["loss"] != ref
    assert math.isfinite(last["loss"]) and last["grad_norm"] > 0
    assert all(p.dtype == torch.bfloat16 and p.requires_grad for p in model.parameters())
    assert all(p.grad is None for p in model.parameters())  # the hooks moved every gradient to the masters

    ckpt1, ckpt2 = list_checkpoints(out)
    w1, w2 = load_file(str(ckpt1 / "weights.safetensors")), load_file(str(ckpt2 / "weights.safetensors"))
    names = [n for n, _ in model.named_parameters()]
    assert sorted(w2) == sorted(names)
    params = dict(model.named_parameters())
    for n in names:
        assert w2[n].dtype == torch.float32
        assert torch.equal(params[n].detach(), w2[n].to(torch.bfloat16)), n
    # masters hold what bf16 cannot: some weight's float32 master is not a bf16 number
    assert any(not torch.equal(w2[n], w2[n].to(torch.bfloat16).float()) for n in names)
    assert any(not torch.equal(w1[n], w2[n]) for n in names)
    state = read_optimizer_state(ckpt2)["state"]
    assert len(state) == len(names)
    assert all(s["exp_avg"].dtype == torch.float32 and s["exp_avg_sq"].dtype == torch.float32 for s in state.values())


def test_full_bf16_weights_resume_is_exact(tiny_run_inputs, tmp_path):
    """4 steps straight vs 2 steps, then --resume to 4: the float32 masters (and so the bf16 model) at step 4
    are bit-equal. Without storing the masters the resumed run would restart from bf16-rounded weights."""
    kw = dict(lora_r=0, lr=1e-3, precision="bf16-weights", save_every=2, max_steps=4)
    whole, _ = _run(tiny_run_inputs, tmp_path / "whole", torch.bfloat16, **kw)
    _run(tiny_run_inputs, tmp_path / "split", torch.bfloat16, **{**kw, "max_steps": 2})
    resumed, _ = _run(tiny_run_inputs, tmp_path / "split", torch.bfloat16, **kw, resume="latest")
    a = load_file(str(list_checkpoints(tmp_path / "whole")[-1] / "weights.safetensors"))
    b = load_file(str(list_checkpoints(tmp_path / "split")[-1] / "weights.safetensors"))
    assert list_checkpoints(tmp_path / "split")[-1].name == "step-000004"
    for n in a:
        assert torch.equal(a[n], b[n]), n
    for (n, p), q in zip(whole.named_parameters(), resumed.parameters()):
        assert torch.equal(p, q), n
