"""The data of a training run: a TrainConfig's data fields read into tokenized pairs, with the drop report.

`minorpo data inspect` takes the same data fields (DATA_FIELDS) and builds the same DataConfig (data_config), so
what it shows is what `minorpo train` reads.
"""

import json
from pathlib import Path

from minorpo.data import DataConfig, load_preferences
from minorpo.errors import UserError
from minorpo.run.fileio import atomic_write

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
