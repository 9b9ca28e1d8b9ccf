"""Concurrent annotators: N processes label the same pairs at once through `labeling.queue`, as N
browser tabs would, and every acknowledged judgment must be stored exactly once.

Each process is one annotator: it asks `queue.next_pair` for a pair (overlap N + 1, so every
annotator sees every pair), picks an outcome and calls `queue.submit_judgment`. Deliberate
repeats: one submit in five is sent twice (a double click, sometimes with a changed mind), and one
in four is also sent as a *shared* annotator whom every process impersonates at the same time
(two tabs of one person submitting the same pair: the race on the unique pair+annotator row).
Then RACE_ROUNDS times, every process waits for the others and submits the same pair for one
more shared annotator at the same moment, made certain rather than left to the scheduler (a busy
machine can keep the first part from overlapping at all): in the even rounds that annotator is new
(the race on inserting the annotator), in the odd ones it exists already (the race on inserting
the judgment row itself).

Afterwards the stored rows are checked against what the processes were told:
    lost           acknowledged (pair, annotator) with no row, or a row with another id than returned
    duplicated     (pair, annotator) with more than one row
    wrong_outcome  a private judgment whose stored outcome is not the last one its annotator sent
    count_mismatch pairs whose judgment_count (kept by triggers) differs from their non-skip rows
    errors         submits that raised (none may)

The database is always a new one, so the bench never touches a workspace: SQLite in a temp
folder, or, when PREFLOOP_DB is a PostgreSQL URL, a new database on that server (created and
dropped; needs CREATEDB).

    python bench/concurrency.py [--annotators 8] [--judgments 500]
    PREFLOOP_DB=postgresql+psycopg://user@127.0.0.1:5432/postgres python bench/concurrency.py

Last line printed: JSON {"lost": 0, "duplicated": 0, "p95_ms": x, ...} (p95 of one submit).
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import random
import sys
import tempfile
import threading
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

OUTCOMES = ("a", "b", "tie", "both_bad", "skip")
DOUBLE_CLICK_EVERY = 5
SHARED_EVERY = 4
SHARED_NAME = "shared-tab"
RACE_ROUNDS = 8


def seed_pairs(folder: Path, n: int) -> int:
    """Import n unlabeled pairs (distinct prompts) the way a user would; returns how many were stored."""
    from labeling.store import import_file

    path = folder / "concurrency-pairs.jsonl"
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n):
            f.write(json.dumps({"prompt": f"Question {i}: which answer is clearer?",
                                "response_a": f"Answer {i}, written plainly.",
                                "response_b": f"Answer {i}, written with many digressions."}) + "\n")
    return import_file(path, fmt="unlabeled", source="concurrency")["imported"]


def _submit(log: list, name: str, pair_id: int, outcome: str, left: str) -> None:
    """One timed submit; log gets (annotator, pair, outcome, returned id or None, ms, error, start, pid)."""
    from labeling import queue

    start, began = time.perf_counter(), time.time()
    try:
        judgment_id, error = queue.submit_judgment(name, pair_id, outcome, left, seconds=1.0), None
    except Exception as exc:  # counted and reported: a submit must never fail under load
        judgment_id, error = None, f"{type(exc).__name__}: {exc}"[:300]
    ms = (time.perf_counter() - start) * 1000
    log.append((name, pair_id, outcome, judgment_id, ms, error, began, os.getpid()))


def annotate(index: int, annotators: int, judgments: int, barrier, together, race_pairs: list[int], results) -> None:
    """One annotator process: `judgments` pairs from the queue, with double clicks and shared-tab
    submits, then the RACE_ROUNDS submits made at once with the other processes (`together`)."""
    from labeling import queue

    rng, name, log = random.Random(index), f"annotator-{index}", []
    queue.pairs_waiting()  # opens the engine (and its schema check) before the clock starts
    barrier.wait()
    for step in range(judgments):
        view = queue.next_pair(name, overlap=annotators + 1)
        if view is None:
            break
        outcome = rng.choice(OUTCOMES)
        _submit(log, name, view.pair_id, outcome, view.left)
        if step % DOUBLE_CLICK_EVERY == 0:
            _submit(log, name, view.pair_id, rng.choice((outcome, rng.choice(OUTCOMES))), view.left)
        if step % SHARED_EVERY == 0:
            _submit(log, SHARED_NAME, view.pair_id, outcome, view.left)
    try:
        for k, pair_id in enumerate(race_pairs):
            together.wait(timeout=300)
            _submit(log, f"{SHARED_NAME}-{k}", pair_id, rng.choice(OUTCOMES), "a")
    except threading.BrokenBarrierError:  # another process died or stalled: counted as an error, not a hang
        log.append((name, -1, "skip", None, 0.0, "BrokenBarrierError: the race rounds lost a process", time.time(),
                    os.getpid()))
    finally:
        results.put(log)


def first_pairs(n: int) -> list[int]:
    """The ids of the first `n` pairs stored."""
    from sqlalchemy import select

    from labeling import db
    from labeling.models import Pair

    with db.session() as s:
        return list(s.scalars(select(Pair.id).order_by(Pair.id).limit(n)))


def existing_annotators(names: list[str]) -> None:
    """Add these annotators, with no judgment yet."""
    from labeling import db, queue

    with db.session() as s:
        for name in names:
            queue.get_or_create_annotator(s, name)


def check(logs: list[tuple]) -> dict[str, Any]:
    """Compare what the processes were told with the stored rows (see the module docstring)."""
    from sqlalchemy import func, select

    from labeling import db
    from labeling.models import Annotator, Judgment, Pair

    acknowledged: dict[tuple[str, int], set[int]] = {}
    last_outcome: dict[tuple[str, int], str] = {}
    for name, pair_id, outcome, judgment_id, _ms, error, _start, _pid in logs:
        if error is None:
            acknowledged.setdefault((name, pair_id), set()).add(judgment_id)
            last_outcome[(name, pair_id)] = outcome  # one process per private annotator: order is known
    with db.session() as s:
        rows = s.execute(select(Annotator.name, Judgment.pair_id, Judgment.id, Judgment.outcome)
                         .join(Annotator, Annotator.id == Judgment.annotator_id)).all()
        counted = dict(s.execute(select(Pair.id, Pair.judgment_count)).all())
        real = dict(s.execute(select(Judgment.pair_id, func.count()).where(Judgment.outcome != "skip")
                              .group_by(Judgment.pair_id)).all())
    stored: dict[tuple[str, int], list[tuple[int, str]]] = {}
    for name, pair_id, judgment_id, outcome in rows:
        stored.setdefault((name, pair_id), []).append((judgment_id, outcome))
    lost = sum(1 for key, ids in acknowledged.items() if {i for i, _ in stored.get(key, [])} != ids)
    wrong = sum(1 for key, outcome in last_outcome.items()
                if not key[0].startswith(SHARED_NAME) and [o for _, o in stored.get(key, [])] != [outcome])
    return {"lost": lost, "duplicated": sum(1 for v in stored.values() if len(v) > 1),
            "wrong_outcome": wrong,
            "count_mismatch": sum(1 for pid, n in counted.items() if n != real.get(pid, 0)),
            "errors": sum(1 for entry in logs if entry[5] is not None),
            "error_samples": sorted({entry[5] for entry in logs if entry[5] is not None})[:3],
            "stored": len(rows), "races": races(logs)}


def races(logs: list[tuple]) -> int:
    """Submits of one pair for one shared annotator by two processes whose calls overlapped in
    time: the cases where both could find no row and both try to insert one."""
    by_key: dict[tuple[str, int], list[tuple[float, float, int]]] = {}
    for name, pair_id, _o, _id, ms, _e, start, pid in logs:
        if name.startswith(SHARED_NAME):
            by_key.setdefault((name, pair_id), []).append((start, start + ms / 1000, pid))
    return sum(1 for calls in by_key.values() for i, a in enumerate(calls) for b in calls[i + 1:]
               if a[2] != b[2] and a[0] < b[1] and b[0] < a[1])


@contextmanager
def fresh_database() -> Iterator[str]:
    """A new, empty database: SQLite in a temp folder, or a new PostgreSQL database on PREFLOOP_DB's server."""
    folder = Path(tempfile.mkdtemp(prefix="prefloop-concurrency-"))
    os.environ["PREFLOOP_HOME"] = str(folder)
    server = os.environ.get("PREFLOOP_DB", "")
    if not server.startswith("postgresql"):
        os.environ.pop("PREFLOOP_DB", None)
        yield "sqlite"
        return
    from sqlalchemy import create_engine, make_url, text

    name = f"prefloop_bench_{uuid.uuid4().hex[:12]}"
    admin = create_engine(server, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    os.environ["PREFLOOP_DB"] = make_url(server).set(database=name).render_as_string(hide_password=False)
    try:
        yield "postgresql"
    finally:
        from labeling import db

        db.engine().dispose()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def run(annotators: int, judgments: int) -> dict[str, Any]:
    """Seed the pairs, start the annotator processes together, gather their logs, check the rows."""
    ctx = mp.get_context("spawn")  # fresh interpreters: no database connection crosses a fork
    seeded = seed_pairs(Path(os.environ["PREFLOOP_HOME"]), judgments)
    race_pairs = first_pairs(RACE_ROUNDS)
    existing_annotators([f"{SHARED_NAME}-{k}" for k in range(1, RACE_ROUNDS, 2)])
    barrier, together, results = ctx.Barrier(annotators + 1), ctx.Barrier(annotators), ctx.Queue()
    procs = [ctx.Process(target=annotate, args=(i, annotators, judgments, barrier, together, race_pairs, results))
             for i in range(annotators)]
    for p in procs:
        p.start()
    barrier.wait(timeout=300)
    start = time.perf_counter()
    logs = [entry for _ in procs for entry in results.get(timeout=3600)]
    seconds = time.perf_counter() - start
    for p in procs:
        p.join()
    failed = [p.exitcode for p in procs if p.exitcode != 0]
    latencies = sorted(entry[4] for entry in logs)
    summary = check(logs)
    summary.update({"submits": len(logs), "seconds": round(seconds, 2),
                    "submits_per_s": round(len(logs) / seconds, 1), "pairs": seeded, "race_rounds": len(race_pairs),
                    "crashed_processes": len(failed),
                    "p50_ms": round(latencies[len(latencies) // 2], 2) if latencies else None,
                    "p95_ms": round(latencies[int(0.95 * (len(latencies) - 1))], 2) if latencies else None})
    return summary


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--annotators", type=int, default=8, help="annotator processes submitting at once")
    parser.add_argument("--judgments", type=int, default=500, help="pairs each annotator judges")
    args = parser.parse_args()
    if args.annotators < 1 or args.judgments < 1:
        print("--annotators and --judgments must be at least 1.", file=sys.stderr)
        return 2
    with fresh_database() as database:
        summary = run(args.annotators, args.judgments)
    errors = summary.pop("error_samples")
    print(f"{database}: {summary['submits']} submits by {args.annotators} processes in {summary['seconds']} s",
          file=sys.stderr)
    for error in errors:
        print(error, file=sys.stderr)
    last = {"lost": summary.pop("lost"), "duplicated": summary.pop("duplicated"), "p95_ms": summary.pop("p95_ms"),
            "database": database, "annotators": args.annotators, "judgments": args.judgments, **summary}
    print(json.dumps(last))
    bad = last["lost"] or last["duplicated"] or last["wrong_outcome"] or last["count_mismatch"] or last["errors"]
    return 1 if bad or last["crashed_processes"] else 0


if __name__ == "__main__":
    sys.exit(main())
