"""The data of a training run: where the pairs come from and how rows are read (DataSettings, which TrainConfig
inherits), and load_pairs, which reads them into tokenized pairs with a report of the dropped rows.

`minorpo data inspect` takes the same data fields (DATA_FIELDS) and builds the same DataConfig (data_config), so
what it shows is what `minorpo train` reads.
"""

import json
from dataclasses import dataclass
from pathlib import Path

from minorpo.data import DataConfig, load_preferences
from minorpo.errors import UserError
from minorpo.hf.layouts import LAYOUTS
from minorpo.run.config import setting
from minorpo.run.fileio import atomic_write


@dataclass
class DataSettings:
    revision: str = setting("", "hub revision (branch, tag or commit) of --model")
    split: str = setting("", "split of a folder or hub dataset --data: files named <split>.* or <split>-*, or a "
                             "<split>/ folder (default: train, unless --data-files picks the files)")
    data_files: str = setting("", "glob of the files to read inside a folder or hub dataset --data (e.g. "
                                  "'pairs*.jsonl')")
    eval_data: str = setting("", "held-out pairs from this source (file, folder or hub dataset; its first "
                                 "--eval-pairs usable pairs) instead of --eval-pairs split off --data; then all of "
                                 "--data is trained on")
    eval_split: str = setting("test", "split of --eval-data when it is a folder or hub dataset")
    format: str = setting("auto", "row layout of the data: auto (detected from its first rows) or one of "
                                  "minorpo/hf/layouts.py's", ["auto", *LAYOUTS])
    prompt_truncation: str = setting("keep_end", "a prompt over --max-prompt-length keeps its last tokens (keep_end), "
                                                 "its first (keep_start), or the row is dropped (drop)",
                                     ["keep_end", "keep_start", "drop"])
    chat_template: bool = setting(False, "format with the tokenizer's chat template (else raw text)")
    max_pairs: int = setting(0, "use only the first N usable pairs of the data (0 = all)")

# the fields that say how the data is read and cut: `minorpo data inspect` takes exactly these flags
DATA_FIELDS = ("model", "revision", "data", "split", "data_files", "format", "chat_template", "max_length",
               "max_prompt_length", "prompt_truncation")


def data_config(cfg) -> DataConfig:
    """The DataConfig of a TrainConfig's data fields: how `train` reads and cuts rows (and `data inspect`, which
    builds its settings from the same fields, shows it)."""
    return DataConfig(format=cfg.format, template="chat" if cfg.chat_template else "auto", max_length=cfg.max_length,
                      max_prompt_length=cfg.max_prompt_length or cfg.max_length // 2,
                      prompt_truncation=cfg.prompt_truncation)


def load_pairs(cfg, tokenizer, out, log, eval_data: bool = False):
    """Read and tokenize cfg.data (or cfg.eval_data); the report of dropped rows is printed once and, for
    --data, saved as RUN/data_report.json."""
    if eval_data:
        source, option, select = cfg.eval_data, "--eval-data", {"split": cfg.eval_split or None}
        limit = cfg.eval_pairs or None
    else:
        source, option, select = cfg.data, "--data", {"split": cfg.split or None, "data_files": cfg.data_files or None}
        limit = cfg.max_pairs or None
    ds = load_preferences(source, tokenizer, data_config(cfg), limit=limit, progress=cfg.progress, **select)
    log(f"{option}: " + ds.report.format(max_rows=5) + (f"\n(every dropped row: {out / 'data_report.json'})" if out else ""))
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        report = {"layout": ds.report.layout, "rows_read": ds.report.rows_read, "kept": ds.report.kept,
                  "dropped_by_reason": ds.report.counts(), "prompts_truncated": ds.report.prompts_truncated,
                  "responses_truncated": ds.report.responses_truncated,
                  "dropped": [{"where": w, "reason": r, "detail": d} for w, r, d in ds.report.dropped]}
        atomic_write(out / "data_report.json", lambda p: Path(p).write_text(json.dumps(report, indent=1)))
    if not ds.examples:
        if not ds.report.rows_read:
            raise UserError(f"{option} {source}: no rows (the selected files are empty)")
        raise UserError(f"{option} {source}: no usable preference pairs: all {ds.report.rows_read} rows were dropped "
                        f"(the drop report above says why)")
    return ds.examples
