"""Readers for every import format, each normalised to one shape: a prompt (a conversation) and,
for pairs, two responses, as the DPO authors' loaders normalise every dataset.

Formats (`--format`):
    pairs      `prompt`, `chosen`, `rejected`: strings or TRL conversational message lists (an
               "implicit prompt" row without `prompt` holds the whole conversation in both columns);
               an optional `reasons` list of tags (as prefloop exports them) goes with the label
    unlabeled  `prompt`, `response_a`, `response_b`: pairs waiting for labels
    prompts    a `prompt` column, or a .txt file with one prompt per line
    hh         Anthropic HH-RLHF: `chosen` / `rejected` are whole "\n\nHuman: ...\n\nAssistant: ..."
               transcripts; the shared dialogue is the prompt, the two last assistant turns differ
    oasst      OpenAssistant message trees: sibling assistant replies ranked by humans
Files: .jsonl (.jsonl.gz), .json (an array, or JSON Lines), .csv, .parquet, .txt, a folder written
by `datasets.save_to_disk`, or a hub dataset name when online; `labeling/readers.py` reads their raw
rows. `auto` decides from the extension and the first record's keys.

Every problem with the input raises `InputError` whose message is one sentence naming the file,
the line (or row) and the field, and what was expected.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from labeling.readers import InputError, read_text, rows
from labeling.reasons import ReasonError, check_reasons
from labeling.records import ROLES

FORMATS = ("auto", "pairs", "unlabeled", "prompts", "hh", "oasst")
MESSAGES_HELP = "a string or a list of {role, content} messages"
_TURN = re.compile(r"\n\n(Human|Assistant):")
# NUL cannot be stored in a PostgreSQL text column, and a lone surrogate (a "\ud800" JSON escape)
# cannot be encoded as UTF-8 by any driver: both are refused up front, with the line and field.
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


@dataclass(frozen=True, slots=True)
class PairRecord:
    """Two responses to one prompt; when `labeled`, response_a is the chosen one."""

    prompt: list[dict[str, str]]
    response_a: str
    response_b: str
    labeled: bool
    reasons: tuple[str, ...] = ()  # why the label's annotators chose response_a (labeling/reasons.py)


@dataclass(frozen=True, slots=True)
class PromptRecord:
    prompt: list[dict[str, str]]


Record = PairRecord | PromptRecord


# ---------------------------------------------------------------- fields and conversations


def _messages(value: Any, path: Path, where: str, field: str) -> list[dict[str, str]]:
    """A string or a message list as messages; InputError naming the field otherwise."""
    if value is None:
        return []
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    ok = isinstance(value, list) and all(
        isinstance(m, dict) and m.get("role") in ROLES and isinstance(m.get("content"), str) for m in value)
    if not ok:
        raise InputError(f"{path}, {where}, field '{field}': expected {MESSAGES_HELP} with roles "
                         f"{'/'.join(ROLES)}, got {_describe(value)}.")
    return [{"role": m["role"], "content": m["content"]} for m in value]


def _response(value: Any, path: Path, where: str, field: str) -> str:
    """A response given as text or as one assistant message."""
    if value is None or isinstance(value, str):
        return value or ""
    msgs = _messages(value, path, where, field)
    if len(msgs) != 1 or msgs[0]["role"] != "assistant":
        raise InputError(f"{path}, {where}, field '{field}': expected a string or a list holding one "
                         f"assistant message, got {len(msgs)} messages.")
    return msgs[0]["content"]


def _reasons(row: dict[str, Any], path: Path, where: str) -> tuple[str, ...]:
    """The optional `reasons` field: a list of tags, or (in a CSV cell) that list as JSON text."""
    value = row.get("reasons")
    if value is None:  # most files: no reasons, and a large import reads 100,000 rows
        return ()
    if isinstance(value, str) and value.strip().startswith("["):
        try:
            value = json.loads(value)
        except (RecursionError, ValueError):
            pass  # refused below, naming the field
    if isinstance(value, tuple) or hasattr(value, "tolist"):
        value = list(value)  # a tuple, or a numpy array from a Parquet or datasets reader
    if value == "":
        return ()
    if not isinstance(value, list):
        raise InputError(f"{path}, {where}, field 'reasons': expected a list of reason tags such as "
                         f'["more correct", "safer"], got {_describe(value)}.')
    try:
        return tuple(check_reasons(value))
    except ReasonError as e:
        raise InputError(f"{path}, {where}, field 'reasons': {e}") from None


def _describe(value: Any) -> str:
    if isinstance(value, list):
        return f"a list of {', '.join(sorted({type(v).__name__ for v in value})) or 'nothing'}"
    name = "null" if value is None else type(value).__name__
    return f"{'an' if name[0] in 'aeiou' else 'a'} {name}"


def _field_names(keys) -> str:
    """A record's field names for a message: at most 10, each shortened, on one line."""
    names = [repr(k)[1:-1] for k in sorted(map(str, keys))]
    shown = [n if len(n) <= 40 else n[:37] + "..." for n in names[:10]]
    return ", ".join(shown) + (f" and {len(names) - 10} more" if len(names) > 10 else "") or "none"


def _require(row: dict[str, Any], fields: tuple[str, ...], path: Path, where: str, fmt: str) -> None:
    for field in fields:
        if field not in row:
            raise InputError(f"{path}, {where}: missing field '{field}'; the {fmt} format needs "
                             f"{', '.join(fields)} (found {_field_names(row)}).")


def split_conversations(chosen: list[dict[str, str]], rejected: list[dict[str, str]]) -> tuple[list, str, str]:
    """Two full conversations sharing a dialogue -> (shared prompt, last chosen turn, last rejected turn).

    The prompt is the longest common run of messages that ends before an assistant turn; each
    side's remainder must be a single assistant message.
    """
    k = 0
    while k < min(len(chosen), len(rejected)) - 1 and chosen[k] == rejected[k]:
        k += 1
    tails = chosen[k:], rejected[k:]
    if any(len(t) != 1 or t[0]["role"] != "assistant" for t in tails):
        raise ValueError("the conversations must differ only in their last assistant message")
    return chosen[:k], tails[0][0]["content"], tails[1][0]["content"]


def _transcript(text: str) -> list[dict[str, str]]:
    """An HH-RLHF transcript as messages; text before the first turn marker is dropped."""
    parts = _TURN.split(text)
    return [{"role": "user" if who == "Human" else "assistant", "content": body.strip()}
            for who, body in zip(parts[1::2], parts[2::2])]


def split_transcripts(chosen: str, rejected: str) -> tuple[list[dict[str, str]], str, str]:
    """HH-RLHF: cut both transcripts at the last "\n\nAssistant:" inside their common prefix; the
    dialogue before it is the prompt, the rest of each transcript its response (as TRL's and
    Anthropic's own preprocessing do, so a reply that itself holds an "Assistant:" turn stays whole)."""
    n = 0
    limit = min(len(chosen), len(rejected))
    while n < limit and chosen[n] == rejected[n]:
        n += 1
    cut = chosen.rfind("\n\nAssistant:", 0, n + 1)
    if cut < 0:
        raise ValueError('no shared "\\n\\nAssistant:" turn')
    start = cut + len("\n\nAssistant:")
    return _transcript(chosen[:cut]), chosen[start:].strip(), rejected[start:].strip()


# ---------------------------------------------------------------- one converter per format


def _labeled(row: dict[str, Any], path: Path, where: str) -> Iterator[Record]:
    if "prompt" not in row:
        yield from _hh(row, path, where) if isinstance(row.get("chosen"), str) else _implicit(row, path, where)
        return
    _require(row, ("prompt", "chosen", "rejected"), path, where, "pairs")
    prompt = _messages(row["prompt"], path, where, "prompt")
    if isinstance(row["chosen"], list) and isinstance(row["rejected"], list) and len(row["chosen"]) != 1:
        yield from _implicit({"chosen": prompt + row["chosen"], "rejected": prompt + row["rejected"],
                              "reasons": row.get("reasons")}, path, where)
        return
    chosen = _response(row["chosen"], path, where, "chosen")
    yield PairRecord(prompt, chosen, _response(row["rejected"], path, where, "rejected"), True,
                     _reasons(row, path, where))


def _implicit(row: dict[str, Any], path: Path, where: str) -> Iterator[Record]:
    _require(row, ("chosen", "rejected"), path, where, "pairs")
    chosen = _messages(row["chosen"], path, where, "chosen")
    rejected = _messages(row["rejected"], path, where, "rejected")
    try:
        prompt, a, b = split_conversations(chosen, rejected)
    except ValueError as e:
        raise InputError(f"{path}, {where}, fields 'chosen'/'rejected': {e} (or give a 'prompt' field).") from None
    yield PairRecord(prompt, a, b, True, _reasons(row, path, where))


def _hh(row: dict[str, Any], path: Path, where: str) -> Iterator[Record]:
    _require(row, ("chosen", "rejected"), path, where, "hh")
    for field in ("chosen", "rejected"):
        if not isinstance(row[field], str):
            raise InputError(f"{path}, {where}, field '{field}': expected a transcript string "
                             f"\"\\n\\nHuman: ...\\n\\nAssistant: ...\", got {_describe(row[field])}.")
    try:
        prompt, a, b = split_transcripts(row["chosen"], row["rejected"])
    except ValueError:
        raise InputError(f"{path}, {where}, field 'chosen': expected a transcript whose turns start with "
                         f"\"\\n\\nHuman:\" and \"\\n\\nAssistant:\", found no assistant turn.") from None
    yield PairRecord(prompt, a, b, True)


def _unlabeled(row: dict[str, Any], path: Path, where: str) -> Iterator[Record]:
    _require(row, ("prompt", "response_a", "response_b"), path, where, "unlabeled")
    yield PairRecord(_messages(row["prompt"], path, where, "prompt"),
                     _response(row["response_a"], path, where, "response_a"),
                     _response(row["response_b"], path, where, "response_b"), False)


def _prompt(row: dict[str, Any], path: Path, where: str) -> Iterator[Record]:
    _require(row, ("prompt",), path, where, "prompts")
    yield PromptRecord(_messages(row["prompt"], path, where, "prompt"))


def _oasst(row: dict[str, Any], path: Path, where: str) -> Iterator[Record]:
    root = row.get("prompt")
    if not isinstance(root, dict) or not isinstance(root.get("text"), str):
        raise InputError(f"{path}, {where}, field 'prompt': expected an OpenAssistant message tree "
                         f"(an object with 'text', 'role' and 'replies'), got {_describe(root)}.")
    stack = [(root, [])]
    while stack:  # depth-first over every message; `history` is the conversation before it
        node, history = stack.pop()
        role = "user" if node.get("role") == "prompter" else "assistant"
        conversation = history + [{"role": role, "content": str(node.get("text") or "")}]
        replies = node.get("replies") or []
        if not isinstance(replies, list):
            raise InputError(f"{path}, {where}, field 'replies': expected a list of reply messages, "
                             f"got {_describe(replies)}.")
        replies = [r for r in replies if isinstance(r, dict) and not r.get("deleted")]
        if role == "user":
            yield from _ranked_pairs(conversation, replies)
        stack.extend((r, conversation) for r in reversed(replies))


def _ranked_pairs(conversation: list[dict[str, str]], replies: list[dict[str, Any]]) -> Iterator[Record]:
    """Every two sibling assistant replies with different ranks: the better rank (lower) is chosen."""
    ranked = sorted((r for r in replies if r.get("role") == "assistant" and isinstance(r.get("rank"), int)),
                    key=lambda r: r["rank"])
    for i, better in enumerate(ranked):
        for worse in ranked[i + 1:]:
            if better["rank"] < worse["rank"]:
                yield PairRecord(conversation, str(better.get("text") or ""), str(worse.get("text") or ""), True)


CONVERTERS: dict[str, Callable[[dict[str, Any], Path, str], Iterator[Record]]] = {
    "pairs": _labeled, "unlabeled": _unlabeled, "prompts": _prompt, "hh": _hh, "oasst": _oasst,
}


def detect(first: dict[str, Any], path: Path) -> str:
    """The format of a file from its first record's keys."""
    keys = set(first)
    if "message_tree_id" in keys or isinstance(first.get("prompt"), dict):
        return "oasst"
    if keys & {"chosen", "rejected"}:
        chosen = first.get("chosen")
        is_transcript = isinstance(chosen, str) and chosen.lstrip(" ").startswith("\n\nHuman:")
        return "hh" if "prompt" not in keys and is_transcript else "pairs"
    if keys & {"response_a", "response_b"}:
        return "unlabeled"
    if "prompt" in keys:
        return "prompts"
    if "messages" in keys:
        raise InputError(f"{path}: the rows hold 'messages', written answers for the SFT round rather than pairs; "
                         f"import them with the format messages (--format messages).")
    raise InputError(f"{path}: cannot tell the format from the first record's fields "
                     f"({_field_names(keys)}); expected prompt/chosen/rejected, "
                     f"prompt/response_a/response_b or prompt, or pass --format.")


_LINE_BREAK = re.compile(r"\r\n|\r|\n")


def _text_prompts(path: Path) -> Iterator[Record]:
    lines = _LINE_BREAK.split(read_text(path))  # not splitlines(): U+2028, U+0085 and the like stay in a prompt
    if lines[-1] == "":
        lines.pop()
    for n, line in enumerate(lines, start=1):
        record = PromptRecord([{"role": "user", "content": line.strip()}])
        _check_storable(record, path, f"line {n}")
        yield record


def _check_storable(record: Record, path: Path, where: str) -> None:
    """InputError when a text holds a character no database column can store (NUL, lone surrogate)."""
    texts = [("prompt", m["content"]) for m in record.prompt]
    if isinstance(record, PairRecord):
        names = ("chosen", "rejected") if record.labeled else ("response_a", "response_b")
        texts += [(names[0], record.response_a), (names[1], record.response_b)]
    for field, value in texts:
        if value.isascii() and "\x00" not in value:  # the common case, checked at C speed
            continue
        found = _UNSTORABLE.search(value)
        if found:
            what = "a NUL character" if found.group() == "\x00" else "a lone UTF-16 surrogate"
            raise InputError(f"{path}, {where}, field '{field}': the text holds {what} at position "
                             f"{found.start()}, which cannot be stored; remove it from the file.")


def stream(path: str | Path, fmt: str = "auto") -> Iterator[tuple[str, Record]]:
    """(format, record) for each record of a file, checked as it is read; the format is the one
    given, or the one detected from the first record. InputError at the first bad record: callers
    write inside one transaction, so nothing of the file is kept."""
    path = Path(path)
    if fmt not in FORMATS:
        raise InputError(f"{path}: unknown format '{fmt}'; use one of {', '.join(FORMATS)}.")
    if path.name.lower().endswith((".txt", ".txt.gz")) and fmt in ("auto", "prompts"):
        for record in _text_prompts(path):
            yield "prompts", record
        return
    convert = CONVERTERS.get(fmt)
    for where, row in rows(path):
        if convert is None:
            fmt = detect(row, path)
            convert = CONVERTERS[fmt]
        for record in convert(row, path, where):
            _check_storable(record, path, where)
            yield fmt, record
    if convert is None:
        raise InputError(f"{path}: the file holds no records; give a file with at least one row.")
