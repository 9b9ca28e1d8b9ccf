"""Raw rows from every file type an import reads: JSON Lines, a JSON array, CSV, Parquet, a
`datasets` folder or hub name, each as ("line 3" / "row 3" / "item 3", a dict of fields).
`labeling.importers` turns the rows into records, one converter per format.

Every problem with a file raises `InputError`, one sentence naming the file and the line.
"""
from __future__ import annotations

import csv
import gzip
import io
import json
import re
import zlib
from pathlib import Path
from typing import Any, Iterator

import orjson

_HUB_NAME = re.compile(r"[\w.-]+/[\w.-]+")

Row = tuple[str, dict[str, Any]]  # ("line 3" or "row 3", the record)


class InputError(ValueError):
    """A file prefloop cannot import; the message is one sentence for the user."""


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
        items = json.loads(read_text(path))
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


def read_text(path: Path) -> str:
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
    reader = csv.DictReader(io.StringIO(read_text(path), newline=""))
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


def rows(path: Path) -> Iterator[Row]:
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
