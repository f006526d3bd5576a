"""What a run writes and how it is configured: the export's dtype and generation_config.json, `--config FILE`,
`--report-to tensorboard`, `--threads`, the progress bar that covers evaluation.

Oracles: the saved model's own dtype (safetensors header), transformers loading the export, the merged float32
weights rounded to the export dtype (the export must equal them exactly: one rounding, nothing else), the
metrics.jsonl rows (TensorBoard must hold the same numbers), the config a run wrote.
"""

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from minorpo.tools.cli import main
from minorpo.errors import UserError
from minorpo.hf.loader import load
from minorpo.lora import merged_state_dict
from minorpo.train import TrainConfig, train
from tiny_runs import pairs_of as _pairs, tiny_run_files, write_data
from tiny_models import hf_model
from tiny_tokenizers import word_tokenizer


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    return tiny_run_files(tmp_path_factory.mktemp("outputs"))


@pytest.fixture(scope="module")
def bf16_inputs(tmp_path_factory):
    """A tiny model saved in bfloat16 (as SmolLM2 and most hub models are), with a generation_config.json."""
    root = tmp_path_factory.mktemp("bf16")
    model = hf_model("llama-tied").to(torch.bfloat16)
    model.generation_config.eos_token_id = 7  # something to recognize in the copy
    model.save_pretrained(str(root / "model"))
    word_tokenizer(root / "model")
    return root / "model", write_data(root / "pairs.jsonl", 40)


def _train(inputs, out, **kw):
    folder, data = inputs
    model, tok = load(folder)
    cfg = TrainConfig(**{**dict(model=str(folder), data=str(data), out=str(out), lora_r=4, lora_alpha=8, lr=0.05,
                                max_steps=2, warmup_steps=0, eval_pairs=4, eval_every=0, progress=False,
                                max_length=64), **kw})
    return model, train(cfg, model=model, tokenizer=tok, pairs=_pairs(data, tok))


def _dtypes(folder: Path) -> set:
    with safe_open(str(folder / "model.safetensors"), framework="pt") as f:
        return {f.get_slice(k).get_dtype() for k in f.keys()}


def test_export_keeps_the_models_dtype_and_its_generation_config(bf16_inputs, tmp_path):
    """A bf16 checkpoint trained in fp32: final/ is bf16 by default (half the bytes of float32), each weight the
    bf16 rounding of the merged float32 weight; generation_config.json is the source's; transformers loads it."""
    import transformers
    model, _ = _train(bf16_inputs, tmp_path / "run")
    final = tmp_path / "run" / "final"
    assert _dtypes(final) == {"BF16"}
    assert json.loads((final / "config.json").read_text())["dtype"] == "bfloat16"
    merged = merged_state_dict(model)
    for k, v in load_file(str(final / "model.safetensors")).items():
        assert torch.equal(v, merged[k].to(torch.bfloat16)), k
    assert (final / "generation_config.json").read_text() == (bf16_inputs[0] / "generation_config.json").read_text()
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(final))
    assert hf.dtype == torch.bfloat16 and hf.generation_config.eos_token_id == 7


@pytest.mark.parametrize("dtype,tag", [("float32", "F32"), ("float16", "F16")])
def test_export_dtype_option(bf16_inputs, tmp_path, dtype, tag):
    _train(bf16_inputs, tmp_path / "run", export_dtype=dtype)
    assert _dtypes(tmp_path / "run" / "final") == {tag}


def test_generation_config_written_when_the_source_has_none(inputs, tmp_path):
    """The tiny float32 model folder has no generation_config.json: one is written from config.json's tokens (what
    transformers does), and transformers' GenerationConfig reads it."""
    import transformers
    (inputs[0] / "generation_config.json").unlink(missing_ok=True)
    _train(inputs, tmp_path / "run", export_dtype="auto")
    final = tmp_path / "run" / "final"
    assert _dtypes(final) == {"F32"}  # the source is float32
    gen = transformers.GenerationConfig.from_pretrained(str(final))
    assert gen.eos_token_id == json.loads((final / "config.json").read_text()).get("eos_token_id")


def _cli(inputs, out, *extra):
    folder, data = inputs
    return ["train", "--model", str(folder), "--data", str(data), "--out", str(out), "--no-progress", *extra]


def test_config_file_round_trip(inputs, tmp_path):
    """--config FILE sets the run; flags typed on the command line override it; the run's own config.json,
    given back with another --out, reproduces the same settings."""
    cfg_file = tmp_path / "run.json"
    cfg_file.write_text(json.dumps({"lora_r": 4, "lora_alpha": 8, "lr": 0.05, "max_steps": 5, "eval_pairs": 4,
                                    "eval_every": 0, "max_length": 64, "warmup_steps": 0}))
    assert main(_cli(inputs, tmp_path / "a", "--config", str(cfg_file), "--max-steps", "2")) == 0
    a = json.loads((tmp_path / "a" / "config.json").read_text())
    assert a["max_steps"] == 2 and a["lora_r"] == 4 and a["lr"] == 0.05 and a["max_length"] == 64
    assert main(["train", "--config", str(tmp_path / "a" / "config.json"), "--out", str(tmp_path / "b")]) == 0
    b = json.loads((tmp_path / "b" / "config.json").read_text())
    assert {k: v for k, v in b.items() if k != "out"} == {k: v for k, v in a.items() if k != "out"}
    losses = [[json.loads(line).get("loss") for line in (tmp_path / r / "metrics.jsonl").read_text().splitlines()]
              for r in ("a", "b")]
    assert losses[0] == losses[1] and None not in losses[0][1:]  # the same run again: CPU, same seed


def test_config_file_errors_name_the_keys(inputs, tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"lr": 0.1, "learning_rate": 0.1, "epochs": 3}))
    assert main(_cli(inputs, tmp_path / "run", "--config", str(bad))) == 2
    err = capsys.readouterr().err
    assert "unknown setting(s) epochs, learning_rate" in err and str(bad) in err and err.count("\n") == 1
    bad.write_text(json.dumps({"max_steps": "ten"}))
    assert main(_cli(inputs, tmp_path / "run", "--config", str(bad))) == 2
    assert "max_steps is 'ten', expected int" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_tensorboard_holds_the_jsonl_numbers(inputs, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    out = tmp_path / "run"
    _train(inputs, out, max_steps=3, report_to="tensorboard")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    acc = EventAccumulator(str(out / "tensorboard"))
    acc.Reload()
    loss = [(e.step, e.value) for e in acc.Scalars("loss")]
    assert [s for s, _ in loss] == [1, 2, 3]
    assert [v for _, v in loss] == pytest.approx([r["loss"] for r in rows[1:]], rel=1e-6)  # stored as float32


def test_tensorboard_missing_is_a_named_error(inputs, tmp_path, monkeypatch):
    import importlib.util
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else real(name, *a))
    with pytest.raises(UserError, match="--report-to tensorboard needs the tensorboard package"):
        _train(inputs, tmp_path / "run", report_to="tensorboard")
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_threads_option(inputs, tmp_path):
    """--threads 1: the run used one thread (run_info.json), and train() gives the caller its own count back."""
    before = torch.get_num_threads()
    _train(inputs, tmp_path / "run", threads=1)
    assert json.loads((tmp_path / "run" / "run_info.json").read_text())["threads"] == 1
    assert torch.get_num_threads() == before


def test_progress_bar_covers_evaluation(inputs, tmp_path, capsys):
    """The bar ends at 100% only if the evaluations (step 0, 2, 4) are counted in its total and its updates."""
    _train(inputs, tmp_path / "run", max_steps=4, eval_every=2, progress=True)
    err = capsys.readouterr().err
    assert "evaluating 4/4 held-out pairs" in err
    final = err.replace("\r", "\n").strip().splitlines()[-1]
    assert "step 4/4" in final and "100%" in final
