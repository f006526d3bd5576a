"""The training loop's speed switches change speed, not results: the shared-prompt layout, unchunked log-probs,
length bucketing, --no-export.

Oracles: the same step computed another way. With plain SGD the parameters after one step are p - lr * grad, so
equal updates mean equal gradients (tests/test_train.py explains why AdamW would hide a mis-scaled one). float64.
Tolerances:
  * same rows, another order of summation (unchunked vs chunked log-probs): parameters to 1e-10 relative, ~10^5
    ulps of headroom;
  * shared vs padded layout: the loss to 1e-10 (the forward computes every position identically), the update to
    1e-5 of its largest entry. Why not 1e-10: minorpo's RMSNorm, like transformers' LlamaRMSNorm, normalizes in
    float32 even in a float64 model, and the gradient reaching a prompt position is summed over chosen and
    rejected BEFORE that float32 section in the shared layout (one row) and after it in the padded one (two
    rows), so it is rounded differently - measured 6e-8 of the largest update. 1e-5 leaves >100x headroom, and a
    wrong normalization (a token or pair count off) moves the update by more than 1e-2.
"""

import pytest
import torch

from conftest import assert_close
from minorpo.batches import row_length
from minorpo.forward import ForwardSpec
from minorpo.fast.buckets import bucketed_step_indices
from minorpo.hf.loader import load
from minorpo.train import step_indices
from tiny_runs import metric_rows, pairs_of, tiny_run_files, train_tiny, trainable

RTOL, ATOL = 1e-10, 1e-12  # float64, same rows (see the module docstring)
LAYOUT_RTOL = 1e-5  # shared vs padded: float32 RMSNorm in backward (see the module docstring)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    return tiny_run_files(tmp_path_factory.mktemp("layouts"), seed=1)


def _run(inputs, out, dtype=torch.float64, **overrides):
    """One SGD step of full fine-tuning, no clipping, lam 0.5, 4 pairs (tiny_runs.TINY_RUN for the rest)."""
    kw = dict(lora_r=0, optimizer="sgd", max_grad_norm=0.0, lam=0.5, batch_size=4)
    return train_tiny(inputs, out, dtype, **{**kw, **overrides})


def _assert_same_step(inputs, a, b, what, tol=RTOL):
    """Equal logged loss (1e-10) and equal SGD updates: |update_a - update_b| <= tol * max |update_b| per tensor."""
    (ma, la), (mb, lb) = a, b
    base, _ = load(inputs[0], dtype=torch.float64)
    p0 = dict(base.named_parameters())
    pa, pb = trainable(ma), trainable(mb)
    for n in pa:
        ua, ub = pa[n] - p0[n], pb[n] - p0[n]
        assert_close(ua, ub, rtol=tol, atol=tol * ub.abs().max().item(), what=f"{what}: update of {n}")
    assert la["loss"] == pytest.approx(lb["loss"], rel=RTOL)


def test_one_step_moves_the_weights(inputs, tmp_path):
    """Guard for the equalities below: the step really changes the weights (else equal would mean nothing)."""
    model, _ = _run(inputs, tmp_path / "run")
    ref, _ = load(inputs[0], dtype=torch.float64)
    ref = dict(ref.named_parameters())
    assert max((p - ref[n]).abs().max().item() for n, p in trainable(model).items()) > 1e-4


@pytest.mark.parametrize("preset", ["paper", "trl", "official"])
@pytest.mark.parametrize("method", ["orpo", "dpo"])
def test_shared_layout_step_equals_padded(inputs, tmp_path, preset, method):
    """layout=shared (prompt once, block mask) vs layout=padded: the same SGD step, the same logged loss, and the
    same held-out metrics at step 0. Presets: response-only NLL (paper), prompt+response token-mean NLL (trl),
    and official (NLL drops pad ids, an extra pad target) - each counts tokens differently. DPO runs the
    reference model through the layout too."""
    kw = dict(preset=preset, method=method)
    padded = _run(inputs, tmp_path / "padded", layout="padded", **kw)
    shared = _run(inputs, tmp_path / "shared", layout="shared", **kw)
    _assert_same_step(inputs, shared, padded, f"{preset}/{method}", LAYOUT_RTOL)
    ev_p, ev_s = metric_rows(tmp_path / "padded")[0], metric_rows(tmp_path / "shared")[0]
    assert "eval_logps/chosen" in ev_p
    for k in ev_p:
        assert ev_s[k] == pytest.approx(ev_p[k], rel=RTOL, abs=ATOL), k


def test_shared_layout_accumulation_uses_global_counts(inputs, tmp_path):
    """Shared layout, 4 micro-batches of 1 pair (each padded to its own length, unequal token counts) vs the padded
    layout's one batch of 4: equal steps only if each micro-batch is normalized by the GLOBAL token count (trl
    preset: one token mean over the whole batch)."""
    big = _run(inputs, tmp_path / "big", layout="padded", preset="trl", batch_size=4, grad_accum=1)
    acc = _run(inputs, tmp_path / "acc", layout="shared", preset="trl", batch_size=1, grad_accum=4)
    _assert_same_step(inputs, acc, big, "shared, accumulated", LAYOUT_RTOL)


@pytest.mark.parametrize("preset", ["trl", "official"])
def test_unpadded_rows_step_equal_padded(inputs, tmp_path, preset):
    """Shared layout, each row at its own length (unpadded=True: 4 forwards of one row) vs the micro-batch padded to
    its longest row: the same positions computed the same way, so the same step to 1e-10 (float64), the same
    loss and the same held-out metrics (including the logits/* means, merged over rows). trl: prompt+response
    NLL; official: the extra pad target after each response, whose position the cut rows must keep."""
    padded = _run(inputs, tmp_path / "padded", layout="shared", preset=preset)
    unpadded = _run(inputs, tmp_path / "unpadded", layout="shared", unpadded=True, preset=preset)
    _assert_same_step(inputs, unpadded, padded, "unpadded rows")
    for k, v in padded[1].items():
        if k != "step_time":
            assert unpadded[1][k] == pytest.approx(v, rel=RTOL, abs=ATOL), k


def test_unchunked_log_probs_step_equals_chunked(inputs, tmp_path):
    """chunk_size=0 (full [2B, T, V] logits, forward.pair_logps's unchunked branch) vs chunks of 3 positions (many chunks,
    logits recomputed in backward): the same step."""
    chunked = _run(inputs, tmp_path / "chunked", chunk_size=3, preset="trl")
    whole = _run(inputs, tmp_path / "whole", chunk_size=0, preset="trl")
    _assert_same_step(inputs, whole, chunked, "unchunked")


def test_loss_spec_rejects_unknown_layout_and_unchunked_shared():
    with pytest.raises(ValueError, match="layout must be 'padded' or 'shared'"):
        ForwardSpec(layout="packed")
    with pytest.raises(ValueError, match="chunk_size=0"):
        ForwardSpec(layout="shared", chunk_size=0)
    with pytest.raises(ValueError, match="unpadded rows"):
        ForwardSpec(layout="padded", unpadded=True)


def test_length_buckets_keep_each_windows_pairs_and_cut_padding(inputs):
    """bucketed_step_indices: over each window of W steps, exactly the pairs of those W unbucketed steps (a
    permutation of them: nothing dropped or repeated), in batches of one global batch each; and less padding.

    Padding oracle: for a fixed batch size, cutting the length-sorted list into consecutive batches minimizes
    sum over batches of (batch size x longest row), so the padded tokens cannot exceed the unbucketed ones;
    with these 40 random lengths they are strictly fewer.
    """
    folder, data = inputs
    _, tok = load(folder)
    pairs = pairs_of(data, tok)
    lengths = [row_length(p, "padded") for p in pairs]
    G, W = 2, 5
    plain_tokens = bucket_tokens = 0
    for w in range(3):  # three windows: the third crosses the first epoch's end (40 pairs = 20 steps of 2)
        steps = range(w * W, (w + 1) * W)
        plain = [step_indices(len(pairs), s, G, seed=7) for s in steps]
        bucketed = [bucketed_step_indices(lengths, s, G, seed=7, window=W, step_indices=step_indices) for s in steps]
        assert all(len(b) == G for b in bucketed)
        assert sorted(i for b in bucketed for i in b) == sorted(i for b in plain for i in b)
        plain_tokens += sum(G * max(lengths[i] for i in b) for b in plain)
        bucket_tokens += sum(G * max(lengths[i] for i in b) for b in bucketed)
    assert bucket_tokens < plain_tokens
    # a pure function of the step: asking again (as a resumed run does) gives the same batch
    assert (bucketed_step_indices(lengths, 7, G, 7, W, step_indices)
            == bucketed_step_indices(lengths, 7, G, 7, W, step_indices))


def test_length_buckets_resume_is_exact(inputs, tmp_path):
    """With length bucketing, 4 steps in one go == 2 steps, checkpoint, resume for 2 more (bit-equal weights; CPU,
    same seed, deterministic). The window (3) straddles the checkpoint, so the resumed run must rebuild it."""
    kw = dict(length_buckets=3, batch_size=2, optimizer="adamw", lr=0.01, lora_r=4, lora_alpha=8)
    whole, _ = _run(inputs, tmp_path / "whole", torch.float32, max_steps=4, **kw)
    _run(inputs, tmp_path / "resumed", torch.float32, max_steps=2, save_every=2, **kw)
    resumed, _ = _run(inputs, tmp_path / "resumed", torch.float32, max_steps=4, save_every=2, resume="latest", **kw)
    for n, p in trainable(whole).items():
        assert torch.equal(trainable(resumed)[n], p), n
    steps = [r["step"] for r in metric_rows(tmp_path / "resumed")]
    assert steps == [0, 1, 2, 3, 4]


def test_no_export_writes_no_model(inputs, tmp_path):
    _run(inputs, tmp_path / "run", torch.float32, export=False, lora_r=4, lora_alpha=8)
    assert (tmp_path / "run" / "metrics.jsonl").exists()
    assert not (tmp_path / "run" / "final").exists() and not (tmp_path / "run" / "adapter").exists()


@pytest.mark.slow  # ~30 s on 2 CPU cores: inductor compiles the block once (C++ code generation)
def test_compiled_blocks_step_equals_eager(inputs, tmp_path):
    """compile=True (torch.compile of each decoder block, in place) vs eager: the same 2 AdamW steps with LoRA in
    the shared layout (the block-mask path; batch lengths differ between steps: dynamic shapes). float32: inductor
    fuses elementwise ops and reorders their arithmetic, so results agree to float32 rounding; rtol 1e-5 as in
    tests/test_train_trl.py (two float32 runs of the same math), far below what a wrong mask or position moves."""
    kw = dict(layout="shared", max_steps=2, batch_size=2, optimizer="adamw", lr=0.01, lora_r=4, lora_alpha=8)
    eager, le = _run(inputs, tmp_path / "eager", torch.float32, **kw)
    compiled, lc = _run(inputs, tmp_path / "compiled", torch.float32, compile=True, **kw)
    assert all(layer._compiled_call_impl is not None for layer in compiled.layers)  # compiled in place
    for n, p in trainable(eager).items():
        assert_close(trainable(compiled)[n], p, rtol=1e-5, atol=1e-6, what=n)
    assert lc["loss"] == pytest.approx(le["loss"], rel=1e-5)
