"""Run folders (minorpo/run/folders.py) and checkpoints (minorpo/run/checkpoint.py): a previous run is never lost, resume is
honest, the trainer state holds no pickle.

Oracles: the files a run leaves (bytes before vs after a refused command), an uninterrupted run (a resumed run
must end with bit-equal weights: CPU, same seed, deterministic), and the state that was saved (RNG draws and
optimizer moments after loading equal those at saving).
"""

import json
import random
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from minorpo.run.checkpoint import list_checkpoints, load_checkpoint, read_trainer_state, save_checkpoint
from minorpo.tools.cli import main
from minorpo.errors import UserError
from minorpo.hf.loader import load
from minorpo.train import TrainConfig, train
from tiny_runs import pairs_of as _pairs, tiny_run_files


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    return tiny_run_files(tmp_path_factory.mktemp("runs"))


def _cfg(inputs, out, **kw):
    folder, data = inputs
    base = dict(model=str(folder), data=str(data), out=str(out), lora_r=4, lora_alpha=8, lr=0.05, max_steps=2,
                warmup_steps=0, schedule="constant", eval_pairs=4, eval_every=0, save_every=1, keep_checkpoints=5,
                progress=False, max_length=64, lora_dropout=0.1)  # dropout: the RNG state must resume too
    return TrainConfig(**{**base, **kw})


def _train(inputs, out, **kw):
    model, tok = load(inputs[0])
    last = train(_cfg(inputs, out, **kw), model=model, tokenizer=tok, pairs=_pairs(inputs[1], tok))
    return model, last


def _snapshot(out: Path) -> dict:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def _steps(out: Path) -> list:
    return [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]


def _weights(out: Path) -> dict:
    return load_file(str(out / "adapter" / "adapter_model.safetensors"))


def _cli(inputs, out, *extra):
    folder, data = inputs
    return ["train", "--model", str(folder), "--data", str(data), "--out", str(out), "--lora-r", "4", "--lora-alpha",
            "8", "--lr", "0.05", "--max-steps", "2", "--warmup-steps", "0", "--schedule", "constant", "--eval-pairs",
            "4", "--eval-every", "0", "--max-length", "64", "--no-progress", *extra]


@pytest.fixture(scope="module")
def straight(inputs, tmp_path_factory):
    """4 steps in one go: what every resumed run below must end with."""
    out = tmp_path_factory.mktemp("straight") / "run"
    _train(inputs, out, max_steps=4)
    return out


def test_existing_run_is_refused_and_left_untouched(inputs, tmp_path, capsys):
    out = tmp_path / "run"
    _train(inputs, out)
    before = _snapshot(out)
    assert main(_cli(inputs, out, "--lora-r", "2")) == 2
    err = capsys.readouterr().err
    assert err.startswith("minorpo: error: --out") and "already holds a run" in err
    assert "--resume" in err and "--overwrite" in err and "step-000002" in err and err.count("\n") == 1
    assert _snapshot(out) == before


def test_overwrite_deletes_the_old_run_whole(inputs, tmp_path):
    """A run with other LoRA settings and more steps, overwritten: none of its files survive (no old checkpoints,
    no second step-0 row)."""
    out = tmp_path / "run"
    _train(inputs, out, max_steps=3, lora_r=2, lora_alpha=4)
    _train(inputs, out, max_steps=1, overwrite=True)
    assert _steps(out) == [0, 1]
    assert [p.name for p in list_checkpoints(out)] == ["step-000001"]
    assert json.loads((out / "config.json").read_text())["lora_r"] == 4
    assert not (out / "resumes.jsonl").exists()


def test_overwrite_refuses_a_folder_with_foreign_files(inputs, tmp_path):
    out = tmp_path / "run"
    _train(inputs, out, max_steps=1)
    (out / "notes.txt").write_text("mine")
    before = _snapshot(out)
    with pytest.raises(UserError, match=r"--overwrite: .* also holds notes.txt.*nothing was deleted"):
        _train(inputs, out, max_steps=1, overwrite=True)
    assert _snapshot(out) == before


def test_resume_refuses_changed_settings_and_lists_them(inputs, tmp_path, capsys):
    out = tmp_path / "run"
    _train(inputs, out)
    before = _snapshot(out)
    assert main(_cli(inputs, out, "--resume", "--lr", "0.01", "--method", "sft", "--max-steps", "4")) == 2
    err = capsys.readouterr().err
    assert "lr 0.05 -> 0.01" in err and "method 'orpo' -> 'sft'" in err
    assert "max_steps" in err.split("may change only")[1]  # the allowed list is named; max_steps is not refused
    assert "max_steps 2 -> 4" not in err
    assert _snapshot(out) == before


def test_resume_with_more_steps_is_exact_and_recorded(inputs, tmp_path, straight):
    """2 steps, then --resume --max-steps 4 == 4 steps straight (constant lr, so the schedule is the same): the
    adapter is bit-equal; config.json keeps max_steps 2, resumes.jsonl records 2 -> 4; one row per step."""
    out = tmp_path / "run"
    _train(inputs, out)
    _train(inputs, out, max_steps=4, resume="latest")
    for k, v in _weights(straight).items():
        assert torch.equal(_weights(out)[k], v), k
    assert json.loads((out / "config.json").read_text())["max_steps"] == 2
    [record] = [json.loads(line) for line in (out / "resumes.jsonl").read_text().splitlines()]
    assert record["step"] == 2 and record["changes"] == {"max_steps": [2, 4]}
    assert _steps(out) == [0, 1, 2, 3, 4]


def test_resume_from_a_chosen_checkpoint(inputs, tmp_path, straight):
    """--resume PATH goes back to step 1 of a finished 4-step run and redoes steps 2-4: the same weights, and
    metrics.jsonl holds each step once."""
    out = tmp_path / "run"
    _train(inputs, out, max_steps=4)
    _train(inputs, out, max_steps=4, resume=str(out / "checkpoints" / "step-000001"))
    for k, v in _weights(straight).items():
        assert torch.equal(_weights(out)[k], v), k
    assert _steps(out) == [0, 1, 2, 3, 4]
    with pytest.raises(UserError, match="--resume .*step-000009: not an intact checkpoint folder"):
        _train(inputs, out, max_steps=4, resume=str(out / "checkpoints" / "step-000009"))


def test_resuming_a_finished_run_trains_nothing(inputs, tmp_path, capsys):
    out = tmp_path / "run"
    _train(inputs, out)
    before = _snapshot(out)
    assert main(_cli(inputs, out, "--resume", "--save-every", "1", "--keep-checkpoints", "5",
                     "--lora-dropout", "0.1")) == 0
    assert "is finished: it reached step 2 of --max-steps 2" in capsys.readouterr().out
    assert _snapshot(out) == before


def test_resume_without_a_checkpoint_says_so(inputs, tmp_path):
    """A run killed before its first checkpoint: --resume does not silently start again from step 0."""
    out = tmp_path / "run"
    _train(inputs, out, max_steps=2, save_every=-1, export=False)
    assert not (out / "checkpoints").exists()
    with pytest.raises(UserError, match=r"no intact checkpoint to resume from \(metrics.jsonl reaches step 2; "
                                        r"it runs with --save-every -1.*--overwrite"):
        _train(inputs, out, max_steps=4, save_every=-1, export=False, resume="latest")


def test_checkpoints_by_default_and_at_the_end(inputs, tmp_path):
    """save_every 0 still writes the last step; the default interval checkpoints a long run, and the help says so."""
    _train(inputs, tmp_path / "end", max_steps=3, save_every=0)
    assert [p.name for p in list_checkpoints(tmp_path / "end")] == ["step-000003"]
    assert TrainConfig.save_every > 0
    _train(inputs, tmp_path / "never", max_steps=2, save_every=-1)
    assert list_checkpoints(tmp_path / "never") == []


def test_killed_checkpoint_write_is_cleaned_on_the_next_start(inputs, tmp_path):
    out = tmp_path / "run"
    _train(inputs, out)
    tmp = out / "checkpoints" / ".step-000003.tmp-4242"  # what a run killed inside save_checkpoint leaves
    tmp.mkdir()
    (tmp / "weights.safetensors").write_bytes(b"half")
    _train(inputs, out, max_steps=3, resume="latest")
    assert not tmp.exists()
    assert [p.name for p in list_checkpoints(out)][-1] == "step-000003"


def test_trainer_state_is_json_and_safetensors_and_restores_exactly(tmp_path):
    """No pickle: the checkpoint's files are JSON and safetensors (a torch.save file starts with a zip or pickle
    header). Loading gives back the optimizer's moments bit for bit and the RNG streams: the draws after loading
    equal the draws that followed the save."""
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (s + 1))
    for _ in range(3):
        model(torch.randn(4, 3)).square().sum().backward()
        opt.step(), sched.step(), opt.zero_grad()
    ckpt = save_checkpoint(tmp_path, 3, model, opt, sched, {"pairs_seen": 12})
    assert sorted(p.name for p in ckpt.iterdir()) == ["MANIFEST.json", "trainer_state.json",
                                                      "trainer_state.safetensors", "weights.safetensors"]
    for p in ckpt.iterdir():
        assert not p.read_bytes().startswith((b"PK\x03\x04", b"\x80")), p.name
    draws = (torch.rand(3), random.random())
    moments = {k: v.clone() for k, v in opt.state[model.weight].items()}

    model2 = torch.nn.Linear(3, 2)
    opt2 = torch.optim.AdamW(model2.parameters(), lr=0.1)
    sched2 = torch.optim.lr_scheduler.LambdaLR(opt2, lambda s: 1.0 / (s + 1))
    state = load_checkpoint(ckpt, model2, opt2, sched2)
    assert state["step"] == 3 and state["pairs_seen"] == 12 and sched2.last_epoch == sched.last_epoch
    assert torch.equal(model2.weight, model.weight)
    for k, v in moments.items():
        assert torch.equal(opt2.state[model2.weight][k], v), k
    assert opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"]
    assert torch.equal(torch.rand(3), draws[0]) and random.random() == draws[1]
    tensors, values = read_trainer_state(ckpt)
    assert "rng.torch" in tensors and values["step"] == 3


def test_old_checkpoint_with_a_numpy_rng_entry_resumes(tmp_path):
    """Checkpoints written before numpy was dropped hold the NumPy RNG state in trainer_state.json's "rng": it is
    ignored, the rest is restored as before."""
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    ckpt = save_checkpoint(tmp_path, 1, model, opt, sched, {"pairs_seen": 4})
    f = ckpt / "trainer_state.json"
    values = json.loads(f.read_text())
    values["rng"]["numpy"] = ["MT19937", [5489] * 624, 624, 0, 0.0]  # what an older minorpo wrote
    f.write_text(json.dumps(values))
    draws = (torch.rand(3), random.random())
    state = load_checkpoint(ckpt, torch.nn.Linear(3, 2), opt, sched)
    assert state["step"] == 1 and state["pairs_seen"] == 4
    assert torch.equal(torch.rand(3), draws[0]) and random.random() == draws[1]


def test_old_pickle_checkpoint_is_refused_by_name(tmp_path):
    ckpt = tmp_path / "step-000001"
    ckpt.mkdir()
    (ckpt / "trainer_state.pt").write_bytes(b"\x80\x04.")
    with pytest.raises(UserError, match="trainer_state.pt, a pickle file"):
        read_trainer_state(ckpt)


def test_resume_flag_takes_an_optional_path():
    from minorpo.tools.cli import build_parser
    from minorpo.tools.train_cli import config_from_args
    parse = lambda *a: config_from_args(build_parser("train").parse_args(["train", "--model", "m", "--data", "d", *a]))
    assert parse().resume == "" and parse("--resume").resume == "latest"
    assert parse("--resume", "runs/x/checkpoints/step-000010").resume == "runs/x/checkpoints/step-000010"


def test_resume_from_another_runs_checkpoint_is_a_named_error(inputs, tmp_path):
    """--resume PATH to a checkpoint of a run with another LoRA rank: one error naming the file, not torch's
    'size mismatch' from deep inside load_state_dict."""
    _train(inputs, tmp_path / "r2", lora_r=2, lora_alpha=4)
    _train(inputs, tmp_path / "r4", max_steps=1)
    with pytest.raises(UserError, match=r"r2/checkpoints/step-000001/weights.safetensors does not match this "
                                        r"model's trainable weights .*other shape \['model.layers.0"):
        _train(inputs, tmp_path / "r4", resume=str(tmp_path / "r2" / "checkpoints" / "step-000001"))
