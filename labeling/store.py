"""Writing prompts, responses, pairs and imported labels: one transaction per import, idempotent.

An import reads and checks the whole file first (labeling/importers.py), plans what is new by
content hash (`plan_import`, a pure function), and only then writes, in bulk, inside one
transaction: all or nothing. Re-importing a file adds nothing. Empty, identical-response and
in-file duplicate pairs are dropped and counted.

`import_file` returns
    {"imported": n,        # new pairs (or new prompts, for a prompts-only file)
     "duplicates": d,      # already in the workspace (same content hash): left alone, labels too
     "dropped": {"empty": x, "identical": y, "duplicate_in_file": z},
     "format": fmt, "source": source}

Speed: row ids are assigned here, inside the write transaction, so every table is one
`executemany` without RETURNING round trips. On SQLite db.py takes the write lock up front
(BEGIN IMMEDIATE); on PostgreSQL the tables are locked and the id sequences moved past the rows.
"""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from operator import itemgetter
from pathlib import Path
from typing import Any, Iterable

from sqlalchemy import func, insert, select, text
from sqlalchemy.orm import Session

from labeling import db
from labeling.importers import InputError, PairRecord, PromptRecord, read
from labeling.models import Annotator, Judgment, Meta, Pair, Prompt, Response, utcnow
from labeling.records import as_messages, content_hash, pair_hash

BUILTIN_PROMPTS = Path(__file__).with_name("builtin_prompts.txt")
HELDOUT_EVERY = 10  # one prompt in ten, chosen by its hash, is kept for evaluation
CHUNK = 20_000  # rows per executemany: bounded memory for the driver, few round trips
LOOKUP_CHUNK = 500  # hashes per IN (...) query, well under every database's parameter limit
MAX_SOURCE_LENGTH = 180  # leaves room for "imported:" / "import:" in 200-character columns


def split_for(prompt_hash: str) -> str:
    """ "heldout" for about one prompt in ten, always the same ones; "train" for the rest."""
    return "heldout" if int(prompt_hash[:8], 16) % HELDOUT_EVERY == 0 else "train"


def default_source(path: str | Path) -> str:
    """A file's name without its extensions: data/hh-test.jsonl.gz -> "hh-test"."""
    name = Path(str(path).rstrip("/")).name
    return re.sub(r"(\.(jsonl|json|csv|parquet|txt|gz))+$", "", name, flags=re.I) or "import"


def check_source(source: str) -> str:
    clean = (source or "").strip()
    if not clean or len(clean) > MAX_SOURCE_LENGTH:
        raise InputError(f"The source name '{source}' must have 1 to {MAX_SOURCE_LENGTH} characters; "
                         f"pass another --source.")
    return clean


# ---------------------------------------------------------------- planning (pure)


@dataclass
class PlannedPair:
    prompt_hash: str
    hash_a: str
    hash_b: str
    pair_hash: str
    record: PairRecord


@dataclass
class ImportPlan:
    """What a file holds once empty, identical and repeated entries are set aside."""

    prompts: dict[str, list[dict[str, str]]] = field(default_factory=dict)  # hash -> messages
    pairs: list[PlannedPair] = field(default_factory=list)
    dropped: dict[str, int] = field(default_factory=lambda: {"empty": 0, "identical": 0, "duplicate_in_file": 0})


def _is_empty(messages: list[dict[str, str]]) -> bool:
    return not messages or not any(m["content"].strip() for m in messages)


def plan_import(records: Iterable[PairRecord | PromptRecord]) -> ImportPlan:
    """Hash every record and set aside the empty, identical and in-file duplicate ones.

    Pair hashes are order-free, so the same two responses given twice (in either order) for one
    prompt count as one pair; the first occurrence wins.
    """
    plan, seen = ImportPlan(), set()
    dropped = plan.dropped
    for rec in records:
        if _is_empty(rec.prompt):
            dropped["empty"] += 1
            continue
        p_hash = content_hash(rec.prompt)
        if isinstance(rec, PromptRecord):
            if p_hash in plan.prompts:
                dropped["duplicate_in_file"] += 1
            plan.prompts[p_hash] = rec.prompt
            continue
        a, b = rec.response_a.strip(), rec.response_b.strip()
        if not a or not b:
            dropped["empty"] += 1
            continue
        if a == b:
            dropped["identical"] += 1
            continue
        h_a, h_b = content_hash(rec.response_a), content_hash(rec.response_b)
        ph = pair_hash(p_hash, h_a, h_b)
        if ph in seen:
            dropped["duplicate_in_file"] += 1
            continue
        seen.add(ph)
        plan.prompts.setdefault(p_hash, rec.prompt)
        plan.pairs.append(PlannedPair(p_hash, h_a, h_b, ph, rec))
    return plan


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


def _bulk_insert(s: Session, model, rows: list[dict[str, Any]]) -> None:
    """INSERT every row (dicts with the same keys, ids included) in a few executemany calls."""
    if not rows:
        return
    conn, table = s.connection(), model.__table__
    if conn.dialect.name == "sqlite":
        _sqlite_executemany(conn, table, rows)
        return
    for start in range(0, len(rows), CHUNK):
        conn.execute(insert(table), rows[start:start + CHUNK])
    if conn.dialect.name == "postgresql":  # ids were given, so move the sequence past them
        name = table.name
        conn.execute(text(f"SELECT setval(pg_get_serial_sequence('{name}', 'id'), (SELECT max(id) FROM {name}))"))


def _sqlite_executemany(conn, table, rows: list[dict[str, Any]]) -> None:
    """The INSERT SQLAlchemy compiles for SQLite, with the values bound by the driver directly.

    SQLAlchemy's per-row parameter handling cost as much as SQLite itself; here each column's
    own bind processor (JSON, DateTime) still converts the values, but a repeated value, such as
    the one `created_at` of an import, is converted once.
    """
    compiled = insert(table).compile(dialect=conn.dialect, column_keys=list(rows[0]))
    keys = list(compiled.positiontup)
    for key in keys:
        process = table.c[key].type._cached_bind_processor(conn.dialect)
        if process is None:
            continue
        memo: dict[Any, Any] = {}
        for row in rows:
            value = row[key]
            if isinstance(value, (dict, list)):
                row[key] = process(value)
            else:
                row[key] = memo[value] if value in memo else memo.setdefault(value, process(value))
    values = list(map(itemgetter(*keys), rows)) if len(keys) > 1 else [(row[keys[0]],) for row in rows]
    for start in range(0, len(values), CHUNK):
        conn.exec_driver_sql(compiled.string, values[start:start + CHUNK])


def _write_prompts(s: Session, prompts: dict[str, list[dict[str, str]]], source: str, now) -> tuple[dict[str, int], set[int]]:
    """Store the prompts not yet stored; return ({hash: id} for all of them, ids of the new ones)."""
    (next_id,) = _next_ids(s, Prompt)
    stored = _existing(s, Prompt.content_hash, prompts, Prompt.id) if next_id > 1 else {}
    ids = {h: row.id for h, row in stored.items()}
    rows = []
    for h, messages in prompts.items():
        if h not in ids:
            ids[h] = next_id
            rows.append({"id": next_id, "content_hash": h, "messages": messages, "source": source,
                         "split": split_for(h), "created_at": now})
            next_id += 1
    _bulk_insert(s, Prompt, rows)
    return ids, {row["id"] for row in rows}


def _stored_responses(s: Session, version: str, prompt_ids: list[int]) -> dict[tuple[int, str], int]:
    """{(prompt id, content hash): response id} of this model version's responses to these prompts."""
    found: dict[tuple[int, str], int] = {}
    for start in range(0, len(prompt_ids), LOOKUP_CHUNK):
        stmt = select(Response.prompt_id, Response.content_hash, Response.id).where(
            Response.model_version == version, Response.prompt_id.in_(prompt_ids[start:start + LOOKUP_CHUNK]))
        found.update({(r.prompt_id, r.content_hash): r.id for r in s.execute(stmt)})
    return found


def _write_pairs(s: Session, plan: ImportPlan, source: str, prompt_ids: dict[str, int], new_prompts: set[int],
                 now) -> tuple[int, int]:
    """Store the new pairs, their responses and (when labeled) one judgment each by
    `import:<source>`; return (pairs added, pairs already stored)."""
    # Lock order judgments before pairs, as the count trigger takes them on every submit (and
    # responses before pairs, as the generator does): otherwise a submit and an import on
    # PostgreSQL can each hold what the other waits for.
    next_response, next_judgment, next_pair = _next_ids(s, Response, Judgment, Pair)
    stored = _existing(s, Pair.pair_hash, (p.pair_hash for p in plan.pairs)) if next_pair > 1 else {}
    new = [p for p in plan.pairs if p.pair_hash not in stored]
    version = f"imported:{source}"
    # Only prompts stored before this import can already have responses from this source.
    responses = _stored_responses(s, version, list({prompt_ids[p.prompt_hash] for p in new} - new_prompts))
    annotator = get_or_create_annotator(s, f"import:{source}").id if any(p.record.labeled for p in new) else None
    response_rows, pair_rows, judgment_rows = [], [], []
    for p in new:
        prompt_id = prompt_ids[p.prompt_hash]
        ids = []
        for h, body in ((p.hash_a, p.record.response_a), (p.hash_b, p.record.response_b)):
            key = (prompt_id, h)
            if key not in responses:
                responses[key] = next_response
                response_rows.append({"id": next_response, "prompt_id": prompt_id, "text": body, "content_hash": h,
                                      "model_version": version, "generation": None, "created_at": now})
                next_response += 1
            ids.append(responses[key])
        pair_rows.append({"id": next_pair, "pair_hash": p.pair_hash, "prompt_id": prompt_id, "response_a_id": ids[0],
                          "response_b_id": ids[1], "source": source, "kind": "label", "created_at": now})
        if p.record.labeled:
            judgment_rows.append({"id": next_judgment, "pair_id": next_pair, "annotator_id": annotator,
                                  "outcome": "a", "left": None, "seconds": None, "comment": None,
                                  "created_at": now, "updated_at": now})
            next_judgment += 1
        next_pair += 1
    _insert_pairs_and_judgments(s, response_rows, pair_rows, judgment_rows)
    return len(pair_rows), len(plan.pairs) - len(new)


def _insert_pairs_and_judgments(s: Session, responses: list[dict], pairs: list[dict], judgments: list[dict]) -> None:
    """Write the rows so that Pair.judgment_count comes out right.

    On SQLite the judgments go in first, with foreign keys checked at commit (the pragma ends
    with the transaction): the count trigger then finds no pair row to update, and the pairs are
    written with their count already set. 100,000 trigger updates cost more than all the pair
    inserts together. Elsewhere the pairs go first and the trigger counts as usual.
    """
    _bulk_insert(s, Response, responses)
    if s.bind.dialect.name == "sqlite":
        s.execute(text("PRAGMA defer_foreign_keys = ON"))
        counted = Counter(j["pair_id"] for j in judgments)
        for row in pairs:
            row["judgment_count"] = counted.get(row["id"], 0)
        _bulk_insert(s, Judgment, judgments)
        _bulk_insert(s, Pair, pairs)
    else:
        _bulk_insert(s, Pair, pairs)
        _bulk_insert(s, Judgment, judgments)


def import_file(path: str | Path, fmt: str = "auto", source: str | None = None) -> dict[str, Any]:
    """Import one file (see labeling/importers.py for the formats) in one transaction.

    Raises InputError, with nothing written, when the file cannot be read or a record is wrong.
    """
    source = check_source(source if source is not None else default_source(path))
    fmt, records = read(path, fmt)
    plan = plan_import(records)
    now = utcnow()
    with db.session() as s:
        prompt_ids, new_prompts = _write_prompts(s, plan.prompts, source, now)
        if fmt == "prompts":
            imported, duplicates = len(new_prompts), len(plan.prompts) - len(new_prompts)
        else:
            imported, duplicates = _write_pairs(s, plan, source, prompt_ids, new_prompts, now)
    return {"imported": imported, "duplicates": duplicates, "dropped": plan.dropped, "format": fmt, "source": source}


# ---------------------------------------------------------------- for the rest of prefloop


def add_prompts(prompts: list[str | list[dict[str, str]]], source: str) -> int:
    """Store the prompts (text or conversations) not stored yet; return how many were new."""
    plan = plan_import(PromptRecord(as_messages(p)) for p in prompts)
    with db.session() as s:
        return len(_write_prompts(s, plan.prompts, check_source(source), utcnow())[1])


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


def get_or_create_annotator(session: Session, name: str) -> Annotator:
    annotator = session.scalar(select(Annotator).where(Annotator.name == name))
    if annotator is None:
        annotator = Annotator(name=name)
        session.add(annotator)
        session.flush()
    return annotator


def _get_or_create_response(session: Session, prompt_id: int, body: str, version: str, generation) -> Response:
    h = content_hash(body)
    response = session.scalar(select(Response).where(
        Response.prompt_id == prompt_id, Response.model_version == version, Response.content_hash == h))
    if response is None:
        response = Response(prompt_id=prompt_id, text=body, content_hash=h, model_version=version, generation=generation)
        session.add(response)
        session.flush()
    return response


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
