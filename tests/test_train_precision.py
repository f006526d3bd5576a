"""The training loop's precision options and its SFT / DPO methods, on the CPU with the tiny Llama of test_train.py.

  * precision="bf16" (autocast) and "bf16-weights" (bf16 base weights, fp32 LoRA): the step-1 loss is finite and
    close to the fp32 loss of the same batch (oracle: the fp32 run); the parameter and optimizer-state dtypes are
    what TrainConfig promises. (bf16-weights with full fine-tuning, float32 master weights: tests/test_master.py.)
  * method="dpo" with LoRA (reference = the disabled adapter) and with full fine-tuning (reference = a frozen
    copy): at step 1 the policy IS the reference, so every reward margin is exactly 0 and the loss is
    -log sigmoid(0) = log 2 (arithmetic oracle); on a fixed batch the loss then falls.
  * method="sft": the loss is the NLL of the chosen responses, recomputed independently from the transformers
    model's logits (paper preset: per-sequence mean over response tokens; trl preset: one mean pooled over the
    prompt + response tokens of the batch).
"""

import math

import pytest
import torch

from minorpo.run.checkpoint import list_checkpoints, read_optimizer_state
from minorpo.lora import lora_layers
from tiny_runs import metric_rows, pairs_of as _pairs, train_tiny as _run

transformers = pytest.importorskip("transformers")

LOG2 = math.log(2.0)
FP32_ULP = 2.0 ** -23  # float32 spacing just above 1.0 (relative)


@pytest.fixture(scope="module")
def fp32_step1(tiny_run_inputs, tmp_path_factory):
    _, last = _run(tiny_run_inputs, tmp_path_factory.mktemp("fp32") / "run", max_steps=1)
    return last


@pytest.mark.parametrize("precision", ["bf16", "bf16-weights"])
def test_bf16_step1_loss_close_to_fp32(tiny_run_inputs, tmp_path, fp32_step1, precision):
    """Same seed, same batch, same LoRA init: the step-1 loss (computed before the first update) in bf16 vs fp32.

    Tolerance: bf16 keeps 8 significant bits, so one rounding is up to 2^-9 = 2e-3 relative; the loss is a mean
    over ~40 tokens of log-softmaxes through 2 layers whose roundings largely average out (measured: 2.1e-4 for
    autocast, 2.7e-4 for bf16 weights). rtol 2^-7 = 7.8e-3 allows a few bf16 roundings' worth of drift and still
    fails for anything structurally wrong (a dropped term, a wrong batch: differences of order 1e-1). The loss
    must also differ from fp32's at all, or bf16 was not used.
    """
    dtype = torch.bfloat16 if precision == "bf16-weights" else torch.float32
    model, last = _run(tiny_run_inputs, tmp_path / "run", dtype, max_steps=1, precision=precision, save_every=1)
    ref = fp32_step1["loss"]
    print(f"\n{precision}: step-1 loss {last['loss']:.7f}, fp32 {ref:.7f}, rel {abs(last['loss'] - ref) / ref:.1e}")
    assert math.isfinite(last["loss"])
    assert abs(last["loss"] - ref) <= 2 ** -7 * abs(ref), (last["loss"], ref)
    assert last["loss"] != ref  # bf16 arithmetic really happened
    assert math.isfinite(last["grad_norm"]) and last["grad_norm"] > 0

    lora = {n for n, p in model.named_parameters() if ".lora_" in n}
    assert lora and all(p.requires_grad == (n in lora) for n, p in model.named_parameters())
    for n, p in model.named_parameters():
        if n in lora:
            assert p.dtype == torch.float32, n  # LoRA weights (and so their updates) in fp32
        else:  # bf16-weights: the frozen base is bf16; bf16 autocast keeps fp32 weights
            assert p.dtype == (torch.bfloat16 if precision == "bf16-weights" else torch.float32), n
    assert any(m.lora_B.weight.abs().max() > 0 for _, m in lora_layers(model))  # the fp32 LoRA update was applied
    # AdamW's state, as checkpointed after step 1: fp32 moments for every trainable (LoRA) parameter
    [ckpt] = list_checkpoints(tmp_path / "run")
    state = read_optimizer_state(ckpt)["state"]
    assert len(state) == len(lora)
    for s in state.values():
        assert s["exp_avg"].dtype == torch.float32 and s["exp_avg_sq"].dtype == torch.float32
    # at step 1 only B has a gradient (B = 0 makes dL/dA = 0): its moments are nonzero
    assert any(s["exp_avg_sq"].abs().max() > 0 for s in state.values())


@pytest.mark.parametrize("lora_r,lr", [(4, 0.01), (0, 0.001)], ids=["lora-disabled-reference", "frozen-copy"])
def test_dpo_starts_at_log2_and_falls(tiny_run_inputs, tmp_path, lora_r, lr):
    """DPO on one fixed batch of 4 pairs (max_pairs=4, batch 4, no held-out pairs: every step sees the same batch).

    Step 1: the policy equals the reference bit for bit (LoRA: B = 0, so the adapter adds exactly 0.0 to each
    projection; full fine-tuning: the reference is a deep copy), so r_w - r_l = 0 and the loss is
    -log sigmoid(beta * 0) = log 2 exactly, up to float32's rounding of log 2 (1 ulp).
    Steps 2-5: gradient steps on the same batch lower the loss, every step (the rewards margin grows).
    """
    out = tmp_path / "run"
    _run(tiny_run_inputs, out, max_steps=5, method="dpo", beta=0.5, lora_r=lora_r, lr=lr, max_pairs=4,
         eval_pairs=0, batch_size=4)
    rows = metric_rows(out)[1:]
    assert rows[0]["loss"] == pytest.approx(LOG2, rel=2 * FP32_ULP, abs=0)
    assert rows[0]["rewards/chosen"] == 0.0 and rows[0]["rewards/rejected"] == 0.0
    assert rows[0]["rewards/margins"] == 0.0
    losses = [r["loss"] for r in rows]
    print(f"\nDPO ({'LoRA' if lora_r else 'full'}, lr {lr}) losses steps 1-5: {[round(x, 6) for x in losses]}")
    assert all(b < a for a, b in zip(losses, losses[1:])), losses
    assert losses[-1] < 0.9 * LOG2, losses
    assert rows[-1]["rewards/margins"] > 0


@pytest.mark.parametrize("preset", ["paper", "trl"])
def test_sft_loss_is_the_chosen_nll(tiny_run_inputs, tmp_path, preset):
    """method="sft", one batch of the first 4 pairs (max_pairs=4, batch 4, no held-out pairs): the step-1 loss
    equals the NLL of the chosen sequences computed from transformers' logits of the saved model (the oracle),
    with torch.log_softmax and the preset's coverage and normalization written out here.

    Tolerance: float32 on both sides, sums over ~60 log-probs of size ~5: rtol 1e-5 (tests/test_model.py's
    logits agree to ~1e-6).
    """
    folder, data = tiny_run_inputs
    out = tmp_path / "run"
    _, last = _run(tiny_run_inputs, out, max_steps=1, method="sft", preset=preset, max_pairs=4, eval_pairs=0,
                   batch_size=4)
    from minorpo.hf.loader import load
    _, tok = load(folder)
    pairs = _pairs(data, tok)[:4]
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
    per_pair, all_terms = [], []
    with torch.no_grad():
        for p in pairs:
            ids = torch.tensor([p.prompt_ids + p.chosen_ids])
            logp = torch.log_softmax(hf(ids).logits[0, :-1].double(), -1)  # position t predicts token t + 1
            nll = -logp.gather(-1, ids[0, 1:, None])[:, 0]  # [T - 1], target = ids[1:]
            P = len(p.prompt_ids)
            per_pair.append(nll[P - 1:].mean())  # response tokens: targets P..end
            all_terms.append(nll)  # prompt (after the first token) + response
    if preset == "paper":
        want = torch.stack(per_pair).mean().item()
    else:
        want = torch.cat(all_terms).mean().item()
    print(f"\nSFT {preset}: minorpo {last['loss']:.8f}, oracle {want:.8f}, rel {abs(last['loss'] - want) / want:.1e}")
    assert last["loss"] == pytest.approx(want, rel=1e-5)
    assert last["nll_loss"] == pytest.approx(want, rel=1e-5)
    other = torch.cat(all_terms).mean().item() if preset == "paper" else torch.stack(per_pair).mean().item()
    assert abs(other - want) > 1e-3  # the two conventions differ on this batch, so the test tells them apart
