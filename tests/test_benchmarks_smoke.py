"""The benchmark scripts run end to end on a tiny model (so they are not dead code), and the MFU formula of
reproduce/gpu_benchmark.py counts what it says it counts. The scripts' numbers on a tiny model mean nothing; what
is checked is that they run, agree with their oracles where there is one, and write their JSON.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from minorpo.hf.config import ModelConfig
from minorpo.models import build_model
from tiny_runs import tiny_run_files

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "reproduce"))
import gpu_benchmark  # noqa: E402


@pytest.mark.parametrize("name", ["tiny", "smollm2-135m", "qwen2.5-0.5b"])
def test_mfu_n_is_the_models_matmul_weights(name):
    """N of 6NT = the elements of every nn.Linear weight of minorpo's model of that shape (built on the meta device:
    shapes only), the tied output head once. Oracle: the model's own modules, not the formula's arithmetic."""
    shape = gpu_benchmark.SHAPES[name]
    with torch.device("meta"):
        model = build_model(ModelConfig.from_hf(shape))
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    assert gpu_benchmark.matmul_params(shape) == linear


def test_step_flops_by_hand():
    """Tiny shape: N = 2 layers x (64*64 q + 2*64*32 k,v + 64*64 o + 3*64*128 mlp) + 300*64 head
    = 2 x (4096 + 4096 + 4096 + 24576) + 19200 = 92928. Rows of 10 and 20 tokens:
    6*92928*(10+20) + 12*2*64*(100+400) = 16727040 + 768000 = 17495040."""
    assert gpu_benchmark.matmul_params(gpu_benchmark.SHAPES["tiny"]) == 92928
    assert gpu_benchmark.step_flops(gpu_benchmark.SHAPES["tiny"], [10, 20]) == 17495040


def test_gpu_benchmark_runs_tiny_on_cpu(tmp_path):
    """--device cpu --tiny: a random tiny model and rows written by the script, minorpo (and TRL when installed)."""
    out = tmp_path / "gpu.json"
    r = subprocess.run([sys.executable, str(REPO / "reproduce" / "gpu_benchmark.py"), "--device", "cpu", "--tiny",
                        "--json", str(out)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    res = json.loads(out.read_text())["results"]["tiny"]["summary"]
    m = res["minorpo"]
    assert m["tokens_per_s"] > 0 and 0 < m["mfu"] and m["peak_memory_bytes"] > 0
    assert 0 < m["step1_nll_loss"] < 20
    # the bf16-weights variant (float32 masters) ran in bf16 on the same first batch: its step-1 NLL is the
    # float32 run's to bf16 accuracy (rtol 2^-7, as tests/test_train_precision.py) and not equal to it
    w = res["minorpo shared-bf16w"]
    assert w["step1_nll_loss"] == pytest.approx(m["step1_nll_loss"], rel=2 ** -7)
    assert w["step1_nll_loss"] != m["step1_nll_loss"]
    if "TRL" in res:  # same random weights, same first batch, float32: TRL's step-1 NLL is minorpo's
        assert res["TRL"]["token_mismatches"] == 0
        assert res["TRL"]["step1_nll_loss"] == pytest.approx(m["step1_nll_loss"], rel=1e-5)  # float32 rounding


@pytest.fixture(scope="module")
def tiny_inputs(tmp_path_factory):
    return tiny_run_files(tmp_path_factory.mktemp("bench"), add_bos=True)


def _bench(inputs, out, *extra):
    folder, data = inputs
    r = subprocess.run([sys.executable, str(REPO / "reproduce" / "benchmark.py"), "--model", str(folder), "--data",
                        str(data), "--steps", "2", "--warmup", "1", "--max-length", "64", "--lora-r", "4",
                        "--no-compile", "--json", str(out), *extra], capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    assert "median s/step" in r.stdout
    return json.loads(out.read_text())


def test_benchmark_against_trl_tiny(tiny_inputs, tmp_path):
    """minorpo vs TRL on a tiny saved model: TRL reads exactly minorpo's pairs and tokens, so at step 1 (same
    weights) TRL's nll_loss and log_odds_ratio are minorpo's (float32: rel 1e-5, as tests/test_train_trl.py)."""
    pytest.importorskip("trl")
    pytest.importorskip("peft")
    res = _bench(tiny_inputs, tmp_path / "bench.json")
    s, runs = res["summaries"], res["runs"]
    assert runs["TRL"]["token_mismatches"] == []
    assert len(runs["TRL"]["step_times"]) == 3  # warm-up + timed steps, one interval per step
    assert s["TRL"]["step1_nll_loss"] == pytest.approx(s["minorpo"]["step1_nll_loss"], rel=1e-5)
    assert s["TRL"]["step1_log_odds_ratio"] == pytest.approx(s["minorpo"]["step1_log_odds_ratio"], rel=1e-5)
    assert s["minorpo"]["padding_fraction"] == 0  # shared layout, unpadded rows


@pytest.mark.slow  # ~30 s: six child processes
def test_benchmark_ablation_tiny(tiny_inputs, tmp_path):
    """--ablate: every run in its own process, the table, the JSON. Runs on the same batches have the same
    per-step losses (the layouts and the chunking change speed, not results: float32, rtol 1e-5); over the whole
    window bucketing trains the same pairs and runs no more tokens."""
    res = _bench(tiny_inputs, tmp_path / "bench.json", "--no-trl", "--ablate", "--variants",
                 "padded-unchunked,padded,shared,padded-buckets,shared-buckets")
    runs = res["runs"]
    ref = runs["minorpo"]  # shared layout, unpadded rows
    for name in ("minorpo padded-unchunked", "minorpo padded", "minorpo shared"):
        assert runs[name]["loss"] == pytest.approx(ref["loss"], rel=1e-5), name
        assert [b["where"] for b in runs[name]["batches"]] == [b["where"] for b in ref["batches"]]
    # sorted consecutive batches minimize the sum of (rows x longest row) over the window (all steps here); over
    # the timed steps alone there is no such guarantee
    for lay in ("padded", "shared"):
        plain, bucketed = runs[f"minorpo {lay}"], runs[f"minorpo {lay}-buckets"]
        assert sorted(w for b in bucketed["batches"] for w in b["where"]) == \
            sorted(w for b in plain["batches"] for w in b["where"])
        assert sum(b["computed_tokens"] for b in bucketed["batches"]) <= sum(b["computed_tokens"] for b in plain["batches"])
    assert "shared-prompt vs padded layout" in res["effects"]


def test_profile_step_runs_tiny_on_cpu():
    """reproduce/profile_step.py --model tiny --device cpu with bf16 weights and float32 masters: the phase table
    (first pass and repeat, five phases each) and the profiler summary are printed; every phase took some time."""
    r = subprocess.run([sys.executable, str(REPO / "reproduce" / "profile_step.py"), "--model", "tiny", "--device", "cpu",
                        "--steps", "2", "--precision", "bf16-weights"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    rows = [line.split() for line in r.stdout.splitlines() if line.startswith(("first time", "same batch"))]
    assert len(rows) == 2 and all(all(float(x) > 0 for x in row[-5:]) for row in rows), rows
    assert "tiny, bf16-weights, cpu" in r.stdout and "CPU-side events" in r.stdout
