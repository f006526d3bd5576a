"""The tokenizer: a `tokenizers.Tokenizer` (tokenizer.json) plus the special tokens and chat template of a hub folder.

A hub-style folder stores the tokenizer in up to three files:
  tokenizer.json         the fast tokenizer itself (normalizer, pre-tokenizer, model, post-processor, added tokens)
  tokenizer_config.json  the named special tokens (bos/eos/pad/unk/...) and usually the chat template
  chat_template.jinja    the chat template as its own file (newer folders); it wins over tokenizer_config.json

`apply_chat_template` renders exactly as transformers' `PreTrainedTokenizerBase.apply_chat_template` does
(transformers 5: utils/chat_template_utils.py): the same sandboxed Jinja environment (trim_blocks, lstrip_blocks,
loopcontrols, a `{% generation %}` tag, `raise_exception`, `strftime_now`, a `tojson` that does not escape HTML),
the same variables (messages, tools=None, documents=None, add_generation_prompt, and the named special tokens
bos_token, eos_token, unk_token, sep_token, pad_token, cls_token, mask_token when set), and it then tokenizes
the rendered text WITHOUT adding special tokens (the template writes them itself). tests/test_tokenizer.py checks
the ids against transformers, token for token.

Encoding uses tokenizer.json exactly as written. transformers 5 instead builds a class named by
tokenizer_class; some classes rebuild the pipeline from the vocabulary and merges (GPT-2, Qwen2: same ids for a
byte-level BPE, tested). A class whose rebuilt pipeline differs from its own tokenizer.json could give other ids
there; the tests cover the generic backend (SmolLM2's), GPT-2, Qwen2 and Llama tokenizer classes on byte-level BPE.

Only `tokenizers` and `jinja2` are used here; nothing imports transformers.
"""

from __future__ import annotations

import json
import shutil
from datetime import datetime
from pathlib import Path

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import AddedToken
from tokenizers import Tokenizer as _BackendTokenizer

from minorpo.errors import MissingFileError, UserError
from minorpo.hf import hub
from minorpo.run.fileio import first_line

# the named special tokens transformers passes to chat templates (its SPECIAL_TOKENS_ATTRIBUTES), in its order
SPECIAL_TOKEN_NAMES = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
# files `save` copies when they exist in the source folder
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json")
# names under which a message may carry its reasoning; transformers copies it to the first two (templates read them)
_REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")


def _token_content(value, where: str) -> str | None:
    """A special token from tokenizer_config.json: a string, an AddedToken dict {"content": ...}, or null."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return value["content"]
    raise UserError(f"{where}: a special token must be a string or an AddedToken dict with 'content', got {value!r}")


def _added_token(value) -> AddedToken:
    """An entry of tokenizer_config.json's added_tokens_decoder as a tokenizers.AddedToken."""
    if isinstance(value, str):
        return AddedToken(value, special=True, normalized=False)
    return AddedToken(
        value["content"],
        single_word=value.get("single_word", False),
        lstrip=value.get("lstrip", False),
        rstrip=value.get("rstrip", False),
        normalized=value.get("normalized", not value.get("special", False)),
        special=value.get("special", False),
    )


class _GenerationTag(jinja2.ext.Extension):
    """`{% generation %}...{% endgeneration %}`: transformers uses it to find assistant tokens; rendering is the body."""

    tags = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_render_body"), [], [], body).set_lineno(lineno)

    def _render_body(self, caller):
        return caller()


def _raise_exception(message):
    raise jinja2.exceptions.TemplateError(message)


def _tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    # Jinja's own tojson escapes <, >, & and ' for HTML; chat templates need the plain JSON, as in transformers
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt):
    return datetime.now().strftime(fmt)


def compile_chat_template(source: str) -> jinja2.Template:
    """Compile a chat template in the same sandboxed environment as transformers."""
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[_GenerationTag, jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env.from_string(source)


def _plain(value):
    """A fresh copy of the messages made of plain JSON types (what transformers lets a template see)."""
    if value is None or type(value) in (str, int, float, bool):
        return value
    if isinstance(value, dict):
        return {_plain(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_plain(v) for v in value)
    if isinstance(value, str):  # subclasses (enums, ...) back to the base type
        return str.__str__(value)
    if isinstance(value, int):
        return int.__int__(value)
    if isinstance(value, float):
        return float.__float__(value)
    if callable(getattr(value, "item", None)):  # numpy / torch scalars
        return _plain(value.item())
    return f"<{type(value).__name__}>"


def _normalize_messages(messages) -> list[dict]:
    """Drop None-valued keys and alias reasoning fields, as transformers does before rendering."""
    if not isinstance(messages, (list, tuple)) or not messages:
        raise ValueError(f"apply_chat_template needs a non-empty list of messages, got {messages!r}")
    out = []
    for i, message in enumerate(_plain(list(messages))):
        if not isinstance(message, dict):
            raise TypeError(f"message {i} must be a dict with 'role' and 'content', got {message!r}")
        message = {k: v for k, v in message.items() if v is not None}
        reasoning = next((message[k] for k in _REASONING_FIELDS if message.get(k) is not None), None)
        if reasoning is not None:
            message = {"thinking": reasoning, **message, "reasoning_content": reasoning}
        out.append(message)
    return out


class Tokenizer:
    """A tokenizers.Tokenizer with named special tokens and a chat template. Build it with `Tokenizer.from_dir`."""

    def __init__(self, backend: _BackendTokenizer, config: dict | None = None, chat_template: str | None = None,
                 source_dir: str | Path | None = None):
        self.backend = backend  # the tokenizers.Tokenizer
        self.config = dict(config or {})  # tokenizer_config.json as a dict
        self.source_dir = Path(source_dir) if source_dir is not None else None

        # tokens listed in tokenizer_config.json but missing from tokenizer.json are added, as transformers does
        vocab = backend.get_vocab(with_added_tokens=True)
        decoder = self.config.get("added_tokens_decoder") or {}
        missing = [_added_token(v) for _, v in sorted(decoder.items(), key=lambda kv: int(kv[0]))
                   if _token_content(v, "added_tokens_decoder") not in vocab]
        if missing:
            backend.add_tokens(missing)

        for name in SPECIAL_TOKEN_NAMES:
            token = _token_content(self.config.get(name), f"tokenizer_config.json: {name}")
            setattr(self, name, token)
            if token is not None and backend.token_to_id(token) is None:
                backend.add_special_tokens([AddedToken(token, special=True, normalized=False)])
            setattr(self, name + "_id", None if token is None else backend.token_to_id(token))

        if chat_template is None:
            chat_template = self.config.get("chat_template")
        if isinstance(chat_template, list):  # the older named-templates form: [{"name": ..., "template": ...}]
            chat_template = {t["name"]: t["template"] for t in chat_template}
        if isinstance(chat_template, dict):
            if "default" not in chat_template:
                raise UserError(f"several chat templates {sorted(chat_template)} and none named 'default'")
            chat_template = chat_template["default"]
        self.chat_template = chat_template  # str or None
        self._compiled = None

    # ----------------------------------------------------------------------------------------------------- loading
    @classmethod
    def from_dir(cls, path) -> "Tokenizer":
        """Load tokenizer.json + tokenizer_config.json [+ chat_template.jinja] from a folder."""
        path = Path(path)
        tok_file, cfg_file, tpl_file = path / "tokenizer.json", path / "tokenizer_config.json", path / "chat_template.jinja"
        if not tok_file.exists():
            raise MissingFileError(f"{tok_file} not found: minorpo needs a fast tokenizer (tokenizer.json)")
        try:
            backend = _BackendTokenizer.from_file(str(tok_file))
        except Exception as e:  # tokenizers raises a bare Exception on a bad file
            raise UserError(f"{tok_file}: not a valid tokenizers file ({first_line(e)})") from e
        config = {}
        if cfg_file.exists():
            try:
                config = json.loads(cfg_file.read_text(encoding="utf-8"))
            except json.JSONDecodeError as e:
                raise UserError(f"{cfg_file}: invalid JSON at line {e.lineno}: {e.msg}") from e
            if not isinstance(config, dict):
                raise UserError(f"{cfg_file}: expected a JSON object, got {type(config).__name__}")
        chat_template = tpl_file.read_text(encoding="utf-8") if tpl_file.exists() else None
        return cls(backend, config, chat_template, source_dir=path)

    def save(self, out_dir) -> None:
        """Write the tokenizer files to out_dir (copies of the source files; tokenizer.json rebuilt if none)."""
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        copied = set()
        if self.source_dir is not None:
            for name in TOKENIZER_FILES:
                src = self.source_dir / name
                if src.exists() and src.resolve() != (out_dir / name).resolve():
                    shutil.copyfile(src, out_dir / name)
                if src.exists():
                    copied.add(name)
        if "tokenizer.json" not in copied:
            self.backend.save(str(out_dir / "tokenizer.json"))
        if "tokenizer_config.json" not in copied:
            config = dict(self.config)
            if self.chat_template is not None:
                config["chat_template"] = self.chat_template
            (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")

    # --------------------------------------------------------------------------------------------------- encoding
    @property
    def vocab_size(self) -> int:
        """Number of ids, added tokens included."""
        return self.backend.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        """Token ids of text. add_special_tokens=True applies tokenizer.json's post-processor (e.g. a BOS)."""
        if not isinstance(text, str):
            raise TypeError(f"encode expects a str, got {type(text).__name__}")
        return self.backend.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        """Text of ids (with transformers' clean-up of spaces when the config asks for it and the model is not BPE)."""
        text = self.backend.decode(list(ids), skip_special_tokens=skip_special_tokens)
        is_bpe = type(self.backend.model).__name__ == "BPE"
        if self.config.get("clean_up_tokenization_spaces", False) and not is_bpe:
            for a, b in ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"),
                         (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re")):
                text = text.replace(a, b)
        return text

    def convert_ids_to_tokens(self, ids) -> list[str]:
        return [self.backend.id_to_token(i) for i in ids]

    # ------------------------------------------------------------------------------------------------ chat template
    @property
    def special_tokens_map(self) -> dict[str, str]:
        """The named special tokens that are set, as passed to the chat template."""
        return {name: getattr(self, name) for name in SPECIAL_TOKEN_NAMES if getattr(self, name) is not None}

    def apply_chat_template(self, messages, add_generation_prompt: bool = False, tokenize: bool = True, **kwargs):
        """Render messages with the chat template; return token ids (tokenize=True) or the text.

        Extra keyword arguments become template variables (they override the special tokens), as in transformers.
        """
        if self.chat_template is None:
            raise UserError("this tokenizer has no chat template (none in tokenizer_config.json or "
                             "chat_template.jinja); use raw text formatting instead")
        if self._compiled is None:
            self._compiled = compile_chat_template(self.chat_template)
        variables = _plain({**self.special_tokens_map, **kwargs})
        text = self._compiled.render(messages=_normalize_messages(messages), tools=None, documents=None,
                                     add_generation_prompt=add_generation_prompt, **variables)
        return self.encode(text, add_special_tokens=False) if tokenize else text

    def __repr__(self) -> str:
        return (f"Tokenizer(vocab_size={self.vocab_size}, bos={self.bos_token!r}, eos={self.eos_token!r}, "
                f"pad={self.pad_token!r}, chat_template={'yes' if self.chat_template else 'no'})")


# files a hub download of a tokenizer fetches (nothing else: no weights, no code)
HUB_TOKENIZER_FILES = ["tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json"]


def load_tokenizer(model_id_or_dir, revision: str | None = None) -> Tokenizer:
    """Tokenizer.from_dir of a local folder, or of a hub model id fetched with its tokenizer files only (hub.py)."""
    name = str(model_id_or_dir)
    path = hub.local(model_id_or_dir, "model folder")
    if path is not None and not path.is_dir():
        raise UserError(f"{name} is a file, not a model folder (one holding tokenizer.json)")
    if path is None:
        path = hub.snapshot(name, revision=revision, allow_patterns=HUB_TOKENIZER_FILES, failed=lambda why:
                            MissingFileError(f"{name}: no such local folder, and fetching its tokenizer from the "
                                             f"Hugging Face Hub failed ({why}). Pass a folder holding tokenizer.json."))
    return Tokenizer.from_dir(path)
