"""Writing prompts, responses, pairs and imported labels: one transaction per import, idempotent.

An import is read, checked and hashed in chunks (labeling/planning.py); each chunk is written, in
bulk, as soon as it is planned, all inside one transaction: a bad line anywhere rolls back
everything. On a large file the planning runs in a second process, beside the writes. Re-importing
a file adds nothing. Empty, identical-response and in-file duplicate pairs are dropped and counted.

`import_file` returns
    {"imported": n,        # new pairs (or new prompts, for a prompts-only file)
     "duplicates": d,      # already in the workspace (same content hash): left alone, labels too
     "dropped": {"empty": x, "identical": y, "duplicate_in_file": z},
     "format": fmt, "source": source}

Speed: row ids are assigned here, inside the write transaction, so every table is one
`executemany` of plain tuples without RETURNING round trips. On SQLite db.py takes the write lock
up front (BEGIN IMMEDIATE); on PostgreSQL the tables are locked and the id sequences moved past
the rows.
"""
from __future__ import annotations

import re
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator

import orjson
from sqlalchemy import JSON, func, insert, select, text
from sqlalchemy.orm import Session

from labeling import db
from labeling.importers import InputError, PromptRecord
from labeling.models import Judgment, Meta, Pair, Prompt, Response, utcnow
from labeling.planning import PlannedChunk, Planner, planned
from labeling.records import as_messages, content_hash, pair_hash

BUILTIN_PROMPTS = Path(__file__).with_name("builtin_prompts.txt")
CHUNK = 20_000  # rows per executemany: bounded memory for the driver, few round trips
LOOKUP_CHUNK = 500  # hashes per IN (...) query, well under every database's parameter limit
MAX_SOURCE_LENGTH = 180  # leaves room for "imported:" in 200-character columns
IMPORT_CACHE_KIB = 256 * 1024  # an upper bound: pages are only cached as the import touches them


def default_source(path: str | Path) -> str:
    """A file's name without its extensions: data/hh-test.jsonl.gz -> "hh-test"."""
    name = Path(str(path).rstrip("/")).name
    return re.sub(r"(\.(jsonl|json|csv|parquet|txt|gz))+$", "", name, flags=re.I) or "import"


def check_source(source: str) -> str:
    clean = (source or "").strip()
    if not clean or len(clean) > MAX_SOURCE_LENGTH:
        raise InputError(f"The source name '{source}' must have 1 to {MAX_SOURCE_LENGTH} characters; "
                         f"give another source name (--source, or the Data page's source box).")
    return clean


# ---------------------------------------------------------------- writing (bulk)


def _existing(s: Session, column, keys: Iterable[str], *extra) -> dict[str, Any]:
    """{key: row} for the keys already stored, looked up in chunks of IN (...)."""
    keys = list(keys)
    found: dict[str, Any] = {}
    for start in range(0, len(keys), LOOKUP_CHUNK):
        chunk = keys[start:start + LOOKUP_CHUNK]
        for row in s.execute(select(column, *extra).where(column.in_(chunk))):
            found[row[0]] = row
    return found


def _next_ids(s: Session, *tables) -> list[int]:
    """The first free id of each table. Safe because the import holds the write lock."""
    if s.bind.dialect.name == "postgresql":
        names = ", ".join(t.__tablename__ for t in tables)
        s.execute(text(f"LOCK TABLE {names} IN SHARE ROW EXCLUSIVE MODE"))
    return [(s.scalar(select(func.max(t.id))) or 0) + 1 for t in tables]


def _bulk_insert(s: Session, model, keys: tuple[str, ...], rows: list[tuple], **constants: Any) -> None:
    """INSERT rows given as tuples in `keys` order, with `constants` the same in every row, in a
    few executemany calls. JSON columns among `keys` arrive as JSON text."""
    if not rows:
        return
    conn, table = s.connection(), model.__table__
    if conn.dialect.name != "sqlite":
        json_keys = [k for k in keys if isinstance(table.c[k].type, JSON)]
        dicts = [dict(zip(keys, row), **constants) for row in rows]
        for row in dicts:  # the driver's JSON handling wants objects
            row.update((k, orjson.loads(row[k])) for k in json_keys if row[k] is not None)
        for start in range(0, len(dicts), CHUNK):
            conn.execute(insert(table), dicts[start:start + CHUNK])
        if conn.dialect.name == "postgresql":  # ids were given, so move the sequence past them
            name = table.name
            conn.execute(text(f"SELECT setval(pg_get_serial_sequence('{name}', 'id'), (SELECT max(id) FROM {name}))"))
        return
    # SQLAlchemy's per-row parameter handling cost as much as SQLite itself: the driver gets the
    # tuples directly, and only the constants go through their columns' bind processors (once).
    quote = conn.dialect.identifier_preparer.quote
    names = ", ".join(quote(k) for k in (*keys, *constants))
    sql = f"INSERT INTO {quote(table.name)} ({names}) VALUES ({', '.join('?' * (len(keys) + len(constants)))})"
    tail = tuple(_bound(table.c[k].type, conn.dialect, v) for k, v in constants.items())
    values = [row + tail for row in rows] if tail else rows
    for start in range(0, len(values), CHUNK):
        conn.exec_driver_sql(sql, values[start:start + CHUNK])


def _bound(column_type, dialect, value: Any) -> Any:
    process = column_type._cached_bind_processor(dialect)
    return value if process is None else process(value)


class _ImportWriter:
    """Writes planned chunks inside the caller's transaction: new prompts, responses, pairs and,
    for labeled pairs, one judgment each with source "import" and the source's name (no
    annotator: a dataset is not a person). Ids are assigned here."""

    def __init__(self, s: Session, source: str, now) -> None:
        self.s, self.source, self.now = s, source, now
        self.version = f"imported:{source}"
        (self.next_prompt,) = _next_ids(s, Prompt)
        self.had_prompts = self.next_prompt > 1  # else nothing can be stored already: no lookups
        self.prompt_ids: dict[str, int] = {}
        self.new_prompts: set[int] = set()
        self.responses: dict[tuple[int, str], int] = {}  # (prompt id, content hash) -> response id
        self.looked_up: set[int] = set()  # stored prompts whose responses from this source are known
        self.next_response = None  # locked and read when the first pair arrives
        self.pairs_added = self.pairs_stored = 0

    def write(self, chunk: PlannedChunk) -> None:
        self._write_prompts(chunk.prompts)
        if chunk.pairs:
            self._write_pairs(chunk.pairs)

    def _write_prompts(self, prompts: list[tuple[str, str, str]]) -> None:
        stored = _existing(self.s, Prompt.content_hash, (h for h, _, _ in prompts), Prompt.id) if self.had_prompts else {}
        rows = []
        for h, messages, split in prompts:
            if h in stored:
                self.prompt_ids[h] = stored[h].id
                continue
            self.prompt_ids[h] = self.next_prompt
            self.new_prompts.add(self.next_prompt)
            rows.append((self.next_prompt, h, messages, split))
            self.next_prompt += 1
        _bulk_insert(self.s, Prompt, ("id", "content_hash", "messages", "split"), rows,
                     source=self.source, created_at=self.now)

    def _start_pairs(self) -> None:
        # Lock order judgments before pairs, as the count trigger takes them on every submit (and
        # responses before pairs, as the generator does): otherwise a submit and an import on
        # PostgreSQL can each hold what the other waits for.
        self.next_response, self.next_judgment, self.next_pair = _next_ids(self.s, Response, Judgment, Pair)
        self.had_pairs = self.next_pair > 1

    def _write_pairs(self, pairs: list[tuple]) -> None:
        if self.next_response is None:
            self._start_pairs()
        stored = _existing(self.s, Pair.pair_hash, (p[0] for p in pairs)) if self.had_pairs else {}
        new = [p for p in pairs if p[0] not in stored]
        self.pairs_stored += len(pairs) - len(new)
        self._look_up_responses({self.prompt_ids[p[1]] for p in new})
        responses, prompt_ids, response_rows, pair_rows, judgment_rows = self.responses, self.prompt_ids, [], [], []
        next_response, next_pair, next_judgment = self.next_response, self.next_pair, self.next_judgment
        for pair_h, prompt_h, hash_a, text_a, hash_b, text_b, labeled, reasons in new:
            prompt_id = prompt_ids[prompt_h]
            id_a = responses.get((prompt_id, hash_a))
            if id_a is None:
                id_a = responses[prompt_id, hash_a] = next_response
                response_rows.append((next_response, prompt_id, text_a, hash_a))
                next_response += 1
            id_b = responses.get((prompt_id, hash_b))
            if id_b is None:
                id_b = responses[prompt_id, hash_b] = next_response
                response_rows.append((next_response, prompt_id, text_b, hash_b))
                next_response += 1
            # the last value is the pair's judgment count: the one judgment written here, if labeled
            pair_rows.append((next_pair, pair_h, prompt_id, id_a, id_b, int(labeled)))
            if labeled:
                judgment_rows.append((next_judgment, next_pair, reasons))
                next_judgment += 1
            next_pair += 1
        self.next_response, self.next_pair, self.next_judgment = next_response, next_pair, next_judgment
        self.pairs_added += len(pair_rows)
        _bulk_insert(self.s, Response, ("id", "prompt_id", "text", "content_hash"), response_rows,
                     model_version=self.version, generation=None, created_at=self.now)
        _insert_pairs_and_judgments(self.s, pair_rows, judgment_rows, self.source, self.now)

    def _look_up_responses(self, prompt_ids: set[int]) -> None:
        """Learn this source's stored responses to prompts stored before this import (only those
        can have any), each prompt once."""
        wanted = sorted(prompt_ids - self.new_prompts - self.looked_up)
        self.looked_up.update(wanted)
        for start in range(0, len(wanted), LOOKUP_CHUNK):
            stmt = select(Response.prompt_id, Response.content_hash, Response.id).where(
                Response.model_version == self.version, Response.prompt_id.in_(wanted[start:start + LOOKUP_CHUNK]))
            self.responses.update({(r.prompt_id, r.content_hash): r.id for r in self.s.execute(stmt)})


def _insert_pairs_and_judgments(s: Session, pair_rows: list[tuple], judgment_rows: list[tuple], source: str,
                                now) -> None:
    """Pairs (id, hash, prompt, response a, response b, judgment count) and their imported
    judgments (id, pair id, reason tags as JSON text or None), written so that
    Pair.judgment_count comes out right."""
    pairs_keys = ("id", "pair_hash", "prompt_id", "response_a_id", "response_b_id")
    pair_constants = dict(source=source, kind="label", created_at=now)
    judgment_constants = dict(annotator_id=None, source="import", source_name=source, outcome="a", left=None,
                              seconds=None, comment=None, created_at=now, updated_at=now)
    if s.bind.dialect.name == "sqlite":
        # The judgments go in first, with foreign keys checked at commit (the pragma ends with
        # the transaction): the count trigger then finds no pair row to update, and the pairs
        # are written with their count already set. 100,000 trigger updates cost more than all
        # the pair inserts together. Elsewhere the pairs go first and the trigger counts.
        s.execute(text("PRAGMA defer_foreign_keys = ON"))
        _bulk_insert(s, Judgment, ("id", "pair_id", "reasons"), judgment_rows, **judgment_constants)
        _bulk_insert(s, Pair, (*pairs_keys, "judgment_count"), pair_rows, **pair_constants)
    else:
        _bulk_insert(s, Pair, pairs_keys, [row[:-1] for row in pair_rows], **pair_constants)
        _bulk_insert(s, Judgment, ("id", "pair_id", "reasons"), judgment_rows, **judgment_constants)


def _import_chunks(chunks: Iterable[PlannedChunk], source: str) -> tuple[_ImportWriter, PlannedChunk]:
    """Write every chunk in one transaction; return the writer (its counts) and the last chunk
    (the format and the final dropped counts)."""
    chunks = iter(chunks)
    try:
        # The first chunk before the write lock: a hub dataset is fetched, a worker started, and a
        # file that is wrong from its first line fails, while the app's writers go on.
        last = next(chunks)
        with db.session() as s, _import_cache(s):
            writer = _ImportWriter(s, source, utcnow())
            writer.write(last)
            for last in chunks:
                writer.write(last)
    finally:
        if hasattr(chunks, "close"):  # a generator: a worker process behind it stops now, not when collected
            chunks.close()
    return writer, last


@contextmanager
def _import_cache(s: Session) -> Iterator[None]:
    """A large SQLite page cache for the import's connection, back to its old size afterwards.
    With SQLite's 2 MB default, every insert into a hash index re-read pages it had just written."""
    if s.bind.dialect.name != "sqlite":
        yield
        return
    conn = s.connection()
    size = conn.exec_driver_sql("PRAGMA cache_size").scalar()
    conn.exec_driver_sql(f"PRAGMA cache_size = -{IMPORT_CACHE_KIB}")
    try:
        yield
    finally:  # not transactional: it stays until set back, whatever happened to the import
        conn.exec_driver_sql(f"PRAGMA cache_size = {size}")


def import_file(path: str | Path, fmt: str = "auto", source: str | None = None) -> dict[str, Any]:
    """Import one file (see labeling/importers.py for the formats) in one transaction.

    Raises InputError, with nothing written, when the file cannot be read or a record is wrong.
    """
    source = check_source(source if source is not None else default_source(path))
    writer, last = _import_chunks(planned(path, fmt), source)
    if last.fmt == "prompts":
        imported, duplicates = len(writer.new_prompts), len(writer.prompt_ids) - len(writer.new_prompts)
    else:
        imported, duplicates = writer.pairs_added, writer.pairs_stored
    return {"imported": imported, "duplicates": duplicates, "dropped": last.dropped, "format": last.fmt,
            "source": source}


# ---------------------------------------------------------------- for the rest of prefloop


def add_prompts(prompts: list[str | list[dict[str, str]]], source: str) -> int:
    """Store the prompts (text or conversations) not stored yet; return how many were new."""
    chunk = Planner().plan("prompts", (PromptRecord(as_messages(p)) for p in prompts))
    writer, _ = _import_chunks([chunk], check_source(source))
    return len(writer.new_prompts)


def builtin_prompts() -> list[str]:
    return [line.strip() for line in BUILTIN_PROMPTS.read_text(encoding="utf-8").splitlines() if line.strip()]


def ensure_builtin_prompts() -> int:
    """Load the built-in prompts into the workspace the first time only; return how many were added."""
    with db.session() as s:
        if s.get(Meta, "builtin_prompts") is not None:
            return 0
    added = add_prompts(builtin_prompts(), "builtin")
    with db.session() as s:
        if s.get(Meta, "builtin_prompts") is None:
            s.add(Meta(key="builtin_prompts", value=str(added)))
    return added


def _get_or_create_response(session: Session, prompt_id: int, body: str, version: str, generation) -> Response:
    h = content_hash(body)
    response = session.scalar(select(Response).where(
        Response.prompt_id == prompt_id, Response.model_version == version, Response.content_hash == h))
    if response is None:
        response = Response(prompt_id=prompt_id, text=body, content_hash=h, model_version=version, generation=generation)
        session.add(response)
        session.flush()
    return response


def add_generated_pairs(pairs: Iterable[tuple[int, str, str, Any, Any]], kind: str = "label") -> int:
    """Store generated pairs, each (prompt_id, text_a, text_b, model_version, generation) as for
    `add_generated_pair`, in one transaction. Returns how many were new and stored."""
    with db.session() as s:
        return sum(add_generated_pair(s, *pair, kind=kind) is not None for pair in pairs)


def add_generated_pair(session: Session, prompt_id: int, text_a: str, text_b: str,
                       model_version: str | tuple[str, str], generation: dict | tuple[dict, dict] | None,
                       kind: str = "label") -> Pair | None:
    """A new pair of two generated responses, or None when a text is empty, both are the same, or
    the pair is already stored. `model_version` and `generation` may be one value for both
    responses or an (a, b) tuple, as for arena pairs between two versions."""
    if not text_a.strip() or not text_b.strip() or text_a.strip() == text_b.strip():
        return None
    prompt = session.get(Prompt, prompt_id)
    if prompt is None:
        raise LookupError(f"There is no prompt with id {prompt_id}.")
    versions = model_version if isinstance(model_version, tuple) else (model_version, model_version)
    settings = generation if isinstance(generation, tuple) else (generation, generation)
    ph = pair_hash(prompt.content_hash, content_hash(text_a), content_hash(text_b))
    if session.scalar(select(Pair.id).where(Pair.pair_hash == ph)) is not None:
        return None
    a = _get_or_create_response(session, prompt_id, text_a, versions[0], settings[0])
    b = _get_or_create_response(session, prompt_id, text_b, versions[1], settings[1])
    source = versions[0] if versions[0] == versions[1] else f"{versions[0]} vs {versions[1]}"
    pair = Pair(pair_hash=ph, prompt_id=prompt_id, response_a_id=a.id, response_b_id=b.id,
                source=source[:200], kind=kind)
    session.add(pair)
    session.flush()
    return pair
