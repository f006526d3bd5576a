"""The speed, memory and precision switches of a training run; TrainConfig (minorpo/train.py) inherits them.

Each changes how fast a step runs or how much memory it takes, not what it computes (the precisions: up to
rounding), and each has a test that it gives the same results. What each was measured to save:
reproduce/results/README.md.
"""

from dataclasses import dataclass

from minorpo.run.config import setting


@dataclass
class SpeedConfig:
    precision: str = setting("fp32", "fp32; bf16 (autocast, fp32 weights); bf16-weights (bf16 model weights, no "
                                     "autocast: with LoRA the adapters and their optimizer state stay fp32; with full "
                                     "fine-tuning the optimizer updates fp32 master copies, see "
                                     "minorpo/fast/master.py)", ["fp32", "bf16", "bf16-weights"])
    gradient_checkpointing: bool = setting(False, "recompute each block's activations in backward instead of keeping "
                                                  "them: less memory, more time")
    chunk_size: int = setting(1024, "tokens per chunk of the log-prob computation (memory vs speed); 0 = unchunked: "
                                    "the full [2B, T, V] logits, as most trainers do")
    layout: str = setting("padded", "padded: chosen and rejected as separate rows (as TRL); shared: one row "
                                    "[prompt | chosen | rejected] per pair, the prompt computed once",
                          ["padded", "shared"])
    unpadded: bool = setting(False, "with --layout shared: run each pair's row at its own length, one by one, instead "
                                    "of padding a micro-batch to its longest row (no padded tokens, more forwards)")
    length_buckets: int = setting(0, "0 = off; N: take the pairs of N consecutive steps, sort them by length and deal "
                                     "them out as N batches in a seeded order (less padding; minorpo/fast/buckets.py)")
    compile: bool = setting(False, "torch.compile each decoder block and the output head's per-chunk elementwise work "
                                   "(logsumexp, softmax gradient): fused elementwise ops, fewer saved activations; "
                                   "the first step pays the compilation")
    cudnn_attention: bool = setting(False, "CUDA only: allow cuDNN's attention kernel. Off by default: it builds a "
                                           "plan for every new sequence length, and most training steps bring a new "
                                           "one; off, PyTorch takes its memory-efficient kernel")
    attention: str = setting("sdpa", "sdpa: PyTorch's fused attention, with a dense mask for --layout shared; flex: "
                                     "FlexAttention with the shared layout's block mask, skipping the 128x128 blocks "
                                     "no query may see (CUDA only: PyTorch's FlexAttention has no CPU backward; "
                                     "--layout shared; compiled on first use; minorpo/fast/flex.py)", ["sdpa", "flex"])
