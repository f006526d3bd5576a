"""Tiny tokenizers built in-process for hermetic tests (no download).

`word_tokenizer`: a WordLevel tokenizer whose vocabulary is the hand-written list WORDS below, so a test can
write the expected ids of a text by hand: split it into words, single whitespace characters and single
punctuation characters, and look each piece up in WORDS (id = position in the list).

`bpe_tokenizer`: a byte-level BPE trained on a few sentences, like the tokenizers of real chat models.

Both are saved as a hub-style folder (tokenizer.json + tokenizer_config.json [+ chat_template.jinja]) that
transformers' AutoTokenizer and minorpo's Tokenizer.from_dir both load.
"""

import json
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

# id = index. 0-5 special tokens; then single whitespace/punctuation characters; then words.
WORDS = [
    "<s>", "</s>", "<pad>", "<unk>", "<|im_start|>", "<|im_end|>",              # 0-5
    " ", "\n", ":", ".", "?", "!", ",",                                          # 6-12
    "Human", "Assistant", "system", "user", "assistant",                         # 13-17
    "hi", "hello", "how", "are", "you", "fine", "bad", "go", "away",             # 18-26
    "I", "am", "good", "thanks", "what", "is", "two", "plus", "four", "five",   # 27-36
    "Be", "nice", "ok", "no", "yes", "sure",                                     # 37-42
]
ID = {w: i for i, w in enumerate(WORDS)}

# A ChatML-style template exercising what real templates use: bos_token, a default system turn (loop.first),
# raise_exception, trim_blocks/lstrip_blocks whitespace control, and add_generation_prompt.
CHATML_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}\n"
    "    {% if message['role'] not in ['system', 'user', 'assistant'] %}\n"
    "        {{ raise_exception('unknown role ' + message['role']) }}\n"
    "    {% endif %}\n"
    "    {% if loop.first and message['role'] != 'system' %}\n"
    "<|im_start|>system\nBe nice.<|im_end|>\n"
    "    {% endif %}\n"
    "<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}\n"
    "{% if add_generation_prompt %}\n"
    "<|im_start|>assistant\n"
    "{% endif %}"
)
# the same without the leading bos_token, for tokenizers whose BOS is <|im_start|> itself (SmolLM2-style)
CHATML_NO_BOS_TEMPLATE = CHATML_TEMPLATE.replace("{{ bos_token }}", "", 1)


def _write(folder: Path, tok: Tokenizer, config: dict, chat_template: str | None, template_file: bool) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", **config}
    if chat_template is not None and not template_file:
        config["chat_template"] = chat_template
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    if chat_template is not None and template_file:
        (folder / "chat_template.jinja").write_text(chat_template)
    return folder


def word_tokenizer(folder, chat_template: str | None = CHATML_TEMPLATE, template_file: bool = False,
                   add_bos: bool = False, config: dict | None = None) -> Path:
    """WordLevel over WORDS. add_bos=True gives it a post-processor that prepends <s> (like Llama's)."""
    tok = Tokenizer(models.WordLevel(vocab=dict(ID), unk_token="<unk>"))
    # each whitespace character, each word, each punctuation character is one piece
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"\s|\w+|[^\w\s]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens(["<s>", "</s>", "<pad>", "<unk>", "<|im_start|>", "<|im_end|>"])
    if add_bos:
        tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                           special_tokens=[("<s>", 0)])
    base = {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"}
    return _write(folder, tok, {**base, **(config or {})}, chat_template, template_file)


BPE_CORPUS = [
    "Human: hello, how are you?", "Assistant: I am fine, thanks!", "What is two plus two? Four.",
    "The quick brown fox jumps over the lazy dog.", "Be nice to the assistant and the user.",
    "system prompts set the tone of a conversation", "Tell me a story about a robot that learns to paint.",
    "Numbers: 1 2 3 10 42 2024. Symbols: {} [] () <> # @ & *",
]


def bpe_tokenizer(folder, chat_template: str | None = CHATML_NO_BOS_TEMPLATE, template_file: bool = False,
                  config: dict | None = None, vocab_size: int = 300) -> Path:
    """Byte-level BPE trained on BPE_CORPUS; <|im_start|>=0, <|im_end|>=1 (bos/eos, as in SmolLM2), <pad>=2."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|im_start|>", "<|im_end|>", "<pad>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(BPE_CORPUS * 5, trainer)
    base = {"bos_token": {"__type": "AddedToken", "content": "<|im_start|>", "lstrip": False, "normalized": False,
                          "rstrip": False, "single_word": False, "special": True},
            "eos_token": "<|im_end|>", "pad_token": "<pad>"}
    return _write(folder, tok, {**base, **(config or {})}, chat_template, template_file)
