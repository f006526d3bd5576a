"""`minorpo data inspect`: see exactly what the model will be trained on before training on it.

For a few examples it prints the rendered prompt and responses with the prompt/response boundary marked at the
token level (the last prompt tokens, then the first response tokens: the first one is the first trained label),
the token counts, then token-length statistics and the drop report of the whole file. Its data flags are
`minorpo train`'s own, with train's defaults (max length, prompt cap and truncation: run/pairs.data_config), so what it
shows is what train will read.
"""

from __future__ import annotations

import argparse
import statistics

from minorpo.data import load_preferences
from minorpo.errors import UserError
from minorpo.hf.tokenizer import load_tokenizer

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
    from minorpo.run.pairs import DATA_FIELDS, data_config
    from minorpo.train import TrainConfig
    from minorpo.run.validate import check_fields, check_local_data

    cfg = TrainConfig(**{k: v for k, v in vars(args).items() if k in DATA_FIELDS})  # train's defaults for the rest
    for required in ("model", "data"):
        if not getattr(cfg, required):
            raise UserError(f"--{required} is required")
    check_fields(cfg, DATA_FIELDS)
    if args.n < 0:
        raise UserError(f"--n {args.n}: must be >= 0")
    check_local_data(cfg.data, split=cfg.split or None, data_files=cfg.data_files or None)
    tokenizer = load_tokenizer(cfg.model, revision=cfg.revision or None)
    config = data_config(cfg)  # exactly what `minorpo train` with these flags reads
    config.strict = args.strict
    dataset = load_preferences(cfg.data, tokenizer, config, split=cfg.split or None,
                               data_files=cfg.data_files or None, progress=True)
    for n, e in enumerate(dataset.examples[:args.n], 1):
        print(format_example(tokenizer, e, n))
        print()
    print(f"token lengths over {len(dataset)} kept examples (after truncation):")
    print(length_stats(dataset))
    print("drop report: " + dataset.report.format(max_rows=args.max_report_rows))
    return 0


def add_cli(subparsers) -> None:
    from minorpo.run.pairs import DATA_FIELDS
    from minorpo.tools.train_cli import add_flags

    data = subparsers.add_parser("data", help="preference data tools (see `minorpo data inspect --help`)")
    sub = data.add_subparsers(dest="data_command", metavar="SUBCOMMAND")
    p = sub.add_parser("inspect", help="show rendered examples with the prompt/response boundary and a drop report",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_flags(p, DATA_FIELDS)  # train's own data flags and defaults: inspect shows what train reads
    p.add_argument("--n", type=int, default=3, help="number of examples to show (default: 3)")
    p.add_argument("--strict", action="store_true", help="stop at the first bad row instead of reporting it")
    p.add_argument("--max-report-rows", type=int, default=20, help="dropped rows listed one by one (default: 20)")
    p.set_defaults(func=run)
    data.set_defaults(func=lambda args: data.print_help() or 2)
