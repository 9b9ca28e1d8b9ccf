import subprocess
import sys

import pytest

from labeling import db
from labeling.models import Job
from training import jobs


def _job(status="running", pid=None, kind="dpo"):
    with db.session() as s:
        job = Job(kind=kind, status=status, config={}, pid=pid)
        s.add(job)
        s.flush()
        return job.id


def test_a_round_prints_its_summary_before_its_job_says_done(workspace, monkeypatch, capsys):
    """Whoever sees the job done (the Train page, a test) finds the summary line already in its log."""
    from training import runner
    from training.dpo_config import DPORoundConfig

    seen = []
    monkeypatch.setattr(jobs.Reporter, "finish", lambda self, status, result=None, error=None:
                        seen.append((status, capsys.readouterr().out)))
    assert runner.run_main([], DPORoundConfig, lambda config, reporter, max_steps, max_pairs: {"pairs": 3},
                           "python -m training dpo") == 0
    assert seen == [("done", '{"pairs": 3}\n')] and capsys.readouterr().out == ""  # printed once


def test_reporter_persists_progress_and_metrics(workspace):
    job_id = _job(status="queued")
    reporter = jobs.Reporter(job_id)
    reporter.start(total_steps=4)
    reporter.step(1, {"loss": 0.7, "kl": 0.01})
    reporter.step(2, {"loss": 0.5})
    job = jobs.get_job(job_id)
    assert (job.status, job.step, job.total_steps) == ("running", 2, 4)
    assert jobs.job_metrics(job_id) == [{"step": 1, "loss": 0.7, "kl": 0.01}, {"step": 2, "loss": 0.5}]


def test_eta_follows_the_pace_of_the_steps_not_the_setup_before_them(workspace):
    import datetime as dt

    from labeling.models import JobMetric, utcnow

    job_id = _job()
    now = utcnow()
    with db.session() as s:  # 1,000 s of setup, then steps 1 and 3 logged 20 s apart: 10 s a step
        job = s.get(Job, job_id)
        job.started_at, job.step, job.total_steps = now - dt.timedelta(seconds=1000), 3, 10
        s.add_all([JobMetric(job_id=job_id, step=1, values={"loss": 1.0}, created_at=now - dt.timedelta(seconds=20)),
                   JobMetric(job_id=job_id, step=3, values={"loss": 0.5}, created_at=now)])
    assert jobs.eta_seconds(jobs.get_job(job_id)) == pytest.approx(70.0)
    with db.session() as s:
        s.execute(JobMetric.__table__.delete().where(JobMetric.job_id == job_id, JobMetric.step == 3))
    assert jobs.eta_seconds(jobs.get_job(job_id)) == pytest.approx(1000 / 3 * 7, rel=0.01)  # one step: since start


def test_cancel_stops_the_round_at_its_next_step(workspace):
    job_id = _job(status="queued")
    with pytest.raises(jobs.Cancelled):
        with jobs.reporting(job_id) as reporter:
            reporter.start(10)
            reporter.step(1, {"loss": 1.0})
            jobs.cancel(job_id)
            reporter.step(2, {"loss": 0.9})
    assert jobs.get_job(job_id).status == "cancelled"
    assert [m["step"] for m in jobs.job_metrics(job_id)] == [1]


def test_a_failing_round_is_recorded_with_its_reason(workspace):
    job_id = _job(status="queued")
    with pytest.raises(ValueError):
        with jobs.reporting(job_id) as reporter:
            reporter.start(3)
            raise ValueError("DPO needs at least 8 labeled pairs; you have 2.")
    job = jobs.get_job(job_id)
    assert job.status == "failed" and "at least 8 labeled pairs" in job.error


def test_clicks_at_the_same_moment_start_one_heavy_job(workspace, monkeypatch):
    import os
    import threading
    import types

    monkeypatch.setattr(jobs.subprocess, "Popen", lambda *a, **k: types.SimpleNamespace(pid=os.getpid()))
    db.engine()  # the schema first, outside the race
    barrier, outcomes = threading.Barrier(6), []

    def click():
        barrier.wait()
        try:
            outcomes.append(jobs.start_job("dpo", {}))
        except jobs.JobError as error:
            outcomes.append(str(error))

    threads = [threading.Thread(target=click) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    started = [o for o in outcomes if isinstance(o, int)]
    assert len(started) == 1 and len(outcomes) == 6
    assert all("still queued" in o for o in outcomes if isinstance(o, str))


def test_a_dead_worker_is_shown_as_failed(workspace):
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    job_id = _job(status="running", pid=proc.pid)
    partial = workspace / "versions" / ".tmp-v3-dpo"
    partial.mkdir(parents=True)
    (partial / "adapter_model.safetensors").write_bytes(b"half")
    assert jobs.refresh_stale() == 1
    job = jobs.get_job(job_id)
    assert job.status == "failed" and "stopped without reporting" in job.error
    assert not partial.exists()  # the dead worker's half-written version is cleaned up


def test_one_heavy_job_at_a_time(workspace):
    import os

    _job(status="running", pid=os.getpid())
    with pytest.raises(jobs.JobError, match="still running"):
        jobs.start_job("dpo", {"beta": 0.1})


def test_start_job_spawns_the_cli_with_its_config(workspace):
    job_id = jobs.start_job("worker", {"note": "x"})
    job = jobs.get_job(job_id)
    assert job.pid and (workspace / "jobs" / str(job_id) / "config.yaml").read_text() == "note: x\n"
    jobs.wait(job_id, timeout=60)  # the worker command exits without reporting, so it ends failed
    assert '"kind": "worker"' in (workspace / "jobs" / str(job_id) / "log.txt").read_text()


def test_a_failed_job_says_our_sentence_plainly_and_names_library_errors(workspace):
    from training.preferences import NotReady

    assert jobs.describe(NotReady("DPO needs at least 8 labeled pairs; you have 2.")) == (
        "DPO needs at least 8 labeled pairs; you have 2.")
    assert jobs.describe(KeyError("x")) == "KeyError: 'x'"


def test_a_worker_gives_way_to_the_app_also_across_autogroups():
    code = ("import os; from training.jobs import lower_priority; lower_priority(); "
            "print(os.nice(0)); print(open('/proc/self/autogroup').read() if os.path.exists('/proc/self/autogroup') else '')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, start_new_session=True,
                         cwd=jobs.ROOT).stdout.splitlines()
    assert int(out[0]) >= 10
    if len(out) > 1 and out[1]:
        assert out[1].rstrip().endswith("nice 10")


def test_a_job_the_app_starts_leaves_a_core_for_the_server(monkeypatch):
    from training import jobs

    monkeypatch.delenv("PREFLOOP_THREADS", raising=False)
    monkeypatch.setattr(jobs.os, "cpu_count", lambda: 2)
    assert (jobs.threads_for_job(), jobs.threads_for_job(serving=True)) == (2, 1)
    monkeypatch.setattr(jobs.os, "cpu_count", lambda: 1)
    assert jobs.threads_for_job(serving=True) == 1
    monkeypatch.setenv("PREFLOOP_THREADS", "3")  # an explicit choice wins
    assert (jobs.threads_for_job(), jobs.threads_for_job(serving=True)) == (3, 3)
