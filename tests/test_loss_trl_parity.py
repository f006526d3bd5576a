"""Parity with TRL's ORPOTrainer (trl 1.x, trl.experimental.orpo; a test-only oracle): the `trl` preset reproduces
TRL's loss and every metric it logs.

TRL's own code computes the oracle values: a real ORPOTrainer is constructed on a tiny random transformers Llama
(max_steps=1, never trained) with a tiny in-process tokenizer, its own data pipeline tokenizes and collates the
pairs, and `trainer.get_batch_loss_metrics` (which calls its concatenated_forward, get_batch_logps, odds_ratio_loss
and the NLL) gives the loss and metrics.
  1. Same logits: a stub model returns fixed random logits to TRL; minorpo gets the same logits and labels.
  2. Same model: TRL runs the transformers model, minorpo runs its own model loaded with the same weights
     (hidden states + chunked log-probs).
"""

import os
from types import SimpleNamespace

import pytest
import torch
from conftest import assert_close, logits_loss, model_loss

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")  # trl.experimental warns on import
trl_orpo = pytest.importorskip("trl.experimental.orpo", reason="trl not installed (test-only oracle)")
transformers = pytest.importorskip("transformers")
datasets = pytest.importorskip("datasets")

from minorpo.batches import PRESETS  # noqa: E402
from minorpo.logprobs import sequence_logps, shift_labels, token_logps_reference  # noqa: E402
from minorpo.loss import odds_ratio_loss  # noqa: E402

BETA = 0.25  # TRL's beta is our lambda; not the default 0.1, so a forgotten lambda would show
PAIRS = [
    {"prompt": "hi how are you ?", "chosen": " I am fine , thanks .", "rejected": " go away"},
    {"prompt": "what is two plus two ?", "chosen": " four", "rejected": " no , five . I am sure ."},
    {"prompt": "hello", "chosen": " hello , how are you ?", "rejected": " bad"},
]
# Tolerances: both sides compute in float32; sums and means over a few dozen tokens are taken in other orders
# (TRL: CrossEntropyLoss, selective_log_softmax; minorpo: chunked logsumexp), so values of size ~1-10 agree to a few
# float32 ulps. rtol 1e-5 with atol 1e-6 leaves room for that and nothing more.
RTOL, ATOL = 1e-5, 1e-6


@pytest.fixture(scope="module")
def trl_setup(tmp_path_factory):
    from tiny_tokenizers import word_tokenizer

    folder = tmp_path_factory.mktemp("trl")
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(word_tokenizer(folder / "tok", chat_template=None)))
    config = transformers.LlamaConfig(vocab_size=43, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                      tie_word_embeddings=False, bos_token_id=0, eos_token_id=1, pad_token_id=2)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config).eval()
    with torch.no_grad():  # larger weights than the default init, so log-probs spread away from log(1/V)
        for p in model.parameters():
            if p.dim() > 1:
                p.mul_(3.0)
    args = trl_orpo.ORPOConfig(output_dir=str(folder / "out"), beta=BETA, max_length=64, max_steps=1, report_to=[],
                               use_cpu=True, per_device_train_batch_size=len(PAIRS), save_strategy="no")
    trainer = trl_orpo.ORPOTrainer(model=model, args=args, processing_class=tokenizer,
                                   train_dataset=datasets.Dataset.from_list(PAIRS))
    batch = next(iter(trainer.get_train_dataloader()))  # TRL's tokenization and collation
    return SimpleNamespace(trainer=trainer, model=model, tokenizer=tokenizer, batch=batch, config=config)


def ours(batch: dict) -> dict:
    """The padded-layout keys minorpo reads (batches.collate_padded) from TRL's collated batch."""
    return {k: batch[k] for k in ("chosen_input_ids", "chosen_attention_mask", "chosen_labels",
                                  "rejected_input_ids", "rejected_attention_mask", "rejected_labels")}


def test_trl_batch_has_what_we_assume(trl_setup):
    """Preconditions of the comparison: TRL right-pads, masks the prompt in labels, and chosen/rejected have different
    lengths (so its concatenation pads)."""
    b = trl_setup.batch
    assert b["chosen_input_ids"].shape[1] != b["rejected_input_ids"].shape[1]
    assert (b["chosen_labels"][:, 0] == -100).all()
    m = b["chosen_attention_mask"]
    assert (m[:, :-1] >= m[:, 1:]).all()  # right padding: no 1 after a 0


def test_same_logits(trl_setup):
    """TRL's get_batch_loss_metrics on a stub model that returns fixed random logits [2B, T, V] vs
    forward.logps_from_logits + loss.batch_loss (preset "trl") on the same logits and labels: loss and all 11 metrics TRL logs."""
    b, trainer = trl_setup.batch, trl_setup.trainer
    B = b["chosen_input_ids"].shape[0]
    T = max(b["chosen_input_ids"].shape[1], b["rejected_input_ids"].shape[1])
    g = torch.Generator().manual_seed(0)
    logits = 4 * torch.randn(2 * B, T, trl_setup.config.vocab_size, generator=g)

    class Stub(torch.nn.Module):
        def forward(self, input_ids, attention_mask=None, **kwargs):
            assert input_ids.shape == logits.shape[:2]  # TRL's concatenated 2B-row batch
            return SimpleNamespace(logits=logits)

    with torch.no_grad():
        trl_loss, trl_metrics = trainer.get_batch_loss_metrics(Stub(), b)
    cat = trainer.concatenated_inputs(b, padding_value=trainer.padding_value)
    padded = {f"{s}_{k}": cat[f"concatenated_{k}"][sl] for s, sl in (("chosen", slice(0, B)), ("rejected", slice(B, None)))
              for k in ("input_ids", "attention_mask", "labels")}
    loss, metrics = logits_loss(logits[:B], logits[B:], padded, "trl", lam=BETA)
    assert_close(loss, trl_loss, rtol=RTOL, atol=ATOL, what="loss")
    assert set(trl_metrics) <= set(metrics), set(trl_metrics) - set(metrics)
    for name, value in trl_metrics.items():
        assert_close(metrics[name], value, rtol=RTOL, atol=ATOL, what=name)


def test_trl_building_blocks(trl_setup):
    """TRL's pieces one by one on the same logits: get_batch_logps (staticmethod, average_log_prob=True) == Eq. 3 of
    minorpo; odds_ratio_loss's per-pair beta * logsigmoid(log OR) == -beta * L_OR; TRL's log1mexp == ours in value."""
    b, trainer = trl_setup.batch, trl_setup.trainer
    g = torch.Generator().manual_seed(1)
    labels = b["chosen_labels"]
    logits = 3 * torch.randn(*labels.shape, trl_setup.config.vocab_size, generator=g)
    trl_logps = trl_orpo.ORPOTrainer.get_batch_logps(logits, labels, average_log_prob=True)
    targets = shift_labels(labels, b["chosen_attention_mask"])
    our_logps = sequence_logps(token_logps_reference(logits, targets), targets)
    assert_close(our_logps, trl_logps, rtol=RTOL, atol=ATOL, what="get_batch_logps")
    a, c = our_logps, our_logps.flip(0) - 0.3
    trl_losses, *_ = trainer.odds_ratio_loss(a, c)
    assert_close(-BETA * odds_ratio_loss(a, c), trl_losses, rtol=RTOL, atol=ATOL, what="odds_ratio_loss")
    from trl.experimental.orpo.orpo_trainer import log1mexp as trl_log1mexp

    from minorpo.loss import log1mexp

    x = -torch.logspace(-6, 3, 50)
    assert_close(log1mexp(x), trl_log1mexp(x), rtol=1e-6, atol=0, what="log1mexp values")


def test_same_model(trl_setup):
    """TRL on the transformers model vs minorpo's forward.pair_logps + loss.batch_loss (its own model, same weights, one 2B-row forward, hidden
    states and chunked log-probs with chunk 5). Loss and every metric except logits/*: those average over PADDING
    positions too, whose hidden states depend on each model's position ids for padding (transformers: arange;
    minorpo: cumsum of the mask - 1, clamped), an arbitrary choice no loss term sees; test_same_logits covers them."""
    from minorpo.hf.config import ModelConfig
    from minorpo.models import build_model

    hf, b, trainer = trl_setup.model, trl_setup.batch, trl_setup.trainer
    model = build_model(ModelConfig.from_hf(trl_setup.config.to_dict())).eval()
    model.load_state_dict(hf.state_dict())
    with torch.no_grad():
        trl_loss, trl_metrics = trainer.get_batch_loss_metrics(hf, b)
        loss, metrics = model_loss(model, ours(b), "trl", lam=BETA, pad_token_id=trl_setup.tokenizer.pad_token_id,
                                   chunk_size=5)
    assert_close(loss, trl_loss, rtol=RTOL, atol=ATOL, what="loss")
    for name, value in trl_metrics.items():
        if not name.startswith("logits/"):
            assert_close(metrics[name], value, rtol=RTOL, atol=ATOL, what=name)


def test_other_presets_differ_from_trl(trl_setup):
    """A check that the parity above is not vacuous: on the same batch the paper / official / llamafactory presets give
    a different loss than TRL (prompt tokens in the NLL, the extra target...), by more than the tolerance."""
    b, trainer = trl_setup.batch, trl_setup.trainer
    with torch.no_grad():
        trl_loss, _ = trainer.get_batch_loss_metrics(trl_setup.model, b)
        logits = {s: trl_setup.model(b[f"{s}_input_ids"], attention_mask=b[f"{s}_attention_mask"]).logits
                  for s in ("chosen", "rejected")}
    for preset in sorted(set(PRESETS) - {"trl"}):
        loss, _ = logits_loss(logits["chosen"], logits["rejected"], ours(b), preset, lam=BETA,
                              pad_token_id=trl_setup.tokenizer.pad_token_id)
        assert abs(loss.item() - trl_loss.item()) > 100 * ATOL, preset
