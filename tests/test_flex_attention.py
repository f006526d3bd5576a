"""FlexAttention for the shared-prompt layout (`--attention flex`, minorpo/fast/flex.py): same numbers, fewer blocks.

PyTorch's FlexAttention has no CPU backward, so on the CPU these tests check the forward only (training with it
needs CUDA; tests/test_cuda.py compares its loss and gradient with SDPA's there). Oracles:
  * the same model with SDPA and the dense [B, T, T] block mask (batches.py). float64 on both sides, different
    kernels (FlexAttention's reference path vs SDPA's math path: another order of summation), so 1e-10 relative;
    a wrong mask (a rejected token seeing the chosen response, say) moves log-probs by 1e-2 or more;
  * for which blocks are skipped: the 128 x 128 blocks of the dense mask that hold no allowed pair, counted here.
"""

import pytest
import torch

from conftest import assert_close
from minorpo.batches import collate_shared_prompt
from minorpo.forward import ForwardSpec, pair_logps
from minorpo.data import DataConfig, load_preferences
from minorpo.fast.flex import block_mask as flex_block_mask
from minorpo.hf.loader import load
from minorpo.train import TrainConfig, train
from tiny_runs import tiny_run_files

pytest.importorskip("torch.nn.attention.flex_attention")
pytestmark = pytest.mark.filterwarnings("ignore:.*flex_attention called without torch.compile")

RTOL = 1e-10  # float64, another kernel (see the module docstring)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    return tiny_run_files(tmp_path_factory.mktemp("flex"), seed=2)


def _model_and_pairs(inputs):
    folder, data = inputs
    model, tok = load(folder, dtype=torch.float64)
    pairs = load_preferences(str(data), tok, DataConfig(max_length=64)).examples
    return model.eval(), tok, pairs


def test_forward_equals_sdpa_with_the_dense_mask(inputs):
    """Hidden states of a shared-layout batch of 6 pairs (rows of unequal length, so padding too), GQA model."""
    model, tok, pairs = _model_and_pairs(inputs)
    assert model.config.num_key_value_heads < model.config.num_attention_heads  # GQA is exercised
    batch = collate_shared_prompt(pairs[:6], 0)
    with torch.no_grad():
        dense = model(batch["input_ids"], attention_mask=batch["attention_mask"],
                      position_ids=batch["position_ids"], return_hidden=True)
        flex = model(batch["input_ids"], attention_mask=flex_block_mask(batch["attention_mask"]),
                     position_ids=batch["position_ids"], return_hidden=True)
    assert_close(flex, dense, rtol=RTOL, atol=1e-12, what="hidden states, flex vs sdpa")


@pytest.mark.parametrize("unpadded", [False, True])
def test_token_logps_equal_sdpa(inputs, unpadded):
    """forward.pair_logps (what training differentiates) with ForwardSpec(attention="flex") vs "sdpa"."""
    model, tok, pairs = _model_and_pairs(inputs)
    batch = collate_shared_prompt(pairs[6:10], 0)
    out = {}
    with torch.no_grad():
        for attention in ("sdpa", "flex"):
            spec = ForwardSpec(layout="shared", unpadded=unpadded, attention=attention, chunk_size=16)
            out[attention] = pair_logps(model, batch, spec)
    for field in ("chosen", "rejected"):
        assert_close(getattr(out["flex"], field), getattr(out["sdpa"], field), rtol=RTOL, atol=1e-12, what=field)
    assert torch.equal(out["flex"].chosen_mask, out["sdpa"].chosen_mask)


def test_skipped_blocks_are_those_the_mask_rules_out():
    """Three shared-layout rows of 300-700 tokens: the BlockMask's skipped 128 x 128 blocks are exactly the blocks
    of the dense mask with no allowed pair, counted by hand; and at this length at least a third of the blocks are
    skipped (causality alone skips n(n-1)/2 of n^2 blocks per row, 15 of 36 at n = 6): work SDPA with a dense mask
    does and FlexAttention does not."""
    from minorpo.data import TokenizedPair
    g = torch.Generator().manual_seed(0)
    pairs = []
    for P, C, R in [(400, 150, 150), (200, 60, 40), (500, 90, 110)]:
        ids = torch.randint(1, 100, (P + C + R,), generator=g).tolist()
        pairs.append(TokenizedPair(where=f"row {len(pairs)}", prompt_ids=ids[:P], chosen_ids=ids[P:P + C],
                                   rejected_ids=ids[P + C:]))
    batch = collate_shared_prompt(pairs, 0)
    allowed = batch["attention_mask"]                                          # [B, T, T]
    B, T, _ = allowed.shape
    bm = flex_block_mask(allowed)
    n = -(-T // 128)
    padded = torch.zeros(B, n * 128, n * 128, dtype=torch.bool)
    padded[:, :T, :T] = allowed | torch.eye(T, dtype=torch.bool)
    any_allowed = padded.view(B, n, 128, n, 128).any(dim=(2, 4))              # [B, n, n] blocks with work
    kept = bm.kv_num_blocks.sum() + (bm.full_kv_num_blocks.sum() if bm.full_kv_num_blocks is not None else 0)
    print(f"\nT = {T}: {int(any_allowed.sum())} of {B * n * n} blocks computed "
          f"({100 * (1 - int(any_allowed.sum()) / (B * n * n)):.1f}% skipped)")
    assert int(kept) == int(any_allowed.sum())
    assert int(any_allowed.sum()) <= (2 / 3) * B * n * n


def test_flex_needs_the_shared_layout_and_cuda(inputs, tmp_path):
    with pytest.raises(ValueError, match="flex.*shared"):
        ForwardSpec(layout="padded", attention="flex")
    with pytest.raises(ValueError, match="attention must be"):
        ForwardSpec(layout="shared", attention="flash")
    folder, data = inputs
    cfg = TrainConfig(model=str(folder), data=str(data), out=str(tmp_path / "run"), layout="shared", attention="flex",
                      device="cpu", max_steps=1, progress=False)
    with pytest.raises(ValueError, match="CUDA only"):
        train(cfg)


@pytest.mark.parametrize("arch", ["mistral", "gemma3"])
def test_sliding_window_layers_equal_sdpa(tmp_path, arch):
    """Sliding-window layers (Mistral: window 8 on every layer; Gemma 3: window 4 on layers 0 and 2, layer 1 global)
    get their own BlockMask (flex.sliding_window): hidden states of a shared-layout batch equal SDPA's with
    the dense mask, which prepare_attention windows in each sequence's own positions (float64, 1e-10 as above).
    The rows (13-24 tokens) are longer than the windows, so the windows do cut allowed pairs (asserted)."""
    from types import SimpleNamespace

    from minorpo.hf.loader import load_model
    from tiny_models import saved
    _, folder = saved(arch, tmp_path / arch)
    model = load_model(folder, dtype=torch.float64).eval()
    g = torch.Generator().manual_seed(3)

    def ids(n):
        return torch.randint(0, 200, (n,), generator=g).tolist()
    pairs = [SimpleNamespace(prompt_ids=ids(p), chosen_ids=ids(c), rejected_ids=ids(r), where=f"pair {i}")
             for i, (p, c, r) in enumerate([(6, 5, 7), (9, 8, 7), (3, 5, 5)])]
    batch = collate_shared_prompt(pairs, 0)
    pos = batch["position_ids"]
    window = min(w for w in {layer.window for layer in model.layers} if w is not None)
    assert (batch["attention_mask"] & (pos[:, :, None] - pos[:, None, :] >= window)).any()
    with torch.no_grad():
        dense = model(batch["input_ids"], attention_mask=batch["attention_mask"], position_ids=pos,
                      return_hidden=True)
        flex = model(batch["input_ids"], attention_mask=flex_block_mask(batch["attention_mask"]), position_ids=pos,
                     return_hidden=True)
    assert_close(flex, dense, rtol=RTOL, atol=1e-12, what=f"{arch} hidden states, flex vs sdpa")


@pytest.mark.slow  # dynamo traces the decoder block (no code generation: the aot_eager backend), ~10 s
def test_compiled_blocks_trace_flex_once_for_all_lengths(inputs):
    """`--compile --attention flex` on a GPU compiles each block with a BlockMask argument. On the CPU (no Triton)
    the same tracing is checked with the aot_eager backend: three batches of different lengths, one graph for all
    of them (dynamic shapes, no recompilation per length), forward equal to the eager dense-mask model (float64,
    1e-10 as above)."""
    import copy

    from torch._dynamo.utils import counters
    model, tok, pairs = _model_and_pairs(inputs)
    compiled = copy.deepcopy(model)
    torch._dynamo.reset()
    for layer in compiled.layers:
        layer.compile(dynamic=True, backend="aot_eager")
    graphs, shapes = [], set()
    for i, n in enumerate([4, 6, 5]):
        batch = collate_shared_prompt(pairs[10 * i:10 * i + n], 0)
        shapes.add(tuple(batch["input_ids"].shape))
        with torch.no_grad():
            want = model(batch["input_ids"], attention_mask=batch["attention_mask"],
                         position_ids=batch["position_ids"], return_hidden=True)
            got = compiled(batch["input_ids"], attention_mask=flex_block_mask(batch["attention_mask"]),
                           position_ids=batch["position_ids"], return_hidden=True)
        assert_close(got, want, rtol=RTOL, atol=1e-12, what=f"batch {i} ({tuple(batch['input_ids'].shape)})")
        graphs.append(counters["stats"]["unique_graphs"])
    print(f"\ngraphs compiled after each batch: {graphs}")
    assert len(shapes) == 3, shapes  # three different lengths and batch sizes
    assert graphs[0] >= 1 and graphs[1] == graphs[0] and graphs[2] == graphs[0], graphs
    torch._dynamo.reset()


def test_under_autocast_flex_gets_bf16_inputs_and_matches_sdpa_accuracy(inputs, monkeypatch):
    """Under bf16 autocast, SDPA's inputs are cast to bf16 by autocast; flex_attention is not on autocast's list,
    so minorpo casts q, k, v itself (RoPE leaves q and k float32 while v is bf16: a compiled CUDA kernel would get
    mixed dtypes). Checked: the kernel receives bf16 q, k, v, and the hidden states' error against the float64
    model is within 1.5x SDPA's under the same autocast (the "as accurate as the other kernel" oracle of
    tests/test_cuda.py; measured 9.2e-3 vs 9.4e-3)."""
    import copy

    import minorpo.fast.flex as M
    model, tok, pairs = _model_and_pairs(inputs)
    model = model.float()
    m64 = copy.deepcopy(model).double()
    batch = collate_shared_prompt(pairs[:6], 0)
    seen = []
    real = M._flex_attention

    def spy(cuda):
        f = real(cuda)

        def call(q, k, v, **kw):
            seen.append((q.dtype, k.dtype, v.dtype))
            return f(q, k, v, **kw)
        return call
    monkeypatch.setattr(M, "_flex_attention", spy)
    kw = dict(position_ids=batch["position_ids"], return_hidden=True)
    with torch.no_grad():
        ref = m64(batch["input_ids"], attention_mask=batch["attention_mask"], **kw)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            dense = model(batch["input_ids"], attention_mask=batch["attention_mask"], **kw)
            flex = model(batch["input_ids"], attention_mask=flex_block_mask(batch["attention_mask"]), **kw)
    assert seen and all(d == (torch.bfloat16,) * 3 for d in seen), seen

    def err(x):
        return ((x.double() - ref).norm() / ref.norm()).item()
    print(f"\nerror vs float64 under bf16 autocast: sdpa {err(dense):.3e}, flex {err(flex):.3e}")
    assert err(flex) <= 1.5 * err(dense)
