"""Generation: greedy tokens equal transformers' generate (oracle); KV cache equals no cache; EOS stops rows;
top-p and temperature sampling checked against hand arithmetic, transformers' TopPLogitsWarper and the
softmax formula; the `minorpo generate` command prints what generate() produces."""

import math

import pytest
import torch

from tiny_models import ARCHS, V, saved

from minorpo.tools.generate import generate, next_token, top_p_filter
from minorpo.hf.loader import load_model


def prompts():
    """Two prompts of lengths 7 and 4, left-padded to 7 (transformers' convention for batched generation)."""
    g = torch.Generator().manual_seed(5)
    ids = torch.randint(3, V, (2, 7), generator=g)
    mask = torch.ones(2, 7, dtype=torch.long)
    mask[1, :3] = 0
    return ids.masked_fill(mask == 0, 0), mask


@pytest.mark.parametrize("arch", list(ARCHS))
def test_greedy_20_tokens_equal_transformers(pair, arch):
    """20 greedy tokens from a left-padded batch of 2 prompts are those of transformers' generate (oracle;
    no EOS is configured, so both run all 20 steps). Exact equality: an argmax over identical logits."""
    hf, ours = pair(arch)
    ids, mask = prompts()
    want = hf.generate(ids, attention_mask=mask, max_new_tokens=20, do_sample=False, pad_token_id=0)
    got = generate(ours, ids, 20, attention_mask=mask)
    assert got.shape == (2, 27)
    assert torch.equal(got, want)


@pytest.mark.parametrize("arch", list(ARCHS))
def test_kv_cache_equals_no_cache(pair, arch):
    """With and without the KV cache: the same greedy tokens and, with the same seed, the same sampled tokens.
    Also the cached step's logits equal a full recomputation within 1e-5 (float32 rounding; see test_model)."""
    _, ours = pair(arch)
    ids, mask = prompts()
    for kw in (dict(), dict(temperature=1.0, top_p=0.9, seed=7)):
        cached = generate(ours, ids, 20, attention_mask=mask, **kw)
        uncached = generate(ours, ids, 20, attention_mask=mask, use_cache=False, **kw)
        assert torch.equal(cached, uncached), kw
    from minorpo.models.llama import KVCache
    seq = cached                                                                          # (2, 27)
    full_mask = torch.cat([mask, torch.ones(2, 20, dtype=torch.long)], 1)
    cache = KVCache()
    with torch.no_grad():
        ours(seq[:, :-3], attention_mask=full_mask[:, :-3], kv_cache=cache)
        step = ours(seq[:, -3:], attention_mask=full_mask, kv_cache=cache)  # 3 new tokens at once
        full = ours(seq, attention_mask=full_mask)
    torch.testing.assert_close(step, full[:, -3:], rtol=1e-5, atol=1e-5)


def test_eos_stops_each_row_like_transformers(pair):
    """Pick as EOS a token that row 0 emits greedily at step 3 (and row 1 does not emit before): row 0 stops
    there and is padded, row 1 goes on; the result equals transformers' generate with the same eos/pad ids."""
    hf, ours = pair("llama-tied")
    ids, mask = prompts()
    free = generate(ours, ids, 12, attention_mask=mask)[:, 7:]                            # (2, 12)
    eos = next((int(t) for t in free[0, 2:] if t not in free[0, :2].tolist() + free[1, :4].tolist()), None)
    assert eos is not None
    got = generate(ours, ids, 12, attention_mask=mask, eos_token_id=eos, pad_token_id=1)
    want = hf.generate(ids, attention_mask=mask, max_new_tokens=12, do_sample=False, eos_token_id=eos,
                       pad_token_id=1)
    assert torch.equal(got, want)
    k = free[0].tolist().index(eos)
    assert got[0, 7 + k] == eos and (got[0, 8 + k:] == 1).all()
    # a single row stops right after its eos, before max_new_tokens
    one = generate(ours, ids[:1], 12, eos_token_id=eos)
    assert one.shape[1] == 7 + k + 1 and one[0, -1] == eos


def test_top_p_filter_hand_example():
    """probs (0.5, 0.3, 0.15, 0.05). top_p 0.7: {0.5, 0.3} is the smallest set with mass >= 0.7, renormalized
    (0.625, 0.375). top_p 0.8: the same set (0.5 + 0.3 = 0.8 reaches it). top_p 0.81: the third is needed:
    (0.5, 0.3, 0.15) / 0.95. Any top_p <= 0.5 keeps only the first."""
    probs = torch.tensor([[0.15, 0.5, 0.05, 0.3]])  # shuffled, so the sort is exercised
    torch.testing.assert_close(top_p_filter(probs, 0.7), torch.tensor([[0, 0.625, 0, 0.375]]))
    torch.testing.assert_close(top_p_filter(probs, 0.8), torch.tensor([[0, 0.625, 0, 0.375]]))
    torch.testing.assert_close(top_p_filter(probs, 0.81), torch.tensor([[0.15, 0.5, 0, 0.3]]) / 0.95)
    torch.testing.assert_close(top_p_filter(probs, 0.3), torch.tensor([[0.0, 1, 0, 0]]))
    assert top_p_filter(probs, 1.0) is probs


def test_top_p_keeps_the_tokens_transformers_keeps():
    """On random logits, the tokens our top-p keeps are those transformers' TopPLogitsWarper keeps (oracle)."""
    transformers = pytest.importorskip("transformers")
    g = torch.Generator().manual_seed(0)
    logits = 3 * torch.randn(16, 50, generator=g)
    for p in (0.3, 0.6, 0.9, 0.99):
        theirs = transformers.TopPLogitsWarper(top_p=p)(None, logits.clone()) > -math.inf
        ours = top_p_filter(torch.softmax(logits, -1), p) > 0
        assert torch.equal(ours, theirs), p


def test_sampling_frequencies_follow_softmax_over_temperature():
    """20,000 draws from logits (2, 1, 0, -1) at temperature 2: each token's frequency is within 5 standard
    errors (sqrt(p(1-p)/n) <= 0.0035) of softmax(logits / 2) = (0.455, 0.276, 0.167, 0.102) (hand/closed
    form). With a seed, draws repeat exactly; temperature 0 is the argmax."""
    logits = torch.tensor([2.0, 1.0, 0.0, -1.0]).expand(20000, 4)
    draws = next_token(logits, 2.0, 1.0, torch.Generator().manual_seed(0))
    freq = torch.bincount(draws, minlength=4).float() / 20000
    p = torch.softmax(torch.tensor([2.0, 1.0, 0.0, -1.0]) / 2, -1)
    assert (freq - p).abs().max() < 5 * (p * (1 - p) / 20000).sqrt().max()
    again = next_token(logits, 2.0, 1.0, torch.Generator().manual_seed(0))
    assert torch.equal(draws, again)
    assert (next_token(logits[:3], 0.0, 1.0) == 0).all()


def test_sampling_seed(pair):
    """The same seed gives the same continuation, another seed another one; a tiny top_p is greedy."""
    _, ours = pair("opt")
    ids, mask = prompts()
    a = generate(ours, ids, 10, attention_mask=mask, temperature=1.0, seed=1)
    assert torch.equal(a, generate(ours, ids, 10, attention_mask=mask, temperature=1.0, seed=1))
    assert not torch.equal(a, generate(ours, ids, 10, attention_mask=mask, temperature=1.0, seed=2))
    assert torch.equal(generate(ours, ids, 10, attention_mask=mask, temperature=1.0, top_p=1e-6, seed=3),
                       generate(ours, ids, 10, attention_mask=mask))
    with pytest.raises(ValueError, match="top_p"):
        generate(ours, ids, 1, top_p=0.0)


def test_cli_generate_prints_generated_text(tmp_path, capsys):
    """`minorpo generate` (plain and --chat) prints the decoded continuation that generate() produces on the
    same prompt ids, built here with transformers' tokenizer (the oracle for the prompt ids)."""
    transformers = pytest.importorskip("transformers")
    from tiny_tokenizers import bpe_tokenizer

    from minorpo.tools.cli import main

    _, folder = saved("llama-tied", tmp_path / "m", vocab_size=300, eos_token_id=1)
    bpe_tokenizer(folder)  # <|im_start|>=0 (bos), <|im_end|>=1 (eos)
    tok = transformers.AutoTokenizer.from_pretrained(str(folder))
    model = load_model(folder)
    prompt = "Tell me a story"
    chat_ids = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                       tokenize=True, return_dict=False)
    for argv, ids in ((["--prompt", prompt], tok(prompt)["input_ids"]), (["--prompt", prompt, "--chat"], chat_ids)):
        assert main(["generate", "--model", str(folder), "--max-new-tokens", "8", *argv]) == 0
        out = generate(model, ids, 8, eos_token_id=1)[0, len(ids):]
        assert capsys.readouterr().out == tok.decode(out, skip_special_tokens=True) + "\n"


@pytest.mark.real_model
def test_real_model_greedy_32_tokens_after_chat_prompt(real_model_dir):
    """SmolLM2-135M-Instruct: 32 greedy tokens after a chat prompt (built by minorpo's tokenizer) equal
    transformers' generate (oracle), EOS handling included."""
    transformers = pytest.importorskip("transformers")
    from minorpo.hf.tokenizer import Tokenizer

    tok = Tokenizer.from_dir(real_model_dir)
    messages = [{"role": "user", "content": "Give me three tips for staying healthy."}]
    ids = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    hf_tok = transformers.AutoTokenizer.from_pretrained(str(real_model_dir))
    assert list(ids) == hf_tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                                   return_dict=False)
    ours = load_model(real_model_dir)
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(real_model_dir), dtype=torch.float32).eval()
    x = torch.tensor([ids])
    want = hf.generate(x, max_new_tokens=32, do_sample=False)
    got = generate(ours, x, 32)
    assert got.shape[1] == x.shape[1] + 32  # no EOS within 32 tokens here: the full comparison runs
    assert torch.equal(got, want), (tok.decode(got[0, len(ids):].tolist()), tok.decode(want[0, len(ids):].tolist()))
