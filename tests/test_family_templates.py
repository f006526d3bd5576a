"""Gemma 3's and Qwen3's chat templates rendered and tokenized exactly as transformers' apply_chat_template does.

The templates are the models' own: TRL keeps byte copies of the templates the hub repos ship (trl/chat_templates,
gemma3.jinja from google/gemma-3-*-it, qwen3.jinja from Qwen/Qwen3-*), which it compares against a tokenizer's
template to recognise a model. Here they are installed on tiny in-process tokenizers (the Gemma fixture is the
base model: no template), once in tokenizer_config.json and once as chat_template.jinja. Oracle:
transformers.AutoTokenizer on the same folder; text and ids are compared exactly (no tolerance applies).
"""

from pathlib import Path

import pytest
from tiny_tokenizers import bpe_tokenizer

from minorpo.data import tokenizer_adds_bos
from minorpo.hf.tokenizer import Tokenizer

transformers = pytest.importorskip("transformers")
trl = pytest.importorskip("trl")
TEMPLATES = Path(trl.__file__).parent / "chat_templates"

# Gemma: <bos> written by the template itself, "assistant" becomes "model", a system message is folded into the
# first user turn, content is trimmed
GEMMA_CONVERSATIONS = [
    [{"role": "user", "content": "hello, how are you?"}],
    [{"role": "system", "content": "Be nice."}, {"role": "user", "content": "  what is two plus two?\n"}],
    [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello! how are you?"},
     {"role": "user", "content": "fine, thanks."}, {"role": "assistant", "content": "good."}],
    [{"role": "user", "content": [{"type": "text", "text": "a list of parts"}]}],
]
# Qwen3: reasoning given as reasoning_content or inline <think>...</think>; only turns after the last user query
# keep their reasoning; enable_thinking=False pre-fills an empty think block in the generation prompt
QWEN3_CONVERSATIONS = [
    [{"role": "user", "content": "hello, how are you?"}],
    [{"role": "system", "content": "Be nice."}, {"role": "user", "content": "what is two plus two?"},
     {"role": "assistant", "content": "<think>\nTwo and two.\n</think>\n\nFour."}],
    [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello!", "reasoning_content": "greet"},
     {"role": "user", "content": "fine, thanks."}, {"role": "assistant", "content": "<think>ok</think>good."}],
]


def folder_with(tmp_path, name: str, template_file: bool, config: dict) -> Path:
    return bpe_tokenizer(tmp_path / name, chat_template=(TEMPLATES / name).read_text(), template_file=template_file,
                         config=config)


@pytest.mark.parametrize("template_file", [False, True], ids=["template-in-config", "chat_template.jinja"])
@pytest.mark.parametrize("name,config,conversations,extra", [
    ("gemma3.jinja", {"bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>"}, GEMMA_CONVERSATIONS, [{}]),
    ("qwen3.jinja", {"bos_token": None, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"},
     QWEN3_CONVERSATIONS, [{}, {"enable_thinking": False}, {"enable_thinking": True}]),
], ids=["gemma3", "qwen3"])
def test_template_matches_transformers(tmp_path, template_file, name, config, conversations, extra):
    folder = folder_with(tmp_path, name, template_file, config)
    ours, hf = Tokenizer.from_dir(folder), transformers.AutoTokenizer.from_pretrained(str(folder))
    for messages in conversations:
        for gen in (False, True):
            for kw in extra:
                text = ours.apply_chat_template(messages, add_generation_prompt=gen, tokenize=False, **kw)
                assert text == hf.apply_chat_template(messages, add_generation_prompt=gen, tokenize=False, **kw)
                assert ours.apply_chat_template(messages, add_generation_prompt=gen, **kw) == list(
                    hf.apply_chat_template(messages, add_generation_prompt=gen, return_dict=False, **kw))
    if name == "gemma3.jinja":  # the template writes the BOS once, at the very start
        ids = ours.apply_chat_template(conversations[0], add_generation_prompt=True)
        assert ids[0] == ours.bos_token_id and ids.count(ours.bos_token_id) == 1
        assert text.endswith("<start_of_turn>model\n")
    else:
        assert "<think>\n\n</think>\n\n" in ours.apply_chat_template(conversations[0], add_generation_prompt=True,
                                                                      tokenize=False, enable_thinking=False)


def test_gemma_bos_policy(tmp_path):
    """Gemma's BOS policy (data.py): its tokenizer's post-processor prepends <bos> (a word tokenizer with one stands
    in for it here), so a raw-text prompt gets exactly one BOS from add_bos="auto"; Gemma's template writes
    {{ bos_token }} itself, so a chat prompt gets exactly one too, from the template (never doubled)."""
    from tiny_tokenizers import ID, word_tokenizer

    from minorpo.data import DataConfig, build_examples
    folder = word_tokenizer(tmp_path / "w", chat_template=(TEMPLATES / "gemma3.jinja").read_text(), add_bos=True)
    tok = Tokenizer.from_dir(folder)
    assert tokenizer_adds_bos(tok) and tok.bos_token_id == ID["<s>"]
    rows = [{"prompt": "hi", "chosen": " good", "rejected": " bad"},
            {"prompt": [{"role": "user", "content": "hi"}], "chosen": [{"role": "assistant", "content": "good"}],
             "rejected": [{"role": "assistant", "content": "bad"}]}]
    # one file has one layout (data.detect_layout): the raw-text row and the chat row are two sources
    raw, chat = (build_examples([(f"row {i}", r)], tok, DataConfig(strict=True)).examples[0] for i, r in enumerate(rows))
    assert raw.prompt_ids == [ID["<s>"], ID["hi"]]
    assert chat.prompt_ids[0] == ID["<s>"] and chat.prompt_ids.count(ID["<s>"]) == 1
    assert chat.prompt_ids == tok.apply_chat_template(rows[1]["prompt"], add_generation_prompt=True)
