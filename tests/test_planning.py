"""Imports planned chunk by chunk, in this process or in a worker process, store the same rows;
a bad line, a dead worker or a failed write leaves the database untouched and no process behind."""
import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import select, text

from labeling import db, planning, store
from labeling.importers import InputError
from labeling.models import Judgment, Pair, Prompt, Response


def write_pairs(path, n):
    """n lines where prompts and responses repeat across lines, with an exact duplicate pair, an
    identical pair and an empty one every few lines: what the planner must catch across chunks."""
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n):
            row = {"prompt": f"Question {i % 37}?", "chosen": f"Answer {i % 53}.", "rejected": f"Guess {i}."}
            if i % 11 == 5:
                row = {"prompt": "Question 1?", "chosen": "Answer 1.", "rejected": "Guess 1."}  # line 1's pair
            elif i % 13 == 6:
                row["rejected"] = row["chosen"]
            elif i % 17 == 7:
                row["chosen"] = "  "
            f.write(json.dumps(row) + "\n")


def workers() -> list[str]:
    """The command lines of import workers still running (Linux: read from /proc)."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().split(b"\0")
        except OSError:  # the process ended while we looked
            continue
        if b"labeling.planning" in args:
            found.append(b" ".join(args).decode(errors="replace"))
    return found


def stored_rows() -> dict[str, list]:
    with db.session() as s:
        return {
            "prompts": s.execute(select(Prompt.id, Prompt.content_hash, Prompt.messages, Prompt.split)
                                 .order_by(Prompt.id)).all(),
            "responses": s.execute(select(Response.id, Response.prompt_id, Response.text, Response.content_hash)
                                   .order_by(Response.id)).all(),
            "pairs": s.execute(select(Pair.id, Pair.pair_hash, Pair.response_a_id, Pair.response_b_id,
                                      Pair.judgment_count).order_by(Pair.id)).all(),
            "judgments": s.execute(select(Judgment.id, Judgment.pair_id, Judgment.outcome).order_by(Judgment.id)).all(),
        }


@pytest.fixture
def small_chunks(monkeypatch):
    monkeypatch.setattr(planning, "FIRST_CHUNK_RECORDS", 7)
    monkeypatch.setattr(planning, "CHUNK_RECORDS", 50)


def import_in(home, monkeypatch, path, worker: bool):
    monkeypatch.setenv("PREFLOOP_HOME", str(home))
    monkeypatch.setattr(planning, "WORKER_MIN_BYTES", 0 if worker else 1 << 40)
    return store.import_file(path, source="mix")


def test_a_worker_stores_what_the_in_process_planner_stores(tmp_path, monkeypatch, small_chunks):
    path = tmp_path / "mix.jsonl"
    write_pairs(path, 1200)  # the worker, with its own (default) chunk sizes, sends 500 then 700
    here = import_in(tmp_path / "here", monkeypatch, path, worker=False)
    expected = stored_rows()
    there = import_in(tmp_path / "there", monkeypatch, path, worker=True)
    assert there == here
    assert stored_rows() == expected
    # worked out from write_pairs: 1200 lines, 37 prompts; the planner saw across chunk borders
    dropped = here["dropped"]
    assert dropped["identical"] > 0 and dropped["empty"] > 0 and dropped["duplicate_in_file"] >= 100
    assert here["imported"] + sum(dropped.values()) == 1200
    assert len(expected["prompts"]) == 37 and len(expected["pairs"]) == len(expected["judgments"]) == here["imported"]
    assert {row.judgment_count for row in expected["pairs"]} == {1}
    assert workers() == []
    assert import_in(tmp_path / "there", monkeypatch, path, worker=True)["duplicates"] == here["imported"]


def test_a_bad_line_found_by_the_worker_rolls_back_everything(workspace, tmp_path, monkeypatch, small_chunks):
    path = tmp_path / "late.jsonl"
    write_pairs(path, 300)
    with open(path, "a", encoding="utf-8") as f:
        f.write('{"prompt": "x", "chosen": ["not a message"], "rejected": "y"}\n')
    monkeypatch.setattr(planning, "WORKER_MIN_BYTES", 0)
    with pytest.raises(InputError, match="late.jsonl, line 301, field 'chosen'"):
        store.import_file(path)
    assert stored_rows() == {"prompts": [], "responses": [], "pairs": [], "judgments": []}
    assert workers() == []


def test_a_worker_that_dies_is_reported_and_nothing_is_written(workspace, tmp_path, monkeypatch, capsys):
    path = tmp_path / "pairs.jsonl"
    write_pairs(path, 50)
    monkeypatch.setattr(planning, "WORKER_MIN_BYTES", 0)
    monkeypatch.setattr(planning, "_worker_command", lambda *args: [sys.executable, "-c", "import sys; sys.exit(3)"])
    with pytest.raises(planning.ReaderError, match=r"reader process stopped \(exit code 3\)"):
        store.import_file(path)
    assert stored_rows()["pairs"] == []
    from labeling.__main__ import main  # the CLI says it in one sentence, no traceback

    assert main(["import", str(path)]) == 1
    assert capsys.readouterr().err.strip().endswith("nothing was imported. Try again, or check memory.")


def test_a_failed_write_stops_the_worker(workspace, tmp_path, monkeypatch):
    path = tmp_path / "pairs.jsonl"
    write_pairs(path, 20_000)  # far more than a pipe holds: the worker is still sending when the write fails
    monkeypatch.setattr(planning, "WORKER_MIN_BYTES", 0)
    started, popen = [], subprocess.Popen
    monkeypatch.setattr(subprocess, "Popen", lambda *a, **k: started.append(popen(*a, **k)) or started[-1])
    writes = []

    def write_then_fail(self, chunk):
        writes.append(chunk)
        if len(writes) == 2:
            raise OSError("disk full")
        original(self, chunk)

    original = store._ImportWriter.write
    monkeypatch.setattr(store._ImportWriter, "write", write_then_fail)
    with pytest.raises(OSError, match="disk full") as failure:
        store.import_file(path)
    (worker,) = started
    # stopped and reaped at once, not when the generator is collected (the traceback, kept alive
    # here in `failure` as a caller's error handler would, still holds it)
    assert failure.traceback and worker.returncode == -signal.SIGKILL
    assert workers() == [] and stored_rows()["pairs"] == []


def test_the_import_gets_a_large_cache_and_gives_it_back(workspace, monkeypatch):
    seen = []
    original = store._ImportWriter.write

    def write(self, chunk):
        conn = self.s.connection()
        seen.append((conn.connection.dbapi_connection, conn.exec_driver_sql("PRAGMA cache_size").scalar()))
        original(self, chunk)

    monkeypatch.setattr(store._ImportWriter, "write", write)
    store.add_prompts(["One?", "Two?"], "test")
    (used, size), = seen
    assert size == -store.IMPORT_CACHE_KIB
    with db.engine().connect() as conn:  # the pool's one idle connection: the import's
        assert conn.connection.dbapi_connection is used
        assert conn.execute(text("PRAGMA cache_size")).scalar() == -2000
