"""LoRA by hand: the properties torchtune and litgpt test, plus gradcheck.

Oracles: the base layer itself (init, disabled), the algebra W + (alpha/r) B A (merge), finite differences
(gradcheck, float64). Tests against PEFT and transformers are in tests/test_lora_peft.py.
"""

import pytest
import torch
import torch.nn as nn

from conftest import assert_close
from minorpo.lora import (LoRALinear, apply_lora, lora_disabled, lora_layers, lora_state_dict, merge_lora,
                          merged_state_dict, unmerge_lora)


class TwoLayer(nn.Module):
    """Stand-in with the attention projection names, so target resolution is exercised."""

    def __init__(self, d=8):
        super().__init__()
        self.q_proj = nn.Linear(d, d, bias=True)
        self.v_proj = nn.Linear(d, d, bias=False)
        self.mlp = nn.Linear(d, d)
        self.lm_head = nn.Linear(d, 5, bias=False)

    def forward(self, x):
        return self.lm_head(self.mlp(torch.tanh(self.q_proj(x)) + self.v_proj(x)))


def _adapted(seed=0, dtype=torch.float32, randomize_b=True):
    torch.manual_seed(seed)
    m = TwoLayer().to(dtype)
    apply_lora(m, r=4, alpha=8, targets="attention")
    if randomize_b:  # B starts at zero; give it values so merge/disable tests are not trivially true
        for _, layer in lora_layers(m):
            nn.init.normal_(layer.lora_B.weight, std=0.5)
    return m


def test_targets_and_trainable_parameters():
    m = _adapted()
    assert sorted(n for n, _ in lora_layers(m)) == ["q_proj", "v_proj"]
    trainable = sorted(n for n, p in m.named_parameters() if p.requires_grad)
    assert trainable == ["q_proj.lora_A.weight", "q_proj.lora_B.weight", "v_proj.lora_A.weight", "v_proj.lora_B.weight"]
    # the base weight keeps its key, so a plain checkpoint loads unchanged
    assert "q_proj.weight" in m.state_dict() and "q_proj.bias" in m.state_dict()
    all_linear = TwoLayer()
    assert sorted(n.split(".")[0] for n in apply_lora(all_linear, r=2, alpha=2, targets="all-linear")) == ["mlp", "q_proj", "v_proj"]
    with pytest.raises(ValueError, match="match no nn.Linear"):
        apply_lora(TwoLayer(), targets=["gate_proj"])


def test_output_unchanged_at_init():
    """B = 0 at init, so the adapted model is the base model exactly (bit-equal, not approximately)."""
    torch.manual_seed(0)
    base = TwoLayer()
    x = torch.randn(3, 8)
    want = base(x)
    apply_lora(base, r=4, alpha=8)
    assert torch.equal(base(x), want)


def test_disabled_equals_base_and_merged_equals_unmerged():
    m = _adapted()
    x = torch.randn(3, 8)
    base_sd = {k: v for k, v in m.state_dict().items() if "lora" not in k}
    plain = TwoLayer()
    plain.load_state_dict(base_sd)
    with lora_disabled(m):
        disabled_out = m(x)
    assert torch.equal(disabled_out, plain(x))  # same ops on the same weights: bit-equal
    adapted_out = m(x)
    assert not torch.allclose(adapted_out, disabled_out)  # the adapter does something
    merge_lora(m)
    # Merged vs unmerged differ only by float32 rounding of W + s*BA vs separate matmuls: values O(1),
    # 8-wide sums, so 1e-5 relative is ~100 ulps of headroom.
    assert_close(m(x), adapted_out, rtol=1e-5, atol=1e-6, what="merged vs unmerged")
    with lora_disabled(m):  # disabling a merged model subtracts the update back out
        assert_close(m(x), disabled_out, rtol=1e-5, atol=1e-6, what="merged+disabled vs base")
    w_once = m.q_proj.weight.clone()
    merge_lora(m)  # merging twice is a no-op
    assert torch.equal(m.q_proj.weight, w_once)
    unmerge_lora(m)
    unmerge_lora(m)  # and so is unmerging twice
    assert_close(m.q_proj.weight, base_sd["q_proj.weight"], rtol=1e-6, atol=1e-6, what="unmerge restores W")


def test_merged_state_dict_is_pure_and_loads_into_plain_model():
    m = _adapted()
    x = torch.randn(2, 8)
    want = m(x)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    sd = merged_state_dict(m)
    assert all("lora" not in k for k in sd)
    for k, v in m.state_dict().items():  # the model is not changed
        assert torch.equal(v, before[k]), k
    plain = TwoLayer()
    plain.load_state_dict(sd)  # strict: exactly the base keys
    assert_close(plain(x), want, rtol=1e-5, atol=1e-6, what="merged export vs adapted model")


def test_frozen_weight_unchanged_after_optimizer_step():
    m = _adapted()
    frozen = {k: v.clone() for k, v in m.state_dict().items() if "lora" not in k}
    a_before = m.q_proj.lora_A.weight.clone()
    opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.1)
    m(torch.randn(4, 8)).pow(2).sum().backward()
    opt.step()
    for k, v in m.state_dict().items():
        if "lora" not in k:
            assert torch.equal(v, frozen[k]), f"frozen {k} changed"
    assert not torch.equal(m.q_proj.lora_A.weight, a_before)
    assert m.q_proj.weight.grad is None


def test_gradcheck_through_lora_layer():
    """The module computes W x + b + (alpha/r) B A x, and its analytic gradients w.r.t. the input, A and B
    match central finite differences (torch.autograd.gradcheck, float64, its default eps=1e-6/atol=1e-5)."""
    torch.manual_seed(0)
    layer = LoRALinear(nn.Linear(5, 3).double(), r=2, alpha=4).double()
    a = torch.randn(2, 5, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, 2, dtype=torch.float64, requires_grad=True)  # non-zero B, or dL/dA would be 0
    x = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)

    def f(x, a, b):
        return torch.func.functional_call(layer, {"lora_A.weight": a, "lora_B.weight": b}, (x,))

    formula = torch.nn.functional.linear(x, layer.weight, layer.bias) + (4 / 2) * (x @ a.T) @ b.T
    assert_close(f(x, a, b), formula, rtol=1e-12, atol=1e-12, what="module vs formula")
    assert torch.autograd.gradcheck(f, (x, a, b))


def test_lora_state_dict_has_only_adapter_keys():
    m = _adapted()
    assert sorted(lora_state_dict(m)) == ["q_proj.lora_A.weight", "q_proj.lora_B.weight",
                                          "v_proj.lora_A.weight", "v_proj.lora_B.weight"]


def test_bad_peft_adapter_folder_is_a_user_error_naming_the_file(tmp_path):
    """minorpo/hf/peft.py's load_peft_adapter: a missing file, an adapter minorpo cannot apply, or a tensor that
    does not fit is a UserError (one line from the CLI) naming the file."""
    import json

    from minorpo.errors import MissingFileError, UserError
    from minorpo.hf.peft import load_peft_adapter, save_peft_adapter
    with pytest.raises(MissingFileError, match=r"nothing/adapter_config\.json not found"):
        load_peft_adapter(TwoLayer(), tmp_path / "nothing")
    folder = save_peft_adapter(_adapted(), tmp_path / "adapter")
    config = json.loads((folder / "adapter_config.json").read_text())
    for change, words in [({"peft_type": "IA3"}, "peft_type 'IA3' is not LORA"),
                          ({"use_dora": True}, "DoRA"), ({"r": 2}, "has shape")]:
        (folder / "adapter_config.json").write_text(json.dumps({**config, **change}))
        where = "adapter_model.safetensors" if change.get("r") else "adapter_config.json"
        with pytest.raises(UserError, match=rf"adapter/{where}: .*{words}"):
            load_peft_adapter(TwoLayer(), folder)
    (folder / "adapter_config.json").write_text(json.dumps({**config, "target_modules": ["q_proj"]}))
    with pytest.raises(UserError, match=r"adapter_model\.safetensors: tensor 'base_model\.model\.v_proj"):
        load_peft_adapter(TwoLayer(), folder)
