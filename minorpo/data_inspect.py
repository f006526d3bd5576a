"""`minorpo data inspect`: see exactly what the model will be trained on before training on it.

For a few examples it prints the rendered prompt and responses with the prompt/response boundary marked at the
token level (the last prompt tokens, then the first response tokens: the first one is the first trained label),
the token counts, then token-length statistics and the drop report of the whole file.
"""

from __future__ import annotations

import argparse
import statistics

from .data import DataConfig, load_preferences
from .tokenizer import load_tokenizer

BOUNDARY = "▌"  # printed between the last prompt token and the first response token


def _show_tokens(tokenizer, ids) -> str:
    return " ".join(repr(tokenizer.decode([i])) for i in ids)


def format_example(tokenizer, e, n: int) -> str:
    lines = [f"=== example {n} ({e.where}): prompt {len(e.prompt_ids)} tokens, chosen {len(e.chosen_ids)}, "
             f"rejected {len(e.rejected_ids)} ==="]
    lines.append(f"--- prompt (not trained on; {len(e.prompt_ids)} tokens) ---")
    lines.append(tokenizer.decode(e.prompt_ids))
    for side in ("chosen", "rejected"):
        ids = getattr(e, f"{side}_ids")
        lines.append(f"--- {side} ({len(ids)} tokens; {BOUNDARY} = prompt/response boundary) ---")
        lines.append(f"boundary: {_show_tokens(tokenizer, e.prompt_ids[-3:])} {BOUNDARY} "
                     f"{_show_tokens(tokenizer, ids[:3])}   ...   last: {_show_tokens(tokenizer, ids[-2:])}")
        lines.append(tokenizer.decode(e.prompt_ids[-8:]) + BOUNDARY + tokenizer.decode(ids))
    return "\n".join(lines)


def length_stats(dataset) -> str:
    lines = []
    for name, get in (("prompt", lambda e: e.prompt_ids), ("chosen", lambda e: e.chosen_ids),
                      ("rejected", lambda e: e.rejected_ids)):
        lengths = [len(get(e)) for e in dataset.examples]
        if lengths:
            lines.append(f"  {name:9s} tokens: median {statistics.median(lengths):g}, mean "
                         f"{statistics.fmean(lengths):.1f}, max {max(lengths)}")
    return "\n".join(lines)


def run(args) -> int:
    tokenizer = load_tokenizer(args.model, revision=args.revision)
    config = DataConfig(format=args.format, template=args.template, max_length=args.max_length,
                        max_prompt_length=args.max_prompt_length, prompt_truncation=args.prompt_truncation,
                        response_truncation=args.response_truncation, strict=args.strict)
    dataset = load_preferences(args.data, tokenizer, config, split=args.split, data_files=args.data_files)
    for n, e in enumerate(dataset.examples[:args.n], 1):
        print(format_example(tokenizer, e, n))
        print()
    print(f"token lengths over {len(dataset)} kept examples (after truncation):")
    print(length_stats(dataset))
    print("drop report: " + dataset.report.format(max_rows=args.max_report_rows))
    return 0


def add_cli(subparsers) -> None:
    data = subparsers.add_parser("data", help="preference data tools (see `minorpo data inspect --help`)")
    sub = data.add_subparsers(dest="data_command", metavar="SUBCOMMAND")
    p = sub.add_parser("inspect", help="show rendered examples with the prompt/response boundary and a drop report",
                       description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data", required=True, help="a .jsonl/.jsonl.gz/.json/.parquet file, a folder, or a hub "
                                                 "dataset id 'org/name'")
    p.add_argument("--model", required=True, help="a folder with tokenizer.json, or a hub model id "
                                                  "(only its tokenizer files are fetched)")
    p.add_argument("--revision", default=None, help="hub revision of --model")
    p.add_argument("--split", default=None, help="split of a folder or hub dataset (default: train, unless "
                                                 "--data-files picks the files)")
    p.add_argument("--data-files", default=None, help="glob of files inside a folder or hub dataset")
    p.add_argument("--n", type=int, default=3, help="number of examples to show")
    defaults = DataConfig()
    p.add_argument("--format", default=defaults.format, choices=["auto", "standard", "conversational", "implicit"])
    p.add_argument("--template", default=defaults.template, choices=["auto", "chat", "raw"],
                   help="auto: chat template for message lists, raw text for strings")
    p.add_argument("--max-length", type=int, default=defaults.max_length, help="max tokens of prompt + response")
    p.add_argument("--max-prompt-length", type=int, default=defaults.max_prompt_length)
    p.add_argument("--prompt-truncation", default=defaults.prompt_truncation,
                   choices=["drop", "keep_end", "keep_start"])
    p.add_argument("--response-truncation", default=defaults.response_truncation, choices=["keep_start", "drop"])
    p.add_argument("--strict", action="store_true", help="stop at the first bad row instead of reporting it")
    p.add_argument("--max-report-rows", type=int, default=20, help="dropped rows listed one by one")
    p.set_defaults(func=run)
    data.set_defaults(func=lambda args: data.print_help() or 2)
