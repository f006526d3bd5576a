"""Row layouts of preference data: which keys hold the prompt and the two responses, detected once per source.

  standard        {"prompt": str, "chosen": str, "rejected": str}                           (TRL's standard)
  conversational  {"prompt": [messages], "chosen": [messages], "rejected": [messages]}    (TRL's conversational)
                  or chosen/rejected holding the whole conversation, prompt turns included (UltraFeedback
                  binarized): the prompt is every message but the last, and must be the same in both.
  implicit        {"chosen": str, "rejected": str} sharing a prefix (HH-RLHF): the prompt is everything up to
                  and including the LAST "\\n\\nAssistant:" (DataConfig.implicit_prompt_marker); it must be the
                  same in both, and the responses are what follows it.
  sharegpt        {"conversations": [{"from", "value"}], "chosen": {"from", "value"}, "rejected": {...}}
                  (LLaMA-Factory's sharegpt preference format, data/README.md there): roles human/gpt/system,
                  human and gpt alternating, the conversation ending on a human turn; a leading system turn or a
                  `system` column becomes the system message. "messages" of {"role", "content"} (its openai
                  variant) is read the same way.
  alpaca          {"instruction": str, "input": str (optional), "chosen": str, "rejected": str} (LLaMA-Factory's
                  alpaca preference format): the user turn is instruction + "\\n" + input (an empty input is left
                  out, as LLaMA-Factory does), after the turns of an optional `history` of [user, assistant] pairs.
  question        {"question": str, "chosen": str, "rejected": str} (Intel/orca_dpo_pairs): the question is the
                  user turn.
Every layout may carry a `system` column (a string; empty = none): it becomes a system message, so the row is
rendered with the chat template. sharegpt, alpaca and question rows are chat data and always become messages.

`detect_layout` looks at the first rows of a source and picks the layout most of them have; a source none of
whose first rows fits any layout is ONE error naming the keys it saw and the layouts above (not a drop per row).
Parsing a row of the detected layout raises `Bad(reason, detail)` for a row that does not fit (data.py drops it).
"""

from __future__ import annotations

from collections import Counter

from minorpo.errors import UserError

LAYOUTS = {
    "standard": "prompt, chosen, rejected as strings",
    "conversational": "prompt/chosen/rejected as lists of {role, content} (or chosen/rejected as whole conversations)",
    "implicit": "chosen, rejected as strings sharing the prompt (HH-RLHF)",
    "sharegpt": "conversations of {from, value} + chosen/rejected as one {from, value} message (LLaMA-Factory)",
    "alpaca": "instruction, input (optional), chosen, rejected (LLaMA-Factory)",
    "question": "question, chosen, rejected (Intel/orca_dpo_pairs)",
}
SAMPLE_ROWS = 64  # rows looked at to detect the layout
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}


class Bad(Exception):
    """A row that does not fit its layout: (reason, detail); data.py drops it or, strict, raises BadRowError."""

    def __init__(self, reason: str, detail: str):
        self.reason, self.detail = reason, detail


def row_layout(row: dict) -> str | None:
    """The layout a single row looks like, from its keys and the types of its values (None: none)."""
    if "chosen" not in row or "rejected" not in row:
        return None
    if "conversations" in row or ("messages" in row and isinstance(row["chosen"], dict)):
        return "sharegpt"
    if "instruction" in row:
        return "alpaca"
    if "question" in row:
        return "question"
    values = [row["chosen"], row["rejected"], row.get("prompt")]
    if any(isinstance(v, list) for v in values):
        return "conversational"
    return "standard" if "prompt" in row else "implicit"


def detect_layout(sample: list[tuple[str, dict]]) -> str:
    """The layout of most of the sampled (where, row) pairs; UserError if none of them has a known layout."""
    votes = Counter(layout for _, row in sample if (layout := row_layout(row)) is not None)
    if votes:
        return votes.most_common(1)[0][0]
    keys = Counter(k for _, row in sample for k in row)
    source = sample[0][0].rsplit(":", 1)[0] if sample else "the data"
    known = "; ".join(f"{name}: {what}" for name, what in LAYOUTS.items())
    raise UserError(f"{source}: the rows have keys {sorted(keys)}, which fit no known layout ({len(sample)} rows "
                    f"looked at). Known layouts: {known}")


def parse(row: dict, layout: str, marker: str = "\n\nAssistant:") -> tuple:
    """(prompt, chosen, rejected) of a row of `layout`: strings, or lists of {role, content} messages.
    marker: where an implicit-layout prompt ends (DataConfig.implicit_prompt_marker)."""
    for key in REQUIRED[layout]:
        if key not in row:
            raise Bad("missing_key", f"no {key!r} key ({layout} layout; keys: {sorted(row)[:8]})")
    if layout == "sharegpt" and "conversations" not in row and "messages" not in row:
        raise Bad("missing_key", f"no 'conversations' key (sharegpt layout; keys: {sorted(row)[:8]})")
    if layout == "implicit":
        prompt, chosen, rejected = split_implicit(string(row, "chosen"), string(row, "rejected"), marker)
    else:
        prompt, chosen, rejected = PARSERS[layout](row)
    if isinstance(prompt, list) and not prompt[-1]["content"].strip():
        raise Bad("empty_prompt", f"the last prompt turn ({prompt[-1]['role']}) is empty")
    system = row.get("system")
    if system is not None and not isinstance(system, str):
        raise Bad("not_a_string", f"system is {type(system).__name__}, expected a string")
    if system and not (isinstance(prompt, list) and prompt[0]["role"] == "system"):
        prompt = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
        prompt = [{"role": "system", "content": system}] + prompt
    return prompt, chosen, rejected


def string(row: dict, key: str) -> str:
    if not isinstance(row[key], str):
        raise Bad("not_a_string", f"{key} is {type(row[key]).__name__}, expected a string")
    return row[key]


def messages(value, name: str) -> list[dict]:
    if not isinstance(value, list) or not value:
        raise Bad("bad_messages", f"{name} must be a non-empty list of messages, got {type(value).__name__}")
    for i, m in enumerate(value):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise Bad("bad_messages", f"{name}[{i}] must be a dict with 'role' and 'content', got {m!r:.80}")
        if not isinstance(m["content"], str):
            raise Bad("not_a_string", f"{name}[{i}]['content'] is {type(m['content']).__name__}")
    return value


def _conversational(row):
    chosen, rejected = messages(row["chosen"], "chosen"), messages(row["rejected"], "rejected")
    if isinstance(row.get("prompt"), list):
        prompt = messages(row["prompt"], "prompt")
    elif len(chosen) > 1 or len(rejected) > 1:  # UltraFeedback: prompt turns inside chosen/rejected
        if chosen[:-1] != rejected[:-1]:
            raise Bad("prompts_differ", "the messages before the last differ between chosen and rejected")
        prompt, chosen, rejected = chosen[:-1], chosen[-1:], rejected[-1:]
    elif isinstance(row.get("prompt"), str):  # a plain string prompt with single assistant turns
        prompt = [{"role": "user", "content": row["prompt"]}]
    else:
        raise Bad("missing_key" if "prompt" not in row else "not_a_string", "conversational row without prompt messages")
    for name, msgs in (("chosen", chosen), ("rejected", rejected)):
        if msgs[-1]["role"] != "assistant":
            raise Bad("bad_messages", f"the last {name} message has role {msgs[-1]['role']!r}, not 'assistant'")
    return prompt, chosen, rejected


def split_implicit(chosen: str, rejected: str, marker: str) -> tuple[str, str, str]:
    """Prompt = text up to and including the last marker; it must be the same for chosen and rejected."""
    cut_c, cut_r = chosen.rfind(marker), rejected.rfind(marker)
    if cut_c < 0 or cut_r < 0:
        raise Bad("no_prompt_marker", f"{marker!r} not found in {'chosen' if cut_c < 0 else 'rejected'}")
    prompt_c, prompt_r = chosen[: cut_c + len(marker)], rejected[: cut_r + len(marker)]
    if prompt_c != prompt_r:
        at = next((i for i, (a, b) in enumerate(zip(prompt_c, prompt_r)) if a != b), min(len(prompt_c), len(prompt_r)))
        raise Bad("prompts_differ", f"the prompts differ from character {at} on "
                                    f"(chosen prompt {len(prompt_c)} chars, rejected prompt {len(prompt_r)} chars)")
    return prompt_c, chosen[len(prompt_c):], rejected[len(prompt_r):]


def _sharegpt_message(m, name: str) -> dict:
    """{"from", "value"} (or {"role", "content"}) -> {"role", "content"} with user/assistant/system roles."""
    if not isinstance(m, dict):
        raise Bad("bad_messages", f"{name} must be a message {{from, value}}, got {type(m).__name__}")
    role, content = (m.get("from"), m.get("value")) if "from" in m else (m.get("role"), m.get("content"))
    if role not in SHAREGPT_ROLES:
        raise Bad("bad_messages", f"{name} has role {role!r}; supported: {', '.join(SHAREGPT_ROLES)} (tool turns "
                                  f"are not)")
    if not isinstance(content, str):
        raise Bad("not_a_string", f"{name}'s value is {type(content).__name__}, expected a string")
    return {"role": SHAREGPT_ROLES[role], "content": content}


def _sharegpt(row):
    key = "conversations" if "conversations" in row else "messages"
    turns = row[key]
    if not isinstance(turns, list) or not turns:
        raise Bad("bad_messages", f"{key} must be a non-empty list of messages, got {type(turns).__name__}")
    turns = [_sharegpt_message(m, f"{key}[{i}]") for i, m in enumerate(turns)]
    system, rest = (turns[:1], turns[1:]) if turns[0]["role"] == "system" else ([], turns)
    for i, m in enumerate(rest):  # LLaMA-Factory's rule: human at odd positions, gpt at even ones
        if m["role"] != ("user", "assistant")[i % 2]:
            raise Bad("bad_messages", f"{key}: turn {i + len(system) + 1} is {m['role']!r}; user and assistant turns "
                                      f"must alternate, starting with the user")
    if not rest or rest[-1]["role"] != "user":
        raise Bad("bad_messages", f"{key} must end with a user (human) turn, the one chosen/rejected answer")
    responses = []
    for name in ("chosen", "rejected"):
        m = _sharegpt_message(row[name], name)
        if m["role"] != "assistant":
            raise Bad("bad_messages", f"{name} has role {m['role']!r}, expected gpt (the assistant)")
        responses.append([m])
    return system + rest, responses[0], responses[1]


def _alpaca(row):
    user = "\n".join(string(row, k) for k in ("instruction", "input") if row.get(k) is not None and row[k] != "")
    history = row.get("history") or []
    turns = []
    for i, pair in enumerate(history if isinstance(history, list) else [history]):
        if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(t, str) for t in pair)):
            raise Bad("bad_messages", f"history[{i}] must be a [user, assistant] pair of strings, got {pair!r:.80}")
        turns += [{"role": "user", "content": pair[0]}, {"role": "assistant", "content": pair[1]}]
    return turns + [{"role": "user", "content": user}], _reply(row, "chosen"), _reply(row, "rejected")


def _reply(row, key):
    return [{"role": "assistant", "content": string(row, key)}]


PARSERS = {
    "standard": lambda row: (string(row, "prompt"), string(row, "chosen"), string(row, "rejected")),
    "conversational": _conversational,
    "sharegpt": _sharegpt,
    "alpaca": _alpaca,
    "question": lambda row: ([{"role": "user", "content": string(row, "question")}], _reply(row, "chosen"),
                             _reply(row, "rejected")),
}
REQUIRED = {"standard": ("prompt", "chosen", "rejected"), "implicit": ("chosen", "rejected"),
            "conversational": ("chosen", "rejected"), "sharegpt": ("chosen", "rejected"),
            "alpaca": ("instruction", "chosen", "rejected"), "question": ("question", "chosen", "rejected")}
