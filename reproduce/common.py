"""Shared pieces of the reproduce/ scripts: command line, models and data, the measured training runs, plots,
the results file. The statistics and decision rules are in stats.py.

Every training script follows the same shape:

    args = common.parse_args(__doc__, PRESETS)          # --model-family --preset --seeds --smoke --results ...
    rec = common.Recorder(args, "script_name")          # starts the clock, records command and hardware
    for seed in args.seeds:                              # each seed draws its own subset of pairs
        trained, heldout = common.draw_subsets(pool, s["train_pairs"], s["heldout_pairs"], seed)
        runs = {arm: common.train_measured(args, ...) for arm in ...}   # same pairs, same order in every arm
        ... precondition first, then each sub-claim as a per-pair test (stats.mean_test) ...
    rec.finish(measured, claims, figures)               # one verdict per claim; JSON + PNGs

The design (issue 13): train repeatedly on a small fixed subset (48 pairs x 4 epochs on the cpu preset), measure
per pair, on that subset and on a held-out subset, at fixed steps (every epoch), and compare arms pair by pair.
One step-0 measurement is shared by every arm of a seed (they start from the same weights).

Presets. `paper`: the paper's setting where it is known (a GPU job). `cpu`: each script <= 30 minutes on 2 idle
CPU cores (see README.md's sizing note), from the Gemma 3 270M base model (--model-family base, the default; the
paper starts from base models) or SmolLM2-135M-Instruct (--model-family instruct); full fine-tuning, the shared
+ unpadded layout, sequences cut to 128 tokens. `--smoke`: a tiny random model and tiny in-process pairs, for
the tests (seconds); its numbers mean nothing, it only proves the script runs to verdicts.

Where results go: a temporary folder outside the checkout by default; `--results` writes them to
reproduce/results/<model>/<script>/ (what run_all.sh does), `--out DIR` anywhere else.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as `python reproduce/x.py` from a checkout without `pip install -e .`
    sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from minorpo.run.distributed import pick_device  # noqa: E402
from minorpo.tools.plot import moving_average  # noqa: E402,F401  (one trailing mean for the scripts and `minorpo plot`)
from stats import FAILS, HOLDS, INCONCLUSIVE  # noqa: E402,F401

RESULTS = REPO / "reproduce" / "results"

# Defaults for a user with internet; the scripts' presets may override them.
DEFAULT_DATA = "Anthropic/hh-rlhf"
# the HH-RLHF harmless-base test file (2,312 rows) of ../shared, found beside a checkout or a worktree of it
LOCAL_HH_RLHF = next((p / "shared" / "data" / "hh-rlhf" / "harmless-base-test.jsonl.gz" for p in REPO.parents[:2]
                      if (p / "shared" / "data" / "hh-rlhf" / "harmless-base-test.jsonl.gz").exists()),
                     REPO.parent / "shared" / "data" / "hh-rlhf" / "harmless-base-test.jsonl.gz")
FIXTURES = Path.home() / ".cache" / "minorpo-fixtures"

# The cpu preset's two models: the local fixture folder when it exists (built by ../shared/tools/make-*-fixture),
# else the hub id. `tag` names the results folder, so both models' results sit side by side.
MODEL_FAMILIES = {
    "base": {"tag": "gemma-3-270m", "fixture": FIXTURES / "gemma3-270m", "hub": "google/gemma-3-270m"},
    "instruct": {"tag": "smollm2-135m-instruct", "fixture": FIXTURES / "smollm2-135m-instruct",
                 "hub": "HuggingFaceTB/SmolLM2-135M-Instruct"},
}

# The cpu preset's sizes per model family (README.md's sizing note): Gemma 3 270M's step costs ~2.5x
# SmolLM2's (its 262,144-token output head), so it trains 32 pairs and is measured every 2 epochs.
CPU_SIZES = {"base": {"train_pairs": 32, "heldout_pairs": 32, "measure_every_epochs": 2},
             "instruct": {"train_pairs": 48, "heldout_pairs": 48, "measure_every_epochs": 1}}

# Settings shared by the scripts that train. "train" holds minorpo.train.TrainConfig fields.
#   paper: the paper's Fig. 3 / 7 setting as far as it is given (OPT-350M, HH-RLHF, full fine-tuning, AdamW,
#          warmup then cosine, max length 1024, Appendix C); subset size, epochs and batch size are ours.
#   cpu:   48 pairs x 4 epochs, 4 pairs a step (48 steps a run), held-out 48 pairs, measured every epoch; full
#          fine-tuning, lr 2e-5 constant after 4 warmup steps (a decaying schedule would flatten the very change
#          we measure; lr_pilot.py checks the choice), shared + unpadded layout (1.7x faster than padded at equal
#          results), prompts cut to their last 64 tokens, 128 in all.
#   smoke: a tiny random model, a few steps.
TRAIN_PRESETS = {
    "paper": {"model": "facebook/opt-350m", "data": DEFAULT_DATA, "data_files": "*/train.jsonl.gz",
              "max_length": 1024, "max_prompt_length": 1024, "pool": 4000, "train_pairs": 512,
              "heldout_pairs": 512, "epochs": 4, "measure_every_epochs": 1,
              "train": dict(lora_r=0, lr=8e-6, warmup_steps=20, schedule="constant", batch_size=8,
                            layout="shared", unpadded=True, precision="bf16")},
    "cpu": {"data": DEFAULT_DATA, "data_files": "harmless-base/test.jsonl.gz",
            "max_length": 128, "max_prompt_length": 64, "pool": 600, "train_pairs": 48, "heldout_pairs": 48,
            "epochs": 4, "measure_every_epochs": 1,
            "train": dict(lora_r=0, lr=2e-5, warmup_steps=4, schedule="constant", batch_size=4,
                          layout="shared", unpadded=True)},
    "smoke": {"max_length": 48, "max_prompt_length": 24, "pool": 40, "train_pairs": 8, "heldout_pairs": 8,
              "epochs": 3, "measure_every_epochs": 1,
              "train": dict(lora_r=0, lr=3e-3, warmup_steps=0, schedule="constant", batch_size=4,
                            layout="shared", unpadded=True)},
}


def train_presets(**per_preset) -> dict:
    """TRAIN_PRESETS with script-specific additions: per_preset = {"cpu": {...}, "paper": {...}, ...}; a "train"
    entry there updates (not replaces) the preset's "train" dict."""
    out = {}
    for name, base in TRAIN_PRESETS.items():
        extra = dict(per_preset.get(name, {}))
        merged = {**base, **extra}
        merged["train"] = {**base["train"], **extra.get("train", {})}
        out[name] = merged
    return out


# ---------------------------------------------------------------------------------------------------------
# command line


def parse_args(description: str, presets: dict, argv=None, extra=None) -> argparse.Namespace:
    """The common flags. presets: {"paper": {...}, "cpu": {...}, "smoke": {...}} of script settings; the chosen
    one is returned as args.settings (a dict). `extra(parser)` may add script-specific flags."""
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=[k for k in presets if k != "smoke"], default="cpu",
                   help="paper: the paper's setting (a GPU job); cpu: <= 30 min on 2 idle CPU cores (default)")
    p.add_argument("--model-family", choices=sorted(MODEL_FAMILIES), default="base",
                   help="cpu preset: base = Gemma 3 270M (pretrained, as the paper starts), instruct = "
                        "SmolLM2-135M-Instruct; the local fixture folder when it exists, else the hub id")
    p.add_argument("--model", default=None,
                   help="hub id or local folder (config.json + *.safetensors + tokenizer.json); overrides "
                        "--model-family and the preset's model")
    p.add_argument("--data", default=None,
                   help=f"hub dataset id or local .jsonl/.jsonl.gz/.json/.parquet of preference pairs "
                        f"(default {DEFAULT_DATA}; the HH-RLHF test file: {LOCAL_HH_RLHF})")
    p.add_argument("--smoke", action="store_true",
                   help="tiny random model + tiny in-process data: checks the script runs (seconds); numbers mean nothing")
    p.add_argument("--results", action="store_true",
                   help="write to reproduce/results/<model>/<script>/ (default: a temporary folder outside the checkout)")
    p.add_argument("--out", default=None, help="output folder (overrides --results)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1],
                   help="one run per seed, each on its own subset of pairs (a claim HOLDS only where every seed holds)")
    p.add_argument("--lr", type=float, default=None, help="learning rate (default: the preset's; see lr_pilot.py)")
    p.add_argument("--train-pairs", type=int, default=None, help="pairs trained on per seed (default: the preset's)")
    p.add_argument("--heldout-pairs", type=int, default=None, help="held-out pairs per seed (default: the preset's)")
    p.add_argument("--epochs", type=int, default=None, help="epochs over the trained pairs (default: the preset's)")
    p.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    if extra is not None:
        extra(p)
    args = p.parse_args(argv)
    name = "smoke" if args.smoke else args.preset
    args.preset_name = name
    args.settings = copy.deepcopy(presets[name])
    if args.lr is not None and "train" in args.settings:
        args.settings["train"]["lr"] = args.lr
    if name == "cpu" and not args.model and "train_pairs" in args.settings:
        args.settings.update(CPU_SIZES[args.model_family])
    for k in ("train_pairs", "heldout_pairs", "epochs"):  # resizing (README.md's sizing note); recorded in settings
        if getattr(args, k) is not None and k in args.settings:
            args.settings[k] = getattr(args, k)
    args.seed = args.seeds[0]
    args.model_used = model_name(args)
    return args


def model_name(args) -> str:
    """What load_model will load: --model, else the paper preset's model, else the family's fixture or hub id."""
    if args.smoke:
        return "tiny random llama (in-process)"
    if args.model:
        return args.model
    if args.preset_name == "paper" and args.settings.get("model"):
        return args.settings["model"]
    fam = MODEL_FAMILIES[args.model_family]
    return str(fam["fixture"]) if (fam["fixture"] / "config.json").exists() else fam["hub"]


def model_tag(args) -> str:
    """The results folder of a model: the family's tag, else the last part of --model, lower case."""
    if args.smoke:
        return "smoke"
    for fam in MODEL_FAMILIES.values():
        if args.model_used in (str(fam["fixture"]), fam["hub"]):
            return fam["tag"]
    return Path(str(args.model_used).rstrip("/")).name.lower()


def hardware(device: torch.device | None = None) -> dict:
    """What the numbers were measured on."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"cpu": cpu, "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "device": str(device) if device is not None else "cpu",
            # other processes compete for the cores: the 1-minute load average when the record was written
            "load_average_1min": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None}
    if device is not None and device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


# ---------------------------------------------------------------------------------------------------------
# recording a run


class Recorder:
    """Starts the clock and knows where results go; `finish` prints and writes them."""

    def __init__(self, args, script: str):
        self.args, self.script = args, script
        self.t0 = time.time()
        self.load_at_start = round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None
        if args.threads:
            torch.set_num_threads(args.threads)
        elif args.smoke:  # a tiny model gains nothing from threads, and they spin when other processes share the cores
            torch.set_num_threads(1)
        torch.manual_seed(args.seed)
        self.device = pick_device(args.device)
        if args.out:
            self.out = Path(args.out)
        elif args.results:
            self.out = RESULTS / model_tag(args) / script
        else:
            self.out = Path(tempfile.gettempdir()) / "minorpo-reproduce" / model_tag(args) / script
        self.out.mkdir(parents=True, exist_ok=True)
        self.tag = args.preset_name  # file names carry the preset, so a smoke run never overwrites cpu results
        print(f"== {script} ({self.tag} preset, {args.model_used}, seeds {args.seeds}) -> {self.out} ==", flush=True)

    def path(self, name: str, ext: str) -> Path:
        return self.out / f"{name}_{self.tag}.{ext}"

    def save_figure(self, fig, name: str) -> str:
        path = self.path(name, "png")
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        import matplotlib.pyplot as plt
        plt.close(fig)
        return path.name

    def finish(self, measured: dict, claims: dict, figures=(), settings: dict | None = None) -> dict:
        """Print the measured numbers and one verdict per claim; write <out>/result_<preset>.json.

        claims: {short name: {"claim": the statement, "verdict", "reason", "sub_verdicts": {name: verdict},
        "per_seed": {seed: verdict}, "precondition": {seed: reason}}} (claim() builds one). Unrelated claims
        (memory and time; the Fig. 6 simulation and the App. B training) are separate entries."""
        for c in claims.values():
            assert c["verdict"] in (HOLDS, FAILS, INCONCLUSIVE), c
        wall = time.time() - self.t0
        record = {
            "script": self.script, "preset": self.tag,
            "command": "python " + " ".join([os.path.relpath(sys.argv[0], Path.cwd())] + sys.argv[1:]),
            "hardware": {**hardware(self.device), "load_average_1min_at_start": self.load_at_start},
            "wall_time_s": round(wall, 1), "seeds": self.args.seeds,
            "settings": settings if settings is not None else self.args.settings,
            "model": self.args.model_used, "data": getattr(self.args, "data_used", self.args.data),
            "claims": claims, "verdicts": {k: c["verdict"] for k, c in claims.items()},
            "measured": measured, "figures": list(figures),
        }
        path = self.path("result", "json")
        path.write_text(json.dumps(_jsonable(record), indent=1) + "\n")
        print("\nMEASURED:")
        for k, v in _flat(measured):
            print(f"  {k}: {v}")
        for name, c in claims.items():
            print(f"\nCLAIM {name}: {c['claim']}")
            for sub, v in c.get("sub_verdicts", {}).items():
                print(f"  sub-claim {sub}: {v}")
            for seed, v in c.get("per_seed", {}).items():
                print(f"  seed {seed}: {v}")
            print(f"VERDICT: {c['verdict']} — {c['reason']}")
        print(f"\nwall time {wall:.1f} s on {record['hardware']['cpu']} ({record['hardware']['device']}); "
              f"wrote {path} and {', '.join(figures) or 'no figures'}", flush=True)
        return record


def claim(statement: str, per_seed: dict, reasons: dict, sub_verdicts: dict | None = None,
          preconditions: dict | None = None) -> dict:
    """One claim's entry for Recorder.finish: per_seed {seed: verdict}, reasons {seed: text}; the verdict is
    stats.across_seeds of the seeds' verdicts."""
    from stats import across_seeds
    verdict = across_seeds(list(per_seed.values()))
    reason = " | ".join(f"seed {s}: {per_seed[s]}: {reasons[s]}" for s in per_seed)
    if verdict == INCONCLUSIVE and len(set(per_seed.values())) > 1:
        reason = "the seeds disagree. " + reason
    return {"claim": statement, "verdict": verdict, "reason": reason, "per_seed": per_seed,
            "sub_verdicts": sub_verdicts or {}, "precondition": preconditions or {}}


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, torch.Tensor):
        return _jsonable(x.tolist())
    if isinstance(x, float):
        return x if math.isfinite(x) else str(x)
    if isinstance(x, Path):
        return str(x)
    return x


def _flat(d, prefix=""):
    for k, v in d.items():
        if k == "curves":  # the plots' data: in the JSON only
            continue
        if isinstance(v, dict) and "kind" in v and "se" in v:  # a stats.mean_test: one line
            yield f"{prefix}{k}", f"{v['mean']:+.4g} ± {v['se']:.2g} (t = {v['t']:.2f}, df {v['df']}, {v['kind']})"
        elif isinstance(v, dict):
            yield from _flat(v, f"{prefix}{k}.")
        elif isinstance(v, list) and (len(v) > 8 or any(isinstance(e, dict) for e in v)):
            yield f"{prefix}{k}", f"[{len(v)} values]"
        else:
            yield f"{prefix}{k}", (f"{v:.4g}" if isinstance(v, float) else v)


# ---------------------------------------------------------------------------------------------------------
# statistics: reproduce/stats.py (t tests, TOST, the bootstrap, the decision rules)


def mean_se(x) -> tuple[float, float]:
    """Mean and its standard error (sample standard deviation / sqrt(n))."""
    x = torch.as_tensor(x, dtype=torch.float64).flatten()
    if len(x) < 2:
        return float(x.mean()), math.inf
    return float(x.mean()), float(x.std() / math.sqrt(len(x)))


# ---------------------------------------------------------------------------------------------------------
# plots


def pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def subtitle(args) -> str:
    """'model on data, preset, seeds' for figure titles."""
    model = Path(str(getattr(args, "model_used", args.model) or "?")).name
    data = Path(str(getattr(args, "data_used", args.data) or "?")).name
    return f"{model} on {data} ({args.preset_name} preset, seeds {', '.join(map(str, args.seeds))})"


def plot_arm(ax, runs_by_seed: dict, arm: str, which: str, key: str, color: str, style: str = "-", label=None):
    """One line per seed: the mean over `which` set's pairs of `key` (chosen / rejected / log_or) at each
    measured step of `arm`; the first seed's line carries the label."""
    for i, (seed, runs) in enumerate(runs_by_seed.items()):
        c = curves(runs[arm], which)
        ax.plot(c["steps"], c[key], style, marker="o", markersize=3, color=color, alpha=1.0 if i == 0 else 0.55,
                linewidth=1.8, label=(label or f"{arm} {key}") if i == 0 else None)


# ---------------------------------------------------------------------------------------------------------
# models and data


def tiny_tokenizer():
    """A byte-level BPE tokenizer (vocab ~260) trained in-process on SMOKE_TEXTS; EOS = pad = <|endoftext|>."""
    from tokenizers import Tokenizer as Backend
    from tokenizers import decoders, models, pre_tokenizers, trainers

    from minorpo.hf.tokenizer import Tokenizer

    backend = Backend(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    backend.train_from_iterator([r["chosen"] + r["rejected"] for r in smoke_rows(16)], trainer)
    return Tokenizer(backend, {"eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>"})


def tiny_model(vocab_size: int, seed: int = 0):
    """A 2-layer Llama-family minorpo model with random weights (width 64)."""
    from minorpo.hf.config import ModelConfig
    from minorpo.models import build_model

    config = ModelConfig(model_type="llama", vocab_size=vocab_size, hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                         max_position_embeddings=512, tie_word_embeddings=True)
    torch.manual_seed(seed)
    return build_model(config).eval()


def smoke_rows(n: int, seed: int = 0) -> list[dict]:
    """n HH-RLHF-style rows ({"chosen", "rejected"} dialogues sharing the prompt): arithmetic questions, a
    correct polite chosen answer and a rude or wrong rejected one."""
    g = torch.Generator().manual_seed(seed)
    rude = ["Figure it out yourself.", "I don't care, go away.", "No idea, stop asking me."]
    rows = []
    for i in range(n):
        a, b = (int(v) for v in torch.randint(1, 20, (2,), generator=g))
        prompt = f"\n\nHuman: What is {a} plus {b}?\n\nAssistant:"
        chosen = f" {a} plus {b} is {a + b}. Happy to help!"
        rejected = f" {rude[i % 3]}" if i % 2 else f" {a} plus {b} is {a + b + 1 + i % 4}."
        rows.append({"chosen": prompt + chosen, "rejected": prompt + rejected})
    return rows


def load_model(args, dtype=torch.float32):
    """(model, tokenizer): the tiny random pair for --smoke, else minorpo.hf.loader.load(--model or the preset's)."""
    if args.smoke:
        tok = tiny_tokenizer()
        return tiny_model(tok.vocab_size, 0), tok  # seed 0: every arm and seed starts from the same weights
    from minorpo.hf.loader import load
    return load(args.model_used, dtype=dtype)


def load_pairs(args, tokenizer, n: int | None = None) -> list:
    """Tokenized pairs (minorpo.data.TokenizedPair) of --data (or the preset's), with the preset's max_length
    and max_prompt_length (prompts cut keeping their end, as the training loop does). Prints the drop report."""
    from minorpo.data import DataConfig, build_examples, load_preferences

    s = args.settings
    config = DataConfig(max_length=s["max_length"], max_prompt_length=s["max_prompt_length"],
                        prompt_truncation="keep_end")
    if args.smoke:
        args.data_used = "tiny arithmetic pairs (in-process)"
        ds = build_examples(((f"smoke:{i + 1}", r) for i, r in enumerate(smoke_rows(n or 48))),
                            tokenizer, config, limit=n)
    else:
        local = args.preset_name == "cpu" and LOCAL_HH_RLHF.exists()  # the cpu preset's data, offline
        args.data_used = args.data or (str(LOCAL_HH_RLHF) if local else s.get("data", DEFAULT_DATA))
        files = {"data_files": s["data_files"]} if "data_files" in s and not args.data and not local else {}
        ds = load_preferences(args.data_used, tokenizer, config, limit=n, **files)
    print("data:", ds.report.format(max_rows=3), flush=True)
    if not ds.examples:
        raise SystemExit(f"{args.data_used}: no usable pairs")
    return ds.examples


def pair_logps(model, pairs, pad_id: int, batch_size: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(a, b): mean per-token log-probs (Eq. 3) of the chosen and rejected responses of every pair, no grad."""
    from minorpo.forward import ForwardSpec, heldout_logps

    model.eval()
    a, b, _, _ = heldout_logps(model, pairs, ForwardSpec(pad_id=pad_id), batch_size, device)
    return a.double().cpu(), b.double().cpu()




# ---------------------------------------------------------------------------------------------------------
# measured training runs


def draw_subsets(pool: list, n_train: int, n_heldout: int, seed: int) -> tuple[list, list]:
    """(trained pairs, held-out pairs): disjoint, drawn from `pool` by a permutation seeded by `seed`, so each
    seed trains on a different subset."""
    if len(pool) < n_train + n_heldout:
        raise SystemExit(f"need {n_train + n_heldout} usable pairs for {n_train} trained + {n_heldout} held out, "
                         f"got {len(pool)}")
    order = torch.randperm(len(pool), generator=torch.Generator().manual_seed(1000 + seed)).tolist()
    return [pool[i] for i in order[:n_train]], [pool[i] for i in order[n_train:n_train + n_heldout]]


def measure(model, sets: dict, pad_id: int, batch_size: int, device) -> dict:
    """{set name: (a, b)}: per-pair chosen and rejected log-probs (Eq. 3) of every set, no grad."""
    return {name: pair_logps(model, pairs, pad_id, batch_size, device) for name, pairs in sets.items() if pairs}


class ETA:
    """Progress over a script's planned optimizer steps (all arms and seeds): elapsed, done, ETA."""

    def __init__(self, total_steps: int):
        self.total, self.done, self.t0 = total_steps, 0, time.time()

    def step(self, n: int = 1) -> str:
        self.done += n
        el = time.time() - self.t0
        left = el / self.done * (self.total - self.done) if self.done else math.nan
        return f"[{self.done}/{self.total} steps, {el / 60:.1f} min elapsed, ETA {left / 60:.1f} min]"


def run_steps(s: dict) -> tuple[int, list]:
    """(optimizer steps of one run, the steps at which it is measured): epochs x train_pairs / batch_size steps,
    measured at step 0 and every `measure_every_epochs` epochs."""
    per_epoch = s["train_pairs"] // s["train"]["batch_size"]
    total = per_epoch * s["epochs"]
    every = per_epoch * s["measure_every_epochs"]
    return total, sorted({0, *range(every, total + 1, every), total})


def train_measured(args, model, tok, trained: list, heldout: list, method: str, seed: int, label: str,
                   eta: ETA | None = None, start: dict | None = None, **overrides) -> dict:
    """Train `model` (in place) on `trained` for the preset's epochs with minorpo's objective and measure both
    sets per pair at fixed steps. Returns {"steps": [...], "trained": {"a": [S, n], "b": [S, n]}, "heldout":
    {...}, "rows": per-step training metrics (TRL's names, as minorpo.train logs them)}.

    The step is minorpo.train's (minorpo/train.py `_train`): the same forward.pair_logps and loss.objective_sums, the same data
    order (train.step_indices with this seed, so every arm of a seed sees the same pairs in the same order),
    AdamW, gradient clipping at max_grad_norm, train.lr_lambda's warmup and schedule. It is written out here
    (no checkpoints, no export, no held-out split of its own) because the claims need per-pair measurements at
    fixed steps, which train() does not expose. `start`: the step-0 measurement, when another arm already made
    it (all arms of a seed start from the same weights).
    """
    from minorpo.batches import collate, count_targets, pad_token_id
    from minorpo.forward import ForwardSpec, pair_logps
    from minorpo.loss import metric_shares, objective_sums
    from minorpo.train import TrainConfig, lr_lambda, step_indices

    s = args.settings
    total, at = run_steps(s)
    cfg = TrainConfig(method=method, seed=seed, max_steps=total)
    for k, v in {**s["train"], **overrides}.items():
        if not hasattr(cfg, k):
            raise KeyError(f"TrainConfig has no field {k!r}")
        setattr(cfg, k, v)
    device = pick_device(args.device)
    pad_id = pad_token_id(tok)
    model.to(device)
    torch.manual_seed(seed)
    if cfg.lora_r > 0:
        from minorpo.lora import apply_lora
        apply_lora(model, r=cfg.lora_r, alpha=cfg.lora_alpha, targets=cfg.lora_targets)
        model.to(device)
    else:
        model.requires_grad_(True)
    spec = ForwardSpec(preset=cfg.preset, chunk_size=cfg.chunk_size, pad_id=pad_id, layout=cfg.layout,
                       unpadded=cfg.unpadded)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg))
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.precision == "bf16")
    mb = 2 * cfg.batch_size  # measurement batch: no grad, so twice the training batch fits
    sets = {k: v for k, v in (("trained", trained), ("heldout", heldout)) if v}  # win_rate.py: no held-out set
    out = {"steps": [], "rows": [], **{k: {"a": [], "b": []} for k in sets},
           "where": {k: [p.where for p in v] for k, v in sets.items()}}  # each pair's source row (file:line)

    def record(step, m):
        out["steps"].append(step)
        for name, (a, b) in m.items():
            out[name]["a"].append(a)
            out[name]["b"].append(b)

    record(0, start if start is not None else measure(model, sets, pad_id, mb, device))
    print(f"-- {label}: {method} {', '.join(f'{k}={v}' for k, v in overrides.items())} lr {cfg.lr:g}, {total} steps "
          f"of {cfg.batch_size} pairs ({len(trained)} trained pairs x {s['epochs']} epochs), measured at {at}",
          flush=True)
    model.train()
    for step in range(total):
        t0 = time.time()
        chunk = [trained[i] for i in step_indices(len(trained), step, cfg.batch_size, cfg.seed)]
        counts = count_targets(chunk, cfg.preset, pad_id)
        with autocast:  # as train.py's step loop (one micro-batch)
            tl = pair_logps(model, collate(chunk, pad_id, device, cfg.layout), spec)
            nll, pairs, stats = objective_sums(tl, cfg.method, cfg.lam, cfg.beta, spec.nll_normalization)
        loss = nll / counts["nll"] + pairs / counts["pairs"]
        parts = metric_shares(loss, stats, counts)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm if cfg.max_grad_norm > 0 else math.inf)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        lr = scheduler.get_last_lr()[0]
        scheduler.step()
        out["rows"].append({"step": step + 1, **parts, "lr": lr, "grad_norm": float(grad_norm),
                            "step_time": time.time() - t0})
        progress = eta.step() if eta is not None else ""
        if step + 1 in at:
            m = measure(model, sets, pad_id, mb, device)
            record(step + 1, m)
            model.train()
            a, b = m["trained"]
            print(f"   step {step + 1}: loss {parts['loss']:.3f}, trained pairs: chosen {float(a.mean()):+.3f} "
                  f"rejected {float(b.mean()):+.3f} nats; {time.time() - t0:.1f} s for the step + measurement "
                  f"{progress}", flush=True)
    for name in sets:
        for side in ("a", "b"):
            out[name][side] = torch.stack(out[name][side])  # [S, n]
    model.eval()
    return out


def seed_pool(args, tok) -> list:
    """The pool every seed draws its subsets from: the first `pool` usable pairs of the data."""
    return load_pairs(args, tok, args.settings["pool"])


def run_arms(args, arms: dict, seed: int, pool: list, eta: ETA | None = None) -> tuple[dict, list, list]:
    """Every arm {name: (method, overrides)} from the same starting weights, on this seed's subsets.
    Returns ({name: train_measured's result}, trained pairs, held-out pairs). The step-0 measurement is made once."""
    s = args.settings
    trained, heldout = draw_subsets(pool, s["train_pairs"], s["heldout_pairs"], seed)
    runs, start = {}, None
    for name, (method, overrides) in arms.items():
        model, tok = load_model(args)
        r = train_measured(args, model, tok, trained, heldout, method, seed, f"seed {seed}, {name}", eta, start,
                           **overrides)
        start = {k: (r[k]["a"][0], r[k]["b"][0]) for k in ("trained", "heldout") if k in r}
        runs[name] = r
        del model
    return runs, trained, heldout


def total_steps(args, n_arms: int) -> int:
    return run_steps(args.settings)[0] * n_arms * len(args.seeds)


def end(run: dict, which: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(a, b) of a set at the last measured step."""
    return run[which]["a"][-1], run[which]["b"][-1]


def begin(run: dict, which: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(a, b) of a set at step 0."""
    return run[which]["a"][0], run[which]["b"][0]


def curves(run: dict, which: str) -> dict:
    """Means over the set's pairs at each measured step: chosen, rejected, log OR (for the plots); and, for
    anyone re-analysing the JSON, every pair's a and b at each measured step ([steps][pairs], nats) and its
    source row."""
    from minorpo.loss import log_odds_ratio
    a, b = run[which]["a"], run[which]["b"]
    return {"steps": run["steps"], "chosen": a.mean(1).tolist(), "rejected": b.mean(1).tolist(),
            "log_or": log_odds_ratio(a.double(), b.double()).mean(1).tolist(),
            "per_pair": {"a": [[round(float(x), 5) for x in row] for row in a],
                         "b": [[round(float(x), 5) for x in row] for row in b],
                         "rows": run["where"][which]}}


def table2_split(pairs: list) -> dict:
    """Mini Table 2's disjoint row groups, by a fixed hash of each pair's source row (TokenizedPair.where), so
    the split is the same whichever tokenizer read the rows: judge_train 45%, judge_heldout 15%, policy_train
    25%, eval (the prompts generated for) 15%; each group in file order."""
    import hashlib
    groups = {"judge_train": [], "judge_heldout": [], "policy_train": [], "eval": []}
    for p in pairs:
        b = int(hashlib.sha256(f"table2:{p.where}".encode()).hexdigest(), 16) % 20
        groups["judge_train" if b < 9 else "judge_heldout" if b < 12 else "policy_train" if b < 17 else "eval"].append(p)
    return groups
