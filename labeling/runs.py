"""Stored background jobs (the `jobs` and `job_metrics` tables): their status, progress and
per-step metrics. Rows leave here as frozen `Job` records; spawning, cancelling a process and
reporting from a round live in `training/jobs.py`.

Times are naive UTC, as `utcnow()` gives them.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any, Callable

from sqlalchemy import func, select

from labeling import db
from labeling.models import Job as JobRow, JobMetric, utcnow

ACTIVE = ("queued", "running")


@dataclass(frozen=True)
class Job:
    """One background job as stored: its kind, config, status and progress."""

    id: int
    kind: str
    status: str  # queued / running / done / failed / cancelled
    config: dict[str, Any] | None
    step: int
    total_steps: int | None
    pid: int | None
    heartbeat_at: dt.datetime | None
    error: str | None
    result: dict[str, Any] | None
    log_path: str | None
    created_at: dt.datetime
    started_at: dt.datetime | None
    finished_at: dt.datetime | None


class Busy(RuntimeError):
    """A job that must finish first is queued or running; `job` is that job."""

    def __init__(self, job: Job):
        super().__init__(f"job {job.id} ({job.kind}) is {job.status}")
        self.job = job


def _record(row: JobRow) -> Job:
    return Job(id=row.id, kind=row.kind, status=row.status, config=row.config, step=row.step,
               total_steps=row.total_steps, pid=row.pid, heartbeat_at=row.heartbeat_at, error=row.error,
               result=row.result, log_path=row.log_path, created_at=row.created_at, started_at=row.started_at,
               finished_at=row.finished_at)


def _active(kinds: tuple[str, ...]):
    return select(JobRow).where(JobRow.status.in_(ACTIVE), JobRow.kind.in_(kinds))


def active_jobs(kinds: tuple[str, ...]) -> list[Job]:
    """The queued or running jobs of `kinds`."""
    with db.session() as s:
        return [_record(row) for row in s.scalars(_active(kinds))]


def fail_active_jobs(is_gone: Callable[[Job, dt.datetime], bool], error: str) -> int:
    """Mark as failed (keeping an error already stored, else `error`) each queued or running job
    for which `is_gone(job, now)` holds. Returns how many were marked."""
    now, marked = utcnow(), 0
    with db.session() as s:
        for row in s.scalars(select(JobRow).where(JobRow.status.in_(ACTIVE))):
            if is_gone(_record(row), now):
                row.status, row.finished_at = "failed", now
                row.error = row.error or error
                marked += 1
    return marked


def queue_job(kind: str, config: dict[str, Any], unless_active: tuple[str, ...]) -> int:
    """Add a queued job of `kind`, unless a job of the kinds `unless_active` is queued or running
    (then `Busy`); the check and the insert are serialized against other callers. Returns its id."""
    with db.session() as s:
        db.serialize(s, "start_job")
        busy = s.scalars(_active(unless_active).limit(1)).first()
        if busy:
            raise Busy(_record(busy))
        row = JobRow(kind=kind, status="queued", config=config)
        s.add(row)
        s.flush()
        return row.id


def set_worker(job_id: int, pid: int, log_path: str) -> None:
    """Record the worker process spawned for a job and its log; its heartbeat starts now."""
    with db.session() as s:
        row = s.get(JobRow, job_id)
        row.pid, row.log_path, row.heartbeat_at = pid, log_path, utcnow()


def cancel_job(job_id: int) -> Job | None:
    """Mark a queued or running job cancelled. Returns the job as it was before (None when there is
    none); one that was no longer active is left unchanged."""
    with db.session() as s:
        row = s.get(JobRow, job_id)
        if row is None:
            return None
        before = _record(row)
        if row.status in ACTIVE:
            row.status, row.finished_at = "cancelled", utcnow()
        return before


def get_job(job_id: int) -> Job | None:
    """Job `job_id`, or None."""
    with db.session() as s:
        row = s.get(JobRow, job_id)
        return _record(row) if row is not None else None


def list_jobs(limit: int = 50) -> list[Job]:
    """The newest `limit` jobs, newest first."""
    with db.session() as s:
        return [_record(row) for row in s.scalars(select(JobRow).order_by(JobRow.id.desc()).limit(limit))]


def last_job(kind: str) -> Job | None:
    """The newest job of `kind`, or None."""
    jobs = last_jobs(kind, 1)
    return jobs[0] if jobs else None


def last_jobs(kind: str, limit: int) -> list[Job]:
    """The newest `limit` jobs of `kind`, newest first."""
    with db.session() as s:
        rows = s.scalars(select(JobRow).where(JobRow.kind == kind).order_by(JobRow.id.desc()).limit(limit))
        return [_record(row) for row in rows]


def job_metrics(job_id: int) -> list[dict[str, Any]]:
    """Per-step metrics of a job as rows {"step": n, name: value, ...}, in the order logged."""
    with db.session() as s:
        rows = s.scalars(select(JobMetric).where(JobMetric.job_id == job_id).order_by(JobMetric.id))
        return [{"step": m.step, **m.values} for m in rows]


def metric_span(job_id: int) -> tuple[int | None, int | None, dt.datetime | None, dt.datetime | None]:
    """(first step, last step, first time, last time) of the metrics a job logged; Nones when none."""
    with db.session() as s:
        return tuple(s.execute(
            select(func.min(JobMetric.step), func.max(JobMetric.step), func.min(JobMetric.created_at),
                   func.max(JobMetric.created_at)).where(JobMetric.job_id == job_id)).one())


def training_curves(version_id: str) -> list[dict[str, Any]]:
    """Per-step metrics (as `job_metrics`) of the newest finished job whose result is version
    `version_id`; [] when no job made it."""
    with db.session() as s:
        for row in s.scalars(select(JobRow).where(JobRow.status == "done").order_by(JobRow.id.desc())):
            if (row.result or {}).get("version") == version_id:
                metrics = s.scalars(select(JobMetric).where(JobMetric.job_id == row.id).order_by(JobMetric.id))
                return [{"step": m.step, **m.values} for m in metrics]
    return []


def start_run(job_id: int, total_steps: int | None, pid: int) -> bool:
    """Mark a job running in process `pid` with `total_steps`. Returns False, changing nothing,
    when the job was cancelled."""
    with db.session() as s:
        row = s.get(JobRow, job_id)
        if row.status == "cancelled":
            return False
        row.status, row.total_steps = "running", total_steps
        row.started_at = row.started_at or utcnow()
        row.heartbeat_at, row.pid = utcnow(), pid
    return True


def record_step(job_id: int, step: int, metrics: dict[str, float]) -> bool:
    """Record a job's step, its heartbeat and (when any) its metrics. Returns False, changing
    nothing, when the job was cancelled."""
    with db.session() as s:
        row = s.get(JobRow, job_id)
        if row.status == "cancelled":
            return False
        row.step, row.heartbeat_at = step, utcnow()
        if metrics:
            s.add(JobMetric(job_id=job_id, step=step, values=metrics))
    return True


def finish_job(job_id: int, status: str, result: dict[str, Any] | None, error: str | None) -> None:
    """Store how a job ended: `status` (unless it was cancelled meanwhile), its result and error."""
    with db.session() as s:
        row = s.get(JobRow, job_id)
        if row.status != "cancelled":
            row.status = status
        row.result, row.error, row.finished_at = result, error, utcnow()
