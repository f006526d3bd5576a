"""The training loop: accumulation, checkpointing switch, DDP, crash-and-resume, logging, CLI.

Oracles: the same computation done another way (one big batch vs accumulated micro-batches; 1 process vs 2;
checkpointing on vs off; an uninterrupted run vs a killed-and-resumed one). With plain SGD the parameters after
one step are p - lr * grad, so comparing parameters compares gradients (AdamW's first step is ~lr * sign(grad)
and would hide a wrongly scaled gradient).
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import assert_close
from minorpo.hf.loader import load
from minorpo.run.checkpoint import list_checkpoints
from tiny_runs import RANK_SCRIPT, metric_rows, train_tiny, trainable


@pytest.mark.parametrize("preset", ["paper", "trl"])
def test_gradient_accumulation_equals_one_big_batch(tiny_run_inputs, tmp_path, preset):
    """4 micro-batches of 1 pair (each padded to its own length, so token counts differ) vs 1 batch of 4 pairs.

    float64 throughout, SGD: the parameters after one step differ only by float64 summation order, so 1e-10
    relative is ~10^5 ulps of headroom and still catches any weighting error (TRL #3716 was ~10% off).
    Both presets: 'trl' pools the NLL over tokens (where per-micro-batch normalization goes wrong), 'paper'
    averages per sequence.
    """
    kw = dict(optimizer="sgd", preset=preset, max_grad_norm=0.0, lora_r=0, method="orpo", lam=0.5)
    big, _ = train_tiny(tiny_run_inputs, tmp_path / "big", torch.float64, batch_size=4, grad_accum=1, **kw)
    acc, _ = train_tiny(tiny_run_inputs, tmp_path / "acc", torch.float64, batch_size=1, grad_accum=4, **kw)
    ref, _ = load(tiny_run_inputs[0], dtype=torch.float64)
    big_p, acc_p, ref_p = trainable(big), trainable(acc), dict(ref.named_parameters())
    moved = max((big_p[n] - ref_p[n]).abs().max().item() for n in big_p)
    assert moved > 1e-4  # the step did something
    for n in big_p:
        assert_close(acc_p[n], big_p[n], rtol=1e-10, atol=1e-12, what=n)
    # the same with AdamW and LoRA, as a user would run it (float64: equal to ~1e-10 as above)
    big, b_last = train_tiny(tiny_run_inputs, tmp_path / "big2", torch.float64, batch_size=4, grad_accum=1,
                             preset=preset)
    acc, a_last = train_tiny(tiny_run_inputs, tmp_path / "acc2", torch.float64, batch_size=1, grad_accum=4,
                             preset=preset)
    for n, p in trainable(big).items():
        assert_close(trainable(acc)[n], p, rtol=1e-10, atol=1e-12, what=n)
    # the logged global-batch loss is the same number too
    assert b_last["loss"] == pytest.approx(a_last["loss"], rel=1e-10)


def test_gradient_checkpointing_gives_identical_parameters(tiny_run_inputs, tmp_path):
    """Checkpointing recomputes the same ops in the same order: parameters after 3 steps are bit-equal."""
    on, _ = train_tiny(tiny_run_inputs, tmp_path / "on", max_steps=3, batch_size=2, gradient_checkpointing=True)
    off, _ = train_tiny(tiny_run_inputs, tmp_path / "off", max_steps=3, batch_size=2, gradient_checkpointing=False)
    for n, p in trainable(off).items():
        assert torch.equal(trainable(on)[n], p), n


def test_run_folder_outputs(tiny_run_inputs, tmp_path):
    """metrics.jsonl with TRL's names, eval rows, config, adapter and merged model that transformers loads."""
    out = tmp_path / "run"
    model, last = train_tiny(tiny_run_inputs, out, max_steps=4, batch_size=2, eval_every=2, save_every=2)
    rows = metric_rows(out)
    assert [r["step"] for r in rows] == [0, 1, 2, 3, 4]
    for key in ("loss", "nll_loss", "odds_ratio_loss", "log_odds_ratio", "log_odds_chosen", "rewards/chosen",
                "rewards/rejected", "rewards/accuracies", "rewards/margins", "logps/chosen", "logps/rejected",
                "lr", "grad_norm"):
        assert key in rows[1], key
    assert "eval_logps/chosen" in rows[0] and "eval_logps/chosen" in rows[2] and "eval_logps/chosen" not in rows[1]
    # loss = nll + lam * L_OR, recomputed from the logged parts (paper preset: exact up to float32 printing)
    r = rows[3]
    assert r["loss"] == pytest.approx(r["nll_loss"] + 0.1 * r["odds_ratio_loss"], rel=1e-5)
    assert json.loads((out / "config.json").read_text())["lora_r"] == 4
    assert [p.name for p in list_checkpoints(out)] == ["step-000002", "step-000004"]
    assert (out / "adapter" / "adapter_config.json").exists()
    # the merged export equals the adapted model
    merged, _ = load(out / "final")
    ids = torch.tensor([[4, 16, 7, 18, 12, 22, 9]])
    with torch.no_grad():
        assert_close(merged(ids), model(ids), rtol=1e-5, atol=1e-5, what="merged export vs LoRA model")


def _cli(out, folder, data, *extra):
    return [sys.executable, "-m", "minorpo", "train", "--model", str(folder), "--data", str(data), "--out", str(out),
            "--lora-r", "4", "--lora-alpha", "8", "--lr", "0.01", "--warmup-steps", "3", "--batch-size", "2",
            "--eval-pairs", "4", "--eval-every", "0", "--max-length", "64", "--no-progress", *extra]


def test_sigkill_then_resume_equals_uninterrupted(tiny_run_inputs, tmp_path):
    """A run killed with SIGKILL mid-way and resumed ends with exactly the parameters of an uninterrupted run
    (same seed, CPU: deterministic, so bit-equal)."""
    folder, data = tiny_run_inputs
    steps = ["--max-steps", "150", "--save-every", "5", "--lora-dropout", "0.1"]  # dropout: RNG state must resume
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(_cli(tmp_path / "whole", folder, data, *steps), check=True, env=env, capture_output=True)
    out = tmp_path / "killed"
    proc = subprocess.Popen(_cli(out, folder, data, *steps), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        done = [int(p.name.split("-")[1]) for p in list_checkpoints(out)]
        if done and max(done) >= 20:
            break
        time.sleep(0.005)
    assert proc.poll() is None, "the run finished before it could be killed; make it longer"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = max(int(p.name.split("-")[1]) for p in list_checkpoints(out))
    assert killed_at < 150 and not (out / "final").exists()
    r = subprocess.run(_cli(out, folder, data, *steps, "--resume"), env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "resumed from" in r.stdout
    whole = load_file(tmp_path / "whole" / "final" / "model.safetensors")
    resumed = load_file(out / "final" / "model.safetensors")
    for k in whole:
        assert torch.equal(whole[k], resumed[k]), k
    rows = metric_rows(out)
    assert [r["step"] for r in rows] == list(range(151))  # rows after the checkpoint were dropped and redone


def test_truncated_checkpoint_falls_back_to_previous(tiny_run_inputs, tmp_path):
    folder, data = tiny_run_inputs
    out = tmp_path / "run"
    subprocess.run(_cli(out, folder, data, "--max-steps", "6", "--save-every", "2", "--keep-checkpoints", "3"),
                   check=True, capture_output=True)
    newest = list_checkpoints(out)[-1]
    w = newest / "weights.safetensors"
    w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])  # a half-written file, as a full disk would leave
    r = subprocess.run(_cli(out, folder, data, "--max-steps", "8", "--save-every", "2", "--resume"),
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "skipping damaged checkpoint step-000006" in r.stdout
    assert "resumed from" in r.stdout and "step-000004" in r.stdout


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="lists threads through /proc (Linux)")
def test_two_process_gloo_equals_one_process(tiny_run_inputs, tmp_path):
    """torchrun with 2 CPU processes (gloo) ends with the parameters of 1 process over the same global batch.

    Global batch 4 = 2 ranks x 2 pairs vs 1 process x 4 pairs (trl preset, token-pooled NLL). SGD, float32:
    the all-reduce sums the two ranks' gradients in another order, so parameters agree to float32 rounding
    (rtol 1e-5 over 3 steps), not bit-for-bit.
    """
    folder, data = tiny_run_inputs
    common = ["--max-steps", "3", "--save-every", "0", "--optimizer", "sgd", "--lr", "0.05", "--preset", "trl",
              "--max-grad-norm", "0"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(_cli(tmp_path / "one", folder, data, *common, "--batch-size", "4"), check=True, env=env,
                   capture_output=True)
    # each rank runs `minorpo train` (cli.main), then reports the threads its process still has
    launcher = tmp_path / "rank.py"
    launcher.write_text(RANK_SCRIPT)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533",
           str(launcher)] + _cli(tmp_path / "two", folder, data, *common, "--batch-size", "2")[3:]
    r = subprocess.run(cmd, env={**env, "THREADS_DIR": str(tmp_path)}, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    # After train() returns, gloo's worker threads must be gone (destroy_process_group joined them). Were they left,
    # one freeing a tensor during interpreter shutdown would abort the process now and then (see
    # minorpo.run.distributed.Distributed.start): this checks the cause every run instead of waiting for the rare crash.
    for rank in (0, 1):
        names = (tmp_path / f"rank{rank}").read_text().split()
        assert "python" in names and not any("gloo" in n for n in names), (rank, names)
    one = load_file(tmp_path / "one" / "adapter" / "adapter_model.safetensors")
    two = load_file(tmp_path / "two" / "adapter" / "adapter_model.safetensors")
    base = load_file(Path(folder) / "model.safetensors")
    assert one.keys() == two.keys() and len(one) > 0
    assert max(v.abs().max().item() for k, v in one.items() if "lora_B" in k) > 1e-4  # B moved from 0
    for k in one:
        assert_close(two[k], one[k], rtol=1e-5, atol=1e-6, what=k)
    assert base  # the base checkpoint was read (sanity)
    l1 = [json.loads(x)["loss"] for x in (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()[1:]]
    l2 = [json.loads(x)["loss"] for x in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()[1:]]
    assert l2 == pytest.approx(l1, rel=1e-5)


def test_two_process_bf16_master_weights_equal_one_process(tiny_run_inputs, tmp_path):
    """torchrun, 2 CPU processes, full fine-tuning with bf16 weights and float32 masters (minorpo/fast/master.py): the
    gradients reach the masters through hooks and are summed over ranks there. One SGD step over a global batch of
    4 pairs (2 x 2 vs 1 x 4): the masters' update equals the one-process update to bf16 accuracy, measured as
    ||update_2 - update_1|| / ||update_1|| per tensor. Why not closer: the gradients are bf16 (8 significant bits);
    one process rounds the batch's gradient once, two processes round each half and add in float32: ~2^-9
    (measured 2.1e-3 to 2.6e-3): tolerance 2^-6. The tied embedding is worse, and not because of minorpo:
    PyTorch's CPU embedding backward sums a token's occurrences in bf16 (checked by hand: a token seen 200 times
    gets 1.7% error against 0.1% for one rounding), and its gradient is the bf16 sum of that and the output head's:
    measured 1.6e-2, tolerance 2^-4. A missing or doubled all-reduce changes an update by half or all of itself."""
    folder, data = tiny_run_inputs
    common = ["--max-steps", "1", "--save-every", "1", "--optimizer", "sgd", "--lr", "0.05", "--preset", "trl",
              "--max-grad-norm", "0", "--lora-r", "0", "--precision", "bf16-weights"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(_cli(tmp_path / "one", folder, data, *common, "--batch-size", "4"), check=True, env=env,
                   capture_output=True)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29534",
           "-m", "minorpo"] + _cli(tmp_path / "two", folder, data, *common, "--batch-size", "2")[3:]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    one = load_file(tmp_path / "one" / "checkpoints" / "step-000001" / "weights.safetensors")
    two = load_file(tmp_path / "two" / "checkpoints" / "step-000001" / "weights.safetensors")
    base = load_file(Path(folder) / "model.safetensors")
    assert one.keys() == two.keys() and "model.layers.0.mlp.up_proj.weight" in one
    errs = {}
    for k in one:
        assert one[k].dtype == torch.float32 and two[k].dtype == torch.float32  # masters
        u1, u2 = one[k] - base[k].to(torch.bfloat16).float(), two[k] - base[k].to(torch.bfloat16).float()
        assert u1.abs().max() > 0, k
        errs[k] = ((u2 - u1).norm() / u1.norm()).item()
    embed = errs.pop("model.embed_tokens.weight")
    print(f"\nbf16 masters, 2 ranks vs 1 process: update rel. difference <= {max(errs.values()):.2e} "
          f"(embedding {embed:.2e})")
    assert embed <= 2 ** -4, embed
    assert all(e <= 2 ** -6 for e in errs.values()), errs


def test_cli_help_explains_every_option():
    r = subprocess.run([sys.executable, "-m", "minorpo", "train", "--help"], capture_output=True, text=True)
    assert r.returncode == 0
    for flag in ("--lam", "--lambda", "--lora-r", "--grad-accum", "--gradient-checkpointing", "--resume",
                 "--precision", "--preset", "--method"):
        assert flag in r.stdout, flag
