"""The whole workspace database as one portable file, and back: how a team that started on SQLite
moves to a PostgreSQL server, or keeps a copy.

    python -m labeling backup FILE    # every table of the database at PREFLOOP_DB
    python -m labeling restore FILE   # into an empty database at PREFLOOP_DB (SQLite or PostgreSQL)

The file is gzip'd JSON lines: a header {"format": "prefloop backup", "schema_version": 5}, then
for every table, parents before children, a line {"table": name, "columns": [...], "rows": n}
followed by its n rows as JSON arrays in column order, ordered by primary key; datetimes as ISO 8601
strings, JSON columns as JSON. Nothing in it depends on the database it came from or the time it was
written, so SQLite → file → PostgreSQL → file gives the same bytes. A restore is all or nothing.
"""
from __future__ import annotations

import datetime as dt
import gzip
import json
import zlib
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from sqlalchemy import DateTime, Integer, Table, func, insert, select, text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError

from labeling import atomic, db
from labeling.models import SCHEMA_VERSION, Base

FORMAT = "prefloop backup"
CHUNK = 5_000  # rows per INSERT executemany and per fetch


class BackupError(ValueError):
    """A backup that cannot be written or restored; the message is one sentence for the user."""


def tables() -> list[Table]:
    """Every table, each after the tables it refers to (SQLAlchemy's dependency order, ties by name)."""
    return list(Base.metadata.sorted_tables)


def _line(value: Any) -> bytes:
    # ASCII escapes keep any stored text (even a lone surrogate) representable and byte-stable
    return json.dumps(value, ensure_ascii=True, separators=(",", ":")).encode("ascii") + b"\n"


def _plain(value: Any) -> Any:
    return value.isoformat() if isinstance(value, (dt.datetime, dt.date)) else value


def _rows(conn: Connection, table: Table) -> Iterator[tuple]:
    """All rows, in primary-key order. Text keys are sorted here (collations differ by database;
    such tables are small); integer keys are read in order, streamed."""
    keys = list(table.primary_key.columns)
    result = conn.execute(select(table).order_by(*keys).execution_options(yield_per=CHUNK))
    rows = (tuple(_plain(v) for v in row) for row in result)
    if all(isinstance(k.type, Integer) for k in keys):
        return rows
    positions = [list(table.columns).index(k) for k in keys]
    return iter(sorted(rows, key=lambda row: tuple(row[p] for p in positions)))


def _snapshot() -> Connection:
    """A connection whose transaction sees one moment: SQLite's BEGIN IMMEDIATE holds the write
    lock meanwhile (labelers wait, for seconds at most), PostgreSQL reads a repeatable snapshot."""
    engine = db.engine()
    conn = engine.connect()
    return conn.execution_options(isolation_level="REPEATABLE READ") if engine.dialect.name == "postgresql" else conn


def _write(conn: Connection, out) -> dict[str, int]:
    counts = {}
    out.write(_line({"format": FORMAT, "schema_version": SCHEMA_VERSION}))
    for table in tables():
        counts[table.name] = conn.scalar(select(func.count()).select_from(table))
        out.write(_line({"table": table.name, "columns": [c.name for c in table.columns], "rows": counts[table.name]}))
        for row in _rows(conn, table):
            out.write(_line(list(row)))
    return counts


def backup(path: str | Path) -> dict[str, Any]:
    """Write every table to `path` (written beside it first, renamed when complete); return
    {"backup": path, "schema_version": v, "rows": {table: n}}."""
    path = Path(path)
    if not path.parent.is_dir():
        raise BackupError(f"{path}: the folder {path.parent} does not exist; create it or pick another path.")
    if path.is_dir():
        raise BackupError(f"{path}: is a folder; give a file name for the backup, such as workspace.jsonl.gz.")
    with atomic.write(path) as partial, _snapshot() as conn, conn.begin(), open(partial, "wb") as raw, \
            gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as out:  # no name, no time: same bytes
        counts = _write(conn, out)
    return {"backup": str(path), "schema_version": SCHEMA_VERSION, "rows": counts}


# ---------------------------------------------------------------- restore


def _records(path: Path) -> Iterator[tuple[int, Any]]:
    """(line number, parsed JSON) for each line of the file; BackupError names what is wrong."""
    number = 0
    try:
        with gzip.open(path, "rb") as f:
            for number, raw in enumerate(f, start=1):
                try:
                    yield number, json.loads(raw)
                except ValueError as error:  # bad JSON or bad UTF-8
                    raise BackupError(f"{path}: line {number} is not JSON ({error}); the file is damaged, "
                                      f"restore from another backup.") from None
    except gzip.BadGzipFile:
        raise BackupError(f"{path} is not a prefloop backup (not a gzip file); give a file written by "
                          f"`python -m labeling backup`.") from None
    except (EOFError, zlib.error):
        raise BackupError(f"{path} is damaged after line {number} (cut short or corrupted); "
                          f"restore from a complete backup.") from None
    except OSError as error:
        raise BackupError(f"{path} cannot be read ({error.strerror or error}); give the path of a backup file.") from None


def _check_header(path: Path, records: Iterator[tuple[int, Any]]) -> None:
    _, header = next(records, (0, None))
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise BackupError(f"{path}: line 1 is not a prefloop backup header; give a file written by "
                          f"`python -m labeling backup`.")
    if header.get("schema_version") != SCHEMA_VERSION:
        raise BackupError(f"{path} holds schema version {header.get('schema_version')} and this prefloop restores "
                          f"version {SCHEMA_VERSION}; restore it with the prefloop that wrote it, open the workspace "
                          f"once with this one (which migrates it) and back it up again.")


def _check_empty(conn: Connection) -> None:
    """BackupError unless every table is empty (but for the schema version a new database holds)."""
    held = {}
    for table in tables():
        stmt = select(func.count()).select_from(table)
        if table.name == "meta":
            stmt = stmt.where(table.c.key != "schema_version")
        if n := conn.scalar(stmt):
            held[table.name] = n
    if held:
        url = conn.engine.url.render_as_string(hide_password=True)
        raise BackupError(f"The database at {url} is not empty ({', '.join(f'{n} {t}' for t, n in held.items())}); "
                          f"restore into an empty one: point PREFLOOP_DB (or PREFLOOP_HOME) at a new database.")


def _section(path: Path, records: Iterator[tuple[int, Any]], tables_left: dict[str, Table]) -> tuple[Table, int]:
    """Read one table line: the table (one of `tables_left`, then taken from it) and its row count."""
    number, head = next(records, (None, None))
    if number is None:
        raise BackupError(f"{path} ends before table {next(iter(tables_left))}; the file is cut short, "
                          f"restore from a complete backup.")
    table = tables_left.pop(head.get("table"), None) if isinstance(head, dict) else None
    if table is None or head.get("columns") != [c.name for c in table.columns] or not isinstance(head.get("rows"), int):
        raise BackupError(f"{path}: line {number} should start a table of schema version {SCHEMA_VERSION} "
                          f"({', '.join(tables_left) or 'none left'}); the file is damaged, restore from another backup.")
    return table, head["rows"]


def _section_rows(path: Path, records: Iterator[tuple[int, Any]], table: Table, n: int) -> Iterator[dict[str, Any]]:
    """The `n` rows after a table line, as {column: value} with datetimes parsed."""
    names = [c.name for c in table.columns]
    times = {c.name for c in table.columns if isinstance(c.type, DateTime)}
    for _ in range(n):
        number, row = next(records, (None, None))
        if number is None:
            raise BackupError(f"{path} ends inside table {table.name}; the file is cut short, restore from a complete backup.")
        if not isinstance(row, list) or len(row) != len(names):
            raise BackupError(f"{path}: line {number} is not a row of table {table.name} ({len(names)} values); "
                              f"the file is damaged, restore from another backup.")
        record = dict(zip(names, row))
        try:
            record.update((k, dt.datetime.fromisoformat(record[k])) for k in times if record[k] is not None)
        except (TypeError, ValueError):
            raise BackupError(f"{path}: line {number} holds a time that is not ISO 8601 in table {table.name}; "
                              f"the file is damaged, restore from another backup.") from None
        yield record


def _parents_first(table: Table, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows of a table that refers to itself (a version's parent), each after the row it names."""
    links = [fk.parent.name for fk in table.foreign_keys if fk.column.table is table]
    if not links:
        return rows
    key = table.primary_key.columns[0].name  # such tables have one key column
    by_key, placed, ordered = {row[key]: row for row in rows}, set(), []

    def place(row: dict[str, Any]) -> None:
        if row[key] in placed:
            return
        placed.add(row[key])
        for parent in (by_key.get(row[link]) for link in links):
            if parent is not None:
                place(parent)
        ordered.append(row)

    for row in rows:
        place(row)
    return ordered


def _insert(conn: Connection, table: Table, rows: Iterator[dict[str, Any]]) -> None:
    if any(fk.column.table is table for fk in table.foreign_keys):
        rows = iter(_parents_first(table, list(rows)))
    while chunk := [row for _, row in zip(range(CHUNK), rows)]:
        conn.execute(insert(table), chunk)


@contextmanager
def _count_triggers_off(conn: Connection) -> Iterator[None]:
    """The pairs arrive with their judgment counts, so the triggers that keep those counts must not
    count the judgments again. Not in a `finally`: on an error the whole transaction rolls back,
    triggers included (DDL is transactional in SQLite and PostgreSQL)."""
    if conn.dialect.name == "sqlite":
        triggers = conn.exec_driver_sql("SELECT name, sql FROM sqlite_master WHERE type = 'trigger' ORDER BY name").all()
        for name, _ in triggers:
            conn.exec_driver_sql(f'DROP TRIGGER "{name}"')
        yield
        for _, sql in triggers:
            conn.exec_driver_sql(sql)
        return
    quote = conn.dialect.identifier_preparer.quote
    for table in tables():
        conn.exec_driver_sql(f"ALTER TABLE {quote(table.name)} DISABLE TRIGGER USER")
    yield
    for table in tables():
        conn.exec_driver_sql(f"ALTER TABLE {quote(table.name)} ENABLE TRIGGER USER")


def _advance_sequences(conn: Connection) -> None:
    """PostgreSQL: move each id sequence past the ids restored, so the next insert gets a new one."""
    if conn.dialect.name != "postgresql":
        return
    for table in tables():
        column = table.autoincrement_column
        if column is not None:
            conn.execute(text(f"SELECT setval(pg_get_serial_sequence(:table, :column), coalesce(max({column.name}), 1), "
                              f"max({column.name}) IS NOT NULL) FROM {table.name}"),
                         {"table": table.name, "column": column.name})


def _load(path: Path, records: Iterator[tuple[int, Any]], conn: Connection, counts: dict[str, int]) -> None:
    """Every table section of the file into `conn`, counted into `counts` as it goes."""
    left = {t.name: t for t in tables()}
    while left:
        table, n = _section(path, records, left)
        counts[table.name] = n
        _insert(conn, table, _section_rows(path, records, table, n))
    number, _ = next(records, (None, None))
    if number is not None:
        raise BackupError(f"{path}: line {number} follows the last table; the file is damaged, restore from another backup.")


def restore(path: str | Path) -> dict[str, Any]:
    """Load a backup into the empty database at PREFLOOP_DB, all or nothing; return
    {"restored": path, "database": url, "rows": {table: n}}. Raises BackupError."""
    path = Path(path)
    records = _records(path)
    counts: dict[str, int] = {}
    try:
        _check_header(path, records)
        with db.engine().begin() as conn:
            _check_empty(conn)
            conn.execute(Base.metadata.tables["meta"].delete())  # the backup brings its own schema version
            with _count_triggers_off(conn):
                _load(path, records, conn, counts)
            _advance_sequences(conn)
            url = conn.engine.url.render_as_string(hide_password=True)
    except DBAPIError as error:  # e.g. text PostgreSQL cannot store, or a row breaking a constraint
        table = list(counts)[-1] if counts else "?"
        reason = str(error.orig).strip().splitlines()[0] if error.orig else type(error).__name__
        raise BackupError(f"{path}: the database refused the rows of table {table} ({reason}); nothing was restored.") from None
    finally:
        records.close()
    return {"restored": str(path), "database": url, "rows": counts}
