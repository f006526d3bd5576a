"""The loader: sharded checkpoints, both config.json dialects, strict errors on bad folders, refusal of pickle
and of remote code, hub ids (offline error, what is fetched), and save() read back by transformers."""

import json
import os
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import assert_close
from tiny_models import V, saved

from minorpo.errors import MissingFileError
from minorpo.hf.loader import CheckpointError, load, load_model, save

TOL = dict(rtol=1e-5, atol=1e-5)  # float32 rounding only (see test_model.py)
IDS = torch.randint(0, V, (2, 13), generator=torch.Generator().manual_seed(0))


def logits(model, ids=IDS):
    with torch.no_grad():
        out = model(ids)
    return out if torch.is_tensor(out) else out.logits


@pytest.fixture
def llama(tmp_path):
    return saved("llama-tied", tmp_path / "llama")


def rewrite_weights(folder, edit):
    """Apply edit(state dict) to folder/model.safetensors in place."""
    f = folder / "model.safetensors"
    state = load_file(str(f))
    edit(state)
    save_file(state, str(f), metadata={"format": "pt"})


def test_sharded_checkpoint(tmp_path):
    """A checkpoint split into shards (model.safetensors.index.json) loads to the same logits."""
    hf, _ = saved("qwen2", tmp_path / "one")
    hf.save_pretrained(str(tmp_path / "sharded"), max_shard_size="40KB")
    index = json.loads((tmp_path / "sharded/model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    assert not (tmp_path / "sharded/model.safetensors").exists()
    assert_close(logits(load_model(tmp_path / "sharded")), logits(hf), **TOL, what="sharded")


def test_transformers4_config_dialect(llama):
    """A config.json in transformers-4 form (rope_theta and rope_scaling at top level, as on the hub) gives the
    same model as transformers-5's rope_parameters form."""
    hf, folder = saved("llama3-untied", llama[1].parent / "l3")
    d = json.loads((folder / "config.json").read_text())
    params = d.pop("rope_parameters")
    assert params["rope_type"] == "llama3"
    d["rope_theta"] = params.pop("rope_theta")
    d["rope_scaling"] = params
    (folder / "config.json").write_text(json.dumps(d))
    model = load_model(folder)
    assert model.config.rope_theta == 10000.0 and model.config.rope_scaling["factor"] == 8.0
    assert_close(logits(model), logits(hf), **TOL, what="transformers-4 config")


def test_keys_without_model_prefix(tmp_path):
    """Weights saved from the bare decoder (keys 'decoder.…' without 'model.', as some OPT uploads) load."""
    hf, folder = saved("opt", tmp_path / "opt")
    rewrite_weights(folder, lambda s: s.update({k.removeprefix("model."): s.pop(k) for k in list(s)}))
    assert_close(logits(load_model(folder)), logits(hf), **TOL, what="unprefixed keys")


def test_dtype_and_eval_mode(llama):
    model = load_model(llama[1], dtype=torch.float16)
    assert not model.training
    assert {p.dtype for p in model.parameters()} == {torch.float16}


# ---------------------------------------------------------------------------------------------- bad inputs

def test_missing_config(llama):
    (llama[1] / "config.json").unlink()
    with pytest.raises(CheckpointError, match="config.json"):
        load_model(llama[1])


def test_missing_weights(llama):
    (llama[1] / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="no model.safetensors"):
        load_model(llama[1])


def test_missing_shard(tmp_path):
    hf, _ = saved("opt", tmp_path / "one")
    hf.save_pretrained(str(tmp_path / "sh"), max_shard_size="40KB")
    shard = sorted(tmp_path.glob("sh/*.safetensors"))[-1]
    shard.unlink()
    with pytest.raises(CheckpointError, match=shard.name):
        load_model(tmp_path / "sh")


def test_missing_tensor_named(llama):
    rewrite_weights(llama[1], lambda s: s.pop("model.layers.1.mlp.up_proj.weight"))
    with pytest.raises(CheckpointError, match=r"missing tensor.*'model\.layers\.1\.mlp\.up_proj\.weight'"):
        load_model(llama[1])


def test_misshaped_tensor_named(llama):
    rewrite_weights(llama[1], lambda s: s.update({"model.layers.0.self_attn.k_proj.weight": torch.zeros(5, 64)}))
    with pytest.raises(CheckpointError, match=r"'model\.layers\.0\.self_attn\.k_proj\.weight' in .*"
                                              r"model\.safetensors has shape \(5, 64\).*expects \(32, 64\)"):
        load_model(llama[1])


def test_extra_tensor_named(llama):
    rewrite_weights(llama[1], lambda s: s.update({"model.layers.0.self_attn.q_proj.bias": torch.zeros(64)}))
    with pytest.raises(CheckpointError, match=r"unexpected tensor 'model\.layers\.0\.self_attn\.q_proj\.bias' "
                                              r"in .*model\.safetensors"):
        load_model(llama[1])


def test_unknown_model_type(llama):
    d = json.loads((llama[1] / "config.json").read_text())
    d["model_type"] = "gpt_neox"
    (llama[1] / "config.json").write_text(json.dumps(d))
    with pytest.raises(CheckpointError, match=r"'gpt_neox'.*llama, mistral, qwen2, qwen3, gemma3_text, opt"):
        load_model(llama[1])


def test_unsupported_rope_type(llama):
    d = json.loads((llama[1] / "config.json").read_text())
    d["rope_parameters"] = {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0}
    (llama[1] / "config.json").write_text(json.dumps(d))
    with pytest.raises(CheckpointError, match=r"'yarn'.*default, linear, llama3"):
        load_model(llama[1])


def test_pickle_only_checkpoint_refused(llama):
    """A folder with only pytorch_model.bin is refused without unpickling it (the file here is not even a
    valid pickle: reading it would fail differently)."""
    (llama[1] / "model.safetensors").unlink()
    (llama[1] / "pytorch_model.bin").write_bytes(b"not a pickle")
    with pytest.raises(CheckpointError, match="pytorch_model.bin.*pickle"):
        load_model(llama[1])


def test_remote_code_never_runs(llama, tmp_path):
    """A config with auto_map pointing at a modeling file: loading ignores it (the file would leave a marker)."""
    marker = tmp_path / "ran"
    (llama[1] / "modeling_evil.py").write_text(f"open({str(marker)!r}, 'w').write('x')\n")
    d = json.loads((llama[1] / "config.json").read_text())
    d["auto_map"] = {"AutoModelForCausalLM": "modeling_evil.EvilForCausalLM"}
    (llama[1] / "config.json").write_text(json.dumps(d))
    load_model(llama[1])
    assert not marker.exists()
    assert "modeling_evil" not in sys.modules


def test_missing_tokenizer_file(llama):
    """load() (model and tokenizer) on a folder without tokenizer.json: an error naming the file."""
    with pytest.raises(Exception, match="tokenizer.json"):
        load(llama[1])


def test_hub_id_offline(monkeypatch, tmp_path):
    """A hub id with HF_HUB_OFFLINE=1 and an empty cache: a clear error naming the id and offline mode."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf/hub"))
    with pytest.raises(CheckpointError, match=r"someorg/some-model: no such local folder.*HF_HUB_OFFLINE"):
        load_model("someorg/some-model")


def test_hub_fetch_is_limited_to_safe_files(monkeypatch, llama):
    """A hub id is fetched with snapshot_download(revision=..., allow_patterns=config/safetensors/tokenizer):
    never *.bin pickles or *.py code."""
    import fnmatch

    import huggingface_hub

    seen = {}

    def fake_snapshot_download(repo_id, **kwargs):
        seen.update(kwargs, repo_id=repo_id)
        return str(llama[1])
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    model = load_model("someorg/some-model", revision="abc123")
    assert seen["repo_id"] == "someorg/some-model" and seen["revision"] == "abc123"
    allowed = seen["allow_patterns"]
    match = lambda f: any(fnmatch.fnmatch(f, p) for p in allowed)  # noqa: E731
    for f in ("config.json", "model.safetensors", "model-00001-of-00002.safetensors",
              "model.safetensors.index.json", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        assert match(f), f
    for f in ("pytorch_model.bin", "modeling_x.py", "tf_model.h5", "flax_model.msgpack"):
        assert not match(f), f
    assert_close(logits(model), logits(llama[0]), **TOL, what="hub-id load")


def test_not_a_folder():
    """A value that looks like a path is never looked up on the hub (see fileio.is_local_path)."""
    for name in ("./no/such/dir", "tinyy", "no/such/dir"):
        with pytest.raises(MissingFileError, match=f"^{name}: no such model folder"):
            load_model(name)


# ---------------------------------------------------------------------------------------------- save()

@pytest.mark.parametrize("arch", ["llama-tied", "llama3-untied", "qwen2", "qwen3", "gemma3",
                                  "gemma3-softcap-untied", "opt-350m"])
def test_save_round_trip_read_by_transformers(tmp_path, arch):
    """save() writes a folder that transformers' from_pretrained loads to the same logits (oracle), with a tied
    weight stored once; minorpo reads it back too."""
    transformers = pytest.importorskip("transformers")
    hf, folder = saved(arch, tmp_path / "in")
    ours = load_model(folder)
    save(ours, None, tmp_path / "out")
    keys = load_file(str(tmp_path / "out/model.safetensors")).keys()
    assert ("lm_head.weight" in keys) == (not ours.config.tie_word_embeddings)
    back = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "out"), dtype=torch.float32).eval()
    assert type(back) is type(hf)
    assert_close(logits(back), logits(hf), **TOL, what=f"{arch} saved then loaded by transformers")
    assert_close(logits(load_model(tmp_path / "out")), logits(hf), **TOL, what=f"{arch} saved then reloaded")


def test_save_writes_tokenizer_and_dtype(tmp_path):
    """With a tokenizer, save() writes its files (load() then works); config.json records the dtype."""
    from tiny_tokenizers import bpe_tokenizer

    _, folder = saved("llama-tied", tmp_path / "in", vocab_size=300)
    bpe_tokenizer(folder)
    model, tok = load(folder, dtype=torch.bfloat16)
    save(model, tok, tmp_path / "out")
    assert (tmp_path / "out/tokenizer.json").exists()
    d = json.loads((tmp_path / "out/config.json").read_text())
    assert d["dtype"] == "bfloat16" and d["architectures"] == ["LlamaForCausalLM"]
    model2, tok2 = load(tmp_path / "out", dtype=torch.bfloat16)
    assert tok2.encode("hello there") == tok.encode("hello there")
    assert torch.equal(logits(model2), logits(model))
