"""Opt-in (MINORPO_TEST_GEMMA = the folder ../shared/tools/make-gemma3-fixture prints): Gemma 3 270M, the pretrained
base model (vocabulary 262,144; 18 layers, 5 sliding-window layers of window 512 per global one), against
transformers loaded from the same folder (the oracle).

Short inputs keep this cheap (the model is 268M parameters): a few texts of under 12 tokens, 10 greedy tokens, and
2 ORPO + LoRA steps on 4 HH-RLHF pairs cut to 48 tokens. The sliding window (512) is longer than anything here:
tests/test_families.py and the tiny Gemma models check the window itself, with a window of 4.
"""


import pytest
import torch

from conftest import assert_close

from minorpo.tools.generate import generate
from minorpo.hf.loader import load

pytestmark = [pytest.mark.real_model, pytest.mark.slow]
transformers = pytest.importorskip("transformers")

TEXTS = ["The capital of France is", "def fibonacci(n):\n    if n < 2:", "Hello, my name is"]


@pytest.fixture(scope="module")
def float32_pair(gemma_dir):
    ours, tok = load(gemma_dir, dtype=torch.float32)
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(gemma_dir), dtype=torch.float32,
                                                           attn_implementation="sdpa").eval()
    return ours, tok, hf


def test_tokenizer_matches_transformers(gemma_dir, float32_pair):
    """Same ids as transformers' GemmaTokenizer, BOS included (Gemma's post-processor adds <bos>: id 2), on plain
    text, whitespace runs, non-ASCII text and the chat template's special tokens written in the text."""
    _, tok, _ = float32_pair
    hf_tok = transformers.AutoTokenizer.from_pretrained(str(gemma_dir))
    for text in TEXTS + ["  leading spaces\tand tabs\n\n", "héllo wörld ✓ 🙂 <start_of_turn>user\nhi<end_of_turn>"]:
        ids = tok.encode(text, add_special_tokens=True)
        assert ids == hf_tok(text)["input_ids"] and ids[0] == tok.bos_token_id == 2
        assert tok.decode(ids, skip_special_tokens=True) == hf_tok.decode(ids, skip_special_tokens=True)


def test_logits_and_greedy_text_match_transformers(gemma_dir, float32_pair):
    """float32: logits within 1e-4 (18 layers of float32 rounding; the same operations on both sides, so the
    measured difference is 0, and a wrong norm, scale or RoPE base moves logits by >0.1); 10 greedy tokens
    give the same text. bfloat16, the checkpoint's own dtype: both round the same way (sqrt(640) = 25.25 in
    bf16, norms in float32), so within 2 bf16 ulps (rtol 2^-7) plus atol 0.1 for logits of size ~20 (measured: 0)."""
    ours, tok, hf = float32_pair
    ids = torch.tensor([tok.encode(TEXTS[0], add_special_tokens=True)])
    with torch.no_grad():
        assert_close(ours(ids), hf(ids).logits, rtol=1e-4, atol=1e-4, what="Gemma 3 float32 logits")
    got = generate(ours, ids, 10)
    want = hf.generate(ids, max_new_tokens=10, do_sample=False)
    assert tok.decode(got[0].tolist()) == tok.decode(want[0].tolist())
    ours16, _ = load(gemma_dir, dtype=torch.bfloat16)
    hf16 = transformers.AutoModelForCausalLM.from_pretrained(str(gemma_dir), dtype=torch.bfloat16,
                                                             attn_implementation="sdpa").eval()
    with torch.no_grad():
        assert_close(ours16(ids).float(), hf16(ids).logits.float(), rtol=2 ** -7, atol=0.1, what="bf16 logits")


def test_orpo_lora_steps_export_loads_in_transformers(gemma_dir, float32_pair, hh_rlhf_file, tmp_path):
    """2 ORPO + LoRA (every linear layer) steps on raw HH-RLHF text: the loss is finite, the merged RUN/final
    (exported in float32) is a Gemma3ForCausalLM for transformers with the trained model's logits (float32; tolerance 2e-3 for logits of
    size ~20: merging rounds W + (alpha/r) B A to float32, ~1e-7 relative per weight, through 18 layers), and the
    training moved the logits (by more than 1e-2, or the comparison would not show the adapter was exported)."""
    from minorpo.train import TrainConfig, train
    _, _, hf_base = float32_pair
    model, tok = load(gemma_dir, dtype=torch.float32)
    out = tmp_path / "run"
    cfg = TrainConfig(model=str(gemma_dir), data=str(hh_rlhf_file), out=str(out), method="orpo", lam=0.1,
                      lora_r=8, lora_alpha=16, lora_targets="all-linear", lr=1e-3, warmup_steps=0,
                      schedule="constant", max_steps=2, batch_size=2, max_length=48, max_pairs=4, eval_pairs=0,
                      eval_every=0, save_every=0, progress=False, device="cpu",
                      export_dtype="float32")  # "auto" would write the checkpoint's own bf16: here the merge is checked
    last = train(cfg, model=model, tokenizer=tok)
    assert torch.isfinite(torch.tensor(last["loss"]))
    ids = torch.tensor([tok.encode(TEXTS[1], add_special_tokens=True)])
    merged = transformers.AutoModelForCausalLM.from_pretrained(str(out / "final"), dtype=torch.float32).eval()
    assert type(merged).__name__ == "Gemma3ForCausalLM"
    with torch.no_grad():
        trained = model.eval()(ids)
        assert_close(merged(ids).logits, trained, rtol=1e-4, atol=2e-3, what="merged export vs trained model")
        assert (trained - hf_base(ids).logits).abs().max() > 1e-2
