"""Preference data: exact token ids and labels per format, BOS/EOS policy, truncation, masks at the boundary.

Oracles: the expected ids are written by hand from the tiny WordLevel vocabulary (tests/tiny_tokenizers.WORDS:
split the text into words, single whitespace and punctuation characters, look each up); for the SmolLM2 and BPE
tokenizers, transformers' tokenization of the FULL text (prompt + response in one go) gives the expected ids and
transformers' rendering of the prompt alone gives the boundary. All comparisons are exact (integer ids).
"""

import gzip
import json

import pytest
from tiny_tokenizers import CHATML_TEMPLATE, ID, bpe_tokenizer, word_tokenizer

from minorpo.batches import collate_padded, collate_shared_prompt
from minorpo.data import DataConfig, build_examples, load_preferences
from minorpo.hf.tokenizer import Tokenizer


def ids(*pieces):
    """Hand tokenization: each argument is one vocabulary piece of tests/tiny_tokenizers.WORDS."""
    return [ID[p] for p in pieces]


def one(row, tokenizer, **config):
    ds = build_examples([("t:1", row)], tokenizer, DataConfig(**config))
    assert ds.report.dropped == [], ds.report.format()
    return ds.examples[0]


@pytest.fixture
def word(tmp_path):
    return Tokenizer.from_dir(word_tokenizer(tmp_path / "word"))


@pytest.fixture
def word_bos(tmp_path):
    """Same vocabulary, with a post-processor that prepends <s> (Llama-style)."""
    return Tokenizer.from_dir(word_tokenizer(tmp_path / "word_bos", add_bos=True))


# prompt "Human: hi\n\nAssistant:" pieces; responses " hello!" and " go away."
HH_PROMPT = ids("Human", ":", " ", "hi", "\n", "\n", "Assistant", ":")
HELLO = ids(" ", "hello", "!")
GO_AWAY = ids(" ", "go", " ", "away", ".")
STANDARD = {"prompt": "Human: hi\n\nAssistant:", "chosen": " hello!", "rejected": " go away."}
IMPLICIT = {"chosen": "Human: hi\n\nAssistant: hello!", "rejected": "Human: hi\n\nAssistant: go away."}
# the tiny ChatML template: "<s>" + default system turn + turns; generation prompt "<|im_start|>assistant\n"
CHAT_PROMPT = ids("<s>", "<|im_start|>", "system", "\n", "Be", " ", "nice", ".", "<|im_end|>", "\n",
                  "<|im_start|>", "user", "\n", "hi", "<|im_end|>", "\n", "<|im_start|>", "assistant", "\n")
CHAT_HELLO = ids("hello", "!", "<|im_end|>", "\n")
CHAT_GO_AWAY = ids("go", " ", "away", ".", "<|im_end|>", "\n")
USER_HI = {"role": "user", "content": "hi"}
ASSISTANT_HELLO, ASSISTANT_GO_AWAY = ({"role": "assistant", "content": c} for c in ("hello!", "go away."))


@pytest.mark.parametrize("row", [STANDARD, IMPLICIT], ids=["standard", "implicit"])
def test_raw_text_formats_exact_ids(word, word_bos, row):
    """Raw text: prompt pieces, response pieces, EOS </s> (id 1) appended once; BOS <s> only for the tokenizer whose
    post-processor adds one (add_bos='auto')."""
    e = one(row, word)
    assert (e.prompt_ids, e.chosen_ids, e.rejected_ids) == (HH_PROMPT, HELLO + [1], GO_AWAY + [1])
    e = one(row, word_bos)
    assert (e.prompt_ids, e.chosen_ids, e.rejected_ids) == ([0] + HH_PROMPT, HELLO + [1], GO_AWAY + [1])
    b = collate_padded([e], pad_token_id=2)
    P = len(HH_PROMPT) + 1
    assert b["chosen_labels"][0].tolist() == [-100] * P + HELLO + [1] + [-100] * 2  # padded to the rejected length
    assert b["rejected_labels"][0].tolist() == [-100] * P + GO_AWAY + [1]
    assert b["chosen_input_ids"][0].tolist() == [0] + HH_PROMPT + HELLO + [1, 2, 2]
    assert b["chosen_attention_mask"][0].tolist() == [1] * (P + 4) + [0, 0]
    assert b["prompt_lengths"].tolist() == [P]


CONVERSATIONAL_ROWS = {
    "trl-conversational": {"prompt": [USER_HI], "chosen": [ASSISTANT_HELLO], "rejected": [ASSISTANT_GO_AWAY]},
    "ultrafeedback": {"prompt": "hi", "chosen": [USER_HI, ASSISTANT_HELLO], "rejected": [USER_HI, ASSISTANT_GO_AWAY]},
    "ultrafeedback-no-prompt-key": {"chosen": [USER_HI, ASSISTANT_HELLO], "rejected": [USER_HI, ASSISTANT_GO_AWAY]},
    "string-prompt-assistant-lists": {"prompt": "hi", "chosen": [ASSISTANT_HELLO], "rejected": [ASSISTANT_GO_AWAY]},
}


@pytest.mark.parametrize("name", CONVERSATIONAL_ROWS)
def test_conversational_formats_exact_ids(word, name):
    """Chat template: prompt = template(prompt, add_generation_prompt=True); the response is the rest of the
    rendering; its turn already ends with <|im_end|>, but the tokenizer's EOS is </s> (id 1) and is not in it, so
    add_eos='auto' appends </s> once."""
    e = one(CONVERSATIONAL_ROWS[name], word)
    assert (e.prompt_ids, e.chosen_ids, e.rejected_ids) == (CHAT_PROMPT, CHAT_HELLO + [1], CHAT_GO_AWAY + [1])


def test_chat_eos_not_appended_when_template_writes_it(tmp_path):
    """With eos_token = <|im_end|> (ChatML models such as SmolLM2) the rendered response already holds EOS."""
    tok = Tokenizer.from_dir(word_tokenizer(tmp_path, config={"eos_token": "<|im_end|>"}))
    e = one(CONVERSATIONAL_ROWS["trl-conversational"], tok)
    assert (e.prompt_ids, e.chosen_ids, e.rejected_ids) == (CHAT_PROMPT, CHAT_HELLO, CHAT_GO_AWAY)
    e = one(CONVERSATIONAL_ROWS["trl-conversational"], tok, add_eos=True)  # forced: still once (ends "\n")
    assert e.chosen_ids == CHAT_HELLO + ids("<|im_end|>")


def test_implicit_hh_with_chat_template_parses_turns(word):
    """template='chat' on HH-style text: the dialogue becomes user/assistant turns, responses are stripped."""
    row = {"chosen": "\n\nHuman: hi\n\nAssistant: hello!", "rejected": "\n\nHuman: hi\n\nAssistant: go away."}
    e = one(row, word, template="chat")
    assert (e.prompt_ids, e.chosen_ids, e.rejected_ids) == (CHAT_PROMPT, CHAT_HELLO + [1], CHAT_GO_AWAY + [1])
    multi = {"chosen": "\n\nHuman: hi\n\nAssistant: ok\n\nHuman: bad\n\nAssistant: no",
             "rejected": "\n\nHuman: hi\n\nAssistant: ok\n\nHuman: bad\n\nAssistant: yes"}
    e = one(multi, word, template="chat")
    assert e.prompt_ids == CHAT_PROMPT[:-3] + ids("<|im_start|>", "assistant", "\n", "ok", "<|im_end|>", "\n",
                                                  "<|im_start|>", "user", "\n", "bad", "<|im_end|>", "\n",
                                                  "<|im_start|>", "assistant", "\n")


def test_bos_never_doubled(tmp_path, word_bos):
    """A template writing {{ bos_token }} and add_bos=True: one <s>. A raw prompt starting with the text "<s>"
    under add_bos='auto': one <s>."""
    folder = word_tokenizer(tmp_path / "t", add_bos=True, chat_template="{{ bos_token }}" + CHATML_TEMPLATE)
    e = one(CONVERSATIONAL_ROWS["trl-conversational"], Tokenizer.from_dir(folder), add_bos=True)
    assert e.prompt_ids == CHAT_PROMPT  # "<s><s>..." rendered, collapsed to one <s>
    e = one({**STANDARD, "prompt": "<s>" + STANDARD["prompt"]}, word_bos)
    assert e.prompt_ids == [0] + HH_PROMPT
    e = one(STANDARD, word_bos, add_bos=False, add_eos=False)
    assert (e.prompt_ids, e.chosen_ids) == (HH_PROMPT, HELLO)
    e = one({**STANDARD, "chosen": " hello!</s>"}, word_bos)  # a response already ending with EOS: not twice
    assert e.chosen_ids == HELLO + [1]


def test_truncation_policy(word_bos):
    """Prompt [<s>, 8 pieces] = 9 tokens; chosen 4, rejected 6 tokens (with </s>)."""
    drop = build_examples([("t:1", STANDARD)], word_bos, DataConfig(max_prompt_length=5))
    assert drop.report.counts() == {"prompt_too_long": 1} and len(drop) == 0
    e = one(STANDARD, word_bos, max_prompt_length=5, prompt_truncation="keep_end")
    assert e.prompt_ids == [0] + HH_PROMPT[-4:]  # BOS kept, then the last 4 prompt tokens
    e = one(STANDARD, word_bos, max_prompt_length=5, prompt_truncation="keep_start")
    assert e.prompt_ids == ([0] + HH_PROMPT)[:5]
    e = one(STANDARD, word_bos, max_length=12)  # room 3 after the 9 prompt tokens: responses cut from the right
    assert (e.chosen_ids, e.rejected_ids) == (HELLO, GO_AWAY[:3])
    ds = build_examples([("t:1", STANDARD)], word_bos, DataConfig(max_length=12))
    assert ds.report.responses_truncated == 2
    dropped = build_examples([("t:1", STANDARD)], word_bos, DataConfig(max_length=12, response_truncation="drop"))
    assert dropped.report.counts() == {"too_long": 1}
    nothing_left = build_examples([("t:1", STANDARD)], word_bos, DataConfig(max_length=9))
    assert nothing_left.report.counts() == {"prompt_too_long": 1}
    e = one(STANDARD, word_bos, max_length=None)
    assert len(e.rejected_ids) == 6


def boundary_checks(e):
    """The first response token is a label/target, the last prompt token is not, in every layout."""
    P = len(e.prompt_ids)
    for side in ("right", "left"):
        b = collate_padded([e], pad_token_id=0, padding_side=side)
        for s in ("chosen", "rejected"):
            labels, mask = b[f"{s}_labels"][0].tolist(), b[f"{s}_attention_mask"][0].tolist()
            start = mask.index(1)  # first real token (left padding shifts it)
            response = getattr(e, f"{s}_ids")
            assert labels[start + P - 1] == -100                 # last prompt token: no label
            assert labels[start + P] == response[0]              # first response token: a label
            assert [x for x in labels if x != -100] == response  # and exactly the response tokens are labels
    sh = collate_shared_prompt([e], pad_token_id=0)
    assert sh["chosen_targets"][0, P - 1] == e.chosen_ids[0]     # predicted from the last prompt position
    assert sh["rejected_targets"][0, P - 1] == e.rejected_ids[0]
    assert (sh["chosen_targets"][0, :P - 1] == -100).all() and (sh["rejected_targets"][0, :P - 1] == -100).all()


@pytest.mark.parametrize("kind", ["word", "bpe"])
def test_masks_at_boundary_tiny(tmp_path, kind):
    tok = Tokenizer.from_dir((word_tokenizer if kind == "word" else bpe_tokenizer)(tmp_path))
    for row in (STANDARD, IMPLICIT, *CONVERSATIONAL_ROWS.values()):
        boundary_checks(one(row, tok))


def test_bpe_pair_equals_transformers_full_text(tmp_path):
    """Prompt tokenized alone + response tokenized alone == transformers on the full conversation (BPE, ChatML)."""
    transformers = pytest.importorskip("transformers")
    folder = bpe_tokenizer(tmp_path, config={"eos_token": "<|im_end|>"})
    hf, tok = transformers.AutoTokenizer.from_pretrained(str(folder)), Tokenizer.from_dir(folder)
    for row in CONVERSATIONAL_ROWS.values():
        e = one(row, tok)
        prompt = row["prompt"] if isinstance(row.get("prompt"), list) else [USER_HI]
        P = len(hf.apply_chat_template(prompt, add_generation_prompt=True, return_dict=False))
        for s, msg in (("chosen", ASSISTANT_HELLO), ("rejected", ASSISTANT_GO_AWAY)):
            full = list(hf.apply_chat_template(prompt + [msg], return_dict=False))
            assert e.prompt_ids + getattr(e, f"{s}_ids") == full and len(e.prompt_ids) == P


# ----------------------------------------------------------------------------------------- SmolLM2 (real tokenizer)
@pytest.mark.real_model
def test_smollm2_chat_pairs_equal_transformers(real_model_dir):
    transformers = pytest.importorskip("transformers")
    hf, tok = transformers.AutoTokenizer.from_pretrained(str(real_model_dir)), Tokenizer.from_dir(real_model_dir)
    rows = [
        {"prompt": [{"role": "user", "content": "What is 2+2?"}], "chosen": [{"role": "assistant", "content": "4."}],
         "rejected": [{"role": "assistant", "content": "5, obviously."}]},
        {"chosen": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a fruit."},
                    {"role": "assistant", "content": "Apple."}, {"role": "user", "content": "Another?"},
                    {"role": "assistant", "content": "Pear."}],
         "rejected": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a fruit."},
                      {"role": "assistant", "content": "Apple."}, {"role": "user", "content": "Another?"},
                      {"role": "assistant", "content": "I don't know any other fruit, sorry!"}]},
    ]
    for row in rows:
        e = one(row, tok)
        prompt = row["prompt"] if "prompt" in row else row["chosen"][:-1]
        P = len(hf.apply_chat_template(prompt, add_generation_prompt=True, return_dict=False))
        assert len(e.prompt_ids) == P
        for s in ("chosen", "rejected"):
            response = row[s][-1:]
            full = list(hf.apply_chat_template(prompt + response, return_dict=False))
            # eos = <|im_end|> is in the rendered turn, so nothing is appended: the pair IS transformers' ids
            assert e.prompt_ids + getattr(e, s + "_ids") == full
        boundary_checks(e)


@pytest.mark.real_model
def test_smollm2_hh_rlhf_raw_pairs_equal_transformers(real_model_dir, hh_rlhf_file):
    """On every kept HH-RLHF row: prompt ids + response ids (without the appended EOS) == transformers' ids of the
    full text in one go, i.e. tokenizing the prompt once and the responses alone changes no token."""
    transformers = pytest.importorskip("transformers")
    hf, tok = transformers.AutoTokenizer.from_pretrained(str(real_model_dir)), Tokenizer.from_dir(real_model_dir)
    ds = load_preferences(hh_rlhf_file, tok, DataConfig(max_length=None))
    rows = [json.loads(line) for line in gzip.open(hh_rlhf_file, "rt", encoding="utf-8")]
    for e in ds.examples:
        row = rows[int(e.where.rsplit(":", 1)[1]) - 1]
        for s in ("chosen", "rejected"):
            ids_ = getattr(e, s + "_ids")
            assert ids_[-1] == tok.eos_token_id
            assert e.prompt_ids + ids_[:-1] == hf.encode(row[s], add_special_tokens=False), e.where
    boundary_checks(ds.examples[0])


# ------------------------------------------------------------------------------------------------- HH-RLHF anomalies
def test_hh_rlhf_known_anomalies(tmp_path, hh_rlhf_file):
    """Issue 4 lists the file's anomalies: 5 rows whose prompts differ and 4 with an empty response. The expected
    row numbers come from a plain loop here, independent of minorpo.data."""
    rows = [json.loads(line) for line in gzip.open(hh_rlhf_file, "rt", encoding="utf-8")]
    marker, differ, empty = "\n\nAssistant:", [], []
    for n, r in enumerate(rows, 1):
        pc, pr = (t[: t.rindex(marker) + len(marker)] for t in (r["chosen"], r["rejected"]))
        if pc != pr:
            differ.append(n)
        elif not r["chosen"][len(pc):].strip() or not r["rejected"][len(pr):].strip():
            empty.append(n)
    assert (len(differ), len(empty)) == (5, 4)
    ds = load_preferences(hh_rlhf_file, Tokenizer.from_dir(bpe_tokenizer(tmp_path)), DataConfig(max_length=None))
    assert ds.report.rows_read == len(rows) == 2312
    assert ds.report.counts() == {"prompts_differ": 5, "empty_response": 4}
    name = hh_rlhf_file.name
    assert sorted(w for w, r, _ in ds.report.dropped if r == "prompts_differ") == sorted(f"{name}:{n}" for n in differ)
    assert sorted(w for w, r, _ in ds.report.dropped if r == "empty_response") == sorted(f"{name}:{n}" for n in empty)
    assert len(ds) == ds.report.kept == 2312 - 9


def test_cli_inspect(tmp_path, capsys):
    from minorpo.tools.cli import main

    folder = word_tokenizer(tmp_path / "tok")
    data = tmp_path / "d.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in [STANDARD, {**STANDARD, "chosen": " fine."},
                                                           {**STANDARD, "rejected": " hello!"}]))
    assert main(["data", "inspect", "--data", str(data), "--model", str(folder), "--n", "1"]) == 0
    out = capsys.readouterr().out
    assert "=== example 1 (d.jsonl:1): prompt 8 tokens, chosen 4, rejected 6 ===" in out
    assert "boundary: '\\n' 'Assistant' ':' ▌ ' ' 'hello' '!'" in out
    assert "layout standard: rows read 3, kept 2, dropped 1" in out
    assert "d.jsonl:3: identical_responses" in out
    assert "example 2" not in out
