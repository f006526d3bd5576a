"""Cross-implementation: minorpo's training loop (preset `trl`) vs TRL's ORPOTrainer (trl 1.x, a test-only oracle),
5 optimizer steps on the same tiny model, the same token ids, the same batches in the same order, the same
optimizer: the loss of every step agrees.

How the two runs are made identical:
  * model: a tiny random transformers Llama saved with save_pretrained; TRL trains the transformers model,
    minorpo its own model loaded from the same folder. Neither has dropout (minorpo has none; the Llama config
    has attention_dropout 0 and TRL's disable_dropout=True is left on).
  * tokens: both tokenize the same raw rows with their own pipelines (a Llama-style tokenizer that adds BOS;
    both append EOS). The test first asserts that TRL's prompt / chosen / rejected ids and labels are exactly
    minorpo's, row by row.
  * order: minorpo's order is a seeded permutation (train.step_indices, after a seeded held-out split). The test
    records the pairs minorpo collates at each step and gives TRL a dataset in exactly that order, read
    sequentially (train_sampling_strategy="sequential"). 10 pairs, batch 2, 5 steps: each pair once.
  * precision: float32 on both sides. transformers 5's TrainingArguments default to bf16=True (autocast) even on
    a CPU, which alone moved TRL's step-1 loss by 3e-4 relative here: the test sets bf16=False explicitly.
  * optimizer: AdamW (torch's, not fused: optim="adamw_torch"), betas (0.9, 0.999), eps 1e-8, no weight decay,
    constant lr, no warmup, gradient clipping at the same norm (torch.nn.utils.clip_grad_norm_ on both sides;
    the lr is chosen so that the clip is active), no accumulation.
  * LoRA: minorpo's hand-written LoRA vs PEFT's (TRL's peft_config), r=4, alpha=8, q/k/v/o, no dropout. PEFT
    draws its own A: the test copies minorpo's initial A (train() with max_steps=0, same seed) into PEFT's.
TRL's loss of a step is the value its compute_loss returns (recorded exactly; Trainer's logged loss is the same
number), minorpo's is the `loss` row of metrics.jsonl.

Tolerance: step 1 is the same function of the same weights in float32 (test_loss_trl_parity.py: agreement to a
few ulps). Later steps compare two float32 training runs whose gradients differ by float32 rounding (other
reduction orders in attention, softmax, cross-entropy); AdamW divides by sqrt(v), which can amplify rounding
noise in gradients that are nearly zero. Measured on this machine: max relative difference 1.9e-7 (full) and
1.1e-7 (LoRA) over the 5 steps. rtol 1e-5 leaves 50x room for another CPU / BLAS and still catches, as measured
with the same setup: TRL's lr 1% higher (1.5e-3 at step 2), no clipping on the TRL side (6.4e-4 at step 3; AdamW's
first update is nearly scale-free, so a clip shows from step 3), batches 2 and 3 swapped (3.6e-2 at step 2).
"""

import json
import os

import pytest
import torch

from minorpo import train as train_module
from minorpo.data import DataConfig, load_preferences
from minorpo.hf.loader import load
from minorpo.lora import apply_lora, lora_layers
from minorpo.train import TrainConfig, train
from tiny_runs import write_data
from tiny_models import saved
from tiny_tokenizers import word_tokenizer

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")  # trl.experimental warns on import
trl_orpo = pytest.importorskip("trl.experimental.orpo", reason="trl not installed (test-only oracle)")
transformers = pytest.importorskip("transformers")
datasets = pytest.importorskip("datasets")

N_PAIRS, BATCH, STEPS = 10, 2, 5
LAM = 0.25  # TRL's beta; not the default 0.1, so a forgotten lambda would show
CLIP = 1.0
RTOL = 1e-5  # see the module docstring


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("trl_train")
    folder = root / "model"
    saved("llama-tied", folder)
    word_tokenizer(folder, chat_template=None, add_bos=True)  # Llama-style: its post-processor adds <s>
    data = write_data(root / "pairs.jsonl", N_PAIRS, seed=3)
    rows = [json.loads(line) for line in data.read_text().splitlines()]
    return folder, data, rows


def minorpo_run(inputs, out, lr, lora, max_steps=STEPS):
    """minorpo's run; returns (per-step losses, the pairs it collated per step, grad norms, the trained model)."""
    folder, data, _ = inputs
    model, tok = load(folder)
    pairs = load_preferences(str(data), tok, DataConfig(max_length=64)).examples
    assert len(pairs) == N_PAIRS
    cfg = TrainConfig(model=str(folder), data=str(data), out=str(out), method="orpo", preset="trl", lam=LAM,
                      lora_r=4 if lora else 0, lora_alpha=8, lora_dropout=0.0, lr=lr, optimizer="adamw",
                      weight_decay=0.0, warmup_steps=0, schedule="constant", max_steps=max_steps,
                      batch_size=BATCH, grad_accum=1, max_grad_norm=CLIP, seed=0, eval_pairs=0, eval_every=0,
                      save_every=0, progress=False, max_length=64, device="cpu")
    seen = []
    collate = train_module.collate

    def recording_collate(batch_pairs, *args, **kwargs):
        seen.append([p.where for p in batch_pairs])
        return collate(batch_pairs, *args, **kwargs)

    train_module.collate = recording_collate  # train() calls batches.collate once per micro-batch
    try:
        train(cfg, model=model, tokenizer=tok, pairs=pairs)
    finally:
        train_module.collate = collate
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if r["step"] > 0]
    assert [r["step"] for r in steps] == list(range(1, max_steps + 1))
    by_where = {p.where: p for p in pairs}
    return ([r["loss"] for r in steps], [[by_where[w] for w in b] for b in seen], [r["grad_norm"] for r in steps],
            model)


def trl_run(inputs, out, lr, order, lora_a=None):
    """TRL's ORPOTrainer over `order` (raw rows) read sequentially; returns (trainer, per-step losses)."""
    folder, _, _ = inputs
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder))
    model = transformers.AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32,
                                                              attn_implementation="sdpa")
    peft_config = None
    if lora_a is not None:
        peft = pytest.importorskip("peft")
        peft_config = peft.LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, task_type="CAUSAL_LM",
                                      target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])
    args = trl_orpo.ORPOConfig(output_dir=str(out), beta=LAM, max_length=64, max_steps=STEPS, learning_rate=lr,
                               lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, max_grad_norm=CLIP,
                               optim="adamw_torch", adam_beta1=0.9, adam_beta2=0.999, adam_epsilon=1e-8,
                               per_device_train_batch_size=BATCH, gradient_accumulation_steps=1,
                               train_sampling_strategy="sequential", seed=0, use_cpu=True, report_to=[],
                               save_strategy="no", logging_steps=1, disable_dropout=True,
                               bf16=False, fp16=False)  # transformers 5 defaults to bf16 autocast, even on CPU
    trainer = trl_orpo.ORPOTrainer(model=model, args=args, processing_class=tokenizer, peft_config=peft_config,
                                   train_dataset=datasets.Dataset.from_list(order))
    if lora_a is not None:  # PEFT drew its own A; start from minorpo's
        with torch.no_grad():
            n = 0
            for name, p in trainer.model.named_parameters():
                if ".lora_A." in name:
                    key = name.removeprefix("base_model.model.").replace(".default", "")
                    p.copy_(lora_a[key])
                    n += 1
                elif ".lora_B." in name:
                    assert not p.any()  # B = 0 on both sides
        assert n == len(lora_a) > 0
    losses = []
    compute_loss = trainer.compute_loss

    def recording_compute_loss(*a, **k):
        loss = compute_loss(*a, **k)
        losses.append(loss.item())
        return loss

    trainer.compute_loss = recording_compute_loss
    return trainer, losses


def assert_same_tokens(trainer, order_pairs):
    """TRL's tokenization of the raw rows == minorpo's, row by row (prompt ids, full ids, labels)."""
    ds = trainer.train_dataset
    assert len(ds) == len(order_pairs)
    for i, p in enumerate(order_pairs):
        row = ds[i]
        assert row["prompt_input_ids"] == p.prompt_ids, (i, p.where)
        P = len(p.prompt_ids)
        for side, resp in (("chosen", p.chosen_ids), ("rejected", p.rejected_ids)):
            assert row[f"{side}_input_ids"] == p.prompt_ids + resp, (i, side, p.where)
            assert row[f"{side}_labels"] == [-100] * P + resp, (i, side, p.where)
    assert order_pairs[0].prompt_ids[0] == trainer.processing_class.bos_token_id  # BOS on both sides
    assert order_pairs[0].chosen_ids[-1] == trainer.processing_class.eos_token_id  # EOS on both sides


def compare(ours, theirs, ours_norms, what):
    rel = [abs(a - b) / abs(b) for a, b in zip(ours, theirs)]
    print(f"\n{what}\n  step  minorpo      TRL          rel.diff   minorpo grad_norm")
    for i, (a, b, r, g) in enumerate(zip(ours, theirs, rel, ours_norms)):
        print(f"  {i + 1}     {a:.8f}  {b:.8f}  {r:.2e}   {g:.3f}")
    print(f"  max relative difference {max(rel):.2e}")
    assert len(theirs) == len(ours) == STEPS
    assert rel[0] < 1e-5  # step 1: the same weights, float32 ulps (test_loss_trl_parity.py)
    assert max(rel) < RTOL, f"{what}: max relative difference {max(rel):.2e} >= {RTOL}"
    assert max(ours_norms) > CLIP  # the clip is active at least once, so identical clipping is tested
    return rel


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_first_five_losses_equal_trl_orpo_trainer(inputs, tmp_path, lora):
    lr = 1e-2 if lora else 2e-3  # large enough that the loss moves clearly in 5 steps
    ours, batches, norms, _ = minorpo_run(inputs, tmp_path / "minorpo", lr, lora)
    assert [len(b) for b in batches] == [BATCH] * STEPS
    order_pairs = [p for b in batches for p in b]
    assert len({p.where for p in order_pairs}) == N_PAIRS  # one epoch, each pair once
    rows = {f"{inputs[1].name}:{i + 1}": r for i, r in enumerate(inputs[2])}  # where = "file:line"
    assert set(rows) >= {p.where for p in order_pairs}, (sorted(rows)[:2], order_pairs[0].where)
    order = [rows[p.where] for p in order_pairs]
    lora_a = None
    if lora:  # minorpo's initial A: train() seeds torch with cfg.seed (0) and draws nothing else before apply_lora
        init, _ = load(inputs[0])
        torch.manual_seed(0)
        apply_lora(init, r=4, alpha=8, dropout=0.0, targets="attention")
        lora_a = {f"{n}.lora_A.weight": m.lora_A.weight.detach().clone() for n, m in lora_layers(init)}
    trainer, theirs = trl_run(inputs, tmp_path / "trl", lr, order, lora_a)
    assert_same_tokens(trainer, order_pairs)
    trainer.train()
    rel = compare(ours, theirs, norms, f"ORPO {'LoRA' if lora else 'full fine-tuning'}, trl preset, lr {lr}")
    # the comparison is not vacuous: the runs moved the loss by far more than they differ
    assert max(abs(a - ours[0]) for a in ours[1:]) > 100 * max(rel) * abs(ours[0])
    logged = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert logged == pytest.approx(theirs, rel=1e-6)  # what we recorded is what TRL logs
