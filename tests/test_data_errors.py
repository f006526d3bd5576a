"""Bad input never crashes a run and never vanishes: a table of malformed rows (each skipped and reported with its
row and reason, or raising under strict=True) and of malformed files (each failing with the file and line).
Also the readers (.jsonl, .jsonl.gz, .json, .parquet, folders with split/file selection, hub ids offline).

Oracle: the expected reason / message of each case is written in the table by hand from the issue's rules.
"""

import gzip
import json

import pytest
from tiny_tokenizers import word_tokenizer

from minorpo.data import BadRowError, DataConfig, build_examples, load_preferences
from minorpo.hf.datafiles import DataFileError, iter_rows, select_files
from minorpo.hf.layouts import row_layout
from minorpo.hf.tokenizer import Tokenizer

GOOD = {"prompt": "\n\nHuman: hi\n\nAssistant:", "chosen": " hello!", "rejected": " go away."}
U = {"role": "user", "content": "hi"}
A1, A2 = {"role": "assistant", "content": "ok"}, {"role": "assistant", "content": "no"}

GOOD_OF = {"conversational": {"prompt": [U], "chosen": [A1], "rejected": [A2]},
           "implicit": {"chosen": "\n\nHuman: hi\n\nAssistant: ok", "rejected": "\n\nHuman: hi\n\nAssistant: no"}}
# (id, row, config overrides, expected reason)
BAD_ROWS = [
    ("missing chosen", {"prompt": "hi", "rejected": "no"}, {}, "missing_key"),
    ("missing rejected", {"prompt": "hi", "chosen": "ok"}, {}, "missing_key"),
    ("missing prompt, standard forced", {"chosen": "ok", "rejected": "no"}, {"format": "standard"}, "missing_key"),
    ("prompt is a number", {"prompt": 3, "chosen": "ok", "rejected": "no"}, {}, "not_a_string"),
    ("chosen is null", {"prompt": "hi", "chosen": None, "rejected": "no"}, {}, "not_a_string"),
    ("implicit rejected is a number", {"chosen": "\n\nHuman: hi\n\nAssistant: ok", "rejected": 7}, {},
     "not_a_string"),
    ("message content not a string", {"prompt": [U], "chosen": [{"role": "assistant", "content": ["ok"]}],
                                      "rejected": [A2]}, {}, "not_a_string"),
    ("chosen list of strings", {"prompt": [U], "chosen": ["ok"], "rejected": [A2]}, {}, "bad_messages"),
    ("empty chosen message list", {"prompt": [U], "chosen": [], "rejected": [A2]}, {}, "bad_messages"),
    ("last turn not assistant", {"chosen": [A1, U], "rejected": [A1, {"role": "user", "content": "x"}]}, {},
     "bad_messages"),
    ("empty response", {"prompt": "hi", "chosen": "", "rejected": "no"}, {}, "empty_response"),
    ("whitespace response", {"prompt": "hi", "chosen": "ok", "rejected": " \n "}, {}, "empty_response"),
    ("empty assistant message", {"prompt": [U], "chosen": [A1], "rejected": [{"role": "assistant", "content": ""}]},
     {}, "empty_response"),
    ("chosen == rejected", {"prompt": "hi", "chosen": " ok", "rejected": " ok"}, {}, "identical_responses"),
    ("implicit prompts differ", {"chosen": "\n\nHuman: hi\n\nAssistant: ok",
                                 "rejected": "\n\nHuman: bad\n\nAssistant: no"}, {}, "prompts_differ"),
    ("ultrafeedback prompts differ", {"chosen": [U, A1], "rejected": [{"role": "user", "content": "x"}, A2]}, {},
     "prompts_differ"),
    ("implicit without marker", {"chosen": "hi ok", "rejected": "hi no"}, {}, "no_prompt_marker"),
    ("empty prompt", {"prompt": "", "chosen": " ok", "rejected": " no"}, {}, "empty_prompt"),
    ("prompt over max_prompt_length", GOOD, {"max_prompt_length": 4}, "prompt_too_long"),
    ("prompt fills max_length", GOOD, {"max_length": 10}, "prompt_too_long"),
    ("response over max_length, drop", GOOD, {"max_length": 12, "response_truncation": "drop"}, "too_long"),
    ("chat rows, HH text not a dialogue", {"chosen": "hi\n\nAssistant: ok", "rejected": "hi\n\nAssistant: no"},
     {"template": "chat"}, "unparsable_dialogue"),
]


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return Tokenizer.from_dir(word_tokenizer(tmp_path_factory.mktemp("tok")))


@pytest.mark.parametrize("name,row,overrides,reason", BAD_ROWS, ids=[c[0] for c in BAD_ROWS])
def test_bad_row_reported_or_raised(tok, name, row, overrides, reason):
    # the good rows around the bad one are of the layout it was meant to have (a source is read in one layout)
    layout = overrides.get("format") or row_layout(row) or "standard"
    good = GOOD_OF.get(layout, GOOD)
    rows = [("f.jsonl:1", good), ("f.jsonl:2", row), ("f.jsonl:3", good)]
    overrides = dict(overrides)
    ds = build_examples(rows, tok, DataConfig(**overrides))
    # the two good rows survive unless the config itself rules GOOD out too (length limits apply to every row)
    expect_kept = 0 if reason in ("prompt_too_long", "too_long") else 2
    assert len(ds) == ds.report.kept == expect_kept
    assert ds.report.rows_read == 3
    assert ("f.jsonl:2", reason) in [(w, r) for w, r, _ in ds.report.dropped], ds.report.format()
    assert ds.report.counts()[reason] == 3 - expect_kept
    assert f"f.jsonl:2: {reason}" in ds.report.format()
    with pytest.raises(BadRowError, match=f"^f.jsonl:2: {reason}: ") as info:
        build_examples(rows[1:], tok, DataConfig(**overrides, strict=True))
    assert (info.value.where, info.value.reason) == ("f.jsonl:2", reason)


def write(path, text, gz=False):
    if gz:
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.write(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


LINE = json.dumps(GOOD)
# (id, file name, content, expected error type, expected message (regex))
BAD_FILES = [
    ("bad JSON line", "d.jsonl", f"{LINE}\n{{\"prompt\": \"hi\",\n{LINE}\n", DataFileError,
     r"d\.jsonl:2: invalid JSON"),
    ("line is a list", "d.jsonl", f"{LINE}\n\n[1, 2]\n", DataFileError,
     r"d\.jsonl:3: expected one JSON object per line, got list"),
    ("gz bad JSON line", "d.jsonl.gz", f"{LINE}\n{LINE}\nnot json\n", DataFileError, r"d\.jsonl\.gz:3: invalid JSON"),
    ("json top level string", "d.json", '"hello"', DataFileError, r"d\.json: the top level must be a list.*got str"),
    ("json top level dict", "d.json", '{"rows": []}', DataFileError,
     r"d\.json: the top level must be a list.*got dict with keys \['rows'\]"),
    ("json element not object", "d.json", f"[{LINE}, 5]", DataFileError,
     r"d\.json: row 2 of the top-level list is int"),
    ("json invalid", "d.json", f"[\n{LINE},\n{LINE}\n", DataFileError, r"d\.json:4: invalid JSON"),
    ("jsonl given as .json", "d.json", f"{LINE}\n{LINE}\n", DataFileError, r"d\.json:2: invalid JSON.*use \.jsonl"),
    ("unsupported extension", "d.csv", "prompt,chosen,rejected\n", DataFileError, r"d\.csv: unsupported file type"),
    ("not gzip", "d.jsonl.gz", "plain text", DataFileError, r"d\.jsonl\.gz: cannot be read"),
    ("not parquet", "d.parquet", "plain text", DataFileError, r"d\.parquet: (not a readable parquet|reading)"),
    ("not utf-8", "d.jsonl", None, DataFileError, r"d\.jsonl:2: not UTF-8 text \(byte 0xff at column 13\)"),
    ("json not utf-8", "d.json", None, DataFileError, r"d\.json:2: not UTF-8 text \(byte 0xff at column 13\)"),
    ("unterminated string", "d.jsonl", f"{LINE}\n{{\"prompt\": \"hi", DataFileError,
     r"d\.jsonl:2: invalid JSON: Unterminated string starting at column 12$"),
]


@pytest.mark.parametrize("name,fname,content,error,message", BAD_FILES, ids=[c[0] for c in BAD_FILES])
def test_malformed_file_fails_naming_file_and_line(tmp_path, tok, name, fname, content, error, message):
    path = tmp_path / fname
    if content is None:  # a Latin-1 byte in row 2: {"prompt": "\xff...
        path.write_bytes(("[" if fname.endswith(".json") else "").encode() + LINE.encode() + b"\n"
                         + b'{"prompt": "\xff"}' + (b"]" if fname.endswith(".json") else b"") + b"\n")
    else:
        write(path, content, gz=fname.endswith(".gz") and name != "not gzip")
    with pytest.raises(error, match=message):
        load_preferences(path, tok)
    with pytest.raises(error, match=message):  # strict or not: a broken file is never "a bad row"
        load_preferences(path, tok, DataConfig(strict=True))


def test_missing_source(tmp_path, tok):
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        load_preferences(tmp_path / "nope.jsonl", tok)


def test_hub_id_offline_fails_clearly(tmp_path, tok, monkeypatch):
    """No network here: with HF_HUB_OFFLINE=1 and an empty cache, a hub id fails naming the id and the cause."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    import huggingface_hub.constants as c
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    with pytest.raises(DataFileError, match=r"'someone/some-dataset' is not a local file.*HF_HUB_OFFLINE"):
        load_preferences("someone/some-dataset", tok, split="train")


def test_readers_agree(tmp_path, tok):
    """The same 3 rows as .jsonl, .jsonl.gz, .json (list and {split: list}) and .parquet give the same examples."""
    rows = [GOOD, {**GOOD, "chosen": " fine."}, {"chosen": "\n\nHuman: hi\n\nAssistant: ok", "rejected": "x"}]
    text = "\n".join(json.dumps(r) for r in rows) + "\n"
    files = [write(tmp_path / "a.jsonl", text), write(tmp_path / "a.jsonl.gz", text, gz=True),
             write(tmp_path / "a.json", json.dumps(rows)), write(tmp_path / "b.json", json.dumps({"train": rows}))]
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
        pq.write_table(pa.Table.from_pylist(rows[:2]), tmp_path / "a.parquet")  # parquet needs one schema
        files.append(tmp_path / "a.parquet")
    except ImportError:
        pass
    ref = load_preferences(files[0], tok)
    assert len(ref) == 2 and ref.report.counts() == {"missing_key": 1}  # the file's layout is standard
    for f in files[1:]:
        ds = load_preferences(f, tok)
        got = [(e.prompt_ids, e.chosen_ids, e.rejected_ids) for e in ds.examples]
        assert got == [(e.prompt_ids, e.chosen_ids, e.rejected_ids) for e in ref.examples][:len(got)], f
    assert [w for w, _ in iter_rows(files[0])] == ["a.jsonl:1", "a.jsonl:2", "a.jsonl:3"]
    assert [w for w, _ in iter_rows(files[2])] == ["a.json:row 1", "a.json:row 2", "a.json:row 3"]


def test_folder_split_and_file_selection(tmp_path, tok):
    """Hub-style layouts: <split>-00000-of-00001.parquet, <split>.jsonl, <config>/<split>.jsonl.gz."""
    files = ["data/train-00000-of-00002.parquet", "data/train-00001-of-00002.parquet", "data/test-00000.parquet",
             "data/train_prefs-00000-of-00001.parquet", "harmless-base/train.jsonl.gz", "harmless-base/test.jsonl.gz",
             "helpful-base/test.jsonl.gz", "README.md", "test/x.jsonl"]
    assert select_files(files) == ["data/train-00000-of-00002.parquet", "data/train-00001-of-00002.parquet",
                                   "harmless-base/train.jsonl.gz"]
    assert select_files(files, split="train_prefs") == ["data/train_prefs-00000-of-00001.parquet"]
    assert select_files(files, split="test", data_files="harmless-base/*") == ["harmless-base/test.jsonl.gz"]
    assert select_files(files, data_files="helpful-base/test.jsonl.gz") == ["helpful-base/test.jsonl.gz"]
    assert select_files(files, split="test") == ["data/test-00000.parquet", "harmless-base/test.jsonl.gz",
                                                 "helpful-base/test.jsonl.gz", "test/x.jsonl"]
    with pytest.raises(DataFileError, match="no data file matches split='validation'"):
        select_files(files, split="validation")
    (tmp_path / "ds" / "sub").mkdir(parents=True)
    write(tmp_path / "ds" / "train.jsonl", json.dumps(GOOD) + "\n")
    write(tmp_path / "ds" / "sub" / "test.jsonl", json.dumps(GOOD) + "\n" + json.dumps(GOOD) + "\n")
    assert len(load_preferences(tmp_path / "ds", tok)) == 1
    assert len(load_preferences(tmp_path / "ds", tok, split="test")) == 2


def test_config_validation():
    with pytest.raises(ValueError, match="DataConfig.prompt_truncation='left'"):
        DataConfig(prompt_truncation="left")
    with pytest.raises(ValueError, match="DataConfig.max_length must be None or >= 2"):
        DataConfig(max_length=1)


def test_raw_template_rejects_message_rows(tok):
    with pytest.raises(ValueError, match="template='raw' cannot format message lists"):
        build_examples([("f:1", {"prompt": [U], "chosen": [A1], "rejected": [A2]})], tok, DataConfig(template="raw"))
