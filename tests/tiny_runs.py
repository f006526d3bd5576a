"""Tiny training runs for the tests of the training loop: a tiny random model with the word tokenizer, random
preference pairs over its words, and train() on them (no download, seconds on a CPU).

`tiny_run_files(root)` writes the model folder and the data file; `train_tiny(inputs, out, **settings)` loads
them and trains with TINY_RUN's settings updated by `settings`; `trainable` and `metric_rows` read the result.
"""

import json
from pathlib import Path

import torch

from minorpo.data import DataConfig, load_preferences
from minorpo.hf.loader import load
from minorpo.train import TrainConfig, train
from tiny_models import saved
from tiny_tokenizers import word_tokenizer

WORDS = ["hi", "hello", "how", "are", "you", "fine", "bad", "go", "away", "I", "am", "good", "thanks", "what",
         "is", "two", "plus", "four", "five", "nice", "ok", "no", "yes", "sure"]

# one LoRA step, no evaluation or checkpoint unless a test asks (4 pairs held out, at most 64 tokens)
TINY_RUN = dict(lora_r=4, lora_alpha=8, lr=0.05, max_steps=1, warmup_steps=0, schedule="constant", eval_pairs=4,
                eval_every=0, save_every=0, progress=False, max_length=64)

# each rank of a torchrun test runs `minorpo train` (cli.main), then reports the threads its process still has
RANK_SCRIPT = """import os, sys
from pathlib import Path
from minorpo.tools.cli import main
rc = main(sys.argv[1:])
names = sorted(open(f"/proc/self/task/{t}/comm").read().strip() for t in os.listdir("/proc/self/task"))
Path(os.environ["THREADS_DIR"], "rank" + os.environ["RANK"]).write_text(" ".join(names))
sys.exit(rc)
"""


def write_data(path: Path, n: int, seed: int = 0):
    """n standard-format pairs of random lengths over the tiny tokenizer's words (unequal token counts)."""
    g = torch.Generator().manual_seed(seed)

    def text(lo, hi):
        k = int(torch.randint(lo, hi, (1,), generator=g))
        return " ".join(WORDS[int(i)] for i in torch.randint(len(WORDS), (k,), generator=g))

    with open(path, "w") as f:
        for _ in range(n):
            f.write(json.dumps({"prompt": text(2, 9) + " ?", "chosen": text(1, 7), "rejected": text(1, 7)}) + "\n")
    return path


def tiny_run_files(root: Path, seed: int = 0, n: int = 40, arch: str = "llama-tied", **tokenizer_kw):
    """(model folder, data file) for a training run: a tiny random `arch` with the word tokenizer in root/model,
    n random pairs (write_data) in root/pairs.jsonl."""
    folder = Path(root) / "model"
    saved(arch, folder)
    word_tokenizer(folder, **tokenizer_kw)
    return folder, write_data(Path(root) / "pairs.jsonl", n, seed=seed)


def pairs_of(data, tokenizer):
    """The tokenized pairs of a data file, cut at 64 tokens (TINY_RUN's max_length)."""
    return load_preferences(str(data), tokenizer, DataConfig(max_length=64)).examples


def train_tiny(inputs, out, dtype=torch.float32, **settings):
    """(model, last metrics) after train() on inputs = (model folder, data file), in `dtype`, with TINY_RUN's
    settings updated by `settings`."""
    folder, data = inputs
    model, tok = load(folder, dtype=dtype)
    cfg = TrainConfig(model=str(folder), data=str(data), out=str(out), **{**TINY_RUN, **settings})
    last = train(cfg, model=model, tokenizer=tok, pairs=pairs_of(data, tok))
    return model, last


def trainable(model) -> dict:
    """A copy of the trainable parameters, by name."""
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def metric_rows(out) -> list:
    """The rows of RUN/metrics.jsonl."""
    return [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]
