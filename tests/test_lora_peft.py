"""minorpo's LoRA against PEFT and transformers (test-only oracles): the adapter and merged exports load there.

For each architecture (a Llama, a Qwen2 with q/k/v biases, an OPT with q/k/v/out_proj), a tiny random
transformers model is saved with save_pretrained and loaded into minorpo; LoRA is applied and B is drawn at
random (B = 0 at init would make every comparison trivially the base model: each test first checks that the
adapter moves the logits by far more than the tolerance). Then:
  1. save_peft_adapter -> peft.PeftModel.from_pretrained(transformers base) gives minorpo's logits;
  2. save_peft_adapter -> load_peft_adapter on a fresh minorpo model gives the same tensors and logits (bit-equal);
  3. an adapter made by PEFT itself (get_peft_model, random B, save_pretrained) -> load_peft_adapter gives PEFT's
     logits;
  4. the merged export (loader.save with lora.merged_state_dict) -> transformers from_pretrained gives minorpo's
     logits.
Tolerance (fp32): rtol = atol = 1e-5, as tests/test_model.py: both sides run float32 ops on the same weights, in
possibly different orders/kernels (and merged W + s*BA vs separate matmuls), over 2 layers with logits of size
~1: float32 rounding accumulates to ~1e-6, and the adapter's effect is checked to be > 1e-2, 1000x larger.
"""

import pytest
import torch
import torch.nn as nn

from conftest import assert_close
from minorpo.hf.loader import load, save
from minorpo.hf.peft import load_peft_adapter, save_peft_adapter
from minorpo.lora import apply_lora, lora_disabled, lora_layers, lora_state_dict, merged_state_dict
from tiny_models import saved
from tiny_tokenizers import word_tokenizer

peft = pytest.importorskip("peft", reason="peft not installed (test-only oracle)")
transformers = pytest.importorskip("transformers")

TOL = dict(rtol=1e-5, atol=1e-5)  # float32 rounding only; see the module docstring
ARCHS = ["llama-tied", "qwen2", "qwen3", "gemma3", "opt"]
# PEFT's and minorpo's names for "the attention projections" of each architecture
ATTENTION = {"llama-tied": ["q_proj", "k_proj", "v_proj", "o_proj"], "qwen2": ["q_proj", "k_proj", "v_proj", "o_proj"],
             "qwen3": ["q_proj", "k_proj", "v_proj", "o_proj"], "gemma3": ["q_proj", "k_proj", "v_proj", "o_proj"],
             "opt": ["q_proj", "k_proj", "v_proj", "out_proj"]}
IDS = torch.randint(0, 43, (2, 13), generator=torch.Generator().manual_seed(0))  # the word tokenizer's 43 ids


@pytest.fixture(scope="module", params=ARCHS)
def arch_folder(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(request.param)
    saved(request.param, folder)
    word_tokenizer(folder)
    return request.param, folder


def hf_base(folder):
    return transformers.AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32,
                                                             attn_implementation="sdpa").eval()


def randomize_b(pairs, seed=1, std=0.2):
    """Give every lora_B (out x r) random values; pairs = [(name, lora_B weight Parameter)] in a fixed order."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, w in pairs:
            w.copy_(std * torch.randn(w.shape, generator=g))


def adapted_minorpo(folder, targets="attention", seed=0):
    model, tok = load(folder)
    torch.manual_seed(seed)
    apply_lora(model, r=4, alpha=8, targets=targets)
    randomize_b([(n, m.lora_B.weight) for n, m in lora_layers(model)])
    return model, tok


def logits(model, ids=IDS):
    with torch.no_grad():
        out = model(ids)
    return (out.logits if hasattr(out, "logits") else out).float()


def assert_adapter_matters(model):
    """The adapter must move the logits by far more than TOL, or the comparisons below prove nothing."""
    with lora_disabled(model):
        base = logits(model)
    assert (logits(model) - base).abs().max().item() > 1e-2


@pytest.mark.parametrize("targets", ["attention", "all-linear"])
def test_exported_adapter_loads_in_peft_with_same_logits(arch_folder, tmp_path, targets):
    arch, folder = arch_folder
    model, _ = adapted_minorpo(folder, targets)
    assert_adapter_matters(model)
    save_peft_adapter(model, tmp_path / "adapter", base_model_name_or_path=str(folder))
    pm = peft.PeftModel.from_pretrained(hf_base(folder), str(tmp_path / "adapter")).eval()
    # every adapter tensor landed where minorpo had it (PEFT only warns about keys it cannot place)
    theirs = {k.removeprefix("base_model.model.").replace(".default", ""): v
              for k, v in pm.state_dict().items() if ".lora_" in k}
    ours = lora_state_dict(model)
    assert theirs.keys() == ours.keys()
    for k, v in ours.items():
        assert torch.equal(theirs[k], v), k
    if targets == "attention":
        assert sorted({k.split(".")[-3] for k in ours}) == sorted(ATTENTION[arch])
    assert_close(logits(pm), logits(model), **TOL, what=f"{arch} PEFT-loaded adapter vs minorpo")


def test_adapter_round_trip_through_load_peft_adapter(arch_folder, tmp_path):
    """save -> load into a fresh minorpo model: the same tensors, the same config, and bit-equal logits (the same
    ops on the same weights on one machine)."""
    _, folder = arch_folder
    model, _ = adapted_minorpo(folder)
    save_peft_adapter(model, tmp_path / "adapter")
    fresh, _ = load(folder)
    names = load_peft_adapter(fresh, tmp_path / "adapter")
    assert names == sorted(lora_state_dict(model))
    assert fresh.lora_config == model.lora_config
    for k, v in lora_state_dict(model).items():
        assert torch.equal(lora_state_dict(fresh)[k], v), k
    assert torch.equal(logits(fresh), logits(model))


def test_peft_created_adapter_loads_into_minorpo(arch_folder, tmp_path):
    """An adapter PEFT wrote itself (its config, its key names) gives PEFT's logits in minorpo."""
    arch, folder = arch_folder
    torch.manual_seed(0)
    config = peft.LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=ATTENTION[arch], task_type="CAUSAL_LM")
    pm = peft.get_peft_model(hf_base(folder), config).eval()
    randomize_b([(n, p) for n, p in pm.named_parameters() if "lora_B" in n], seed=2)
    pm.save_pretrained(str(tmp_path / "peft"))
    want = logits(pm)
    with pm.disable_adapter():
        assert (logits(pm) - want).abs().max().item() > 1e-2  # the adapter matters
    model, _ = load(folder)
    names = load_peft_adapter(model, tmp_path / "peft")
    assert len(names) == 2 * model.config.num_hidden_layers * len(ATTENTION[arch])  # A and B, every layer and target
    assert model.lora_config["r"] == 4 and model.lora_config["alpha"] == 8
    assert_close(logits(model), want, **TOL, what=f"{arch} minorpo with PEFT's adapter vs PEFT")


def test_merged_export_loads_in_transformers(arch_folder, tmp_path):
    """loader.save(model, tok, dir, state_dict=merged_state_dict(model)): a plain checkpoint (no lora keys) that
    transformers loads, with the adapted model's logits."""
    arch, folder = arch_folder
    model, tok = adapted_minorpo(folder)
    assert_adapter_matters(model)
    save(model, tok, tmp_path / "merged", state_dict=merged_state_dict(model))
    hf = hf_base(tmp_path / "merged")
    assert_close(logits(hf), logits(model), **TOL, what=f"{arch} merged export in transformers vs minorpo LoRA")
    # and it is the merge, not the base model, that transformers loaded
    with lora_disabled(model):
        assert (logits(hf) - logits(model)).abs().max().item() > 1e-2


def test_peft_merge_and_unload_equals_minorpo_merged_state_dict(arch_folder, tmp_path):
    """PEFT's own merge of minorpo's exported adapter gives the same weights as merged_state_dict (oracle: PEFT's
    merge_and_unload). float32: W + s*(B@A) in both; 1e-6 absolute covers a different matmul order on O(0.1)
    weights."""
    _, folder = arch_folder
    model, _ = adapted_minorpo(folder)
    save_peft_adapter(model, tmp_path / "adapter")
    merged_hf = peft.PeftModel.from_pretrained(hf_base(folder), str(tmp_path / "adapter")).merge_and_unload()
    theirs = merged_hf.state_dict()
    ours = merged_state_dict(model)
    assert not any(isinstance(m, nn.Module) and "lora" in n for n, m in merged_hf.named_modules())
    for k, v in ours.items():
        assert_close(v, theirs[k], rtol=1e-6, atol=1e-6, what=k)
