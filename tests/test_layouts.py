"""Row layouts (minorpo/hf/layouts.py): each read from a small file into the right prompt / chosen / rejected tokens
and masks; one layout per source; an unknown layout is one error; train's data selection flags; inspect = train.

Oracles: (1) hand tokenization over the tiny WordLevel vocabulary (tests/tiny_tokenizers.WORDS), as in
tests/test_data.py; (2) the same conversation written in TRL's conversational layout, whose exact ids
tests/test_data.py checks by hand: a new layout must give identical ids for identical content. Integer ids, exact.
"""

import json

import pytest
from tiny_tokenizers import ID, word_tokenizer

from minorpo.tools.cli import main
from minorpo.batches import collate_padded
from minorpo.logprobs import IGNORE_INDEX
from minorpo.data import load_preferences
from minorpo.errors import UserError
from minorpo.hf.tokenizer import Tokenizer
from minorpo.run.pairs import data_config
from minorpo.train import TrainConfig


def ids(*pieces):
    return [ID[p] for p in pieces]


def chat(system, *turns, generation=True):
    """Hand ids of the tiny ChatML template: <s>, a system turn (the template's default 'Be nice.' when None), turns."""
    out = ids("<s>")
    for role, words in [("system", system or ["Be", " ", "nice", "."])] + list(turns):
        out += ids("<|im_start|>", role, "\n", *words, "<|im_end|>", "\n")
    return out + (ids("<|im_start|>", "assistant", "\n") if generation else [])


HI = ("user", ["hi"])
HELLO = ids("hello", "!", "<|im_end|>", "\n", "</s>")  # the response turn, then the tokenizer's EOS (add_eos auto)
GO_AWAY = ids("go", " ", "away", ".", "<|im_end|>", "\n", "</s>")
GOOD_SYSTEM = ["you", " ", "are", " ", "good", "."]
Q = ("user", ["what", " ", "is", " ", "two", " ", "plus", " ", "two", "?"])

H, G = (lambda v: {"from": "human", "value": v}), (lambda v: {"from": "gpt", "value": v})
# (id, rows of the file, expected layout, expected (prompt ids, chosen ids, rejected ids) of row 1)
CASES = [
    ("sharegpt", [{"conversations": [H("hi")], "chosen": G("hello!"), "rejected": G("go away.")}],
     "sharegpt", (chat(None, HI), HELLO, GO_AWAY)),
    ("sharegpt system turn, multi-turn",
     [{"conversations": [{"from": "system", "value": "you are good."}, H("hi"), G("hello!"),
                         H("what is two plus two?")], "chosen": G("hello!"), "rejected": G("go away.")}],
     "sharegpt", (chat(GOOD_SYSTEM, HI, ("assistant", ["hello", "!"]), Q), HELLO, GO_AWAY)),
    ("sharegpt system column", [{"conversations": [H("hi")], "system": "you are good.", "chosen": G("hello!"),
                                 "rejected": G("go away.")}], "sharegpt", (chat(GOOD_SYSTEM, HI), HELLO, GO_AWAY)),
    ("openai messages", [{"messages": [{"role": "user", "content": "hi"}],
                          "chosen": {"role": "assistant", "content": "hello!"},
                          "rejected": {"role": "assistant", "content": "go away."}}],
     "sharegpt", (chat(None, HI), HELLO, GO_AWAY)),
    ("alpaca, empty input", [{"instruction": "hi", "input": "", "chosen": "hello!", "rejected": "go away."}],
     "alpaca", (chat(None, HI), HELLO, GO_AWAY)),
    ("alpaca instruction + input + history",
     [{"instruction": "what is two plus two?", "input": "four, five?", "history": [["hi", "hello!"]],
       "chosen": "hello!", "rejected": "go away."}],
     "alpaca", (chat(None, HI, ("assistant", ["hello", "!"]),
                     ("user", Q[1] + ["\n", "four", ",", " ", "five", "?"])), HELLO, GO_AWAY)),
    ("orca question + system", [{"system": "you are good.", "question": "hi", "chosen": "hello!",
                                 "rejected": "go away."}], "question", (chat(GOOD_SYSTEM, HI), HELLO, GO_AWAY)),
    ("orca empty system", [{"system": "", "question": "hi", "chosen": "hello!", "rejected": "go away."}],
     "question", (chat(None, HI), HELLO, GO_AWAY)),
    ("standard + system column", [{"system": "you are good.", "prompt": "hi", "chosen": "hello!",
                                   "rejected": "go away."}], "standard", (chat(GOOD_SYSTEM, HI), HELLO, GO_AWAY)),
]


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return Tokenizer.from_dir(word_tokenizer(tmp_path_factory.mktemp("tok")))


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("name,rows,layout,expected", CASES, ids=[c[0] for c in CASES])
def test_layout_parsed_exactly(tmp_path, tok, name, rows, layout, expected):
    ds = load_preferences(write_jsonl(tmp_path / "d.jsonl", rows), tok, data_config(TrainConfig()))
    assert ds.report.layout == layout and ds.report.dropped == [], ds.report.format()
    e = ds.examples[0]
    assert (e.prompt_ids, e.chosen_ids, e.rejected_ids) == expected
    batch = collate_padded([e], pad_token_id=ID["<pad>"])  # the masks: only response tokens are labels
    P = len(expected[0])
    assert batch["chosen_labels"][0, :P].tolist() == [IGNORE_INDEX] * P
    assert batch["chosen_labels"][0, P:P + len(HELLO)].tolist() == HELLO
    assert batch["rejected_labels"][0, P:P + len(GO_AWAY)].tolist() == GO_AWAY


def test_sharegpt_equals_trl_conversational(tmp_path, tok):
    """The same two-turn conversation in LLaMA-Factory's sharegpt layout and in TRL's conversational one."""
    conv = [("human", "hi"), ("gpt", "hello!"), ("human", "how are you?")]
    role = {"human": "user", "gpt": "assistant"}
    sharegpt = {"conversations": [{"from": f, "value": v} for f, v in conv], "chosen": G("fine, thanks."),
                "rejected": G("bad.")}
    trl = {"prompt": [{"role": role[f], "content": v} for f, v in conv],
           "chosen": [{"role": "assistant", "content": "fine, thanks."}],
           "rejected": [{"role": "assistant", "content": "bad."}]}
    a, b = (load_preferences(write_jsonl(tmp_path / f"{n}.jsonl", [r]), tok).examples[0]
            for n, r in (("a", sharegpt), ("b", trl)))
    assert (a.prompt_ids, a.chosen_ids, a.rejected_ids) == (b.prompt_ids, b.chosen_ids, b.rejected_ids)


BAD_SHAREGPT = [
    ("gpt first", {"conversations": [G("hello!")], "chosen": G("ok"), "rejected": G("no")}, "must alternate"),
    ("ends with gpt", {"conversations": [H("hi"), G("hello!")], "chosen": G("ok"), "rejected": G("no")},
     "must end with a user"),
    ("chosen from human", {"conversations": [H("hi")], "chosen": H("ok"), "rejected": G("no")},
     "chosen has role 'user'"),
    ("tool turn", {"conversations": [H("hi"), {"from": "observation", "value": "x"}], "chosen": G("ok"),
                   "rejected": G("no")}, "role 'observation'"),
    ("no conversations", {"chosen": G("ok"), "rejected": G("no"), "messages_": []}, "no 'conversations' key"),
]


@pytest.mark.parametrize("name,row,words", BAD_SHAREGPT, ids=[b[0] for b in BAD_SHAREGPT])
def test_bad_sharegpt_row_dropped_with_reason(tmp_path, tok, name, row, words):
    good = CASES[0][1][0]
    ds = load_preferences(write_jsonl(tmp_path / "d.jsonl", [good, row, good]), tok)
    assert ds.report.layout == "sharegpt" and len(ds) == 2
    [(where, reason, detail)] = ds.report.dropped
    assert where == "d.jsonl:2" and words in detail, detail


def test_unknown_layout_is_one_error(tmp_path, tok):
    """300 rows of an unknown layout: one error naming the keys seen and the layouts known, not 300 drops."""
    path = write_jsonl(tmp_path / "d.jsonl", [{"question_text": "hi", "answer_a": "x", "answer_b": "y"}] * 300)
    with pytest.raises(UserError) as info:
        load_preferences(path, tok)
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith("d.jsonl: the rows have keys ['answer_a', 'answer_b', 'question_text']")
    for layout in ("standard", "conversational", "implicit", "sharegpt", "alpaca", "question"):
        assert f"{layout}: " in msg


def test_sharegpt_file_trains_end_to_end(tmp_path, capsys):
    """A LLaMA-Factory sharegpt file in a folder whose file is not named train*, picked with --data-files, with a
    real held-out file (--eval-data): trains with the tiny model through the command line."""
    from tiny_models import saved
    model = tmp_path / "model"
    saved("llama-tied", model)
    word_tokenizer(model)
    words = ["hi", "hello", "how are you", "what is two plus two", "fine", "good"]
    rows = [{"conversations": [H(f"{a}?")], "chosen": G(f"{b}, thanks."), "rejected": G("go away.")}
            for a in words for b in ("fine", "good", "nice")]
    (tmp_path / "ds").mkdir()
    write_jsonl(tmp_path / "ds" / "pairs-v2.jsonl", rows)
    write_jsonl(tmp_path / "heldout.jsonl", rows[:5])
    argv = ["train", "--model", str(model), "--data", str(tmp_path / "ds"), "--out", str(tmp_path / "run"),
            "--max-steps", "3", "--lr", "0.01", "--lora-r", "4", "--eval-every", "3", "--save-every", "0",
            "--no-progress", "--max-length", "48", "--eval-data", str(tmp_path / "heldout.jsonl")]
    assert main(argv) == 2  # the folder holds no train* file
    assert "--data: no data file matches split='train'" in capsys.readouterr().err
    assert main(argv + ["--data-files", "pairs-*.jsonl"]) == 0
    out = capsys.readouterr().out
    assert f"data: {len(rows)} training pairs, 5 held out" in out  # all of --data trained on, --eval-data held out
    report = json.loads((tmp_path / "run" / "data_report.json").read_text())
    assert (report["layout"], report["kept"], report["dropped"]) == ("sharegpt", len(rows), [])
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [0, 1, 2, 3]
    assert all(0 < m["loss"] < 100 for m in metrics[1:])
    assert metrics[0]["eval_pairs"] == metrics[-1]["eval_pairs"] == 5  # evaluated on the --eval-data pairs
    assert (tmp_path / "run" / "adapter" / "adapter_model.safetensors").exists()


def test_inspect_shows_what_train_reads(tmp_path, capsys):
    """data inspect and train share their data settings: with train's defaults (prompt cap = half of
    --max-length, keep_end) a 12-token prompt under --max-length 16 is cut to 8 tokens by both."""
    model = word_tokenizer(tmp_path / "tok")
    rows = [{"prompt": "hi how are you , what is two plus two", "chosen": " four", "rejected": " five"}]
    data = write_jsonl(tmp_path / "d.jsonl", rows)
    assert main(["data", "inspect", "--model", str(model), "--data", str(data), "--max-length", "16"]) == 0
    out = capsys.readouterr().out
    assert "prompt 8 tokens" in out and "prompts truncated 1" in out
    tok = Tokenizer.from_dir(model)
    e = load_preferences(data, tok, data_config(TrainConfig(max_length=16))).examples[0]
    assert e.prompt_ids == tok.encode(rows[0]["prompt"])[-8:]  # keep_end: the last 8 prompt tokens
