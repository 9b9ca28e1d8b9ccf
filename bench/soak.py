"""Soak: eight annotators label through `labeling.queue` first with no job running, then while a
real DPO round on SmolLM2 runs as a background job, and no judgment may be lost or duplicated.

A fresh throw-away workspace (SQLite in a temp folder, or a new PostgreSQL database when
PREFLOOP_DB names a server: `bench/concurrency.py`'s `fresh_database`) gets the hh-rlhf test pairs
(labeled, for the DPO round) and enough unlabeled pairs (`bench/concurrency.py`'s `seed_pairs`) for
the annotators. Each annotator is its own process: it reads the pair on screen for `--think-ms`
(±50 %), then clicks; one click is what the Label page does, `submit_judgment` then `next_pair`
and `progress`, and is timed as a whole (submit-to-next-pair latency).

Phases, by the wall-clock time a click started:
    idle_before  from the start until the DPO job is started (`--minutes` / 2)
    training     from `training.jobs.start_job("dpo", ...)` (as the Train page calls it: niced,
                 thread-limited worker process) until the job's status is final. Rounds are
                 started back to back until `--minutes` have passed; the last one is waited for.
    idle_after   `--minutes` / 2 more with no job, after the last round
"idle" pools idle_before and idle_after: on a shared machine other people's load changes over
minutes, and idle time on both sides of the rounds keeps that from reading as the round's cost.
Clicks between two rounds count in no phase.

The base model is PREFLOOP_MODEL when set, else the default GGUF converted once into the
throw-away workspace before the clock starts.

    python bench/soak.py --minutes 2 [--annotators 8] [--think-ms 500] [--max-pairs 64]
    python bench/soak.py --quick

Last line printed: JSON {"lost": 0, "p95_ms_idle": a, "p95_ms_training": b, ...}; target b <= 2a.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing as mp
import os
import random
import shutil
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # before bench/ itself, so `labeling` is the package, not bench/labeling.py

from bench.concurrency import check, fresh_database, seed_pairs  # noqa: E402

HH = ROOT.parent / "shared" / "data" / "hh-rlhf-harmless-base-test.jsonl.gz"
OUTCOMES = ("a", "b", "a", "b", "tie", "both_bad", "skip")
OVERLAP = 1  # the hh pairs carry one imported judgment each, so the annotators never touch them


def annotate(index: int, think_s: float, barrier, stop, results) -> None:
    """One annotator process: read for ~think_s, click (submit, next pair, progress), until `stop`.

    Puts (log, starved, next_errors) on `results`; log entries have bench/concurrency.py's shape
    (annotator, pair, outcome, returned id or None, ms, submit error, wall-clock start, pid)."""
    from labeling import queue

    rng, name = random.Random(index), f"soak-annotator-{index}"
    log, starved, next_errors = [], 0, []
    queue.pairs_waiting()  # opens the engine (and its schema check) before the clock starts
    barrier.wait()
    view = queue.next_pair(name, OVERLAP)
    while not stop.wait(think_s * rng.uniform(0.5, 1.5)):
        if view is None:
            starved += 1
            view = queue.next_pair(name, OVERLAP)
            continue
        pair_id, outcome, error, judgment_id = view.pair_id, rng.choice(OUTCOMES), None, None
        began, start = time.time(), time.perf_counter()
        try:
            judgment_id = queue.submit_judgment(name, pair_id, outcome, view.left, seconds=think_s)
        except Exception as exc:  # counted and reported: a submit must never fail under load
            error = f"{type(exc).__name__}: {exc}"[:300]
        try:
            view = queue.next_pair(name, OVERLAP)
            queue.progress(name, OVERLAP)
        except Exception as exc:
            view = None
            next_errors.append(f"{type(exc).__name__}: {exc}"[:300])
        log.append((name, pair_id, outcome, judgment_id, (time.perf_counter() - start) * 1000, error, began,
                    os.getpid()))
    results.put((log, starved, next_errors))


def prepare(folder: Path, unlabeled: int) -> dict[str, Any]:
    """Import the hh pairs (labeled) first, so a round's --max-pairs takes them, then the unlabeled
    pairs; convert the default model unless PREFLOOP_MODEL names one. Returns what was stored."""
    from labeling.store import import_file
    from training.model import base_model_path, convert_default_model

    started = time.perf_counter()
    labeled = import_file(HH, fmt="hh")["imported"]
    seeded = seed_pairs(folder, unlabeled)
    model = base_model_path() if os.environ.get("PREFLOOP_MODEL") else convert_default_model()
    return {"labeled_pairs": labeled, "unlabeled_pairs": seeded, "model": str(model),
            "prepare_s": round(time.perf_counter() - started, 1)}


def run_round(config: dict[str, Any], timeout_s: float) -> dict[str, Any]:
    """Start one DPO job the way the Train page does and wait for its final status."""
    from training import jobs

    started = time.time()
    job_id = jobs.start_job("dpo", config)
    while True:
        job = jobs.get_job(job_id)
        if job.status not in jobs.ACTIVE:
            break
        if time.time() - started > timeout_s:
            jobs.cancel(job_id)
            continue
        time.sleep(0.25)
    return {"id": job_id, "status": job.status, "steps": job.step, "start": started, "end": time.time(),
            "error": job.error, "version": (job.result or {}).get("version")}


def dpo_config(args: argparse.Namespace) -> dict[str, Any]:
    from training.dpo_config import DPORoundConfig

    config = DPORoundConfig(max_length=args.max_length, max_prompt_length=args.max_length // 2)
    return {**dataclasses.asdict(config), "max_pairs": args.max_pairs}


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..1) of `values`, in the same units; None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 2)


def phase_of(began: float, idle_start: float, rounds: list[dict[str, Any]]) -> str | None:
    """Which phase a click that started at wall-clock `began` belongs to (None: between rounds)."""
    if began < rounds[0]["start"]:
        return "idle_before" if began >= idle_start else None
    if began > rounds[-1]["end"]:
        return "idle_after"
    return "training" if any(r["start"] <= began <= r["end"] for r in rounds) else None


def phases(logs: list[tuple], idle_start: float, rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Clicks and latency percentiles per phase; "idle" pools the idle phases before and after the
    rounds, so a change in the machine's other load during the run weighs on both sides alike."""
    ms: dict[str, list[float]] = {"idle_before": [], "training": [], "idle_after": []}
    for entry in logs:
        phase = phase_of(entry[6], idle_start, rounds)
        if phase:
            ms[phase].append(entry[4])
    ms["idle"] = ms["idle_before"] + ms["idle_after"]
    out: dict[str, Any] = {}
    for phase, values in ms.items():
        out.update({f"clicks_{phase}": len(values), f"p50_ms_{phase}": percentile(values, 0.5),
                    f"p95_ms_{phase}": percentile(values, 0.95), f"max_ms_{phase}": percentile(values, 1.0)})
    return out


def soak(args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    """Prepare the workspace, run the idle phase then DPO rounds with the annotators labeling throughout."""
    seconds = args.minutes * 60
    # every annotator could click at most once per half think time; the queue must not run dry
    unlabeled = int(args.annotators * (1.5 * seconds + args.job_timeout) / (args.think_ms / 2000) / OVERLAP) + 100
    prepared = prepare(folder, min(unlabeled, args.max_unlabeled))
    ctx = mp.get_context("spawn")  # fresh interpreters: no database connection crosses a fork
    barrier, stop, results = ctx.Barrier(args.annotators + 1), ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=annotate, args=(i, args.think_ms / 1000, barrier, stop, results))
             for i in range(args.annotators)]
    for p in procs:
        p.start()
    barrier.wait(timeout=300)
    idle_start = time.time()
    time.sleep(seconds / 2)
    rounds, config = [], dpo_config(args)
    while not rounds or time.time() - idle_start < seconds:
        rounds.append(run_round(config, args.job_timeout))
        print(f"job #{rounds[-1]['id']}: {rounds[-1]['status']} after {rounds[-1]['steps']} steps in "
              f"{rounds[-1]['end'] - rounds[-1]['start']:.0f} s", file=sys.stderr, flush=True)
        if rounds[-1]["status"] != "done":
            break
    time.sleep(seconds / 2)  # idle again: the machine's other load may have changed meanwhile
    stop.set()
    gathered = [results.get(timeout=600) for _ in procs]
    for p in procs:
        p.join()
    logs = [entry for log, _, _ in gathered for entry in log]
    summary = check(logs)
    summary.update(phases(logs, idle_start, rounds))
    summary.update(prepared)
    summary.update({"starved": sum(g[1] for g in gathered), "next_pair_errors": sum(len(g[2]) for g in gathered),
                    "crashed_processes": sum(1 for p in procs if p.exitcode != 0), "submits": len(logs),
                    "job_statuses": [r["status"] for r in rounds], "job_steps": [r["steps"] for r in rounds],
                    "job_seconds": [round(r["end"] - r["start"], 1) for r in rounds],
                    "job_errors": [r["error"] for r in rounds if r["error"]],
                    "idle_seconds": round(rounds[0]["start"] - idle_start, 1)})
    return summary


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=2.0,
                        help="idle phases before and after the rounds = half of it each; rounds start until it has passed")
    parser.add_argument("--annotators", type=int, default=8, help="annotator processes labeling at once")
    parser.add_argument("--think-ms", type=float, default=500.0, help="mean reading time before each click")
    parser.add_argument("--max-pairs", type=int, default=64, help="labeled hh pairs per DPO round")
    parser.add_argument("--max-length", type=int, default=128, help="DPO max_length in tokens (prompt: half)")
    parser.add_argument("--job-timeout", type=float, default=900.0, help="seconds before a round is cancelled")
    parser.add_argument("--max-unlabeled", type=int, default=20_000, help="cap on the unlabeled pairs seeded")
    parser.add_argument("--quick", action="store_true", help="a short run: 0.5 minutes, 16 pairs, max_length 96")
    args = parser.parse_args(argv)
    if args.quick:
        args.minutes, args.max_pairs, args.max_length = 0.5, 16, 96
    if args.annotators < 1 or args.minutes <= 0 or args.think_ms <= 0 or args.max_pairs < 8:
        parser.error("--annotators, --minutes and --think-ms must be positive and --max-pairs at least 8.")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if not HH.is_file():
        sys.exit(f"{HH} is absent; the soak needs the shared hh-rlhf file beside the checkout.")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with fresh_database() as database:
        home = Path(os.environ["PREFLOOP_HOME"])
        try:
            summary = soak(args, home)
        finally:
            shutil.rmtree(home, ignore_errors=True)  # the throw-away workspace, converted model included
    for error in summary.pop("error_samples") + summary["job_errors"]:
        print(error, file=sys.stderr)
    a, b = summary.pop("p95_ms_idle"), summary.pop("p95_ms_training")
    last = {"lost": summary.pop("lost"), "p95_ms_idle": a, "p95_ms_training": b,
            "duplicated": summary.pop("duplicated"), "target_met": bool(a and b and b <= 2 * a),
            "database": database, "annotators": args.annotators, "think_ms": args.think_ms, **summary}
    print(json.dumps(last))
    bad = last["lost"] or last["duplicated"] or last["wrong_outcome"] or last["count_mismatch"] or last["errors"]
    return 1 if bad or last["crashed_processes"] or last["job_statuses"][-1] != "done" else 0


if __name__ == "__main__":
    sys.exit(main())
