"""Stored evaluation points (the `eval_points` table): one measured mean reward and KL of a policy
version, scored by one reward version, with the details of how it was measured. Rows leave here
as frozen `Point` records; measuring lives in `training/evaluate.py`, charts in `training/points.py`."""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select

from labeling import db
from labeling.model_versions import Version, from_row as _version
from labeling.models import EvalPoint, ModelVersion


@dataclass(frozen=True)
class Point:
    """One measured (reward, KL) point of a policy version."""

    id: int
    version_id: str
    reward_version_id: str | None
    reward: float
    reward_se: float | None
    kl: float
    kl_se: float | None
    kl_per_token: float | None
    details: dict[str, Any] | None  # prompts, samples, seeds, sweep id
    created_at: dt.datetime


def _record(row: EvalPoint) -> Point:
    return Point(id=row.id, version_id=row.version_id, reward_version_id=row.reward_version_id, reward=row.reward,
                 reward_se=row.reward_se, kl=row.kl, kl_se=row.kl_se, kl_per_token=row.kl_per_token,
                 details=row.details, created_at=row.created_at)


def add_point(version_id: str, reward_version_id: str | None, reward: float, reward_se: float | None, kl: float,
              kl_se: float | None, kl_per_token: float | None, details: dict[str, Any] | None) -> None:
    """Store one measured point of `version_id`. Returns nothing."""
    with db.session() as s:
        s.add(EvalPoint(version_id=version_id, reward_version_id=reward_version_id, reward=reward,
                        reward_se=reward_se, kl=kl, kl_se=kl_se, kl_per_token=kl_per_token, details=details))


def points_with_versions(reward_version: str | None = None) -> list[tuple[Point, Version]]:
    """Every point (only those scored by `reward_version`, when given) with the version it
    measures, oldest point first."""
    query = select(EvalPoint, ModelVersion).join(ModelVersion, EvalPoint.version_id == ModelVersion.id)
    if reward_version:
        query = query.where(EvalPoint.reward_version_id == reward_version)
    with db.session() as s:
        return [(_record(point), _version(version)) for point, version in s.execute(query.order_by(EvalPoint.id))]


def newest_point(version_id: str, reward_version: str | None = None) -> Point | None:
    """The newest point of `version_id` (scored by `reward_version`, when given), or None."""
    query = select(EvalPoint).where(EvalPoint.version_id == version_id)
    if reward_version:
        query = query.where(EvalPoint.reward_version_id == reward_version)
    with db.session() as s:
        point = s.scalar(query.order_by(EvalPoint.id.desc()).limit(1))
        return _record(point) if point is not None else None
