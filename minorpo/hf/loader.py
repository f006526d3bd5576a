"""Load a transformers-format checkpoint into minorpo's model, and save one back.

A checkpoint is a folder (or a Hugging Face Hub repo, fetched into the local cache) holding:
    config.json                          -> ModelConfig.from_hf
    model.safetensors                    -> the weights, or several shards listed in
    model.safetensors.index.json            {"weight_map": {tensor name: shard file}}
    tokenizer.json, tokenizer_config.json [, chat_template.jinja]  -> minorpo.hf.tokenizer.Tokenizer

Safety: only safetensors are read. Pickle checkpoints (pytorch_model.bin) can execute arbitrary code when
loaded, so they are refused; no code from a repo (trust_remote_code) is ever run.
Strictness: every tensor the model needs must be present with the right shape, and no unknown tensor may be
left over; an error names the tensor and the file. The only tolerated extras are the ones transformers also
skips: a stored `lm_head.weight` of a tied model (the embedding is used) and old `rotary_emb.inv_freq` buffers.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from minorpo.hf.config import ConfigError, ModelConfig
from minorpo.errors import UserError
from minorpo.hf import hub
from minorpo.models import build_model

# What a hub download fetches: config, safetensors weights, tokenizer files. Never *.bin, never *.py.
HUB_FILES = ["config.json", "generation_config.json", "*.safetensors", "model.safetensors.index.json",
             "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
             "chat_template.json"]
PICKLE_FILES = ["pytorch_model.bin", "pytorch_model.bin.index.json"]


# The weight dtypes a command can ask for (--dtype, --export-dtype), under the names config.json's torch_dtype
# uses (save() writes them).
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class CheckpointError(UserError):
    """A checkpoint folder that cannot be loaded (missing file, wrong tensor, unsupported format)."""


def resolve(model_id_or_dir: str | os.PathLike, revision: str | None = None, local_only: bool = False) -> Path | None:
    """A local folder as is, or a hub id downloaded (config/safetensors/tokenizer files only) to the HF cache
    (hub.py); local_only=True returns None for a hub id instead of fetching it."""
    name = str(model_id_or_dir)
    path = hub.local(model_id_or_dir, "model folder")
    if path is not None:
        if not path.is_dir():
            raise CheckpointError(f"{name} is a file, not a model folder (config.json + *.safetensors + tokenizer.json)")
        return path
    if local_only:
        return None
    return hub.snapshot(name, revision=revision, allow_patterns=HUB_FILES, failed=lambda why: CheckpointError(
        f"{name}: no such local folder, and fetching it from the Hugging Face Hub failed ({why}). Pass a folder "
        f"holding config.json and *.safetensors, or go online."))


def read_config(folder: Path) -> ModelConfig:
    f = folder / "config.json"
    if not f.exists():
        raise CheckpointError(f"{f} not found: a checkpoint folder needs config.json")
    try:
        d = json.loads(f.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{f} is not valid JSON: {e}") from e
    try:
        config = ModelConfig.from_hf(d)
    except ConfigError as e:
        raise CheckpointError(f"{f}: {e}") from e
    gen = folder / "generation_config.json"  # generation may stop on other tokens than config.json's eos
    if gen.exists():
        eos = json.loads(gen.read_text()).get("eos_token_id")
        if eos is not None:
            config.generation_eos_token_id = eos
    return config


def weight_files(folder: Path) -> dict[str, list[str]]:
    """{safetensors file name: tensor names expected in it (None = whatever it holds)}."""
    index = folder / "model.safetensors.index.json"
    if index.exists():
        weight_map = json.loads(index.read_text()).get("weight_map")
        if not isinstance(weight_map, dict):
            raise CheckpointError(f"{index} has no 'weight_map' dict")
        files: dict[str, list[str]] = {}
        for name, file in weight_map.items():
            files.setdefault(file, []).append(name)
        for file in files:
            if not (folder / file).exists():
                raise CheckpointError(f"{folder / file} (listed in {index.name}) not found")
        return files
    if (folder / "model.safetensors").exists():
        return {"model.safetensors": None}
    pickles = [p for p in PICKLE_FILES if (folder / p).exists()]
    if pickles:
        raise CheckpointError(
            f"{folder} holds only {pickles[0]}, a pickle checkpoint: loading pickle can run arbitrary code, so "
            f"minorpo refuses it. Convert it to safetensors first (e.g. with transformers, in an environment you "
            f"trust: AutoModelForCausalLM.from_pretrained(dir).save_pretrained(out, safe_serialization=True)).")
    raise CheckpointError(f"{folder} has no model.safetensors or model.safetensors.index.json")


def load_state_dict(folder: Path, expected: dict[str, torch.Size], tied: bool, dtype, device, read=None) -> dict:
    """Read every tensor, checking names and shapes against `expected` (the model's own state_dict shapes).

    read(f, key, name): what to read of tensor `key` (the model's `name`) of the open file f, instead of all of it
    (fsdp.py reads each rank's rows only, through f.get_slice).
    """
    state, where = {}, {}
    for file, names in weight_files(folder).items():
        with safe_open(str(folder / file), framework="pt", device="cpu") as f:
            keys = list(f.keys())
            if names is not None:
                for name in sorted(set(names) - set(keys)):
                    raise CheckpointError(f"tensor {name!r} is listed in model.safetensors.index.json "
                                          f"under {file}, but {file} does not contain it")
            # Some checkpoints were saved from the bare OPTModel/LlamaModel: keys without the "model." prefix.
            if keys and not any(k.startswith("model.") for k in keys) and any(
                    "model." + k in expected for k in keys):
                rename = {k: "model." + k for k in keys if "model." + k in expected}
            else:
                rename = {}
            for key in keys:
                name = rename.get(key, key)
                if name.endswith("rotary_emb.inv_freq"):  # a buffer old Llama checkpoints saved; we recompute it
                    continue
                if tied and name == "lm_head.weight":  # transformers also uses the embedding for a tied head
                    continue
                if name not in expected:
                    raise CheckpointError(f"unexpected tensor {key!r} in {folder / file}: the "
                                          f"{expected_model_name(expected)} model has no such parameter")
                if name in where:
                    raise CheckpointError(f"tensor {name!r} appears twice: in {where[name]} and in {file}")
                shape = tuple(f.get_slice(key).get_shape())
                if shape != tuple(expected[name]):
                    raise CheckpointError(f"tensor {key!r} in {folder / file} has shape {shape}, the "
                                          f"model expects {tuple(expected[name])} (config.json does not match "
                                          f"the weights?)")
                t = f.get_tensor(key) if read is None else read(f, key, name)
                state[name] = t.to(device=device, dtype=dtype if t.is_floating_point() else t.dtype)
                where[name] = file
    missing = [n for n in expected if n not in state and not (tied and n == "lm_head.weight")]
    if missing:
        files = ", ".join(str(folder / f) for f in weight_files(folder))
        more = f" (and {len(missing) - 5} more)" if len(missing) > 5 else ""
        raise CheckpointError(f"missing tensor(s) {', '.join(repr(m) for m in missing[:5])}{more}: not found "
                              f"in {files}")
    return state


def expected_model_name(expected) -> str:
    if any(k.startswith("model.decoder.") for k in expected):
        return "OPT"
    return "Gemma 3" if any(k.endswith("pre_feedforward_layernorm.weight") for k in expected) else "Llama-family"


def load_model(model_id_or_dir, dtype: torch.dtype = torch.float32, revision: str | None = None,
               device: str | torch.device = "cpu") -> torch.nn.Module:
    """The model of a checkpoint folder or hub id, in eval mode, with weights in `dtype` on `device`."""
    folder = resolve(model_id_or_dir, revision)
    config = read_config(folder)
    with torch.device("meta"):  # build without allocating or initializing: every tensor is replaced below
        model = build_model(config)
    expected = {k: v.shape for k, v in model.state_dict().items()}
    state = load_state_dict(folder, expected, config.tie_word_embeddings, dtype, device)
    model.load_state_dict(state, strict=False, assign=True)
    if config.tie_word_embeddings:  # assign=True replaced the shared Parameter: tie again
        model.lm_head.weight = embedding(model).weight
    still_meta = [n for n, p in model.named_parameters() if p.is_meta]
    assert not still_meta, f"parameters left unloaded: {still_meta}"  # load_state_dict checked them all
    return model.eval()


def embedding(model) -> torch.nn.Embedding:
    return model.model.decoder.embed_tokens if model.config.is_opt else model.model.embed_tokens


def load(model_id_or_dir, dtype: torch.dtype = torch.float32, revision: str | None = None,
         device: str | torch.device = "cpu"):
    """(model, tokenizer) of a checkpoint folder or hub id."""
    from minorpo.hf.tokenizer import Tokenizer  # imported here so that model-only users do not need the tokenizer module
    folder = resolve(model_id_or_dir, revision)
    model = load_model(folder, dtype=dtype, device=device)
    return model, Tokenizer.from_dir(folder)


def source_dtype(folder) -> torch.dtype:
    """The dtype a checkpoint folder stores its floating-point weights in (read from the safetensors header)."""
    folder = Path(folder)
    names = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16, "F64": torch.float64}
    for file in weight_files(folder):
        with safe_open(str(folder / file), framework="pt", device="cpu") as f:
            for key in f.keys():
                dtype = names.get(f.get_slice(key).get_dtype())
                if dtype is not None:
                    return dtype
    return torch.float32


def save(model, tokenizer, out_dir, state_dict: dict | None = None, dtype: torch.dtype | None = None,
         source=None) -> Path:
    """Write config.json, model.safetensors (a tied weight stored once), generation_config.json and the tokenizer
    files to out_dir.

    state_dict: the weights to write instead of model.state_dict() (e.g. lora.merged_state_dict(model)).
    dtype: the dtype of the floating-point weights written (default: the model's).
    source: the checkpoint folder the model came from: its generation_config.json is copied (else one is written
    from config.json's special tokens, as transformers does).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config: ModelConfig = model.config
    dtype = dtype or next(model.parameters()).dtype
    d = config.to_hf()
    d["dtype"] = d["torch_dtype"] = str(dtype).removeprefix("torch.")  # transformers 5 reads dtype, 4 torch_dtype
    (out / "config.json").write_text(json.dumps(d, indent=2, sort_keys=True) + "\n")
    gen = Path(source) / "generation_config.json" if source is not None else None
    if gen is not None and gen.exists():
        (out / "generation_config.json").write_text(gen.read_text())
    else:
        tokens = {"bos_token_id": config.bos_token_id, "pad_token_id": config.pad_token_id,
                  "eos_token_id": config.generation_eos_token_id or config.eos_token_id}
        (out / "generation_config.json").write_text(json.dumps(
            {"_from_model_config": True, **{k: v for k, v in tokens.items() if v is not None}}, indent=2) + "\n")
    state_dict = model.state_dict() if state_dict is None else state_dict
    state = {k: v.detach().to("cpu", dtype=dtype if v.is_floating_point() else v.dtype).contiguous()
             for k, v in state_dict.items() if not (config.tie_word_embeddings and k == "lm_head.weight")}
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    if tokenizer is not None:
        tokenizer.save(out)
    return out
