"""Concurrent annotators (bench/concurrency.py, small): four processes label the same pairs at once,
with double clicks and one annotator submitting from every process at the same time; nothing may
be lost, duplicated or miscounted, on SQLite and on PostgreSQL."""
import json
import os
import subprocess
import sys

from tests.conftest import ROOT

SCRIPT = ROOT / "bench" / "concurrency.py"


def run_bench(env_db: str | None, tmp_path) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", TMPDIR=str(tmp_path))
    env.pop("PREFLOOP_DB", None)
    if env_db:
        env["PREFLOOP_DB"] = env_db
    proc = subprocess.run([sys.executable, str(SCRIPT), "--annotators", "4", "--judgments", "50"],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.stdout.strip(), proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert proc.returncode == 0, (result, proc.stderr[-3000:])
    return result


def assert_nothing_lost(result: dict, database: str) -> None:
    assert result["database"] == database
    checks = ("lost", "duplicated", "wrong_outcome", "count_mismatch", "errors", "crashed_processes")
    assert {key: result[key] for key in checks} == dict.fromkeys(checks, 0), result
    # every private judgment is stored (4 annotators x 50 pairs) plus one row per pair the shared tab
    # sent, and one per round of submits made at the same moment
    assert result["pairs"] == 50 and 200 + result["race_rounds"] < result["stored"] <= 250 + result["race_rounds"], result
    assert result["submits"] > result["stored"], result  # the repeats really were sent
    assert 0 < result["p50_ms"] <= result["p95_ms"], result
    if database == "postgresql":  # SQLite runs one writer at a time; PostgreSQL must survive real races
        assert result["races"] >= 1, result  # two processes submitted one pair for one annotator at once


def test_four_annotator_processes_on_sqlite(tmp_path):
    assert_nothing_lost(run_bench(None, tmp_path), "sqlite")


def test_four_annotator_processes_on_postgresql(tmp_path, postgres_url):
    # postgres_url skips (or fails in CI) without a server; the bench makes and drops its own database there
    assert_nothing_lost(run_bench(os.environ["PREFLOOP_TEST_PG"], tmp_path), "postgresql")
