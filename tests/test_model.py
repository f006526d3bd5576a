"""minorpo's model against transformers (the oracle), one tiny random model per supported architecture.

Tolerance for fp32 logits: rtol = atol = 1e-5. Both sides run the same float32 operations (same weights, same
RoPE formula in float32, RMSNorm in float32, scaled_dot_product_attention) but not necessarily in the same
order or through the same attention kernel (is_causal vs an explicit mask), so they may differ by float32
rounding accumulated over 2 layers: ~1e-6 relative for logits of size ~1. On this machine they agree exactly.
"""

import pytest
import torch
import torch.nn.functional as F

from conftest import assert_close
from tiny_models import ARCHS, LLAMA_FAMILY, V, hf_position_ids, saved

from minorpo.hf.loader import load_model

TOL = dict(rtol=1e-5, atol=1e-5)  # float32 rounding only; see the module docstring


def padded_batch(T=19, pad=5, left=True, seed=1):
    """Two rows: row 0 has `pad` padding tokens (left or right), row 1 none. Returns ids, mask."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, V, (2, T), generator=g)
    mask = torch.ones(2, T, dtype=torch.long)
    if left:
        mask[0, :pad] = 0
    else:
        mask[0, T - pad:] = 0
    ids = ids.masked_fill(mask == 0, 0)
    return ids, mask


@pytest.mark.parametrize("arch", list(ARCHS))
def test_logits_match_transformers(pair, arch):
    """Plain causal forward, batch of 2 x 23 tokens: logits equal transformers' (oracle) within TOL."""
    hf, ours = pair(arch)
    ids = torch.randint(0, V, (2, 23), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert_close(ours(ids), hf(ids).logits, **TOL, what=f"{arch} logits")


@pytest.mark.parametrize("left", [True, False], ids=["left-pad", "right-pad"])
@pytest.mark.parametrize("arch", list(ARCHS))
def test_padded_logits_match_transformers(pair, arch, left):
    """With a padding mask, logits at real tokens equal transformers' (given the same positions), and equal
    the logits of the unpadded row run alone (a second oracle: padding must change nothing)."""
    hf, ours = pair(arch)
    ids, mask = padded_batch(left=left)
    kwargs = {} if arch.startswith("opt") else {"position_ids": hf_position_ids(mask)}  # OPT derives them itself
    with torch.no_grad():
        got = ours(ids, attention_mask=mask)
        want = hf(ids, attention_mask=mask, **kwargs).logits
        alone = ours(ids[:1][mask[:1] == 1][None])                                     # (1, T - pad, V)
    real = mask.bool()
    assert_close(got[real], want[real], **TOL, what=f"{arch} padded logits (real tokens)")
    assert_close(got[0][real[0]], alone[0], **TOL, what=f"{arch} padded row vs the row alone")
    assert torch.isfinite(got).all(), "padding positions must not produce NaN/inf"


@pytest.mark.parametrize("arch", ["llama-tied", "mistral", "qwen2", "opt-350m"])
def test_block_mask_equals_padding_and_causal_masks(pair, arch):
    """A [B, T, S] block mask built as causal & real-key, with the same position ids, gives the logits of the
    padding-mask forward; the plain lower-triangular block mask gives the plain causal forward."""
    _, ours = pair(arch)
    ids, mask = padded_batch(left=True)
    T = ids.shape[1]
    causal = torch.tril(torch.ones(T, T, dtype=torch.bool))
    block = causal[None] & mask.bool()[:, None, :]                                     # (B, T, T)
    pos = hf_position_ids(mask)
    with torch.no_grad():
        real = mask.bool()
        assert_close(ours(ids, attention_mask=block, position_ids=pos)[real],
                     ours(ids, attention_mask=mask)[real], **TOL, what="block mask vs padding mask")
        plain_pos = torch.arange(T).expand(2, T)
        assert_close(ours(ids, attention_mask=causal.expand(2, T, T), position_ids=plain_pos), ours(ids),
                     **TOL, what="tril block mask vs causal")


@pytest.mark.parametrize("arch", ["llama-tied", "mistral", "opt"])
def test_packed_sequences_equal_separate_forwards(pair, arch):
    """Two sequences packed in one row, with a block-diagonal causal mask and positions restarting at 0,
    give the logits of each sequence run alone (what packing needs from the block mask)."""
    _, ours = pair(arch)
    g = torch.Generator().manual_seed(3)
    a, b = torch.randint(0, V, (1, 11), generator=g), torch.randint(0, V, (1, 9), generator=g)
    ids = torch.cat([a, b], 1)                                                          # (1, 20)
    T = ids.shape[1]
    doc = torch.tensor([0] * 11 + [1] * 9)
    block = (doc[:, None] == doc[None, :]) & torch.tril(torch.ones(T, T, dtype=torch.bool))
    pos = torch.cat([torch.arange(11), torch.arange(9)])[None]
    with torch.no_grad():
        packed = ours(ids, attention_mask=block[None], position_ids=pos)
        assert_close(packed[:, :11], ours(a), **TOL, what="first packed sequence")
        assert_close(packed[:, 11:], ours(b), **TOL, what="second packed sequence")


def test_block_mask_requires_position_ids(pair):
    _, ours = pair("llama-tied")
    ids = torch.zeros(1, 4, dtype=torch.long)
    with pytest.raises(ValueError, match="position_ids"):
        ours(ids, attention_mask=torch.ones(1, 4, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"shape \(1, 3\)"):
        ours(ids, attention_mask=torch.ones(1, 3))


@pytest.mark.parametrize("arch", list(ARCHS))
def test_state_dict_keys_and_hidden(pair, arch):
    """state_dict keys and shapes are transformers' own; lm_head(return_hidden output) == logits (soft-capped where
    the config says so); a tied lm_head is the embedding tensor itself."""
    from minorpo.models.gemma3 import softcap
    hf, ours = pair(arch)
    assert {k: tuple(v.shape) for k, v in ours.state_dict().items()} == \
           {k: tuple(v.shape) for k, v in hf.state_dict().items()}
    ids = torch.randint(0, V, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        hidden = ours(ids, return_hidden=True)
        assert hidden.shape == (2, 9, ours.lm_head.in_features)
        assert torch.equal(softcap(ours.lm_head(hidden), ours.config.final_logit_softcapping), ours(ids))
    emb = ours.model.decoder.embed_tokens if arch.startswith("opt") else ours.model.embed_tokens
    assert (ours.lm_head.weight is emb.weight) == ours.config.tie_word_embeddings


def test_attention_goes_through_sdpa(pair, monkeypatch):
    """Every layer's attention is one call of F.scaled_dot_product_attention (counted by a wrapper)."""
    calls = []
    real = F.scaled_dot_product_attention

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)
    monkeypatch.setattr(F, "scaled_dot_product_attention", counting)
    for arch in ("llama-tied", "opt"):
        _, ours = pair(arch)
        calls.clear()
        with torch.no_grad():
            ours(torch.zeros(1, 5, dtype=torch.long))
        assert len(calls) == ours.config.num_hidden_layers, arch


def next_token_targets(ids, mask):
    """ids[:, t+1] as the target of position t, -100 unless both t and t+1 are real tokens."""
    real = (mask[:, :-1] == 1) & (mask[:, 1:] == 1)
    return ids[:, 1:].masked_fill(~real, -100)


def loss_and_grads(model, ids, mask):
    """Mean next-token cross-entropy over real tokens, and every parameter's gradient."""
    model.zero_grad()
    logits = model(ids, attention_mask=mask)
    targets = next_token_targets(ids, mask)
    loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("arch", ["qwen2", "gemma3", "opt-350m"])
def test_gradient_checkpointing_same_loss_and_grads(pair, arch, monkeypatch):
    """Checkpointing on and off: identical loss and gradients (checkpointing recomputes the same float ops, so
    we require exact equality), and the switch really recomputes: each block runs twice per step when on."""
    _, ours = pair(arch)
    ids, mask = padded_batch(left=True)
    ours.train()
    runs = []
    layer0_forward = ours.layers[0].forward

    def counting_forward(*args):  # (module hooks do not fire during checkpoint's recomputation)
        runs.append(1)
        return layer0_forward(*args)
    monkeypatch.setattr(ours.layers[0], "forward", counting_forward)
    try:
        assert ours.gradient_checkpointing is False  # off by default
        loss_off, grads_off = loss_and_grads(ours, ids, mask)
        n_off = len(runs)
        ours.gradient_checkpointing = True
        loss_on, grads_on = loss_and_grads(ours, ids, mask)
        n_on = len(runs) - n_off
    finally:
        monkeypatch.undo()
        ours.gradient_checkpointing = False
        ours.eval()
        ours.zero_grad()
    assert (n_off, n_on) == (1, 2)
    assert torch.equal(loss_on, loss_off)
    assert grads_on.keys() == grads_off.keys() and len(grads_on) == len(list(ours.parameters()))
    for name in grads_off:
        assert torch.equal(grads_on[name], grads_off[name]), name
        assert torch.isfinite(grads_off[name]).all(), f"{name}: a padding row leaked NaN into the gradient"


@pytest.mark.parametrize("arch", LLAMA_FAMILY[:1] + ["qwen3", "gemma3-softcap-untied", "opt"])
def test_gradients_match_transformers(pair, arch):
    """Backward through a left-padded batch: loss and gradients equal transformers' (oracle). Gradient
    tolerance atol 1e-5: float32 rounding of sums over 2 x 19 tokens of O(1) terms."""
    hf, ours = pair(arch)
    ids, mask = padded_batch(left=True)
    loss, grads = loss_and_grads(ours, ids, mask)
    hf.zero_grad()
    kwargs = {} if arch.startswith("opt") else {"position_ids": hf_position_ids(mask)}
    logits = hf(ids, attention_mask=mask, **kwargs).logits
    targets = next_token_targets(ids, mask)
    hf_loss = F.cross_entropy(logits[:, :-1].reshape(-1, V), targets.reshape(-1), ignore_index=-100)
    hf_loss.backward()
    assert_close(loss, hf_loss.detach(), **TOL, what="loss")
    for name, p in hf.named_parameters():
        assert_close(grads[name], p.grad, rtol=1e-4, atol=1e-5, what=f"grad {name}")
    hf.zero_grad()
    ours.zero_grad()


@pytest.mark.parametrize("arch", list(ARCHS))
def test_bfloat16_matches_transformers_bfloat16(tmp_path, arch):
    """Loaded in bfloat16, both models round the same way (RMSNorm and RoPE angles in float32, then cast), so
    logits agree with transformers' bf16 model to within 2 bf16 ulps (rtol 2^-7; atol 1e-2 for logits near 0),
    allowing for kernels that sum in another order. Measured here: identical. The oracle must be loaded with
    from_pretrained(dtype=bfloat16): `model.to(bfloat16)` would also round transformers' float32 RoPE
    frequency buffer and shift its logits by ~2 ulps."""
    transformers = pytest.importorskip("transformers")
    _, folder = saved(arch, tmp_path)
    ours = load_model(folder, dtype=torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in ours.parameters())
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.bfloat16).eval()
    ids = torch.randint(0, V, (2, 17), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert_close(ours(ids).float(), hf(ids).logits.float(), rtol=2 ** -7, atol=1e-2, what="bf16 logits")


@pytest.mark.real_model
def test_real_model_logits_match_transformers(real_model_dir):
    """SmolLM2-135M-Instruct on real text: float32 logits equal transformers' within atol 1e-4 (30 layers of
    float32 rounding on logits of size ~30; measured max diff on this machine: 0)."""
    transformers = pytest.importorskip("transformers")
    from minorpo.hf.tokenizer import Tokenizer

    tok = Tokenizer.from_dir(real_model_dir)
    texts = ["The capital of France is Paris. It is known for the Eiffel Tower and",
             "def fibonacci(n):\n    if n < 2:\n        return n\n    return"]
    ours = load_model(real_model_dir)
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(real_model_dir), dtype=torch.float32).eval()
    rows = [tok.encode(t) for t in texts]
    T = max(map(len, rows))
    ids = torch.tensor([[0] * (T - len(r)) + r for r in rows])                          # left-padded
    mask = torch.tensor([[0] * (T - len(r)) + [1] * len(r) for r in rows])
    with torch.no_grad():
        got = ours(ids, attention_mask=mask)
        want = hf(ids, attention_mask=mask, position_ids=hf_position_ids(mask)).logits
    real = mask.bool()
    assert_close(got[real], want[real], rtol=1e-4, atol=1e-4, what="SmolLM2 logits")
    assert (got[real].argmax(-1) == want[real].argmax(-1)).all()
    # bfloat16, the checkpoint's own dtype: same rounding on both sides (see the bf16 test above), tolerance
    # 2 bf16 ulps relative plus atol 0.1 for logits of size ~30 (measured: identical)
    ours16 = load_model(real_model_dir, dtype=torch.bfloat16)
    hf16 = transformers.AutoModelForCausalLM.from_pretrained(str(real_model_dir), dtype=torch.bfloat16).eval()
    with torch.no_grad():
        got16 = ours16(ids[1:], attention_mask=mask[1:]).float()
        want16 = hf16(ids[1:], attention_mask=mask[1:], position_ids=hf_position_ids(mask[1:])).logits.float()
    assert_close(got16, want16, rtol=2 ** -7, atol=0.1, what="SmolLM2 bf16 logits")
