"""--fsdp (minorpo/run/fsdp.py): torchrun with 2 CPU processes (gloo) against 1 process without --fsdp.

Oracles: the same global batch trained without sharding (one process, train.py's plain path: 2 ranks x 1 pair x 2
micro-batches vs 1 process x 4 pairs); an uninterrupted --fsdp run for the killed-and-resumed one (bit-equal);
transformers loading the exported model. With SGD the update is -lr * gradient, so comparing parameters compares
gradients; float32 gradients summed over ranks in another order than one process sums them differ by rounding
only (measured below 1e-6 relative), a missing or doubled sum by half or all of the update.
Each torchrun launch costs a few seconds: every launch below exercises several options at once.
"""

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import fields
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import assert_close
from minorpo.run.checkpoint import list_checkpoints
from minorpo.tools.cli import main
from minorpo.train import TrainConfig, train
from tiny_runs import RANK_SCRIPT, tiny_run_files

pytestmark = pytest.mark.slow
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
BASE = dict(lora_r=4, lora_alpha=8.0, lr=0.05, optimizer="sgd", max_grad_norm=0.0, warmup_steps=0,
            schedule="constant", preset="trl", eval_pairs=4, eval_every=0, save_every=0, max_length=64,
            progress=False)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    return tiny_run_files(tmp_path_factory.mktemp("fsdp"))


def _flags(kw: dict) -> list:
    types = {f.name: f.type for f in fields(TrainConfig)}
    out = []
    for k, v in kw.items():
        flag = "--" + k.replace("_", "-")
        if types[k] in (bool, "bool"):
            out.append(flag if v else "--no-" + k.replace("_", "-"))
        else:
            out += [flag, str(v)]
    return out


def one_process(inputs, out, **kw):
    """The plain data-parallel path, in this process (world size 1)."""
    folder, data = inputs
    return train(TrainConfig(model=str(folder), data=str(data), out=str(out), **{**BASE, **kw}))


def torchrun(inputs, out, nproc=2, script=None, wait=True, env=None, **kw):
    folder, data = inputs
    target = [str(script)] if script else ["-m", "minorpo"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc), *target,
           "train", "--model", str(folder), "--data", str(data), "--out", str(out), "--fsdp", *_flags({**BASE, **kw})]
    if not wait:
        return subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    r = subprocess.run(cmd, env={**ENV, **(env or {})}, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return r


def kill_with_workers(pid: int):
    """SIGKILL torchrun's workers, then torchrun (it starts each worker in a session of its own, so killing its
    process group would leave them running)."""
    workers = [int(d.name) for d in Path("/proc").iterdir() if d.name.isdigit() and _parent(d) == pid]
    assert len(workers) == 2, workers
    for w in workers + [pid]:
        os.kill(w, signal.SIGKILL)
    deadline = time.time() + 30
    while time.time() < deadline and any(_running(w) for w in workers):  # gone, or a zombie holding nothing
        time.sleep(0.01)


def _running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _parent(proc_dir: Path):
    try:
        return int((proc_dir / "stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def losses(out):
    return [json.loads(x)["loss"] for x in (Path(out) / "metrics.jsonl").read_text().splitlines()[1:]]


def test_lora_with_accumulation_checkpointing_offload_equals_one_process(inputs, tmp_path):
    """LoRA on every linear, SGD, 3 steps; FSDP with 2 micro-batches per step (gradient sync on the last only),
    gradient checkpointing around the sharded blocks, and shards + gradients offloaded to CPU memory. The adapter
    and the merged export equal the one-process run's to float32 rounding (rtol 1e-5, as the plain two-process
    test in test_train.py; measured 4e-7), and transformers loads the export and gives the same logits."""
    kw = dict(max_steps=3, lora_targets="all-linear", gradient_checkpointing=True)
    one_process(inputs, tmp_path / "one", batch_size=4, **kw)
    launcher = tmp_path / "rank.py"  # each rank also reports the threads left after train() (see test_train.py)
    launcher.write_text(RANK_SCRIPT)
    torchrun(inputs, tmp_path / "two", script=launcher, env={"THREADS_DIR": str(tmp_path)}, batch_size=1, grad_accum=2,
             fsdp_cpu_offload=True, **kw)
    for rank in (0, 1):
        names = (tmp_path / f"rank{rank}").read_text().split()
        assert "python" in names and not any("gloo" in n for n in names), (rank, names)
    one = load_file(tmp_path / "one" / "adapter" / "adapter_model.safetensors")
    two = load_file(tmp_path / "two" / "adapter" / "adapter_model.safetensors")
    assert one.keys() == two.keys() and len(one) == 2 * 2 * 7  # A and B, 2 layers, 7 linears each
    assert max(v.abs().max().item() for k, v in one.items() if "lora_B" in k) > 1e-4  # B moved from 0
    for k in one:
        assert_close(two[k], one[k], rtol=1e-5, atol=1e-6, what=k)
    assert losses(tmp_path / "two") == pytest.approx(losses(tmp_path / "one"), rel=1e-5)
    transformers = pytest.importorskip("transformers")
    ids = torch.tensor([[4, 16, 7, 18, 12, 22, 9]])
    logits = {}
    for run in ("one", "two"):
        m = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / run / "final")).eval()
        with torch.no_grad():
            logits[run] = m(ids).logits
    assert_close(logits["two"], logits["one"], rtol=1e-5, atol=1e-5, what="merged export, FSDP vs one process")


def test_full_fine_tuning_with_clipping_equals_one_process(inputs, tmp_path):
    """Full fine-tuning (the tied embedding/head sharded in the root unit), SGD, 2 steps with clipping to norm 1
    (the norms are ~5-8, so every step is clipped: a norm taken over one rank's shards only would scale the update
    wrongly), 2 micro-batches, --no-reshard-after-forward. Parameters equal the one-process run's to float32
    rounding (rtol 1e-5, measured ~1e-7), and so do the logged (clipped-from) gradient norms."""
    kw = dict(lora_r=0, max_steps=2, max_grad_norm=1.0)
    one_process(inputs, tmp_path / "one", batch_size=4, **kw)
    torchrun(inputs, tmp_path / "two", batch_size=1, grad_accum=2, reshard_after_forward=False, **kw)
    one = load_file(tmp_path / "one" / "final" / "model.safetensors")
    two = load_file(tmp_path / "two" / "final" / "model.safetensors")
    base = load_file(inputs[0] / "model.safetensors")
    assert one.keys() == two.keys() and "model.layers.1.mlp.down_proj.weight" in one
    for k in one:
        assert (one[k] - base[k]).abs().max() > 0, k  # every weight trained
        assert_close(two[k], one[k], rtol=1e-5, atol=1e-6, what=k)
    norms = {run: [json.loads(x)["grad_norm"] for x in (tmp_path / run / "metrics.jsonl").read_text().splitlines()[1:]]
             for run in ("one", "two")}
    assert min(norms["one"]) > 1.0 and norms["two"] == pytest.approx(norms["one"], rel=1e-5)


def test_bf16_policy_equals_one_process_to_bf16_accuracy(inputs, tmp_path):
    """--precision bf16 under --fsdp is FSDP's MixedPrecisionPolicy (bf16 compute, float32 shards, float32
    reduce-scatter). One SGD step of full fine-tuning over the same 4 pairs; per tensor the update difference
    ||u_2 - u_1|| / ||u_1||.
    Oracle 1, the same policy in one process (torchrun, 1 rank, 4 pairs): the gradients are bf16 (8 significant
    bits); one process rounds the batch's gradient once, two ranks round each half and add in float32: ~2^-9
    (measured 2.1e-3 to 2.7e-3): tolerance 2^-6; the embedding 2^-4 (measured 1.6e-2: PyTorch's CPU embedding
    backward sums a token's occurrences in bf16, as in test_train.py's bf16 test, which measured the same numbers).
    Oracle 2, the plain path's --precision bf16 (autocast over float32 weights, one process): the policy also keeps
    the residual stream and norm weights in bf16 where autocast keeps float32, so every update differs by ~1%
    (measured 0.9e-2 to 2.3e-2): tolerance 2^-4. A missing or doubled sum over ranks changes an update by half or
    all of itself."""
    kw = dict(lora_r=0, max_steps=1, precision="bf16")
    one_process(inputs, tmp_path / "autocast", batch_size=4, **kw)
    torchrun(inputs, tmp_path / "one", nproc=1, batch_size=4, **kw)
    torchrun(inputs, tmp_path / "two", batch_size=2, **kw)
    base = load_file(inputs[0] / "model.safetensors")
    two = load_file(tmp_path / "two" / "final" / "model.safetensors")
    for oracle, tol, tol_embed in (("one", 2 ** -6, 2 ** -4), ("autocast", 2 ** -4, 2 ** -4)):
        ref = load_file(tmp_path / oracle / "final" / "model.safetensors")
        errs = {}
        for k in ref:
            assert two[k].dtype == torch.float32  # the shards (master weights) are exported
            u1, u2 = ref[k] - base[k], two[k] - base[k]
            errs[k] = ((u2 - u1).norm() / u1.norm()).item()
        embed = errs.pop("model.embed_tokens.weight")
        print(f"\nFSDP bf16 policy, 2 ranks vs {oracle}: update rel. difference <= {max(errs.values()):.2e} "
              f"(embedding {embed:.2e})")
        assert embed <= tol_embed, (oracle, embed)
        assert all(e <= tol for e in errs.values()), (oracle, errs)


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds torchrun's workers through /proc (Linux)")
def test_sigkill_then_resume_is_bit_exact(inputs, tmp_path):
    """An --fsdp run killed (SIGKILL to torchrun and both ranks) after a sharded checkpoint and resumed ends with
    exactly the adapter and merged export of an uninterrupted --fsdp run: AdamW (its state sharded in the
    checkpoint), LoRA dropout (each rank's RNG state restored), 2 micro-batches, a warmup + cosine schedule; resumed
    with CPU offload and --no-reshard-after-forward switched on (memory switches a resume may change, run/folders.py).
    CPU, same world size: deterministic, so bit-equal. (Not compared with one process: under dropout each rank draws
    its own masks.)"""
    kw = dict(optimizer="adamw", lr=0.01, warmup_steps=3, schedule="cosine", lora_dropout=0.1, max_steps=24,
              save_every=4, batch_size=1, grad_accum=2)
    torchrun(inputs, tmp_path / "whole", **kw)
    out = tmp_path / "killed"
    proc = torchrun(inputs, out, wait=False, **kw)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        done = [int(p.name.split("-")[1]) for p in list_checkpoints(out)]
        if done and max(done) >= 8:
            break
        time.sleep(0.005)
    assert proc.poll() is None, "the run finished before it could be killed; make it longer"
    kill_with_workers(proc.pid)
    proc.wait()
    killed_at = max(int(p.name.split("-")[1]) for p in list_checkpoints(out))
    assert killed_at < 24 and not (out / "final").exists()
    r = torchrun(inputs, out, resume="latest", fsdp_cpu_offload=True, reshard_after_forward=False, **kw)
    assert "resumed from" in r.stdout
    for f in ("adapter/adapter_model.safetensors", "final/model.safetensors"):
        whole, resumed = load_file(tmp_path / "whole" / f), load_file(out / f)
        assert whole.keys() == resumed.keys()
        for k in whole:
            assert torch.equal(whole[k], resumed[k]), (f, k)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(25))  # rows after the checkpoint were dropped and redone


def test_fsdp_errors_are_user_errors(inputs, tmp_path, monkeypatch, capsys):
    """Without torchrun, --fsdp says how to launch it; options of --fsdp without it, and bf16-weights, are refused."""
    folder, data = inputs
    args = ["train", "--model", str(folder), "--data", str(data), "--out", str(tmp_path / "run")]
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert main(args + ["--fsdp"]) == 2
    assert "torchrun --nproc-per-node" in capsys.readouterr().err
    assert main(args + ["--fsdp-cpu-offload"]) == 2
    assert "options of --fsdp" in capsys.readouterr().err
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert main(args + ["--fsdp", "--precision", "bf16-weights"]) == 2
    assert "use --precision bf16" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()  # refused before any work
