"""`minorpo conformance`: which ORPO conventions does another implementation follow?

Give it a model, a few preference pairs, and (optionally) the loss and metrics another implementation reported on
exactly those pairs as ONE batch. It computes the loss and every metric under each preset of minorpo/loss.py
(paper, trl, official, llamafactory), prints them side by side, and says which preset the reported numbers match
and by how much the others differ.

    minorpo conformance --model DIR --data pairs.jsonl --limit 4 --lam 0.1 \
        --loss 2.3456 --metric nll_loss=2.301 --metric rewards/chosen=-0.153

Where presets differ (see loss.py): which tokens the NLL covers (response, or prompt + response), how it is
normalized (pooled token mean, or per-sequence mean), the official code's extra target and pad-id filter, and the
tokens the logits/* metrics average over. So the loss and nll_loss separate paper from trl from official; logps/*
separate official from the rest; logits/* separate llamafactory from paper; paper and llamafactory have the same
loss. Batch composition matters for a token-mean NLL, so the other implementation must have seen exactly these
pairs, tokenized the same way (see `minorpo data inspect`), as one batch.
"""

from __future__ import annotations

import argparse

import torch

from .collate import collate_padded, pad_token_id
from .loss import PRESETS, get_conventions, orpo_loss

# the quantities compared, in the order printed (sft_loss is nll_loss under LLaMA-Factory's name)
QUANTITIES = ["loss", "nll_loss", "odds_ratio_loss", "log_odds_ratio", "log_odds_chosen", "rewards/chosen",
              "rewards/rejected", "rewards/accuracies", "rewards/margins", "logps/chosen", "logps/rejected",
              "logits/chosen", "logits/rejected"]
# names other implementations log -> ours (the official code's wandb names; LLaMA-Factory's sft_loss)
ALIASES = {"sft_loss": "nll_loss", "Positive Geometric Mean": "logps/chosen",
           "Negative Geometric Mean": "logps/rejected", "Log Odds Ratio": "log_odds_ratio", "Log Odds": "log_odds_chosen"}
DESCRIPTIONS = {"paper": "the paper's equations (response-only NLL, per-sequence mean)",
                "trl": "TRL ORPOTrainer 1.x", "official": "the official xfactlab/orpo code",
                "llamafactory": "LLaMA-Factory (pref_loss: orpo)"}


def canonical_name(name: str) -> str:
    """A reported metric name -> ours: strips train/, eval/, eval_ prefixes and maps known aliases."""
    for prefix in ("train/", "eval/", "eval_"):
        if name.startswith(prefix):
            name = name[len(prefix):]
    name = ALIASES.get(name, name)
    if name not in QUANTITIES:
        raise ValueError(f"unknown metric {name!r}; known: {', '.join(QUANTITIES)} (and {', '.join(ALIASES)})")
    return name


@torch.no_grad()
def conformance_table(model, examples, pad_id: int, eos_id: int | None, lam: float | None = None,
                      max_length: int | None = None, chunk_size: int = 1024) -> dict[str, dict[str, float]]:
    """{preset: metrics} for the examples (data.TokenizedPair) as one right-padded batch.

    pad_id pads the batch (what TRL and LLaMA-Factory pad with); the official preset uses eos_id as its pad id (its
    code sets pad = eos), and rows whose length reached max_length count as truncated (no extra target).
    lam: one lambda for every preset, or None for each preset's default.
    """
    device = next(model.parameters()).device
    batch = {k: v.to(device) for k, v in collate_padded(list(examples), pad_id).items()}
    if max_length is not None:
        for side in ("chosen", "rejected"):
            batch[f"{side}_truncated"] = batch[f"{side}_attention_mask"].sum(1) >= max_length
    table = {}
    for preset in PRESETS:
        conv = get_conventions(preset)
        pad = (eos_id if eos_id is not None else pad_id) if conv.nll_drop_pad_id else pad_id
        _, metrics = orpo_loss(model, batch, preset, lam=lam, pad_token_id=pad, chunk_size=chunk_size)
        table[preset] = metrics
    return table


def relative_difference(x: float, y: float) -> float:
    return abs(x - y) / max(abs(x), abs(y), 1e-12)


def compare(table: dict[str, dict[str, float]], reported: dict[str, float], rtol: float):
    """[(preset, max relative difference, the quantity where it is, matches)] sorted best first."""
    rows = []
    for preset, metrics in table.items():
        diffs = {name: relative_difference(metrics[name], value) for name, value in reported.items()}
        worst = max(diffs, key=diffs.get)
        rows.append((preset, diffs[worst], worst, diffs[worst] <= rtol))
    return sorted(rows, key=lambda r: r[1])


def format_report(table, reported: dict[str, float], rtol: float, lams: dict[str, float]) -> tuple[str, bool]:
    """The printed table and verdict; and whether some preset matches (True when nothing was reported)."""
    presets = list(table)
    lines = ["lambda: " + ", ".join(f"{p} {lams[p]:g}" for p in presets), ""]
    header = f"{'quantity':<20}" + "".join(f"{p:>15}" for p in presets) + (f"{'reported':>15}" if reported else "")
    lines += [header, "-" * len(header)]
    for name in QUANTITIES:
        row = f"{name:<20}" + "".join(f"{table[p][name]:>15.7g}" for p in presets)
        if reported:
            row += f"{reported[name]:>15.7g}" if name in reported else f"{'':>15}"
        lines.append(row)
    if not reported:
        lines += ["", "(pass --loss / --metric NAME=VALUE with another implementation's numbers to find its preset)"]
        return "\n".join(lines), True
    lines += ["", f"match against the {len(reported)} reported quantit{'y' if len(reported) == 1 else 'ies'} "
                  f"(relative tolerance {rtol:g}):"]
    rows = compare(table, reported, rtol)
    for preset, diff, worst, ok in rows:
        lines.append(f"  {preset:<14} max relative difference {diff:9.2e} (in {worst})" + ("   MATCH" if ok else ""))
    matched = [r[0] for r in rows if r[3]]
    if not matched:
        lines.append(f"verdict: no preset matches within {rtol:g}; the closest is '{rows[0][0]}'. Check lambda, that "
                     "the same pairs formed one batch, the tokenization (minorpo data inspect) and the dtype (numbers "
                     "logged in bf16 need --rtol 1e-2).")
    elif len(matched) == 1:
        lines.append(f"verdict: the reported numbers follow the '{matched[0]}' preset ({DESCRIPTIONS[matched[0]]}).")
    else:
        lines.append(f"verdict: the reported numbers match {', '.join(repr(p) for p in matched)}, which agree on "
                     "every quantity reported; report more (logits/*, logps/*) to tell them apart.")
    return "\n".join(lines), bool(matched)


def parse_reported(loss: float | None, metrics: list[str] | None) -> dict[str, float]:
    reported = {} if loss is None else {"loss": float(loss)}
    for item in metrics or []:
        name, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--metric {item!r}: expected NAME=VALUE, e.g. rewards/chosen=-0.153")
        try:
            reported[canonical_name(name.strip())] = float(value)
        except ValueError as e:
            raise ValueError(f"--metric {item!r}: {e}") from None
    return reported


def run(args) -> int:
    from .data import DataConfig, load_preferences
    from .loader import load

    try:
        reported = parse_reported(args.loss, args.metric)
    except ValueError as e:
        print(f"error: {e}")
        return 2
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[args.dtype]
    model, tokenizer = load(args.model, dtype=dtype, revision=args.revision, device=args.device)
    config = DataConfig(format=args.format, template=args.template, max_length=args.max_length)
    data = load_preferences(args.data, tokenizer, config, split=args.split, data_files=args.data_files,
                            limit=args.limit)
    if len(data) == 0:
        print(f"error: no usable pair in {args.data}. Drop report: {data.report.format()}")
        return 2
    pad = pad_token_id(tokenizer)
    table = conformance_table(model, data.examples, pad, tokenizer.eos_token_id, args.lam, args.max_length,
                              args.chunk_size)
    lams = {p: get_conventions(p).lam if args.lam is None else args.lam for p in PRESETS}
    print(f"minorpo conformance: {len(data)} pairs of {args.data} as ONE batch (right-padded with id {pad}; the "
          f"official preset's pad id is eos {tokenizer.eos_token_id}), model {args.model} in {args.dtype}")
    text, matched = format_report(table, reported, args.rtol, lams)
    print(text)
    return 0 if matched else 1


def add_cli(subparsers) -> None:
    p = subparsers.add_parser("conformance", help="loss and metrics under every ORPO preset; which one another "
                                                  "implementation's reported numbers follow",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="model folder or hub id (minorpo.loader.load)")
    p.add_argument("--revision", default=None, help="hub revision of --model")
    p.add_argument("--data", required=True, help="preference pairs: .jsonl/.json/.parquet file, folder or hub dataset "
                                                 "(minorpo.data; see `minorpo data inspect`)")
    p.add_argument("--split", default=None, help="split of a folder or hub dataset")
    p.add_argument("--data-files", default=None, help="glob of files inside a folder or hub dataset")
    p.add_argument("--limit", type=int, default=8, help="use the first N usable pairs, as ONE batch (default 8)")
    p.add_argument("--format", default="auto", choices=["auto", "standard", "conversational", "implicit"],
                   help="row format (minorpo.data.DataConfig)")
    p.add_argument("--template", default="auto", choices=["auto", "chat", "raw"], help="chat template or raw text")
    p.add_argument("--max-length", type=int, default=1024, help="max tokens of prompt + response (rows reaching it "
                                                               "count as truncated for the official preset)")
    p.add_argument("--lam", type=float, default=None, help="lambda for every preset (TRL beta, official alpha); "
                                                         "default: each preset's own (paper/trl/llamafactory 0.1, "
                                                         "official 1.0)")
    p.add_argument("--loss", type=float, default=None, help="the loss another implementation reported")
    p.add_argument("--metric", action="append", metavar="NAME=VALUE",
                   help="a metric it reported, under TRL's name (rewards/chosen, nll_loss, log_odds_ratio, ...; "
                        "train/ and eval_ prefixes and the official wandb names are understood); repeatable")
    p.add_argument("--rtol", type=float, default=1e-3, help="relative difference counted as a match (default 1e-3; "
                                                          "use 1e-2 for numbers logged in bf16)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"], help="model dtype")
    p.add_argument("--device", default="cpu", help="cpu, cuda, ...")
    p.add_argument("--chunk-size", type=int, default=1024, help="token positions per log-prob chunk")
    p.set_defaults(func=run)
