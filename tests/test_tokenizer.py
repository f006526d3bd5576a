"""minorpo.hf.tokenizer.Tokenizer against transformers (the oracle) on the same folder.

Oracle: transformers.AutoTokenizer loaded from the same folder; every comparison is exact (token ids are
integers and rendered templates are strings: no tolerance applies).
"""

import json
import shutil

import jinja2
import pytest
from tiny_tokenizers import CHATML_TEMPLATE, ID, bpe_tokenizer, word_tokenizer

from minorpo.hf.tokenizer import Tokenizer

transformers = pytest.importorskip("transformers")

CONVERSATIONS = {
    "user only": [{"role": "user", "content": "hello, how are you?"}],
    "system + user": [{"role": "system", "content": "Be nice."}, {"role": "user", "content": "what is two plus two?"}],
    "multi-turn": [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello! how are you?"},
        {"role": "user", "content": "fine, thanks."},
        {"role": "assistant", "content": "good."},
    ],
    "system + multi-turn": [
        {"role": "system", "content": "Be nice, ok?"},
        {"role": "user", "content": "what is two plus five?"},
        {"role": "assistant", "content": "I am bad at this."},
        {"role": "user", "content": "go away"},
    ],
    "unicode + newlines": [{"role": "user", "content": "héllo\n\n  wörld ✓ 🙂"}, {"role": "assistant", "content": "ok"}],
}
TEXTS = ["hello, how are you?", "Human: hi\n\nAssistant: I am fine.", "  leading spaces and\ttabs\n",
         "héllo wörld ✓ 🙂", "<|im_start|>user\nhi<|im_end|>", "</s> inside <s> text", ""]

BUILDERS = {"wordlevel": word_tokenizer, "bpe": bpe_tokenizer}


def load_both(folder):
    return Tokenizer.from_dir(folder), transformers.AutoTokenizer.from_pretrained(str(folder))


def hf_chat_ids(hf, messages, add_generation_prompt):
    return list(hf.apply_chat_template(messages, add_generation_prompt=add_generation_prompt, return_dict=False))


@pytest.mark.parametrize("kind", BUILDERS)
@pytest.mark.parametrize("template_file", [False, True], ids=["template-in-config", "chat_template.jinja"])
def test_chat_template_ids_match_transformers(tmp_path, kind, template_file):
    ours, hf = load_both(BUILDERS[kind](tmp_path, template_file=template_file))
    assert ours.chat_template == hf.chat_template
    for name, messages in CONVERSATIONS.items():
        for gen in (False, True):
            assert ours.apply_chat_template(messages, add_generation_prompt=gen, tokenize=False) == \
                hf.apply_chat_template(messages, add_generation_prompt=gen, tokenize=False), (name, gen)
            assert ours.apply_chat_template(messages, add_generation_prompt=gen) == \
                hf_chat_ids(hf, messages, gen), (name, gen)


@pytest.mark.parametrize("kind", BUILDERS)
@pytest.mark.parametrize("add_bos", [False, True])
def test_encode_decode_and_special_ids_match_transformers(tmp_path, kind, add_bos):
    folder = word_tokenizer(tmp_path, add_bos=True) if (kind == "wordlevel" and add_bos) else BUILDERS[kind](tmp_path)
    ours, hf = load_both(folder)
    for text in TEXTS:
        for special in (False, True):
            assert ours.encode(text, add_special_tokens=special) == \
                hf.encode(text, add_special_tokens=special), (text, special)
        ids = ours.encode(text)
        for skip in (False, True):
            assert ours.decode(ids, skip_special_tokens=skip) == hf.decode(ids, skip_special_tokens=skip), text
    for name in ("bos", "eos", "pad", "unk"):
        assert getattr(ours, f"{name}_token") == getattr(hf, f"{name}_token"), name
        assert getattr(ours, f"{name}_token_id") == getattr(hf, f"{name}_token_id"), name


def test_word_tokenizer_ids_by_hand(tmp_path):
    """Hand oracle: the pieces of "hello, you" are hello , ' ' you -> WORDS ids; <s> prepended by the post-processor."""
    ours = Tokenizer.from_dir(word_tokenizer(tmp_path, add_bos=True))
    assert ours.encode("hello, you") == [ID["hello"], ID[","], ID[" "], ID["you"]]
    assert ours.encode("hello, you", add_special_tokens=True) == [ID["<s>"], ID["hello"], ID[","], ID[" "], ID["you"]]
    assert (ours.bos_token_id, ours.eos_token_id, ours.pad_token_id) == (ID["<s>"], ID["</s>"], ID["<pad>"])


def test_chat_template_file_wins_over_config(tmp_path):
    """transformers: an independent chat_template.jinja takes priority over tokenizer_config.json's template."""
    folder = word_tokenizer(tmp_path, chat_template="{% for m in messages %}{{ m['content'] }}{% endfor %}")
    (folder / "chat_template.jinja").write_text(CHATML_TEMPLATE)
    ours, hf = load_both(folder)
    messages = CONVERSATIONS["multi-turn"]
    assert ours.chat_template == CHATML_TEMPLATE
    assert ours.apply_chat_template(messages) == hf_chat_ids(hf, messages, False)


# A template using the rest of the environment: tojson (no HTML escaping), namespace, loop controls, the
# {% generation %} tag, extra special tokens as variables, a variable passed by the caller.
FEATURE_TEMPLATE = (
    "{% set ns = namespace(n=0) %}"
    "{% for m in messages %}{% if m['role'] == 'system' %}{% continue %}{% endif %}"
    "{% set ns.n = ns.n + 1 %}{% if ns.n > 3 %}{% break %}{% endif %}"
    "{% if m['role'] == 'assistant' %}{% generation %}{{ m['content'] }}{{ eos_token }}{% endgeneration %}"
    "{% else %}{{ m | tojson }}{% endif %}\n"
    "{% endfor %}{{ unk_token }}{{ pad_token }}{{ extra | default('') }}"
    "{% if add_generation_prompt %}<|im_start|>assistant{% endif %}"
)


def test_template_features_match_transformers(tmp_path):
    ours, hf = load_both(word_tokenizer(tmp_path, chat_template=FEATURE_TEMPLATE))
    messages = [{"role": "system", "content": "skip me"}, {"role": "user", "content": "a <b> & 'c' \"d\" é"},
                {"role": "assistant", "content": "ok"}, {"role": "user", "content": "yes", "name": None},
                {"role": "assistant", "content": "no"}]
    for gen in (False, True):
        for kwargs in ({}, {"extra": "sure"}):
            want = hf.apply_chat_template(messages, add_generation_prompt=gen, tokenize=False, **kwargs)
            assert ours.apply_chat_template(messages, add_generation_prompt=gen, tokenize=False, **kwargs) == want
    assert '"a <b> & \'c\' \\"d\\" é"' in want  # tojson kept <, >, &, ' and é as they are (not HTML-escaped)
    assert '"name"' not in want  # keys set to None are dropped before rendering, as in transformers


def test_raise_exception_in_template(tmp_path):
    ours, hf = load_both(word_tokenizer(tmp_path))
    bad = [{"role": "tool", "content": "hi"}]
    with pytest.raises(jinja2.exceptions.TemplateError, match="unknown role tool"):
        hf.apply_chat_template(bad, tokenize=False)
    with pytest.raises(jinja2.exceptions.TemplateError, match="unknown role tool"):
        ours.apply_chat_template(bad, tokenize=False)


def test_special_token_missing_from_vocab_is_added_like_transformers(tmp_path):
    """A named special token absent from tokenizer.json is added as a new special token by transformers; same here."""
    ours, hf = load_both(word_tokenizer(tmp_path, config={"sep_token": "<sep>", "mask_token": {"__type": "AddedToken", "content": "<mask>", "special": True}}))
    for name in ("sep", "mask"):
        assert getattr(ours, f"{name}_token_id") == getattr(hf, f"{name}_token_id") is not None
    assert ours.encode("hi<sep>you") == hf.encode("hi<sep>you", add_special_tokens=False)


def test_save_round_trip(tmp_path):
    ours = Tokenizer.from_dir(bpe_tokenizer(tmp_path / "src", template_file=True))
    ours.save(tmp_path / "out")
    again, hf = load_both(tmp_path / "out")
    messages = CONVERSATIONS["system + multi-turn"]
    assert again.apply_chat_template(messages) == ours.apply_chat_template(messages) == hf_chat_ids(hf, messages, False)
    assert again.encode(TEXTS[1]) == ours.encode(TEXTS[1])


def test_save_without_source_dir_writes_loadable_files(tmp_path):
    src = Tokenizer.from_dir(word_tokenizer(tmp_path / "src"))
    mem = Tokenizer(src.backend, src.config)  # built in memory: no folder to copy from
    mem.save(tmp_path / "out")
    _, hf = load_both(tmp_path / "out")
    messages = CONVERSATIONS["multi-turn"]
    assert mem.apply_chat_template(messages) == hf_chat_ids(hf, messages, False)


def test_clear_errors(tmp_path):
    folder = word_tokenizer(tmp_path / "a", chat_template=None)
    with pytest.raises(ValueError, match="no chat template"):
        Tokenizer.from_dir(folder).apply_chat_template([{"role": "user", "content": "hi"}])
    with pytest.raises(ValueError, match="non-empty list of messages"):
        Tokenizer.from_dir(word_tokenizer(tmp_path / "e")).apply_chat_template([])
    missing = tmp_path / "b"
    shutil.copytree(folder, missing)
    (missing / "tokenizer.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"b/tokenizer\.json"):
        Tokenizer.from_dir(missing)
    (folder / "tokenizer_config.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"tokenizer_config\.json: invalid JSON at line 1"):
        Tokenizer.from_dir(folder)
    (folder / "tokenizer_config.json").write_text(json.dumps({"bos_token": 3}))
    with pytest.raises(ValueError, match="bos_token"):
        Tokenizer.from_dir(folder)


# ------------------------------------------------------------------------------------------ real model (SmolLM2)
REAL_CONVERSATIONS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "system", "content": "You are a pirate. Answer in pirate speak."},
     {"role": "user", "content": "How do I bake bread?"}],
    [{"role": "user", "content": "Hi!"}, {"role": "assistant", "content": "Hello! How can I help you today?"},
     {"role": "user", "content": "Write a haiku about tokenizers.\n\nPlease."},
     {"role": "assistant", "content": "Bytes merge into words,\nids march in tidy rows —\nmeaning, compressed."}],
    [{"role": "user", "content": "Ünïcödé, emoji 🤖, CJK 漢字, code: `x = {'a': [1, 2]}`  "}],
]
REAL_TEXTS = [
    "\n\nHuman: What are some cuss words in english?\n\nAssistant: Here’s an incomplete list.",
    "The quick brown fox jumps over the lazy dog. 1234567890 !@#$%^&*()",
    "  indented\n\tcode:\n    def f(x):\n        return x ** 2\n",
    "Ünïcödé, emoji 🤖, CJK 漢字 <|im_start|> special <|im_end|> inside text",
]


@pytest.mark.real_model
def test_smollm2_matches_transformers(real_model_dir, hh_rlhf_file_or_none):
    ours, hf = load_both(real_model_dir)
    for messages in REAL_CONVERSATIONS:
        for gen in (False, True):
            assert ours.apply_chat_template(messages, add_generation_prompt=gen) == \
                hf_chat_ids(hf, messages, gen), (messages, gen)
    texts = list(REAL_TEXTS)
    if hh_rlhf_file_or_none is not None:  # plus real dialogues from HH-RLHF
        import gzip
        with gzip.open(hh_rlhf_file_or_none, "rt", encoding="utf-8") as f:
            for i, line in zip(range(40), f):
                row = json.loads(line)
                texts += [row["chosen"], row["rejected"]]
    for text in texts:
        for special in (False, True):
            assert ours.encode(text, add_special_tokens=special) == hf.encode(text, add_special_tokens=special)
        assert ours.decode(ours.encode(text)) == hf.decode(hf.encode(text, add_special_tokens=False))
    for name in ("bos", "eos", "pad", "unk"):
        assert getattr(ours, f"{name}_token_id") == getattr(hf, f"{name}_token_id"), name


@pytest.fixture
def hh_rlhf_file_or_none(request):
    try:
        return request.getfixturevalue("hh_rlhf_file")
    except pytest.skip.Exception:
        return None


@pytest.mark.parametrize("cls", ["GPT2Tokenizer", "Qwen2Tokenizer", "LlamaTokenizer"])
def test_byte_level_bpe_under_model_specific_tokenizer_class(tmp_path, cls):
    """transformers 5 builds a model-specific class from tokenizer_class (GPT-2, Qwen2 rebuild the pipeline from
    vocab and merges; Llama falls back to the generic backend for a byte-level file). For a byte-level BPE the ids
    must still be those of tokenizer.json, which is all minorpo reads."""
    ours, hf = load_both(bpe_tokenizer(tmp_path, config={"tokenizer_class": cls}))
    for text in TEXTS:
        for special in (False, True):
            assert ours.encode(text, add_special_tokens=special) == hf.encode(text, add_special_tokens=special)
    for messages in CONVERSATIONS.values():
        assert ours.apply_chat_template(messages, add_generation_prompt=True) == hf_chat_ids(hf, messages, True)
