"""Preference data: rows in the formats people use -> (prompt ids, chosen ids, rejected ids), with a drop report.

Row layouts (standard, conversational, implicit HH-RLHF, LLaMA-Factory's sharegpt and alpaca, orca's question;
a `system` column): see hf/layouts.py. The layout is detected once from a source's first rows (format="auto") or
forced with DataConfig.format, and every row is read in it; a source that fits none is one error.

Formatting (identical for chosen and rejected):
  raw text       prompt text and response text as given; they are concatenated, so a response normally starts
                 with its own space (HH-RLHF: "...Assistant:" + " Sure, ...").
  chat template  prompt = template(prompt messages, add_generation_prompt=True); response = the rest of
                 template(prompt + response messages), which must start with the rendered prompt.

Tokenization: the prompt text is tokenized ONCE and shared; each response text is tokenized on its own, and the
pair's ids are prompt_ids + response_ids. (This is TRL's convention. It can differ from tokenizing the whole text
in one go only where a BPE merge would cross the prompt/response boundary, which the whitespace rules of
byte-level BPE pre-tokenizers prevent at "Assistant:" | " Sure" and "assistant\\n" | "Sure".)
BOS policy (add_bos): "auto" prepends the tokenizer's BOS to raw-text prompts when its own post-processor would
(Llama-style tokenizers), and never to chat-template prompts (the template writes what the model expects);
True/False force it. A BOS is never doubled: a prompt that already starts with BOS gets none, and a repeated
leading BOS is collapsed to one.
EOS policy (add_eos): "auto" appends EOS to raw-text responses, and to chat-template responses only when the
rendered response holds no EOS (a ChatML template already ends each turn with <|im_end|>); True forces it,
False never. Never twice: a response already ending with EOS gets none.
Truncation (see DataConfig): a prompt longer than max_prompt_length is dropped (default, as the paper's Appendix
C drops prompts over 1024 tokens) or cut keeping its end or its start; then a response that does not fit in
max_length after the prompt is cut from the right (its EOS is then lost) or the row dropped; a prompt that leaves
no room for one response token is dropped.
Bad rows never crash a run and never vanish: with strict=False they are skipped and listed in the DropReport
(where, reason, detail); with strict=True the first one raises BadRowError naming the row.
"""

from __future__ import annotations

import itertools
import re
import sys
from collections import Counter
from dataclasses import dataclass, field

from minorpo.hf.datafiles import DataFileError, iter_rows  # noqa: F401  (DataFileError re-exported for users)
from minorpo.errors import UserError
from minorpo.hf.layouts import LAYOUTS, SAMPLE_ROWS, detect_layout, parse, row_layout
from minorpo.hf.layouts import Bad as _Bad

# reasons a row is dropped, with what they mean
REASONS = {
    "missing_key": "a key the layout needs (prompt/chosen/rejected, conversations, ...) is absent",
    "not_a_string": "a field or message content is not a string (null, number, ...)",
    "bad_messages": "a message list is malformed (not a list of {role, content} dicts, or no final assistant turn)",
    "empty_prompt": "the prompt is empty (nothing to predict the first response token from)",
    "empty_response": "a response is empty or whitespace",
    "identical_responses": "chosen == rejected: the pair has no preference signal",
    "no_prompt_marker": "implicit format: no implicit_prompt_marker (e.g. '\\n\\nAssistant:') in the text",
    "prompts_differ": "implicit format: the prompt of chosen differs from the prompt of rejected",
    "unparsable_dialogue": "implicit format with a chat template: the prompt is not a Human/Assistant dialogue",
    "template_mismatch": "the chat template renders prompt+response not starting with the rendered prompt",
    "prompt_too_long": "the prompt exceeds max_prompt_length (prompt_truncation='drop') or leaves no room",
    "too_long": "prompt + response exceeds max_length (response_truncation='drop')",
}


@dataclass
class DataConfig:
    format: str = "auto"                  # "auto" (detected from the first rows) or a layout (layouts.LAYOUTS)
    template: str = "auto"                # "auto": chat template for message rows, raw text for string rows;
                                          # "chat": chat template for all (strings become user/assistant turns);
                                          # "raw": raw text only (message rows are then an error)
    add_bos: bool | str = "auto"          # prepend BOS to the prompt: "auto" | True | False (see module doc)
    add_eos: bool | str = "auto"          # append EOS to each response: "auto" | True | False (see module doc)
    max_length: int | None = 1024         # max tokens of prompt + ONE response (paper, HH-RLHF: 1024); None = no cap
    max_prompt_length: int | None = None  # max prompt tokens; None = only max_length applies
    prompt_truncation: str = "drop"       # prompt over max_prompt_length: "drop" | "keep_end" | "keep_start"
    response_truncation: str = "keep_start"  # response past max_length: "keep_start" (cut right) | "drop"
    system: str | None = None             # chat template: a system message put before the prompt's turns
                                          # (unless it has one); raw text: an error
    implicit_prompt_marker: str = "\n\nAssistant:"  # implicit format: the prompt ends after its last occurrence
    implicit_user_marker: str = "\n\nHuman:"        # implicit + chat template: starts a user turn
    strict: bool = False                  # True: the first bad row raises BadRowError; False: skip and report

    def __post_init__(self):
        allowed = {"format": ("auto", *LAYOUTS), "template": ("auto", "chat", "raw"),
                   "add_bos": ("auto", True, False), "add_eos": ("auto", True, False),
                   "prompt_truncation": ("drop", "keep_end", "keep_start"),
                   "response_truncation": ("keep_start", "drop")}
        for name, values in allowed.items():
            if getattr(self, name) not in values:
                raise UserError(f"DataConfig.{name}={getattr(self, name)!r}; expected one of {values}")
        for name in ("max_length", "max_prompt_length"):
            if getattr(self, name) is not None and getattr(self, name) < 2:
                raise UserError(f"DataConfig.{name} must be None or >= 2, got {getattr(self, name)}")


class BadRowError(UserError):
    """A bad row under strict=True; .where, .reason, .detail."""

    def __init__(self, where: str, reason: str, detail: str):
        super().__init__(f"{where}: {reason}: {detail}")
        self.where, self.reason, self.detail = where, reason, detail


@dataclass
class Pair:
    """One parsed row: prompt and responses as text (str) or as chat messages (list of dicts)."""
    prompt: str | list
    chosen: str | list
    rejected: str | list
    where: str = ""


@dataclass
class TokenizedPair:
    """One usable example. ids of the pair: prompt_ids + chosen_ids, prompt_ids + rejected_ids."""
    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int]
    where: str = ""
    texts: tuple[str, str, str] = ("", "", "")  # rendered prompt, chosen, rejected text (before truncation)


@dataclass
class DropReport:
    layout: str | None = None  # the row layout the source was read in (hf/layouts.py)
    rows_read: int = 0
    kept: int = 0
    prompts_truncated: int = 0
    responses_truncated: int = 0  # responses (not rows) cut at max_length
    dropped: list[tuple[str, str, str]] = field(default_factory=list)  # (where, reason, detail)

    def counts(self) -> dict[str, int]:
        return dict(Counter(reason for _, reason, _ in self.dropped))

    def format(self, max_rows: int = 20) -> str:
        lines = [f"layout {self.layout}: rows read {self.rows_read}, kept {self.kept}, dropped {len(self.dropped)}; "
                 f"prompts truncated {self.prompts_truncated}, responses truncated {self.responses_truncated}"]
        for reason, n in sorted(self.counts().items()):
            lines.append(f"  {reason:20s} {n:6d}  ({REASONS[reason]})")
        for where, reason, detail in self.dropped[:max_rows]:
            lines.append(f"  - {where}: {reason}: {detail}")
        if len(self.dropped) > max_rows:
            lines.append(f"  ... and {len(self.dropped) - max_rows} more")
        return "\n".join(lines)


# --------------------------------------------------------------------------------------------------- parsing
def parse_row(row: dict, config: DataConfig, layout: str | None = None) -> Pair:
    """A raw row -> Pair, or raises _Bad(reason, detail). The layout: config.format if set, else `layout` (what
    build_examples detected for the source), else the row's own (layouts.row_layout)."""
    layout = config.format if config.format != "auto" else layout or row_layout(row)
    if layout is None:
        missing = [k for k in ("chosen", "rejected") if k not in row]
        raise _Bad("missing_key", f"no {missing[0]!r} key (keys: {sorted(row)[:8]})")
    pair = Pair(*parse(row, layout, config.implicit_prompt_marker))
    _check_responses(pair)
    return pair


def _content(x) -> str:
    return x if isinstance(x, str) else "".join(m["content"] for m in x)


def _check_responses(pair: Pair) -> None:
    for name in ("chosen", "rejected"):
        if not _content(getattr(pair, name)).strip():
            raise _Bad("empty_response", f"the {name} response is empty or whitespace")
    if pair.chosen == pair.rejected:
        raise _Bad("identical_responses", "chosen and rejected responses are identical")


# ------------------------------------------------------------------------------------------------ formatting
def dialogue_messages(prompt: str, user: str, assistant: str) -> list[dict]:
    """'\\n\\nHuman: a\\n\\nAssistant: b\\n\\nHuman: c\\n\\nAssistant:' -> [user a, assistant b, user c]."""
    parts = re.split(f"({re.escape(user)}|{re.escape(assistant)})", prompt)
    if parts[0].strip() or len(parts) < 3 or parts[1] != user or parts[-2] != assistant or parts[-1].strip():
        raise _Bad("unparsable_dialogue", "the prompt is not a sequence of Human/Assistant turns")
    turns = [{"role": "user" if marker == user else "assistant", "content": text.strip()}
             for marker, text in zip(parts[1:-2:2], parts[2:-2:2])]
    return turns


def render(pair: Pair, tokenizer, config: DataConfig) -> tuple[str, str, str]:
    """(prompt text, chosen text, rejected text); prompt + response is the full text of each sequence."""
    chat = config.template == "chat" or (config.template == "auto" and isinstance(pair.prompt, list))
    if not chat:
        if isinstance(pair.prompt, list):
            raise UserError("DataConfig.template='raw' cannot format message lists; use 'auto' or 'chat'")
        if config.system is not None:
            raise UserError("DataConfig.system needs a chat template (raw-text rows have no system turn)")
        return pair.prompt, pair.chosen, pair.rejected
    if tokenizer.chat_template is None:
        raise UserError(f"{pair.where}: this row needs a chat template and the tokenizer has none; "
                         f"use template='raw' with string rows")
    prompt = pair.prompt
    if isinstance(prompt, str):
        implicit = prompt.endswith(config.implicit_prompt_marker)
        prompt = (dialogue_messages(prompt, config.implicit_user_marker, config.implicit_prompt_marker) if implicit
                  else [{"role": "user", "content": prompt}])
    if config.system is not None and prompt[0].get("role") != "system":
        prompt = [{"role": "system", "content": config.system}] + prompt
    texts = [tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)]
    for response in (pair.chosen, pair.rejected):
        if isinstance(response, str):
            response = [{"role": "assistant", "content": response.strip()}]
        full = tokenizer.apply_chat_template(prompt + response, tokenize=False)
        if not full.startswith(texts[0]):
            raise _Bad("template_mismatch", "template(prompt + response) does not start with "
                                            "template(prompt, add_generation_prompt=True)")
        texts.append(full[len(texts[0]):])
    return tuple(texts)


def tokenizer_adds_bos(tokenizer) -> bool:
    """Whether the tokenizer's own post-processor prepends BOS (Llama-style), as encode(add_special_tokens=True)."""
    bos = tokenizer.bos_token_id
    return bos is not None and tokenizer.encode("a", add_special_tokens=True)[:1] == [bos] != \
        tokenizer.encode("a")[:1]


def tokenize_pair(pair: Pair, tokenizer, config: DataConfig, report: DropReport | None = None) -> TokenizedPair:
    """Render, tokenize (prompt once), apply the BOS/EOS policy and truncation. Raises _Bad for a dropped row."""
    chat = config.template == "chat" or (config.template == "auto" and isinstance(pair.prompt, list))
    texts = render(pair, tokenizer, config)
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    prompt = tokenizer.encode(texts[0])
    add_bos = config.add_bos if config.add_bos != "auto" else (not chat and tokenizer_adds_bos(tokenizer))
    if add_bos and bos is not None and prompt[:1] != [bos]:
        prompt = [bos] + prompt
    while bos is not None and prompt[:2] == [bos, bos]:  # no double BOS
        prompt = prompt[1:]
    if not prompt:
        raise _Bad("empty_prompt", "the prompt has no tokens")
    responses = []
    for text in texts[1:]:
        ids = tokenizer.encode(text)
        add_eos = config.add_eos if config.add_eos != "auto" else (not chat or eos not in ids)
        if add_eos and eos is not None and ids[-1:] != [eos]:
            ids = ids + [eos]
        responses.append(ids)

    limit = config.max_prompt_length
    if limit is not None and len(prompt) > limit:
        if config.prompt_truncation == "drop":
            raise _Bad("prompt_too_long", f"prompt has {len(prompt)} tokens > max_prompt_length={limit}")
        keep_bos = prompt[:1] == [bos] and bos is not None
        if config.prompt_truncation == "keep_end":  # keep the BOS, then the last tokens
            prompt = prompt[:1] + prompt[len(prompt) - limit + 1:] if keep_bos else prompt[-limit:]
        else:
            prompt = prompt[:limit]
        if report is not None:
            report.prompts_truncated += 1
    if config.max_length is not None:
        room = config.max_length - len(prompt)
        if room < 1:
            raise _Bad("prompt_too_long", f"prompt has {len(prompt)} tokens, no room left in "
                                          f"max_length={config.max_length}")
        for i, ids in enumerate(responses):
            if len(ids) > room:
                if config.response_truncation == "drop":
                    raise _Bad("too_long", f"prompt {len(prompt)} + {('chosen', 'rejected')[i]} {len(ids)} tokens "
                                           f"> max_length={config.max_length}")
                responses[i] = ids[:room]
                if report is not None:
                    report.responses_truncated += 1
    return TokenizedPair(prompt, responses[0], responses[1], pair.where, texts)


class PreferenceDataset:
    """The usable examples of a data source (a list of TokenizedPair) and the report of what was dropped."""

    def __init__(self, examples: list[TokenizedPair], report: DropReport, config: DataConfig):
        self.examples, self.report, self.config = examples, report, config

    def __len__(self):
        return len(self.examples)

    def __getitem__(self, i):
        return self.examples[i]


def build_examples(rows, tokenizer, config: DataConfig | None = None, limit: int | None = None,
                   progress: bool = False) -> PreferenceDataset:
    """Parse and tokenize rows: an iterable of (where, row dict). limit = stop after that many kept examples.
    progress: a tqdm bar of the rows on stderr."""
    config = config or DataConfig()
    report, examples = DropReport(), []
    rows = iter(rows)
    sample = list(itertools.islice(rows, SAMPLE_ROWS))
    layout = config.format if config.format != "auto" else detect_layout(sample) if sample else None
    report.layout = layout
    bar = _progress_bar(progress)
    for where, row in itertools.chain(sample, rows):
        report.rows_read += 1
        bar.update(1)
        try:
            pair = parse_row(row, config, layout)
            pair.where = where
            examples.append(tokenize_pair(pair, tokenizer, config, report))
        except _Bad as bad:
            if config.strict:
                raise BadRowError(where, bad.reason, bad.detail) from None
            report.dropped.append((where, bad.reason, bad.detail))
            continue
        if limit is not None and len(examples) >= limit:
            break
    bar.close()
    report.kept = len(examples)
    return PreferenceDataset(examples, report, config)


def _progress_bar(enabled: bool):
    """A bar on a terminal only (a log file or a pipe gets no bar lines); it disappears when done."""
    from tqdm import tqdm
    return tqdm(desc="tokenizing", unit=" rows", file=sys.stderr, disable=not (enabled and sys.stderr.isatty()),
                mininterval=1.0, dynamic_ncols=True, leave=False)


def load_preferences(source, tokenizer, config: DataConfig | None = None, *, split: str | None = None,
                     data_files: str | None = None, revision: str | None = None,
                     limit: int | None = None, progress: bool = False) -> PreferenceDataset:
    """Read a local file/folder or a hub dataset (see hf/datafiles.py) and tokenize it. Malformed files raise
    DataFileError (file and line); bad rows are dropped and reported (or raise BadRowError when strict)."""
    rows = iter_rows(source, split=split, data_files=data_files, revision=revision)
    return build_examples(rows, tokenizer, config, limit=limit, progress=progress)
