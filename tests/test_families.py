"""Qwen3 and Gemma 3 beyond what test_model.py / test_generate.py / test_lora_peft.py / test_loader.py already check
for every tiny architecture (logits, padding, bf16, gradients, checkpointing, greedy generation past the sliding
window with the KV cache, PEFT adapters, merged and plain exports read by transformers):

  * config.json dialects: Gemma 3's transformers-4.5x fields (rope_theta / rope_local_base_freq / rope_scaling,
    sliding_window_pattern) and 5.x fields (layer_types, per-layer-type rope_parameters) give one model, the
    same layer types and RoPE settings transformers' Gemma3TextConfig derives (oracle);
  * unsupported relatives (multimodal Gemma 3, Qwen3-MoE, attention soft-capping, bidirectional attention) are
    refused with a UserError naming the field;
  * float64 logits vs transformers in float64;
  * per-token log-probs in the padded and shared-prompt layouts equal each other and transformers' log_softmax
    of its logits, with Gemma's final soft-cap applied inside the chunked head (logprobs.py);
  * the chunked head's soft-cap gradient against finite differences (gradcheck, float64).
"""

from types import SimpleNamespace

import pytest
import torch

from conftest import assert_close
from tiny_models import ARCHS, saved

from minorpo.batches import collate_padded, collate_shared_prompt
from minorpo.hf.config import ModelConfig
from minorpo.errors import UserError
from minorpo.forward import ForwardSpec, pair_logps
from minorpo.hf.loader import CheckpointError, load_model
from minorpo.logprobs import ChunkedTokenLogps, sequence_logps, softcap, token_logps, token_logps_reference

transformers = pytest.importorskip("transformers")

FAMILIES = ["qwen3", "gemma3", "gemma3-softcap-untied"]
TOL = dict(rtol=1e-5, atol=1e-5)  # float32 rounding of the same operations (see test_model.py)


def hf_config_dict(arch, **overrides):
    cls_name, kwargs = ARCHS[arch]
    return getattr(transformers, cls_name)(**{**kwargs, **overrides}).to_dict()


# ---------------------------------------------------------------------------------------------- config.json

def test_gemma3_config_dialects_agree_with_transformers():
    """The 4.5x form (what the Gemma fixture and the hub's config.json carry) and the 5.x form (what
    save_pretrained writes here) give the same ModelConfig; its layer types and per-kind RoPE are those
    transformers derives from the 4.5x form; to_hf() is read back by transformers to the same rope_parameters."""
    new = hf_config_dict("gemma3", layer_types=None, sliding_window_pattern=3)  # 5.x: layer_types, rope_parameters
    assert "rope_parameters" in new and new["layer_types"] == ["sliding_attention", "sliding_attention",
                                                                "full_attention"]
    old = {k: v for k, v in new.items() if k not in ("rope_parameters", "layer_types", "_sliding_window_pattern")}
    old.update(rope_theta=10000.0, rope_local_base_freq=100.0, rope_scaling={"rope_type": "linear", "factor": 4.0},
               sliding_window_pattern=3)
    a, b = ModelConfig.from_hf(new), ModelConfig.from_hf(old)
    assert a == b
    assert a.layer_types == transformers.Gemma3TextConfig(**old).layer_types
    assert [a.layer_window(i) for i in range(3)] == [4, 4, None]
    assert (a.rope_theta, a.rope_local_theta, a.rope_scaling) == (10000.0, 100.0, {"rope_type": "linear", "factor": 4.0})
    back = transformers.Gemma3TextConfig(**{k: v for k, v in a.to_hf().items() if k != "architectures"})
    assert back.rope_parameters == transformers.Gemma3TextConfig(**old).rope_parameters
    assert back.layer_types == a.layer_types and back.query_pre_attn_scalar == 20


def test_qwen3_config():
    """Qwen3: QK-norm on, no biases by default (attention_bias=True puts them on q, k, v and o), explicit head_dim,
    layer 1 sliding (max_window_layers=1) as transformers says."""
    c = ModelConfig.from_hf(hf_config_dict("qwen3"))
    assert c.qk_norm and not c.attention_bias and not c.attention_out_bias and c.head_dim == 32
    assert [c.layer_window(i) for i in range(2)] == [None, 8] == [
        8 if t == "sliding_attention" else None for t in transformers.Qwen3Config(**ARCHS["qwen3"][1]).layer_types]
    biased = ModelConfig.from_hf(hf_config_dict("qwen3", attention_bias=True))
    assert biased.attention_bias and biased.attention_out_bias


@pytest.mark.parametrize("edit,field", [
    (dict(model_type="gemma3", vision_config={"model_type": "siglip_vision_model"}), "vision_config"),
    (dict(model_type="qwen3_moe", num_experts=8), "num_experts"),
    (dict(attn_logit_softcapping=50.0), "attn_logit_softcapping"),
    (dict(use_bidirectional_attention=True), "use_bidirectional_attention"),
    (dict(rope_parameters={"sliding_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1e4},
                           "full_attention": {"rope_type": "default", "rope_theta": 1e6}}), "sliding_attention"),
    (dict(layer_types=["sliding_attention", "chunked_attention", "full_attention"]), "layer_types"),
], ids=["gemma3-multimodal", "qwen3-moe", "attn-softcap", "bidirectional", "local-rope-scaling", "layer-types"])
def test_unsupported_variants_are_user_errors(tmp_path, edit, field):
    """Each is refused while reading config.json, as a UserError (one line from the CLI, exit 2) that names the
    field and the file."""
    import json
    _, folder = saved("gemma3", tmp_path / "m")
    d = json.loads((folder / "config.json").read_text())
    d.update(edit)
    (folder / "config.json").write_text(json.dumps(d))
    with pytest.raises(CheckpointError, match=field) as e:
        load_model(folder)
    assert isinstance(e.value, UserError) and "config.json" in str(e.value)


# ---------------------------------------------------------------------------------------------- forward

@pytest.mark.parametrize("arch", FAMILIES)
def test_float64_logits_match_transformers(tmp_path, arch):
    """Both loaded in float64. Not 1e-12: both sides normalize in float32 (transformers' RMSNorms call x.float(),
    which in a float64 model rounds to float32, and minorpo does the same), so the logits carry float32 rounding
    ~1e-7 that the two can accumulate differently across 2-3 blocks; 1e-6 is an order of magnitude above that and
    far below what a wrong norm, scale, RoPE base or window does (>1e-2)."""
    hf_f32, folder = saved(arch, tmp_path / arch)
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float64,
                                                           attn_implementation="sdpa").eval()
    ours = load_model(folder, dtype=torch.float64)
    ids = torch.randint(0, 256, (2, 15), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        want = hf(ids).logits
        got = ours(ids)
    assert got.dtype == torch.float64
    assert_close(got, want, rtol=1e-6, atol=1e-6, what=f"{arch} float64 logits")


def random_pairs(seed=0):
    """Three pairs of unequal lengths: rows of 13-25 tokens, longer than every sliding window (4 and 8)."""
    g = torch.Generator().manual_seed(seed)

    def ids(n):
        return torch.randint(1, 256, (n,), generator=g).tolist()
    return [SimpleNamespace(prompt_ids=ids(p), chosen_ids=ids(c), rejected_ids=ids(r), where=f"pair {i}")
            for i, (p, c, r) in enumerate([(7, 6, 5), (10, 8, 7), (4, 9, 6)])]


@pytest.mark.parametrize("arch", FAMILIES)
def test_layout_logps_equal_each_other_and_transformers(pair, arch):
    """log P(y|x) (Eq. 3: mean over response tokens) of chosen and rejected: the padded layout (chunked head, chunk
    of 5 so several chunks and a short last one) equals the shared-prompt layout (block mask, each sequence's own
    positions for RoPE and the sliding window) and transformers' log_softmax over its logits on each sequence
    alone (soft-capped by transformers' own forward where the config says so). float32: TOL."""
    hf, ours = pair(arch)
    pairs = random_pairs()
    padded, shared = collate_padded(pairs, 0), collate_shared_prompt(pairs, 0)
    with torch.no_grad():
        a = pair_logps(ours, padded, ForwardSpec(preset="paper", pad_id=0, chunk_size=5))
        b = pair_logps(ours, shared, ForwardSpec(preset="paper", pad_id=0, chunk_size=5, layout="shared"))
    for side in ("chosen", "rejected"):
        got_padded = sequence_logps(getattr(a, side), getattr(a, f"{side}_mask"))
        got_shared = sequence_logps(getattr(b, side), getattr(b, f"{side}_mask"))
        want = []
        for e in pairs:
            response = getattr(e, f"{side}_ids")
            seq = torch.tensor([e.prompt_ids + response])
            with torch.no_grad():
                logp = torch.log_softmax(hf(seq).logits[0, :-1].float(), -1)              # (n - 1, V)
            P = len(e.prompt_ids)
            want.append(logp[P - 1:].gather(-1, torch.tensor(response)[:, None]).mean())
        assert_close(got_padded, torch.stack(want), **TOL, what=f"{arch} {side} padded vs transformers")
        assert_close(got_shared, got_padded, **TOL, what=f"{arch} {side} shared vs padded")


def test_softcapped_chunked_head_gradcheck_and_reference():
    """ChunkedTokenLogps with cap 1.5 (logits of size ~3, so tanh is far from linear): values equal the unchunked
    reference on softcap(h W^T) to float64 rounding, and gradcheck (finite differences, float64) passes for hidden
    and weight with 3-position chunks over 7 positions (a short last chunk)."""
    g = torch.Generator().manual_seed(0)
    h = torch.randn(1, 7, 5, dtype=torch.float64, generator=g, requires_grad=True)
    w = (1.5 * torch.randn(11, 5, dtype=torch.float64, generator=g)).requires_grad_()
    targets = torch.randint(0, 11, (1, 7), generator=g)
    targets[0, 2] = -100
    got = token_logps(h, w, targets, chunk_size=3, softcap=1.5)
    want = token_logps_reference(softcap(h @ w.T, 1.5), targets)
    assert_close(got, want, rtol=1e-12, atol=1e-12, what="soft-capped chunked log-probs")
    assert (softcap(h @ w.T, 1.5) - h @ w.T).abs().max() > 1  # the cap really bends the logits
    stacked = targets.reshape(1, 7)
    assert torch.autograd.gradcheck(lambda a, b: ChunkedTokenLogps.apply(a, b, stacked, 3, 1.5), (h[0], w))


@pytest.mark.parametrize("arch,template,tokens", [
    ("gemma3", "gemma3.jinja", {"bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>"}),
    ("qwen3", "qwen3.jinja", {"bos_token": None, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"}),
])
def test_cli_generate_chat_equals_transformers(tmp_path, capsys, arch, template, tokens):
    """`minorpo generate --chat` on a tiny checkpoint with the family's own chat template (TRL's copy of the hub
    template; see test_family_templates.py) prints what transformers' generate gives from its own
    apply_chat_template ids, decoded by its own tokenizer (oracle end to end; 12 greedy tokens, past Gemma's
    window of 4 and Qwen3's of 8 once the prompt is counted)."""
    from pathlib import Path

    trl = pytest.importorskip("trl")
    from tiny_tokenizers import bpe_tokenizer

    from minorpo.tools.cli import main
    hf, folder = saved(arch, tmp_path / arch, vocab_size=320)
    bpe_tokenizer(folder, chat_template=(Path(trl.__file__).parent / "chat_templates" / template).read_text(),
                  config=tokens)
    tok = transformers.AutoTokenizer.from_pretrained(str(folder))
    messages = [{"role": "user", "content": "Tell me a story"}]
    ids = tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=False)
    want = hf.generate(ids, max_new_tokens=12, do_sample=False, eos_token_id=tok.eos_token_id,
                       pad_token_id=tok.pad_token_id)[0, ids.shape[1]:]
    assert len(want) == 12  # no early EOS: all 12 tokens are compared
    assert main(["generate", "--model", str(folder), "--prompt", messages[0]["content"], "--chat",
                 "--max-new-tokens", "12"]) == 0
    assert capsys.readouterr().out == tok.decode(want, skip_special_tokens=True) + "\n"


def test_conformance_scores_use_the_soft_cap(pair):
    """conventions.score_batch (what `minorpo conformance` measures) on the soft-capped Gemma: its log P(next
    token) equals transformers' log_softmax of its own (capped) logits, on rows that fill every position (so its
    0..T-1 position ids are transformers' default too). float32: TOL."""
    from minorpo.tools.conventions import score_batch
    hf, ours = pair("gemma3-softcap-untied")
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(1, 256, (2, 14), generator=g)
    labels = ids.clone()
    labels[:, :6] = -100
    ones = torch.ones_like(ids)
    batch = {"chosen_input_ids": ids[:1], "chosen_attention_mask": ones[:1], "chosen_labels": labels[:1],
             "rejected_input_ids": ids[1:], "rejected_attention_mask": ones[1:], "rejected_labels": labels[1:]}
    scores = score_batch(ours, batch, pad_id=0, official_pad_id=0, chunk_size=5)
    with torch.no_grad():
        logp = torch.log_softmax(hf(ids).logits.double(), -1)[:, :-1].gather(-1, ids[:, 1:, None])[..., 0]
    assert_close(scores.next[:, :-1], logp, **TOL, what="conformance log-probs with the soft-cap")


def test_gemma3_strict_tensor_names(tmp_path):
    """The loader's strictness on Gemma's own tensors: a missing post_feedforward_layernorm or an unknown tensor
    is an error naming it (and the Gemma 3 model)."""
    from safetensors.torch import load_file, save_file
    _, folder = saved("gemma3", tmp_path / "m")
    f = folder / "model.safetensors"
    state = load_file(str(f))
    missing = {k: v for k, v in state.items() if k != "model.layers.1.post_feedforward_layernorm.weight"}
    save_file(missing, str(f), metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="model.layers.1.post_feedforward_layernorm.weight"):
        load_model(folder)
    save_file({**state, "model.layers.0.mlp.extra.weight": torch.zeros(2)}, str(f), metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="'model.layers.0.mlp.extra.weight'.*Gemma 3 model has no such"):
        load_model(folder)


@pytest.mark.parametrize("arch,layout", [("qwen3", "padded"), ("gemma3-softcap-untied", "shared")])
def test_cli_train_lora_all_linear_export_loads_in_transformers(tmp_path, arch, layout):
    """`minorpo train` on a tiny checkpoint: ORPO, LoRA on every linear layer, gradient checkpointing, bf16
    autocast, 2 steps in the padded or shared layout (the shared one runs the sliding window through the block
    mask). The merged RUN/final is the transformers class of the input and gives the trained model's logits,
    recomputed here from RUN/adapter loaded by PEFT on the input checkpoint and merged by PEFT (an independent
    path: transformers + PEFT's merge_and_unload, float32; TOL: the same operations, W + scale * B @ A, so only
    their rounding). PEFT's unmerged forward, x W + scale * (x A) B, rounds differently: on the Gemma model it is
    1.5e-5 from PEFT's own merged model (transformers 5.24, peft 0.21), so it is not the same-operations oracle.
    Training moved the logits (> 1e-3), so the comparison sees the adapter."""
    peft = pytest.importorskip("peft")
    from tiny_runs import tiny_run_files

    from minorpo.tools.cli import main
    folder, data = tiny_run_files(tmp_path / "in", arch=arch)
    out = tmp_path / "run"
    assert main(["train", "--model", str(folder), "--data", str(data), "--out", str(out), "--lora-r", "4",
                 "--lora-alpha", "8", "--lora-targets", "all-linear", "--lr", "0.05", "--warmup-steps", "0",
                 "--max-steps", "2", "--eval-pairs", "4", "--eval-every", "0", "--max-length", "64",
                 "--gradient-checkpointing", "--precision", "bf16", "--layout", layout, "--no-progress"]) == 0
    ids = torch.randint(0, 43, (2, 13), generator=torch.Generator().manual_seed(0))  # the word tokenizer's ids
    base = transformers.AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
    with torch.no_grad():
        before = base(ids).logits
        adapted = peft.PeftModel.from_pretrained(base, str(out / "adapter")).eval()
        want = adapted.merge_and_unload()(ids).logits
        merged = transformers.AutoModelForCausalLM.from_pretrained(str(out / "final"), dtype=torch.float32).eval()
        got = merged(ids).logits
    assert type(merged).__name__ == ARCHS[arch][0].replace("TextConfig", "ForCausalLM").replace("Config", "ForCausalLM")
    assert (want - before).abs().max() > 1e-3
    assert_close(got, want, **TOL, what=f"{arch}: merged export vs transformers + PEFT adapter")
