# %% [markdown]
# # Tutorial 4 — LoRA by hand
#
# LoRA (Hu et al. 2021) freezes a weight matrix W (out x in) and learns a low-rank correction:
#
#     y = x W^T + b + (alpha / r) * x A^T B^T          A: (r x in), B: (out x r), r << min(in, out)
#
# Only A and B are trained: r * (in + out) numbers instead of in * out. B starts at zero, so training starts
# from exactly the base model. minorpo's `LoRALinear` keeps the base weight under its original name, so a
# checkpoint loads unchanged. We check each of these statements, then use LoRA on a small model.
#
# Run it: `python tutorials/04_lora_by_hand.py` (a few seconds).

# %%
import tempfile

import torch
import torch.nn as nn

from minorpo.hf.config import ModelConfig
from minorpo.hf.peft import load_peft_adapter, save_peft_adapter
from minorpo.lora import LoRALinear, apply_lora, lora_disabled, lora_layers, merged_state_dict
from minorpo.models import build_model
from minorpo.tools.plot import pyplot, save_figure, tutorial_folder

torch.manual_seed(0)
plt = pyplot()
out = tutorial_folder("04_lora_by_hand")  # figures: $MINORPO_TUTORIAL_OUT/04_lora_by_hand, or a temp folder
torch.set_num_threads(1)  # tiny tensors: threads would only add overhead

# %% [markdown]
# ## 1. One layer

# %%
base = nn.Linear(8, 6)
W0, b0 = base.weight.detach().clone(), base.bias.detach().clone()
layer = LoRALinear(base, r=2, alpha=4.0)
print(layer)
print("A", tuple(layer.lora_A.weight.shape), "B", tuple(layer.lora_B.weight.shape), "scale alpha/r =", layer.scale)
x = torch.randn(5, 8)
assert torch.equal(layer(x), base(x))  # B = 0: exactly the base layer at the start
assert [n for n, p in layer.named_parameters() if p.requires_grad] == ["lora_A.weight", "lora_B.weight"]

# %% [markdown]
# Give B some values and compute the output by hand.

# %%
with torch.no_grad():
    layer.lora_B.weight.normal_()
A, B = layer.lora_A.weight, layer.lora_B.weight
by_hand = x @ W0.T + b0 + layer.scale * (x @ A.T @ B.T)
print("max |layer(x) - by hand| =", (layer(x) - by_hand).abs().max().item())
assert torch.allclose(layer(x), by_hand, rtol=1e-5, atol=1e-6)  # float32, different summation order

# %% [markdown]
# ## 2. Training moves A and B only
#
# Fit the layer to a target whose weight differs from W0 by a rank-2 matrix: LoRA with r = 2 can represent it
# exactly, so the loss should fall to (nearly) zero while W0 never changes.

# %%
delta_true = torch.randn(6, 2) @ torch.randn(2, 8) * 0.5  # rank 2
X = torch.randn(256, 8)
Y = X @ (W0 + delta_true).T + b0
with torch.no_grad():
    layer.lora_B.weight.zero_()  # start again from the base model
opt = torch.optim.Adam([layer.lora_A.weight, layer.lora_B.weight], lr=0.05)
first, losses = None, []
for step in range(300):
    loss = ((layer(X) - Y) ** 2).mean()
    first = first if first is not None else loss.item()
    losses.append(loss.item())
    opt.zero_grad()
    loss.backward()
    opt.step()
print(f"mean squared error: {first:.4f} at the start, {loss.item():.2e} after 300 Adam steps")
assert loss.item() < 1e-3 * first  # a rank-2 update can fit a rank-2 change
assert torch.equal(layer.weight, W0)  # the frozen weight is untouched
print("learned update vs true: max |(alpha/r) B A - delta| =", (layer.delta_weight() - delta_true).abs().max().item())
assert torch.allclose(layer.delta_weight(), delta_true, atol=1e-2)  # the residual MSE bounds the error (~1e-3 here)

# %% [markdown]
# What was learned, as a picture: the training curve, the true rank-2 change of the weight, LoRA's update
# (alpha/r) B A, and the singular values of both: two nonzero ones, the rest at rounding level (a rank-2 update).

# %%
fig, axes = plt.subplots(2, 2, figsize=(7.5, 6.2), layout="constrained")
axes[0, 0].semilogy(losses, color="black")
axes[0, 0].set(xlabel="Adam step", ylabel="mean squared error (log scale)", title="fitting a rank-2 change, r = 2")
axes[0, 0].grid(alpha=0.3, which="both")
scale = delta_true.abs().max().item()
learned = layer.delta_weight().detach()
for ax, matrix, title in ((axes[0, 1], delta_true, "true change ΔW (6 x 8)"),
                          (axes[1, 0], learned, "learned update (α/r) B A")):
    image = ax.imshow(matrix.numpy(), cmap="RdBu_r", vmin=-scale, vmax=scale)
    ax.set(title=title, xlabel="input feature (column of W)", ylabel="output feature (row of W)")
    fig.colorbar(image, ax=ax, fraction=0.05, label="weight change")
sv_true, sv_learned = torch.linalg.svdvals(delta_true.double()), torch.linalg.svdvals(learned.double())
k = torch.arange(1, len(sv_true) + 1)
axes[1, 1].bar(k - 0.2, sv_true, width=0.4, label="true ΔW")
axes[1, 1].bar(k + 0.2, sv_learned, width=0.4, label="(α/r) B A")
axes[1, 1].set_yscale("log")
axes[1, 1].set(xlabel="singular value index", ylabel="singular value (log scale)", title="both have rank 2")
axes[1, 1].legend(fontsize=8)
assert (sv_learned[2:] < 1e-5 * sv_learned[0]).all()  # rank 2: float32 rounding only beyond the second
fig.suptitle("LoRA learns W0 + (α/r) B A while W0 stays frozen", fontsize=11)
save_figure(fig, out, "lora_update.png")

# %% [markdown]
# ## 3. Merge, unmerge, disable
#
# merge() folds the update into the weight (W0 + (alpha/r) B A), so inference costs nothing extra; unmerge()
# takes it out again; `disabled` returns the base model without any copy — which is exactly the reference model
# DPO needs, and the reason ORPO's "no reference model" saves little memory when training with LoRA.

# %%
y_adapted = layer(x)
layer.merge()
assert torch.allclose(layer.weight, W0 + layer.delta_weight(), rtol=0, atol=1e-7)
assert torch.allclose(layer(x), y_adapted, rtol=1e-5, atol=1e-6)  # same function, float32 rounding
layer.merge()  # merging twice is a no-op
assert torch.allclose(layer(x), y_adapted, rtol=1e-5, atol=1e-6)
layer.disabled = True
assert torch.allclose(layer(x), x @ W0.T + b0, rtol=1e-5, atol=1e-6)  # the base layer (merged: W - (alpha/r)BA)
layer.disabled = False
layer.unmerge()
assert torch.allclose(layer.weight, W0, rtol=0, atol=1e-6)  # W0 + D - D: float32 rounding of the sum, not bitwise
print("merge / unmerge / disable: ok")

# %% [markdown]
# ## 4. LoRA on a whole model
#
# `apply_lora` replaces the chosen linear layers ("attention": q, k, v, o; "all-linear": every linear but the
# output head) and freezes everything else. Count the trainable parameters, and compare with the arithmetic
# for SmolLM2-135M's attention (hidden 576, 9 heads of 64, 3 key/value heads): q_proj is 576 x 576 = 331,776
# weights; its r = 16 adapter has 16 * (576 + 576) = 18,432, i.e. 5.6%.

# %%
config = ModelConfig(model_type="llama", vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=64)
model = build_model(config).eval()
ids = torch.randint(0, 64, (2, 10))
with torch.no_grad():
    logits_base = model(ids)
names = apply_lora(model, r=4, alpha=8.0, targets="attention")
trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
# by hand, per layer: q (32x32): 4*(32+32) = 256; k, v (16x32): 4*(32+16) = 192 each; o (32x32): 256 -> 896
print(f"adapted: {names}\ntrainable parameters: {trainable} (by hand 2 layers x 896 = 1792)")
assert trainable == 2 * 896
assert 16 * (576 + 576) / (576 * 576) < 0.06

# %% [markdown]
# After some training (here: random B), the adapted model differs from the base; with the adapters disabled it
# *is* the base; and `merged_state_dict` gives plain weights that a model without LoRA loads and runs identically.

# %%
for _, m in lora_layers(model):
    with torch.no_grad():
        m.lora_B.weight.normal_(0, 0.1)
with torch.no_grad():
    logits_adapted = model(ids)
    with lora_disabled(model):
        logits_disabled = model(ids)
assert not torch.allclose(logits_adapted, logits_base, atol=1e-3)
assert torch.allclose(logits_disabled, logits_base, rtol=0, atol=1e-6)  # same weights, same ops
plain = build_model(config).eval()
plain.load_state_dict(merged_state_dict(model))
with torch.no_grad():
    logits_merged = plain(ids)
print("max |merged plain model - adapted model| =", (logits_merged - logits_adapted).abs().max().item())
assert torch.allclose(logits_merged, logits_adapted, rtol=1e-5, atol=1e-5)  # W + BA vs xW + xBA: float32 order

# %% [markdown]
# ## 5. Sharing an adapter
#
# `save_peft_adapter` writes the two files PEFT reads (adapter_config.json, adapter_model.safetensors, keys
# `base_model.model.<module>.lora_A.weight`), and `load_peft_adapter` applies one to a fresh base model.

# %%
folder = tempfile.mkdtemp()
save_peft_adapter(model, folder, base_model_name_or_path="tiny")
base_again = build_model(config).eval()
# the LoRA model's state dict keeps the base weights under their original names (the adapters unmerged)
base_again.load_state_dict({k: v for k, v in model.state_dict().items() if ".lora_" not in k})
load_peft_adapter(base_again, folder)
with torch.no_grad():
    assert torch.allclose(base_again(ids), logits_adapted, rtol=0, atol=1e-6)  # same weights, same ops
print(f"adapter saved to {folder} and re-applied: identical logits")
print("tutorial 4: all checks passed")
