"""Readers for every import format, each normalised to one shape: a prompt (a conversation) and,
for pairs, two responses, as the DPO authors' loaders normalise every dataset.

Formats (`--format`):
    pairs      `prompt`, `chosen`, `rejected`: strings or TRL conversational message lists (an
               "implicit prompt" row without `prompt` holds the whole conversation in both columns)
    unlabeled  `prompt`, `response_a`, `response_b`: pairs waiting for labels
    prompts    a `prompt` column, or a .txt file with one prompt per line
    hh         Anthropic HH-RLHF: `chosen` / `rejected` are whole "\n\nHuman: ...\n\nAssistant: ..."
               transcripts; the shared dialogue is the prompt, the two last assistant turns differ
    oasst      OpenAssistant message trees: sibling assistant replies ranked by humans
Files: .jsonl (.jsonl.gz), .csv, .parquet, .txt, a folder written by `datasets.save_to_disk`, or
a hub dataset name when online. `auto` decides from the extension and the first record's keys.

Every problem with the input raises `InputError` whose message is one sentence naming the file,
the line (or row) and the field, and what was expected.
"""
from __future__ import annotations

import csv
import gzip
import io
import json
import re
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import orjson

from labeling.records import ROLES

FORMATS = ("auto", "pairs", "unlabeled", "prompts", "hh", "oasst")
MESSAGES_HELP = "a string or a list of {role, content} messages"
_TURN = re.compile(r"\n\n(Human|Assistant):")
_HUB_NAME = re.compile(r"[\w.-]+/[\w.-]+")
# NUL cannot be stored in a PostgreSQL text column, and a lone surrogate (a "\ud800" JSON escape)
# cannot be encoded as UTF-8 by any driver: both are refused up front, with the line and field.
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


class InputError(ValueError):
    """A file prefloop cannot import; the message is one sentence for the user."""


@dataclass(frozen=True, slots=True)
class PairRecord:
    """Two responses to one prompt; when `labeled`, response_a is the chosen one."""

    prompt: list[dict[str, str]]
    response_a: str
    response_b: str
    labeled: bool


@dataclass(frozen=True, slots=True)
class PromptRecord:
    prompt: list[dict[str, str]]


Record = PairRecord | PromptRecord
Row = tuple[str, dict[str, Any]]  # ("line 3" or "row 3", the record)


# ---------------------------------------------------------------- raw rows from each file type


def _decode(raw: bytes, path: Path, where: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InputError(f"{path}, {where}: byte 0x{raw[e.start]:02x} at position {e.start} is not valid "
                         f"UTF-8; save the file as UTF-8.") from None


def _open_bytes(path: Path):
    try:
        return gzip.open(path, "rb") if path.name.endswith(".gz") else open(path, "rb")
    except OSError as e:
        raise InputError(f"{path}: cannot open the file ({e.strerror or e}); check the path and permissions.") from None


# A run of 19 digits, found as 19 zeros once every digit is a zero: five times faster than \d{19}.
_DIGITS_AS_ZERO = bytes.maketrans(b"123456789", b"000000000")
_LONG_NUMBER = b"0" * 19


def _jsonl_rows(path: Path) -> Iterator[Row]:
    with _open_bytes(path) as f:
        n = 0
        try:
            for n, raw in enumerate(f, start=1):
                if not raw.strip():
                    continue
                try:
                    # orjson reads integers past 64 bits as floats; json keeps them exact
                    obj = orjson.loads(raw) if _LONG_NUMBER not in raw.translate(_DIGITS_AS_ZERO) else _json_line(raw, path, n)
                except orjson.JSONDecodeError:
                    obj = _json_line(raw, path, n)
                if not isinstance(obj, dict):
                    raise InputError(f"{path}, line {n}: expected a JSON object with named fields, "
                                     f"got a {type(obj).__name__}.")
                yield f"line {n}", obj
        except (OSError, EOFError, zlib.error) as e:
            raise InputError(f"{path}, line {n + 1}: cannot read the file ({e}); check that it is not "
                             f"truncated or corrupt.") from None


def _json_rows(path: Path) -> Iterator[Row]:
    """A .json file: one JSON array of records (as `DataFrame.to_json(orient="records")` and many
    exports write it, on one line or pretty-printed), else JSON Lines."""
    with _open_bytes(path) as f:
        try:
            head = f.read(4096).lstrip(b"\xef\xbb\xbf \t\r\n")  # a BOM, then whitespace
        except (OSError, EOFError, zlib.error):
            head = b""  # _jsonl_rows names the problem
    return _json_array_rows(path) if head.startswith(b"[") else _jsonl_rows(path)


def _json_array_rows(path: Path) -> Iterator[Row]:
    try:
        items = json.loads(_read_text(path))
    except json.JSONDecodeError as e:
        raise InputError(f"{path}, line {e.lineno}: malformed JSON ({e.msg} at column {e.colno}); the file "
                         f"must hold one JSON array of objects, or one JSON object per line.") from None
    except (RecursionError, ValueError) as e:
        reason = "nested too deeply" if isinstance(e, RecursionError) else str(e).split(";")[0]
        raise InputError(f"{path}: the JSON cannot be read ({reason}).") from None
    for n, obj in enumerate(items, start=1):
        if not isinstance(obj, dict):
            raise InputError(f"{path}, item {n}: expected a JSON object with named fields, got a {type(obj).__name__}.")
        yield f"item {n}", obj


def _json_line(raw: bytes, path: Path, n: int) -> Any:
    """A line orjson refused, read by the standard library: it also takes a BOM, NaN and lone
    surrogate escapes, and its errors name the column. InputError when it fails too."""
    try:
        return json.loads(raw)  # bytes: json decodes UTF-8 itself (and a BOM)
    except UnicodeDecodeError:
        _decode(raw, path, f"line {n}")
        raise
    except json.JSONDecodeError as e:
        raise InputError(f"{path}, line {n}: malformed JSON ({e.msg} at column {e.colno}); "
                         f"each line must hold one JSON object.") from None
    except (RecursionError, ValueError) as e:  # nesting deeper than Python's stack, 5000-digit numbers
        reason = "nested too deeply" if isinstance(e, RecursionError) else str(e).split(";")[0]
        raise InputError(f"{path}, line {n}: the JSON cannot be read ({reason}); each line must "
                         f"hold one JSON object of ordinary depth and numbers.") from None


def _read_text(path: Path) -> str:
    with _open_bytes(path) as f:
        try:
            raw = f.read()
        except (OSError, EOFError, zlib.error) as e:
            raise InputError(f"{path}: cannot read the file ({e}); check that it is not corrupt.") from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise InputError(f"{path}, line {line}: byte 0x{raw[e.start]:02x} is not valid UTF-8; "
                         f"save the file as UTF-8.") from None


def _csv_rows(path: Path) -> Iterator[Row]:
    csv.field_size_limit(max(csv.field_size_limit(), 1 << 30))  # 128 KB by default: a long response is fine
    reader = csv.DictReader(io.StringIO(_read_text(path), newline=""))
    try:
        _ = reader.fieldnames  # reads the header
        start = reader.line_num + 1  # a record names the line it starts on (a quoted response spans several)
        for row in reader:
            yield f"line {start}", {k: _maybe_messages(v) for k, v in row.items() if k is not None}
            start = reader.line_num + 1
    except csv.Error as e:
        raise InputError(f"{path}, line {reader.line_num}: malformed CSV ({e}); quote fields that hold "
                         f"commas or line breaks.") from None


def _maybe_messages(cell: str | None) -> Any:
    """A CSV cell holding a JSON list of messages becomes that list; any other text stays text."""
    if cell and cell.startswith("[{") and cell.rstrip().endswith("}]"):
        try:
            value = json.loads(cell)
        except (RecursionError, ValueError):  # not JSON after all (or absurdly nested): keep the text
            return cell
        if all(isinstance(m, dict) and "role" in m and "content" in m for m in value):
            return value
    return cell


def _table_rows(records: list[dict[str, Any]]) -> Iterator[Row]:
    for n, obj in enumerate(records, start=1):
        yield f"row {n}", obj


def _parquet_rows(path: Path) -> Iterator[Row]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowException) as e:
        raise InputError(f"{path}: not a readable Parquet file ({e}); check the file or pass another --format.") from None
    return _table_rows(table.to_pylist())


def _datasets_rows(source: str) -> Iterator[Row]:
    import datasets  # imported here: it is slow to import and only folders and hub names need it

    try:
        if Path(source).is_dir():
            data = datasets.load_from_disk(source)
        else:
            data = datasets.load_dataset(source)
    except Exception as e:  # datasets raises many types: missing files, offline hub, bad metadata
        raise InputError(f"{source}: cannot load it as a datasets folder or hub dataset ({type(e).__name__}: "
                         f"{e}); give a folder written by save_to_disk, or a file.") from None
    if isinstance(data, (datasets.DatasetDict, dict)):
        split = "train" if "train" in data else next(iter(data))
        data = data[split]
    return _table_rows(data.to_list())


def _rows(path: Path) -> Iterator[Row]:
    name = path.name.lower()
    known = (".jsonl", ".jsonl.gz", ".json", ".json.gz", ".csv", ".csv.gz", ".parquet", ".txt", ".gz")
    if path.is_dir() or (not path.exists() and _HUB_NAME.fullmatch(str(path)) and not name.endswith(known)):
        return _datasets_rows(str(path))
    if not path.exists():
        raise InputError(f"{path}: no such file or folder; check the path.")
    if name.endswith((".jsonl", ".jsonl.gz")):
        return _jsonl_rows(path)
    if name.endswith((".json", ".json.gz")):
        return _json_rows(path)
    if name.endswith((".csv", ".csv.gz")):
        return _csv_rows(path)
    if name.endswith(".parquet"):
        return _parquet_rows(path)
    raise InputError(f"{path}: unknown file type; use .jsonl, .jsonl.gz, .csv, .parquet, .txt or a datasets folder.")


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
        yield from _implicit({"chosen": prompt + row["chosen"], "rejected": prompt + row["rejected"]}, path, where)
        return
    chosen = _response(row["chosen"], path, where, "chosen")
    yield PairRecord(prompt, chosen, _response(row["rejected"], path, where, "rejected"), True)


def _implicit(row: dict[str, Any], path: Path, where: str) -> Iterator[Record]:
    _require(row, ("chosen", "rejected"), path, where, "pairs")
    chosen = _messages(row["chosen"], path, where, "chosen")
    rejected = _messages(row["rejected"], path, where, "rejected")
    try:
        prompt, a, b = split_conversations(chosen, rejected)
    except ValueError as e:
        raise InputError(f"{path}, {where}, fields 'chosen'/'rejected': {e} (or give a 'prompt' field).") from None
    yield PairRecord(prompt, a, b, True)


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
    raise InputError(f"{path}: cannot tell the format from the first record's fields "
                     f"({_field_names(keys)}); expected prompt/chosen/rejected, "
                     f"prompt/response_a/response_b or prompt, or pass --format.")


_LINE_BREAK = re.compile(r"\r\n|\r|\n")


def _text_prompts(path: Path) -> Iterator[Record]:
    lines = _LINE_BREAK.split(_read_text(path))  # not splitlines(): U+2028, U+0085 and the like stay in a prompt
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
    for where, row in _rows(path):
        if convert is None:
            fmt = detect(row, path)
            convert = CONVERTERS[fmt]
        for record in convert(row, path, where):
            _check_storable(record, path, where)
            yield fmt, record
    if convert is None:
        raise InputError(f"{path}: the file holds no records; give a file with at least one row.")
