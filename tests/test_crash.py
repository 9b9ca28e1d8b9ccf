"""Crash safety: kill -9 a DPO job in the middle of training, a version write in the middle of its
files, and an import in the middle of its write transaction. Afterwards no partial version (folder
or row), every judgment as it was, the job shown as failed, and the next job or import works."""
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from sqlalchemy import func, select

from labeling import db, queue, store
from labeling.models import Annotator, Judgment, ModelVersion, Pair, Prompt, Response
from tests.conftest import ROOT
from tests.preference_fixtures import import_pairs
from training import jobs, versions


def judgment_rows() -> list[tuple]:
    with db.session() as s:
        return s.execute(select(Judgment.id, Judgment.pair_id, Judgment.annotator_id, Judgment.outcome)
                         .order_by(Judgment.id)).all()


def table_counts() -> dict[str, int]:
    with db.session() as s:
        return {m.__tablename__: s.scalar(select(func.count()).select_from(m))
                for m in (Prompt, Response, Pair, Judgment, Annotator, ModelVersion)}


def version_folders() -> list[str]:
    return sorted(p.name for p in versions.versions_root().iterdir())


def wait_for(condition, timeout: float, what: str, poll: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(poll)
    pytest.fail(f"timed out after {timeout} s waiting for {what}")


def test_kill_9_mid_training_leaves_no_version_and_the_next_job_runs(tiny, tmp_path):
    import_pairs(tmp_path, 10)
    for pair_id in (1, 2, 3):  # human judgments beside the imported ones (agreeing, so all 10 pairs train)
        queue.submit_judgment("ana", pair_id, "a", "b", seconds=2.0)
    before, folders_before = judgment_rows(), version_folders()

    job_id = jobs.start_job("dpo", {"learning_rate": 1e-2, "batch_size": 2, "max_steps": 400})

    def mid_training():
        job = jobs.get_job(job_id)
        assert job.status in jobs.ACTIVE, open(job.log_path).read()[-2000:]
        return job if job.status == "running" and job.step >= 2 else None

    job = wait_for(mid_training, 240, "the DPO job to report its second step")
    os.killpg(job.pid, signal.SIGKILL)  # the worker runs in its own session: kill it and anything it spawned
    wait_for(lambda: not jobs.pid_alive(job.pid), 30, "the worker to die")

    failed = jobs.get_job(job_id)  # the app's next look notices the dead worker
    assert failed.status == "failed" and "stopped without reporting" in failed.error
    assert failed.step < 400 and failed.finished_at is not None
    assert [v.method for v in versions.list_versions()] == ["base"]  # no dpo row
    assert [name for name in version_folders() if name not in folders_before and "dpo" in name] == []
    assert judgment_rows() == before
    assert jobs.active_jobs() == []

    next_id = jobs.start_job("dpo", {"learning_rate": 1e-2, "batch_size": 2, "max_steps": 2})
    done = jobs.wait(next_id, timeout=300, poll=0.2)
    assert done.status == "done", open(done.log_path).read()[-2000:]
    assert [v.method for v in versions.list_versions()] == ["base", "dpo"]
    assert versions.current_policy_id() == done.result["version"]
    assert judgment_rows() == before


def test_kill_9_while_a_version_writes_its_files_leaves_no_version(workspace, tmp_path):
    """create_version writes into versions/.tmp-<id> and renames when complete: a kill in between
    leaves neither a row nor a versions/<id> folder, and the next version gets a new number."""
    ready = tmp_path / "half-written"
    script = textwrap.dedent(f"""
        import time
        from pathlib import Path
        from training import versions

        def write(folder):
            (folder / "adapter_model.safetensors").write_bytes(b"x" * 1000)
            Path({str(ready)!r}).touch()
            time.sleep(120)

        versions.create_version("policy", "base", None, None, [], None, write)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, env=dict(os.environ))
    wait_for(ready.exists, 60, "the version write to start")
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)

    assert versions.list_versions() == []
    assert [name for name in version_folders() if not name.startswith(".tmp-")] == []
    vid = versions.create_version("policy", "base", None, None, [], None,
                                  lambda folder: (folder / "weights.safetensors").write_bytes(b"y"))
    assert [v.id for v in versions.list_versions()] == [vid] and vid != "v1-base"  # v1 is never reused
    assert (versions.versions_root() / vid / "weights.safetensors").read_bytes() == b"y"


def write_big_pairs(path: Path, n: int) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n):
            f.write(json.dumps({"prompt": f"Big file question {i}: explain step {i % 97}.",
                                "chosen": f"A careful answer number {i}. " + "It has detail. " * 6,
                                "rejected": f"A poor answer {i}."}) + "\n")


def test_kill_9_mid_import_writes_nothing_and_the_next_import_works(workspace, tmp_path):
    """SQLite in WAL mode: kill -9 the import while its one transaction holds the write lock and
    writes, and the database must read exactly as before."""
    store.import_file(ROOT / "tests" / "fixtures" / "pairs.jsonl")
    queue.submit_judgment("ana", 1, "b", "a")
    before_counts, before_rows = table_counts(), judgment_rows()
    big = tmp_path / "big.jsonl"
    write_big_pairs(big, 60_000)
    proc = subprocess.Popen([sys.executable, "-m", "labeling", "import", str(big), "--source", "big"],
                            cwd=ROOT, env=dict(os.environ), stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def writing() -> bool:  # the import takes the write lock (BEGIN IMMEDIATE) when it starts writing
        with sqlite3.connect(workspace / "prefloop.db", timeout=0) as con:
            try:
                con.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError:
                return True
            con.rollback()
            return False

    wait_for(lambda: proc.poll() is not None or writing(), 240, "the import to start writing", poll=0.01)
    time.sleep(0.5)  # a few chunks in: 60,000 pairs take seconds to write
    assert proc.poll() is None, "the import finished before it could be killed; use a bigger file"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)

    assert table_counts() == before_counts
    assert judgment_rows() == before_rows
    with sqlite3.connect(workspace / "prefloop.db") as con:
        assert con.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    summary = store.import_file(big, source="big")  # the same file again, now to the end
    assert summary["imported"] == 60_000
    after = table_counts()
    assert after["pairs"] == before_counts["pairs"] + 60_000
    assert after["judgments"] == before_counts["judgments"] + 60_000
    assert judgment_rows()[:len(before_rows)] == before_rows


@pytest.mark.skipif(shutil.which("ps") is None, reason="needs ps (procps)")
@pytest.mark.parametrize("proc", ["/proc", "/no-such-proc"])
def test_a_finished_child_not_yet_waited_for_is_not_alive_with_or_without_proc(proc, monkeypatch):
    """Where there is no /proc (macOS), `ps` tells a zombie apart, and the child is not reaped."""
    monkeypatch.setattr(jobs, "PROC", Path(proc))
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert jobs.pid_alive(child.pid)
    finally:
        child.kill()
    deadline = time.monotonic() + 10
    while jobs.pid_alive(child.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not jobs.pid_alive(child.pid)  # a zombie now: done, waiting for its parent
    assert child.wait(timeout=5) == -signal.SIGKILL  # still ours to reap
