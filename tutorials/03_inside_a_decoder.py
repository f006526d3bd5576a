# %% [markdown]
# # Tutorial 3 — Inside a decoder-only model: loading real weights and checking them
#
# A checkpoint is a folder: `config.json` (the shape of the network) and `model.safetensors` (named tensors).
# minorpo's model uses the tensor names of transformers' `LlamaForCausalLM`, so loading is a 1:1 copy. Here we
# open such a folder ourselves, run the whole forward pass *by hand* with plain tensor operations, and check that
# minorpo's model (`minorpo.hf.loader.load`) computes the same logits.
#
# By default the folder holds a tiny random Llama-family model written in-process (no download, a second).
# Set MINORPO_TEST_MODEL to a hub-style folder (e.g. SmolLM2-135M-Instruct) to do the same on real weights.

# %%
import json
import os
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file

from minorpo.hf.config import ModelConfig
from minorpo.hf.loader import load, load_model, save
from minorpo.models import build_model

real = os.environ.get("MINORPO_TEST_MODEL")
if real and Path(real, "model.safetensors").exists():
    folder = Path(real)
    print(f"using the real checkpoint in {folder}")
else:
    real = None
    folder = Path(tempfile.mkdtemp()) / "tiny-llama"
    hf_config = {"model_type": "llama", "vocab_size": 100, "hidden_size": 32, "intermediate_size": 64,
                 "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
                 "max_position_embeddings": 64, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
                 "tie_word_embeddings": True}
    tiny = build_model(ModelConfig.from_hf(hf_config))
    torch.manual_seed(0)
    with torch.no_grad():  # norms away from 1, so a norm applied in the wrong place would show
        for name, p in tiny.named_parameters():
            p.copy_(1 + 0.2 * torch.randn_like(p) if "norm" in name else 0.1 * torch.randn_like(p))
    save(tiny, None, folder)  # config.json + model.safetensors, as transformers writes them
    print(f"wrote a tiny random model to {folder}")

# %% [markdown]
# ## 1. What is in the folder

# %%
cfg = json.loads((folder / "config.json").read_text())
weights = load_file(str(folder / "model.safetensors"))  # {name: tensor}
for name in sorted(weights)[:12]:
    print(f"  {name:50s} {tuple(weights[name].shape)}")
print(f"  ... {len(weights)} tensors in all")
C, nh = cfg["hidden_size"], cfg["num_attention_heads"]
nkv = cfg.get("num_key_value_heads", nh)
hs = cfg.get("head_dim") or C // nh
n_layers = cfg["num_hidden_layers"]
theta = cfg.get("rope_theta") or (cfg.get("rope_parameters") or {}).get("rope_theta", 10000.0)
eps = cfg.get("rms_norm_eps", 1e-6)
assert cfg["model_type"] == "llama" and not cfg.get("rope_scaling"), "this walk-through covers plain Llama RoPE"
print(f"width C={C}, {nh} query heads and {nkv} key/value heads of size {hs}, {n_layers} layers, rope theta {theta}")
W = {k: v.double() for k, v in weights.items()}  # the hand computation runs in float64
W_out = W.get("lm_head.weight", W["model.embed_tokens.weight"])  # tied models store the embedding once

# %% [markdown]
# ## 2. The forward pass by hand
#
# For each token: look up its embedding; then in each layer
#   * RMSNorm: x / sqrt(mean(x^2) + eps) * weight (no mean subtraction, no bias);
#   * attention: q, k, v projections, split into heads; rotate q and k by position (RoPE: each pair
#     (x_i, x_{i+hs/2}) turns by angle position * theta^(-2i/hs)); each of the nh query heads reads key/value
#     head j // (nh/nkv) (grouped-query attention); softmax(q k^T / sqrt(hs)) over earlier tokens only;
#     o projection; add to the residual stream;
#   * RMSNorm, then the SwiGLU MLP down(silu(gate(x)) * up(x)); add to the residual stream.
# Finally one more RMSNorm and the output head gives a logit per vocabulary entry.

# %%
def rms_norm(x, w):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def rope(x, pos):  # x: (T, heads, hs)
    inv_freq = 1.0 / theta ** (torch.arange(0, hs, 2, dtype=torch.float64) / hs)  # (hs/2,)
    angle = pos[:, None].double() * inv_freq  # (T, hs/2)
    cos, sin = angle.cos()[:, None], angle.sin()[:, None]  # (T, 1, hs/2)
    x1, x2 = x[..., : hs // 2], x[..., hs // 2:]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


def forward_by_hand(ids):  # ids: (T,) -> logits (T, V)
    T = len(ids)
    pos = torch.arange(T)
    x = W["model.embed_tokens.weight"][ids]  # (T, C)
    causal = torch.ones(T, T, dtype=torch.bool).tril()  # token t sees tokens 0..t
    for i in range(n_layers):
        p = f"model.layers.{i}."
        h = rms_norm(x, W[p + "input_layernorm.weight"])
        q = (h @ W[p + "self_attn.q_proj.weight"].T).view(T, nh, hs)
        k = (h @ W[p + "self_attn.k_proj.weight"].T).view(T, nkv, hs)
        v = (h @ W[p + "self_attn.v_proj.weight"].T).view(T, nkv, hs)
        q, k = rope(q, pos), rope(k, pos)
        k, v = k.repeat_interleave(nh // nkv, dim=1), v.repeat_interleave(nh // nkv, dim=1)  # (T, nh, hs)
        scores = torch.einsum("thd,shd->hts", q, k) / hs ** 0.5  # (nh, T, T)
        attn = scores.masked_fill(~causal, float("-inf")).softmax(-1)
        y = torch.einsum("hts,shd->thd", attn, v).reshape(T, nh * hs)
        x = x + y @ W[p + "self_attn.o_proj.weight"].T
        h = rms_norm(x, W[p + "post_attention_layernorm.weight"])
        gate, up = h @ W[p + "mlp.gate_proj.weight"].T, h @ W[p + "mlp.up_proj.weight"].T
        x = x + (torch.nn.functional.silu(gate) * up) @ W[p + "mlp.down_proj.weight"].T
    return rms_norm(x, W["model.norm.weight"]) @ W_out.T  # (T, V)


# %% [markdown]
# ### What each token may attend to
#
# `causal` above lets token t read tokens 0..t. A preference batch adds padding and, in minorpo's shared-prompt
# layout (batches.py), a block structure: one row holds prompt, chosen and rejected response, and the rejected
# response must not see the chosen one. Below are the masks the model actually receives (llama.prepare_attention
# for padded rows, collate_shared_prompt's block mask) for a pair with a 3-token prompt, a 3-token chosen and a
# 2-token rejected response. Exercise 7 asks you to build the shared one.

# %%
from minorpo.batches import collate_padded, collate_shared_prompt
from minorpo.data import TokenizedPair
from minorpo.models.llama import prepare_attention
from minorpo.tools.plot import pyplot, save_figure, tutorial_folder

plt = pyplot()
pair = TokenizedPair([1, 2, 3], [4, 5, 6], [7, 8])
padded, shared = collate_padded([pair], 0), collate_shared_prompt([pair], 0)
masks = {}
for side in ("chosen", "rejected"):
    ids, att = padded[f"{side}_input_ids"], padded[f"{side}_attention_mask"]
    masks[side] = prepare_attention(ids, att, None, None)[1][None][0, 0]  # (T, T) bool, what SDPA gets
masks["shared"] = shared["attention_mask"][0]
assert not masks["shared"][6:8, 3:6].any()  # rejected queries never see chosen keys
labels = {"chosen": ["p0", "p1", "p2", "c0", "c1", "c2"], "rejected": ["p0", "p1", "p2", "r0", "r1", "pad"],
          "shared": ["p0", "p1", "p2", "c0", "c1", "c2", "r0", "r1"]}
titles = {"chosen": "padded: chosen row", "rejected": "padded: rejected row", "shared": "shared prompt: one row"}
fig, axes = plt.subplots(1, 3, figsize=(7.8, 3.2), gridspec_kw={"width_ratios": [6, 6, 8]})
for ax, side in zip(axes, ("chosen", "rejected", "shared")):
    ax.imshow(masks[side].numpy(), cmap="Greys_r", vmin=0, vmax=1)
    ticks = range(len(labels[side]))
    ax.set_xticks(ticks, labels[side], fontsize=7)
    ax.set_yticks(ticks, labels[side], fontsize=7)
    ax.set_xticks([i - 0.5 for i in ticks], minor=True)
    ax.set_yticks([i - 0.5 for i in ticks], minor=True)
    ax.grid(which="minor", color="tab:gray", lw=0.5)
    ax.tick_params(which="minor", length=0)
    ax.set_title(titles[side], fontsize=10)
    ax.set_xlabel("key (token attended to)", fontsize=9)
axes[0].set_ylabel("query (token attending)", fontsize=9)
fig.suptitle("Attention masks of one preference pair (white = may attend)", fontsize=11)
fig.tight_layout()
save_figure(fig, tutorial_folder("03_inside_a_decoder"), "attention_masks.png")


# %% [markdown]
# ## 3. minorpo's model, loaded from the same folder, must agree
#
# The loader checks every tensor name and shape (a missing or unexpected tensor is an error naming it). We load
# in float64, but minorpo, like transformers, always computes RMSNorm in float32 (`x.float()`), which for a
# float64 model is a rounding to float32 (relative error 2^-24 = 6e-8) at each of the 2L+1 norms, carried
# through the layers that follow. So the logits agree to about 1e-7 on the tiny model and 2e-5 on SmolLM2's 30
# layers, not 1e-15: the tolerance is 1e-5 of the largest logit. A wrong weight, a missing RoPE rotation or a norm
# in the wrong place changes the logits at the 1e-1 level.

# %%
model, tokenizer = load(folder, dtype=torch.float64) if real else (load_model(folder, dtype=torch.float64), None)
if tokenizer is not None:
    ids = torch.tensor(tokenizer.encode("The capital of France is"))
else:
    ids = torch.tensor([5, 17, 3, 42, 8, 99, 23])
with torch.no_grad():
    ours = model(ids[None])[0]  # (T, V)
hand = forward_by_hand(ids)
diff = (ours - hand).abs().max().item()
print(f"max |minorpo - by hand| over {hand.numel()} logits: {diff:.2e} (logits up to {hand.abs().max():.1f})")
tol = 1e-5 * hand.abs().max().item()
assert diff < tol, f"{diff} > {tol}"

# %% [markdown]
# ## 4. What the logits mean
#
# Position t's logits, through a softmax, are the model's distribution over the token *after* position t.
# The log-probability of the sequence's own next tokens is what ORPO's Eq. 3 averages.

# %%
logp = torch.log_softmax(hand, dim=-1)  # (T, V)
next_token_logp = logp[:-1].gather(-1, ids[1:, None])[:, 0]  # (T-1,) log P(token t+1 | tokens <= t)
print("log P(next token):", [round(v, 3) for v in next_token_logp.tolist()])
print(f"mean (Eq. 3 over these tokens): {next_token_logp.mean().item():.3f}")
assert (next_token_logp < 0).all()
if tokenizer is not None:  # a real model should continue the sentence sensibly
    from minorpo.tools.generate import generate
    out = generate(model.float(), ids[None], max_new_tokens=5)
    print("greedy continuation:", repr(tokenizer.decode(out[0, len(ids):].tolist())))

# %% [markdown]
# ## 5. An independent oracle (optional): transformers
#
# If transformers is installed (it is a test-only dependency of minorpo), its own implementation of the same
# architecture must agree with both.

# %%
try:
    import transformers
except ImportError:
    transformers = None
    print("transformers not installed: skipping the third opinion")
if transformers is not None:
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float64).eval()
    with torch.no_grad():
        theirs = hf(ids[None]).logits[0]
    print(f"max |transformers - by hand|: {(theirs - hand).abs().max().item():.2e}")
    assert (theirs - hand).abs().max().item() < tol  # float32 RMSNorm there too (section 3)
    assert torch.allclose(theirs, ours, rtol=1e-10, atol=1e-10)  # same operations as minorpo, same roundings

# %% [markdown]
# ## 6. What Gemma 3 changes
#
# Gemma 3 (`minorpo/models/gemma3.py`, which lists each departure where it is applied) is the same decoder with:
#   * RMSNorm scaling by (1 + w) (the stored weights are offsets from 1), and four of them per block: the attention
#     and MLP outputs are normalized again before they are added to the residual stream;
#   * QK-norm: each query and key head goes through its own such norm before RoPE;
#   * softmax(q k^T / sqrt(query_pre_attn_scalar)) instead of / sqrt(hs);
#   * embeddings multiplied by sqrt(C); a GELU (tanh) gate instead of SiLU;
#   * sliding-window layers (a token sees only the last `sliding_window` positions) between global ones, each kind
#     with its own RoPE base.
# Below: a tiny random Gemma 3 (layer 0 sliding with window 3, layer 1 global), its forward pass by hand, and the
# check that minorpo agrees (same float32-norm tolerance as in section 3).

# %%
gemma_config = {"model_type": "gemma3_text", "vocab_size": 100, "hidden_size": 32, "intermediate_size": 64,
                "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 8,
                "query_pre_attn_scalar": 12, "sliding_window": 3, "max_position_embeddings": 64,
                "layer_types": ["sliding_attention", "full_attention"], "rope_theta": 10000.0,
                "rope_local_base_freq": 100.0, "rms_norm_eps": 1e-6}
gemma = build_model(ModelConfig.from_hf(gemma_config))
with torch.no_grad():  # norm offsets away from 0, so a (1 + w) forgotten would show
    for name, p in gemma.named_parameters():
        p.copy_(0.2 * torch.randn_like(p) if "norm" in name else 0.1 * torch.randn_like(p))
gemma_folder = Path(tempfile.mkdtemp()) / "tiny-gemma3"
save(gemma, None, gemma_folder)
G = {k: v.double() for k, v in load_file(str(gemma_folder / "model.safetensors")).items()}
gC, gnh, gnkv, ghs = 32, 4, 2, 8


def gemma_norm(x, w):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * (1 + w)


def rope_with_base(x, pos, base):  # as rope() above, for head size ghs and a given base
    inv_freq = 1.0 / base ** (torch.arange(0, ghs, 2, dtype=torch.float64) / ghs)
    angle = pos[:, None].double() * inv_freq
    cos, sin = angle.cos()[:, None], angle.sin()[:, None]
    x1, x2 = x[..., : ghs // 2], x[..., ghs // 2:]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


def gemma_by_hand(ids, use_window=True):
    T = len(ids)
    pos = torch.arange(T)
    x = G["model.embed_tokens.weight"][ids] * gC ** 0.5  # scaled embeddings
    for i, kind in enumerate(gemma_config["layer_types"]):
        p = f"model.layers.{i}."
        sliding = kind == "sliding_attention"
        allowed = pos[None, :] <= pos[:, None]  # causal
        if sliding and use_window:  # key fewer than 3 positions back
            allowed &= pos[:, None] - pos[None, :] < gemma_config["sliding_window"]
        base = gemma_config["rope_local_base_freq"] if sliding else gemma_config["rope_theta"]
        h = gemma_norm(x, G[p + "input_layernorm.weight"])
        q = gemma_norm((h @ G[p + "self_attn.q_proj.weight"].T).view(T, gnh, ghs), G[p + "self_attn.q_norm.weight"])
        k = gemma_norm((h @ G[p + "self_attn.k_proj.weight"].T).view(T, gnkv, ghs), G[p + "self_attn.k_norm.weight"])
        v = (h @ G[p + "self_attn.v_proj.weight"].T).view(T, gnkv, ghs)
        q, k = rope_with_base(q, pos, base), rope_with_base(k, pos, base)
        k, v = k.repeat_interleave(gnh // gnkv, dim=1), v.repeat_interleave(gnh // gnkv, dim=1)
        scores = torch.einsum("thd,shd->hts", q, k) / gemma_config["query_pre_attn_scalar"] ** 0.5
        y = torch.einsum("hts,shd->thd", scores.masked_fill(~allowed, float("-inf")).softmax(-1), v)
        x = x + gemma_norm(y.reshape(T, gnh * ghs) @ G[p + "self_attn.o_proj.weight"].T,
                           G[p + "post_attention_layernorm.weight"])
        h = gemma_norm(x, G[p + "pre_feedforward_layernorm.weight"])
        gate, up = h @ G[p + "mlp.gate_proj.weight"].T, h @ G[p + "mlp.up_proj.weight"].T
        mlp = (torch.nn.functional.gelu(gate, approximate="tanh") * up) @ G[p + "mlp.down_proj.weight"].T
        x = x + gemma_norm(mlp, G[p + "post_feedforward_layernorm.weight"])
    return gemma_norm(x, G["model.norm.weight"]) @ G["model.embed_tokens.weight"].T  # tied output head


gids = torch.tensor([5, 17, 3, 42, 8, 99, 23])
with torch.no_grad():
    gemma_ours = load_model(gemma_folder, dtype=torch.float64)(gids[None])[0]
gemma_hand = gemma_by_hand(gids)
gdiff = (gemma_ours - gemma_hand).abs().max().item()
gtol = 1e-5 * gemma_hand.abs().max().item()
print(f"Gemma 3: max |minorpo - by hand| {gdiff:.2e}")
assert gdiff < gtol, f"{gdiff} > {gtol}"
# the window matters: tokens 0-2 see at most 3 positions anyway, later ones lose their earliest keys
no_window = gemma_by_hand(gids, use_window=False)
assert (no_window[:3] - gemma_hand[:3]).abs().max() < gtol and (no_window[3:] - gemma_hand[3:]).abs().max() > 1e-3
print("tutorial 3: all checks passed")
