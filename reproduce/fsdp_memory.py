"""What one GPU holds when minorpo trains a 7B Llama with --fsdp on 8 GPUs: measured, against the arithmetic.

Claim (issue 16): full fine-tuning in float32 with AdamW needs 16 bytes a parameter (4 weight + 4 gradient + 8 for
AdamW's two moments): 108 GB for Llama-2-7B, more than one 80 GB GPU. FSDP over W ranks keeps 1/W of each on each
rank: 16 N / W bytes, plus what is not sharded (the full weights of the blocks being run, the root's).

What is measured, in this one process acting as rank 0 of W (a fake process group: collectives do nothing):
  - minorpo.run.fsdp.shard (what `--fsdp` runs) applied to the model built on the meta device (no memory): the bytes of
    this rank's parameter shards (DTensor.to_local()), of its gradient shards and of its AdamW state after an
    optimizer step. For the 7B shapes the gradient shards are zeros_like(shard) on the meta device (FSDP refuses to
    run a forward on meta parameters); `--step` (small shapes only) runs a real forward, backward and AdamW step on
    CPU instead, so the gradients are the ones FSDP's reduce-scatter produced (tests/test_fsdp_memory.py checks that
    both equal the arithmetic).
  - activation memory per token, from the tensors autograd saves in one decoder block's forward (bf16 weights, as
    the bf16 policy computes), on the meta device, at two sequence lengths: bytes = a T + b T^2 per block. SDPA on
    the meta device saves the T x T attention probabilities (b); a GPU's flash / memory-efficient kernel does not,
    so the estimate for a GPU uses a alone.

    python reproduce/fsdp_memory.py                      # Llama-2-7B and Llama-3-8B shapes, W = 8, 80 GB GPUs
    python reproduce/fsdp_memory.py --shape tiny --step --json out.json
"""

import argparse
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from minorpo.hf.config import ModelConfig  # noqa: E402
from minorpo.lora import apply_lora  # noqa: E402
from minorpo.models import build_model
from minorpo.models.llama import prepare_attention, rope_cos_sin, rope_inv_freq  # noqa: E402

# config.json numbers of the released models (meta-llama/Llama-2-7b-hf, meta-llama/Meta-Llama-3-8B)
SHAPES = {
    "llama2-7b": dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                      num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=4096),
    "llama3-8b": dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                      num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=8192,
                      rope_theta=500000.0),
    # every dim 0 divisible by 8, so the shards are exactly 1/8 (no padding): the test's shape
    "tiny": dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, max_position_embeddings=128),
}
GB = 1e9


def config_of(shape: str) -> ModelConfig:
    return ModelConfig.from_hf({"model_type": "llama", "tie_word_embeddings": False, **SHAPES[shape]})


def sharded_state_bytes(config, world: int, lora_r: int, step: bool) -> dict:
    """Rank 0's measured bytes of parameter shards, gradient shards and AdamW state (a fake group of `world`)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.testing._internal.distributed.fake_pg import FakeStore

    from minorpo.run.fsdp import shard
    dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=world)
    try:
        mesh = init_device_mesh("cpu", (world,))
        with torch.device("meta"):
            model = build_model(config)
        if lora_r:
            apply_lora(model, r=lora_r, alpha=2 * lora_r, targets="all-linear", device="meta")
        opts = SimpleNamespace(precision="bf16", fsdp_cpu_offload=False, reshard_after_forward=True)
        shard(model, opts, mesh, torch.device("cpu"))
        trainable = [p for p in model.parameters() if p.requires_grad]
        if step:  # a real step on CPU: FSDP's own gradients (the data is garbage: the fake group moves nothing)
            model.to_empty(device="cpu")
            with torch.no_grad():
                for p in model.parameters():
                    p.to_local().normal_(0, 0.02)
            from minorpo.logprobs import token_logps
            ids = torch.randint(0, config.vocab_size, (2, 16))
            token_logps(model(ids, return_hidden=True), model.lm_head.weight, ids, 8).sum().backward()
        else:
            for p in trainable:
                p.grad = torch.zeros_like(p)
        optimizer = torch.optim.AdamW(trainable, lr=1e-5, foreach=False)
        optimizer.step()

        def local_bytes(ts):
            return sum(t.to_local().numel() * t.element_size() for t in ts)
        moments = [v for s in optimizer.state.values() for k, v in s.items() if k != "step"]
        return {"params": local_bytes(model.parameters()), "grads": local_bytes(p.grad for p in trainable),
                "optimizer": local_bytes(moments), "n_params": sum(p.numel() for p in model.parameters()),
                "n_trainable": sum(p.numel() for p in trainable)}
    finally:
        dist.destroy_process_group()


def saved_bytes_per_block(config, T: int) -> int:
    """Bytes autograd saves in one decoder block's forward over one row of T tokens (bf16 weights, meta device)."""
    layer = build_model_meta(config).layers[0].to(torch.bfloat16)
    params = {p.untyped_storage()._cdata for p in layer.parameters()}
    seen = {}

    def pack(t):
        s = t.untyped_storage()
        if s._cdata not in params:
            seen[s._cdata] = s.nbytes()
        return t
    ids = torch.zeros(1, T, dtype=torch.long, device="meta")
    position_ids, masks = prepare_attention(ids, None, None, None, {None})
    cos, sin = rope_cos_sin(rope_inv_freq(config, device="meta"), position_ids, torch.bfloat16)
    x = torch.empty(1, T, config.hidden_size, dtype=torch.bfloat16, device="meta", requires_grad=True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        layer(x, cos, sin, masks[None], None)
    return sum(seen.values())


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", nargs="+", default=["llama2-7b", "llama3-8b"], choices=sorted(SHAPES))
    ap.add_argument("--world", type=int, default=8)
    ap.add_argument("--lora-r", type=int, default=16, help="LoRA rank of the LoRA rows (all linear layers)")
    ap.add_argument("--gpu-gb", type=float, default=80.0)
    ap.add_argument("--reserve-gb", type=float, default=4.0, help="left for the CUDA context, allocator slack, NCCL")
    ap.add_argument("--step", action="store_true", help="a real CPU step instead of meta gradients (small shapes)")
    ap.add_argument("--json", help="write the numbers here")
    args = ap.parse_args(argv)
    W, results = args.world, {}
    for shape in args.shape:
        config = config_of(shape)
        C, L, V = config.hidden_size, config.num_hidden_layers, config.vocab_size
        block = sum(p.numel() for p in build_model_meta(config).layers[0].parameters())
        root = 2 * V * C + C  # embedding, head, final norm
        a1, a2 = saved_bytes_per_block(config, 512), saved_bytes_per_block(config, 1024)
        quad = (a2 - 2 * a1) / (1024 ** 2 - 2 * 512 ** 2)  # bytes = lin T + quad T^2
        lin = a1 / 512 - quad * 512
        rows = {}
        for mode, r in (("full", 0), ("lora", args.lora_r)):
            m = sharded_state_bytes(config, W, r, args.step)
            N, Nt = m["n_params"], m["n_trainable"]
            arith = {"params": 4 * N / W, "grads": 4 * Nt / W, "optimizer": 8 * Nt / W}
            replicated = 4 * N + 12 * Nt  # every rank without sharding (train.py's data parallelism)
            sharded = m["params"] + m["grads"] + m["optimizer"]
            # not sharded while a step runs (bf16 policy): two blocks gathered (the running one, the prefetched
            # next) with their bf16 gradients and float32 reduce-scatter input, and the root's gathered weights
            transient = 2 * block * (2 + 2 + 4) + root * 2
            left = args.gpu_gb * GB - args.reserve_gb * GB - sharded - transient
            per_token = {"checkpointing": L * C * 2 + lin, "no checkpointing": L * lin}  # bf16 block inputs kept
            rows[mode] = {**m, "arithmetic": arith, "replicated_per_rank": replicated, "sharded_per_rank": sharded,
                          "transient": transient, "left_for_activations": left,
                          "tokens_per_gpu": {k: int(left // v) for k, v in per_token.items()}}
            print(f"\n{shape} ({N / 1e9:.2f}B parameters), {mode}{' r=%d' % r if r else ''}, rank 0 of {W}:")
            for k in ("params", "grads", "optimizer"):
                print(f"  {k:10s} measured {m[k] / GB:8.3f} GB   arithmetic {arith[k] / GB:8.3f} GB "
                      f"({'4' if k != 'optimizer' else '8'} bytes x {'N' if k == 'params' else 'trainable'} / {W})")
            print(f"  sharded state {sharded / GB:.2f} GB per rank = {sharded / replicated:.4f} of the replicated "
                  f"{replicated / GB:.1f} GB (1/{W} = {1 / W:.4f}); + {transient / GB:.2f} GB not sharded")
            print(f"  left for activations on {args.gpu_gb:.0f} GB (minus {args.reserve_gb:.0f} GB reserve): "
                  f"{left / GB:.1f} GB = " + ", ".join(f"{v:,} tokens per micro-batch with {k}"
                                                        for k, v in rows[mode]["tokens_per_gpu"].items()))
        print(f"  activations measured per token: {lin / 1e6:.3f} MB per block (bf16; plus {quad:.0f} bytes x T "
              f"for SDPA's T x T probabilities on the meta device, not saved by a GPU's flash kernel)")
        results[shape] = {"world": W, "activation_bytes_per_token_per_block": lin, "attention_quadratic": quad,
                          **rows}
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return results


def build_model_meta(config):
    with torch.device("meta"):
        return build_model(config)


if __name__ == "__main__":
    main()
