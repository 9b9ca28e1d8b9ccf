"""Stored model versions (the `model_versions` table): trained policies and reward models with
their lineage, and which policy is current. Rows leave here as frozen `Version` records; the
files a version points to, and the rules for making one, live in `training/versions.py`."""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any, Callable

from sqlalchemy import select
from sqlalchemy.orm import Session

from labeling import db
from labeling.models import ModelVersion

MAX_LINEAGE = 1000  # deeper than any real history; stops a cycle in the table from hanging


@dataclass(frozen=True)
class Version:
    """One model version as stored: a policy or reward model, its parent, folder and record."""

    id: str
    kind: str  # "policy" or "reward"
    method: str  # the round that made it, or "base"
    parent_id: str | None
    path: str
    config: dict[str, Any] | None
    judgment_ids: list[Any] | None
    metrics: dict[str, Any] | None
    is_current: bool
    created_at: dt.datetime


def from_row(row: ModelVersion) -> Version:
    """A stored row as a `Version` record (for the storage modules that join versions)."""
    return Version(id=row.id, kind=row.kind, method=row.method, parent_id=row.parent_id, path=row.path,
                   config=row.config, judgment_ids=row.judgment_ids, metrics=row.metrics,
                   is_current=row.is_current, created_at=row.created_at)


def version_ids() -> list[str]:
    """Every stored version id, in no particular order."""
    with db.session() as s:
        return list(s.scalars(select(ModelVersion.id)))


def add_version(version_id: str, kind: str, method: str, parent_id: str | None, path: str,
                config: dict[str, Any] | None, judgment_ids: list[int], metrics: dict[str, Any] | None) -> None:
    """Store a new version (not current). Returns nothing; raises when the id is taken."""
    with db.session() as s:
        s.add(ModelVersion(id=version_id, kind=kind, method=method, parent_id=parent_id, path=path,
                           config=config, judgment_ids=judgment_ids, metrics=metrics))


def base_version_id(path: str, new_id: Callable[[list[str]], str]) -> str:
    """The id of the base version whose model folder is `path`. When there is none, it is added
    in the same transaction under `new_id(every stored id)`. Returns the id."""
    with db.session() as s:
        row = s.scalar(select(ModelVersion).where(ModelVersion.method == "base", ModelVersion.path == path))
        if row is None:
            row = ModelVersion(id=new_id(list(s.scalars(select(ModelVersion.id)))), kind="policy", method="base",
                               path=path, config=None, judgment_ids=[], metrics=None)
            s.add(row)
        return row.id


def get_version(version_id: str) -> Version | None:
    """The version `version_id`, or None when there is none."""
    with db.session() as s:
        row = s.get(ModelVersion, version_id)
        return from_row(row) if row is not None else None


def list_versions(kind: str | None = None) -> list[Version]:
    """All versions (of one kind), oldest first."""
    stmt = select(ModelVersion).order_by(ModelVersion.created_at, ModelVersion.id)
    if kind:
        stmt = stmt.where(ModelVersion.kind == kind)
    with db.session() as s:
        return [from_row(row) for row in s.scalars(stmt)]


def policy_ids_newest_first() -> list[str]:
    """Ids of the policy versions, newest first."""
    with db.session() as s:
        return list(s.scalars(select(ModelVersion.id).where(ModelVersion.kind == "policy")
                              .order_by(ModelVersion.created_at.desc())))


def current_policy_id() -> str | None:
    """The id of the current policy version, or None when none is current."""
    with db.session() as s:
        return _current_policy_id(s)


def _current_policy_id(s: Session) -> str | None:
    return s.scalar(select(ModelVersion.id).where(ModelVersion.kind == "policy", ModelVersion.is_current))


def answer_names(s: Session, version_id: str | None) -> set[str]:
    """The names under which the answers `version_id` sampled are stored (`Response.model_version`):
    its id, and "base" too when it is the base version (the generator's name for the base before any
    version existed); {"base"} for None."""
    if version_id is None:
        return {"base"}
    method = s.scalar(select(ModelVersion.method).where(ModelVersion.id == version_id))
    return {version_id, "base"} if method == "base" else {version_id}


def current_answer_names(s: Session) -> set[str]:
    """`answer_names` of the current policy."""
    return answer_names(s, _current_policy_id(s))


def make_current(version_id: str, if_current: str | None = None) -> tuple[Version | None, bool]:
    """Make policy `version_id` the current one, alone among concurrent callers; with `if_current`,
    only while that version is the only current one. Returns (the version as it was, or None when
    there is none; whether it was made current). A reward version is never made current."""
    with db.session() as s:
        db.serialize(s, "set_current")  # the read of the current version and the switch, alone
        row = s.get(ModelVersion, version_id)
        if row is None or row.kind != "policy":
            return (from_row(row) if row is not None else None), False
        before = from_row(row)
        current = list(s.scalars(select(ModelVersion).where(ModelVersion.is_current)))
        if if_current is not None and [c.id for c in current] != [if_current]:
            return before, False
        for other in current:
            other.is_current = False
        row.is_current = True
    return before, True


def chain(version_id: str | None, limit: int = MAX_LINEAGE) -> list[Version]:
    """Version `version_id` (None: the current policy) and its ancestors, newest first, at most
    `limit` of them, read in one transaction. [] when there is no such version. The one walk up a
    version's parents: loading a policy and the lineage shown both read it."""
    with db.session() as s:
        if version_id is None:
            row = s.scalar(select(ModelVersion).where(ModelVersion.is_current, ModelVersion.kind == "policy"))
        else:
            row = s.get(ModelVersion, version_id)
        out = []
        while row is not None and len(out) < limit:
            out.append(from_row(row))
            row = s.get(ModelVersion, row.parent_id) if row.parent_id else None
        return out


def add_to_config(version_id: str, values: dict[str, Any]) -> None:
    """Merge `values` into the stored config of `version_id` (e.g. the sweep that made it)."""
    with db.session() as s:
        row = s.get(ModelVersion, version_id)
        row.config = {**(row.config or {}), **values}
