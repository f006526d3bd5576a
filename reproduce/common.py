"""Shared pieces of the reproduce/ scripts: command line, models and data, trends, plots, the results file.

Every script follows the same shape:

    args = common.parse_args(__doc__, PRESETS)         # --model --data --preset {paper,cpu} --smoke --out ...
    rec = common.Recorder(args, "script_name", CLAIM)  # starts the clock, records command and hardware
    ... measure ...
    rec.finish(measured, verdict, reason, figures)     # prints the claim, numbers, verdict; writes JSON + PNGs

Presets. `paper`: the paper's setting where it is known (a GPU job). `cpu`: finishes in about 15 minutes on 2 CPU
cores with SmolLM2-135M and the HH-RLHF file; it uses LoRA and short sequences, because a full fine-tuning step
of a 135M model takes tens of seconds there. `--smoke`: a tiny random model and a tiny in-process data set, for
the tests (seconds); its numbers mean nothing, it only proves the script runs to a verdict.

Verdicts are HOLDS, DOES NOT HOLD or INCONCLUSIVE, decided from a fitted trend with its standard error
(`linear_trend`, `trend_verdict`) or from a statistic with a confidence interval, never from two points.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as `python reproduce/x.py` from a checkout without `pip install -e .`
    sys.path.insert(0, str(REPO))

from minorpo.run.distributed import pick_device  # noqa: E402
from minorpo.tools.plot import moving_average  # noqa: E402,F401  (one trailing mean for the scripts and `minorpo plot`)

HOLDS, FAILS, INCONCLUSIVE = "HOLDS", "DOES NOT HOLD", "INCONCLUSIVE"
RESULTS = REPO / "reproduce" / "results"

# Defaults for a user with internet; the scripts' presets may override them.
DEFAULT_DATA = "Anthropic/hh-rlhf"
LOCAL_HH_RLHF = REPO.parent / "shared" / "data" / "hh-rlhf" / "harmless-base-test.jsonl.gz"

# Settings shared by the scripts that train (probability_inflation, orpo_vs_sft, odds_vs_probability_ratio,
# lambda_ablation). "train" holds minorpo.train.TrainConfig fields.
#   paper: the paper's Fig. 3 / 7 setting as far as it is given (OPT-350M, HH-RLHF, full fine-tuning, AdamW,
#          warmup then cosine, max length 1024, Appendix C); batch size and step count are not given: ours.
#   cpu:   SmolLM2-135M, the HH-RLHF harmless-base test file (2,312 rows; the same file as shared/data), LoRA
#          r=16 on every linear layer, sequences cut to 128 tokens (prompt to its last 64), 2 pairs a step, a
#          constant learning rate after warmup (a decaying schedule would flatten the very trend we measure).
#          One LoRA step (2 pairs, 128 tokens) takes ~3-4 s on 2 idle cores, ~6.5 s with 1 thread on 2 cores
#          shared with other jobs; use --threads 1 on a shared machine (2 threads spin and can be 5x slower).
#   smoke: a tiny random model, a few steps.
TRAIN_PRESETS = {
    "paper": {"model": "facebook/opt-350m", "data": DEFAULT_DATA, "data_files": "*/train.jsonl.gz",
              "max_length": 1024, "max_prompt_length": 1024, "pairs": 0, "smooth": 50,
              "train": dict(lora_r=0, lr=1e-5, warmup_steps=100, schedule="cosine", batch_size=8, grad_accum=1,
                            max_steps=2000, eval_pairs=512, eval_every=100, precision="bf16")},
    "cpu": {"model": "HuggingFaceTB/SmolLM2-135M", "data": DEFAULT_DATA, "data_files": "harmless-base/test.jsonl.gz",
            "max_length": 128, "max_prompt_length": 64, "pairs": 600, "smooth": 10,
            "train": dict(lora_r=16, lora_alpha=32, lora_targets="all-linear", lr=1e-4, warmup_steps=5,
                          schedule="constant", batch_size=2, grad_accum=1, max_steps=100, eval_pairs=16,
                          eval_every=25)},
    "smoke": {"max_length": 48, "max_prompt_length": 24, "pairs": 40, "smooth": 2,
              "train": dict(lora_r=4, lora_alpha=8, lora_targets="all-linear", lr=1e-2, warmup_steps=0,
                            schedule="constant", batch_size=2, max_steps=6, eval_pairs=6, eval_every=3)},
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
                   help="paper: the paper's setting (a GPU job); cpu: ~15 min on 2 CPU cores (default)")
    p.add_argument("--model", default=None,
                   help="hub id or local folder (config.json + *.safetensors + tokenizer.json); "
                        "default: the preset's model")
    p.add_argument("--data", default=None,
                   help=f"hub dataset id or local .jsonl/.jsonl.gz/.json/.parquet of preference pairs "
                        f"(default {DEFAULT_DATA}; the HH-RLHF test file: {LOCAL_HH_RLHF})")
    p.add_argument("--smoke", action="store_true",
                   help="tiny random model + tiny in-process data: checks the script runs (seconds); numbers mean nothing")
    p.add_argument("--out", default=None, help="output folder (default reproduce/results/<script>/)")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    if extra is not None:
        extra(p)
    args = p.parse_args(argv)
    name = "smoke" if args.smoke else args.preset
    args.preset_name = name
    args.settings = dict(presets[name])
    return args


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

    def __init__(self, args, script: str, claim: str):
        self.args, self.script, self.claim = args, script, claim
        self.t0 = time.time()
        self.load_at_start = round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None
        if args.threads:
            torch.set_num_threads(args.threads)
        elif args.smoke:  # a tiny model gains nothing from threads, and they spin when other processes share the cores
            torch.set_num_threads(1)
        torch.manual_seed(args.seed)
        self.device = pick_device(args.device)
        self.out = Path(args.out) if args.out else RESULTS / script
        self.out.mkdir(parents=True, exist_ok=True)
        self.tag = args.preset_name  # file names carry the preset, so a smoke run never overwrites cpu results
        print(f"== {script} ({self.tag} preset) ==\nCLAIM: {claim}\n", flush=True)

    def path(self, name: str, ext: str) -> Path:
        return self.out / f"{name}_{self.tag}.{ext}"

    def save_figure(self, fig, name: str) -> str:
        path = self.path(name, "png")
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        import matplotlib.pyplot as plt
        plt.close(fig)
        return path.name

    def finish(self, measured: dict, verdict: str, reason: str, figures=(), settings: dict | None = None,
               verdicts: dict | None = None) -> dict:
        """Print the measured numbers and the verdict; write <out>/result_<preset>.json. Returns the record."""
        assert verdict in (HOLDS, FAILS, INCONCLUSIVE), verdict
        wall = time.time() - self.t0
        record = {
            "script": self.script, "claim": self.claim, "preset": self.tag,
            "command": "python " + " ".join([os.path.relpath(sys.argv[0], Path.cwd())] + sys.argv[1:]),
            "hardware": {**hardware(self.device), "load_average_1min_at_start": self.load_at_start},
            "wall_time_s": round(wall, 1),
            "settings": settings if settings is not None else self.args.settings,
            "model": getattr(self.args, "model_used", self.args.model), "data": getattr(self.args, "data_used", self.args.data),
            "measured": measured, "verdict": verdict, "verdict_reason": reason,
            "verdicts": verdicts or {}, "figures": list(figures),
        }
        path = self.path("result", "json")
        path.write_text(json.dumps(_jsonable(record), indent=1) + "\n")
        print("\nMEASURED:")
        for k, v in _flat(measured):
            print(f"  {k}: {v}")
        for name, v in (verdicts or {}).items():
            print(f"  sub-claim {name}: {v}")
        print(f"\nVERDICT: {verdict} — {reason}")
        print(f"wall time {wall:.1f} s on {record['hardware']['cpu']} ({record['hardware']['device']}); "
              f"wrote {path} and {', '.join(figures) or 'no figures'}", flush=True)
        return record


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
        if isinstance(v, dict) and "slope" in v and "slope_se" in v:  # a linear_trend: one line
            yield f"{prefix}{k}", f"slope {v['slope']:.4g} ± {v['slope_se']:.2g} per step (t = {v['t']:.1f}, n = {v['n']})"
        elif isinstance(v, dict):
            yield from _flat(v, f"{prefix}{k}.")
        elif isinstance(v, list) and (len(v) > 8 or any(isinstance(e, dict) for e in v)):
            yield f"{prefix}{k}", f"[{len(v)} values]"
        else:
            yield f"{prefix}{k}", (f"{v:.4g}" if isinstance(v, float) else v)


# ---------------------------------------------------------------------------------------------------------
# statistics


def linear_trend(x, y) -> dict:
    """Least-squares line y = intercept + slope * x, with the slope's standard error.

    Two standard errors are given. `slope_se_ols` assumes independent residuals. Training curves are not
    independent (the model drifts smoothly, so neighbouring residuals are alike), which makes the OLS error too
    small; `slope_se` is the Newey-West (HAC) error with Bartlett weights up to lag L = floor(4 (n/100)^(2/9)),
    which allows for that, and is the one the verdicts use. t = slope / slope_se.
    """
    x = torch.as_tensor(x, dtype=torch.float64)
    y = torch.as_tensor(y, dtype=torch.float64)
    n = len(x)
    if n < 3:
        raise ValueError(f"linear_trend needs at least 3 points, got {n}")
    xc = x - x.mean()
    sxx = float((xc * xc).sum())
    slope = float((xc * (y - y.mean())).sum()) / sxx
    intercept = float(y.mean()) - slope * float(x.mean())
    resid = y - (intercept + slope * x)
    se_ols = math.sqrt(float((resid ** 2).sum()) / (n - 2) / sxx)
    # Newey-West: Var(slope) = sum_t sum_s w(|t-s|) xc_t e_t xc_s e_s / sxx^2, times n / (n - 2) for small samples
    u = xc * resid
    lag = int(4 * (n / 100) ** (2 / 9))
    s = float((u * u).sum())
    for k in range(1, min(lag, n - 1) + 1):
        s += 2 * (1 - k / (lag + 1)) * float((u[k:] * u[:-k]).sum())
    se = math.sqrt(max(s, 0.0) * n / (n - 2)) / sxx
    return {"slope": slope, "slope_se": se, "slope_se_ols": se_ols, "t": slope / se if se > 0 else math.inf,
            "intercept": intercept, "n": n, "hac_lag": lag}


# two-sided 95% critical values of Student's t by degrees of freedom (a trend of n points has n - 2)
T_CRIT = {1: 12.71, 2: 4.30, 3: 3.18, 4: 2.78, 5: 2.57, 6: 2.45, 7: 2.36, 8: 2.31, 9: 2.26, 10: 2.23, 12: 2.18,
          15: 2.13, 20: 2.09, 30: 2.04}


def t_critical(df: int) -> float:
    """The 95% two-sided critical value for df degrees of freedom (the next smaller tabulated df: conservative),
    at least 2."""
    if df < 1:
        return math.inf
    return max(2.0, T_CRIT[max(d for d in T_CRIT if d <= df)] if df <= 30 else 1.96)


def trend_verdict(trend: dict, direction: str) -> str:
    """HOLDS if the slope has the claimed sign at |t| above the 95% critical value of Student's t with n - 2
    degrees of freedom (and at least 2), DOES NOT HOLD if it has the opposite sign at that level, else
    INCONCLUSIVE. direction: "up" or "down"."""
    z = t_critical(trend["n"] - 2)
    t = trend["t"] if direction == "up" else -trend["t"]
    if t > z:
        return HOLDS
    if t < -z:
        return FAILS
    return INCONCLUSIVE


def combine(verdicts) -> str:
    """All parts hold -> HOLDS; any part contradicted -> DOES NOT HOLD; else INCONCLUSIVE."""
    verdicts = list(verdicts)
    if all(v == HOLDS for v in verdicts):
        return HOLDS
    if any(v == FAILS for v in verdicts):
        return FAILS
    return INCONCLUSIVE


def first_below(steps, values, threshold: float, window: int):
    """The first step at which the trailing mean of `window` values is below threshold (None if never)."""
    for s, v in zip(steps, moving_average(list(values), window)):
        if v < threshold:
            return s
    return None


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
    """'model on data, preset' for figure titles."""
    model = Path(str(getattr(args, "model_used", args.model) or "?")).name
    data = Path(str(getattr(args, "data_used", args.data) or "?")).name
    return f"{model} on {data} ({args.preset_name} preset)"


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
        args.model_used = "tiny random llama (in-process)"
        return tiny_model(tok.vocab_size, args.seed), tok
    from minorpo.hf.loader import load
    args.model_used = args.model or args.settings["model"]
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
        ds = build_examples(((f"smoke:{i + 1}", r) for i, r in enumerate(smoke_rows(n or 48, args.seed))),
                            tokenizer, config, limit=n)
    else:
        args.data_used = args.data or s.get("data", DEFAULT_DATA)
        ds = load_preferences(args.data_used, tokenizer, config, limit=n,
                              **({"data_files": s["data_files"]} if "data_files" in s and not args.data else {}))
    print("data:", ds.report.format(max_rows=3), flush=True)
    if not ds.examples:
        raise SystemExit(f"{args.data_used}: no usable pairs")
    return ds.examples


def pair_logps(model, pairs, pad_id: int, batch_size: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(a, b): mean per-token log-probs (Eq. 3) of the chosen and rejected responses of every pair, no grad."""
    from minorpo import loss as L
    from minorpo.batches import collate_padded
    from minorpo.logprobs import sequence_logps

    a, b = [], []
    model.eval()
    with torch.no_grad():
        for i in range(0, len(pairs), batch_size):
            batch = {k: v.to(device) for k, v in collate_padded(pairs[i:i + batch_size], pad_id).items()}
            tl = L.preference_logps(model, batch, "paper", pad_id)
            a.append(sequence_logps(tl.chosen, tl.chosen_mask).double().cpu())
            b.append(sequence_logps(tl.rejected, tl.rejected_mask).double().cpu())
    return torch.cat(a), torch.cat(b)


# ---------------------------------------------------------------------------------------------------------
# training runs (minorpo.train)


def train_run(args, out: Path, method: str, model_and_tok=None, pairs=None, **overrides):
    """One minorpo.train run in `out` with the preset's training settings; returns (metrics.jsonl rows, the
    trained model). Pass a freshly loaded (model, tokenizer): LoRA is applied to the model in place, so runs must
    not share one. Training settings come from args.settings["train"], then `overrides`. minorpo.train holds out
    its own `eval_pairs` of `pairs` (its eval_* metrics); scripts that need per-pair held-out numbers keep a
    separate set that is never passed here (see `split_heldout`).
    """
    from minorpo.train import TrainConfig, train

    model, tok = model_and_tok if model_and_tok is not None else load_model(args)
    if pairs is None:
        pairs = load_pairs(args, tok, args.settings.get("pairs") or None)
    cfg = TrainConfig(model=str(args.model_used), data=str(getattr(args, "data_used", "")), out=str(out),
                      method=method, seed=args.seed, device=str(args.device), progress=False, save_every=-1,
                      overwrite=True,  # a re-run of a script replaces its runs
                      max_length=args.settings["max_length"], max_prompt_length=args.settings["max_prompt_length"])
    for k, v in {**args.settings["train"], **overrides}.items():
        if not hasattr(cfg, k):
            raise KeyError(f"TrainConfig has no field {k!r}")
        setattr(cfg, k, v)
    t0 = time.time()
    print(f"-- training {method} ({', '.join(f'{k}={v}' for k, v in overrides.items())}) -> {out}", flush=True)
    train(cfg, model=model, tokenizer=tok, pairs=pairs)
    rows = [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines() if line.strip()]
    for big in ("final", "adapter", "checkpoints"):  # exported weights: hundreds of MB, not results
        shutil.rmtree(Path(out) / big, ignore_errors=True)
    print(f"   {cfg.max_steps} steps in {time.time() - t0:.0f} s", flush=True)
    return rows, model


def heldout_start(args, rec):
    """The start of every script that compares held-out log-probs before and after training: (model, tokenizer,
    pad id, training pairs, held-out pairs, (chosen, rejected) log-probs of the held-out pairs before training)."""
    from minorpo.batches import pad_token_id
    s = args.settings
    model, tok = load_model(args)
    pad_id = pad_token_id(tok)
    pairs, heldout = split_heldout(load_pairs(args, tok, (s["pairs"] + s["heldout"]) or None), s["heldout"])
    return model, tok, pad_id, pairs, heldout, pair_logps(model, heldout, pad_id, s["train"]["batch_size"], rec.device)


def split_heldout(pairs: list, n: int) -> tuple[list, list]:
    """(training pairs, the last n pairs): a held-out set for per-pair comparisons, never trained on."""
    if len(pairs) <= n:
        raise SystemExit(f"need more than {n} usable pairs for a held-out set of {n}, got {len(pairs)}")
    return pairs[:-n], pairs[-n:]


def paired_difference(x: torch.Tensor, y: torch.Tensor) -> dict:
    """Mean of x - y over held-out pairs with its standard error and t (the same pairs under two models)."""
    m, se = mean_se(x - y)
    return {"mean": m, "se": se, "t": m / se if se > 0 else math.inf, "n": len(x)}


def column(rows, key):
    """(steps, values) of a metric over the rows that have it."""
    pts = [(r["step"], r[key]) for r in rows if r.get(key) is not None]
    return [p[0] for p in pts], [p[1] for p in pts]
