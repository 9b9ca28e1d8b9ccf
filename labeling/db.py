"""The workspace: where prefloop keeps its database, model versions and job logs.

`PREFLOOP_HOME` (default `./workspace`) is the folder; `PREFLOOP_DB` overrides the SQLAlchemy URL
(default: SQLite at `$PREFLOOP_HOME/prefloop.db`). SQLite opens in WAL mode with a busy timeout and
foreign keys on, so the app, the generator and a training job can share it. The schema is created
and stamped with its version on first use.
"""
from __future__ import annotations

import functools
import hashlib
import os
from contextlib import contextmanager
from typing import Iterator

from sqlalchemy import create_engine, event, select, text
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from labeling.migrations import MIGRATIONS
from labeling.models import SCHEMA_VERSION, Base, Meta
from labeling.workspace import home


class SchemaError(RuntimeError):
    pass


def database_url() -> str:
    return os.environ.get("PREFLOOP_DB") or f"sqlite:///{home() / 'prefloop.db'}"


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    # isolation_level=None hands transaction control to our own "BEGIN" below, so that an import
    # can take the write lock up front (BEGIN IMMEDIATE) instead of failing half-way through.
    dbapi_conn.isolation_level = None
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


@functools.cache
def _engine_for(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})
        event.listen(engine, "connect", _sqlite_pragmas)
        event.listen(engine, "begin", lambda conn: conn.exec_driver_sql("BEGIN IMMEDIATE"))
    else:
        engine = create_engine(url, pool_pre_ping=True)
    _ensure_schema(engine)
    return engine


def engine() -> Engine:
    """The engine for the current `PREFLOOP_DB` / `PREFLOOP_HOME`, schema ready."""
    return _engine_for(database_url())


def _ensure_schema(eng: Engine) -> None:
    Base.metadata.create_all(eng)
    with Session(eng) as s, s.begin():
        row = s.get(Meta, "schema_version")
        if row is None:
            s.add(Meta(key="schema_version", value=str(SCHEMA_VERSION)))
            return
        if int(row.value) > SCHEMA_VERSION:
            raise SchemaError(
                f"The database at {eng.url!r} has schema version {row.value}, newer than this "
                f"prefloop ({SCHEMA_VERSION}); upgrade prefloop or point PREFLOOP_DB elsewhere."
            )
        dialect = eng.dialect.name
        for version in range(int(row.value), SCHEMA_VERSION):
            for sql in MIGRATIONS[version](dialect):
                s.execute(text(sql))
        row.value = str(SCHEMA_VERSION)


@contextmanager
def session() -> Iterator[Session]:
    """A session in one transaction: committed when the block ends, rolled back on error."""
    factory = sessionmaker(engine(), expire_on_commit=False)
    with factory() as s, s.begin():
        yield s


def serialize(s: Session, name: str) -> None:
    """Make the rest of this transaction run alone among those serialized under `name`: SQLite
    already takes the write lock at BEGIN (IMMEDIATE); PostgreSQL takes a transaction-scoped
    advisory lock, released at commit or rollback. For a check followed by a write that must not
    interleave with another one (starting a job, changing the current version)."""
    if s.get_bind().dialect.name == "postgresql":
        key = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)
        s.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})


def schema_version() -> int:
    with session() as s:
        return int(s.scalar(select(Meta.value).where(Meta.key == "schema_version")))
