"""Server-side time from a submitted judgment to the next pair ready, with 100,000 judgments stored.

Builds a fresh throw-away workspace (a temporary PREFLOOP_HOME, never yours) holding 52,000 labeling pairs,
of which the oldest 50,000 carry 100,000 judgments from five annotators (two each, so they are
full at overlap 2), then times what the Label page does on each click: `submit_judgment` for the
pair on screen, then `next_pair` and `progress` for the page that follows. The newest pairs wait,
so every `next_pair` has to look past all the judged ones — the slow case for "oldest first".

    python bench/labeling.py [--judgments 100000] [--clicks 300] [--overlap 2]

Last line printed: JSON {"p50_ms": x, "p95_ms": y} (target p95 <= 100 ms).
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import insert  # noqa: E402

from labeling import db, queue  # noqa: E402
from labeling.models import Annotator, Judgment, Pair, Prompt, Response, utcnow  # noqa: E402
from labeling.records import as_messages, content_hash, pair_hash  # noqa: E402

ANNOTATORS = ("ana", "ben", "chen", "dara", "eli")


def seed(n_pairs: int, n_judged: int, per_pair: int, seed_value: int = 0) -> int:
    """Insert n_pairs pairs (one prompt each) and `per_pair` judgments on each of the oldest
    n_judged pairs, in bulk; return the number of judgments written."""
    rng = random.Random(seed_value)
    now = utcnow()
    prompts, responses, pairs, judgments = [], [], [], []
    for i in range(n_pairs):
        messages = as_messages(f"Benchmark prompt {i}: explain topic {i % 97}.")
        p_hash = content_hash(messages)
        texts = [f"Answer {i} from side {side}. " * 8 for side in "ab"]
        hashes = [content_hash(t) for t in texts]
        created = now - dt.timedelta(seconds=n_pairs - i)
        prompts.append({"id": i + 1, "content_hash": p_hash, "messages": messages, "source": "bench",
                        "split": "train", "created_at": created})
        for k, (text, h) in enumerate(zip(texts, hashes)):
            responses.append({"id": 2 * i + k + 1, "prompt_id": i + 1, "text": text, "content_hash": h,
                              "model_version": "imported:bench", "generation": None, "created_at": created})
        pairs.append({"id": i + 1, "pair_hash": pair_hash(p_hash, *hashes), "prompt_id": i + 1,
                      "response_a_id": 2 * i + 1, "response_b_id": 2 * i + 2, "source": "bench",
                      "kind": "label", "created_at": created})
    for i in range(n_judged):
        for annotator_id in rng.sample(range(1, len(ANNOTATORS) + 1), per_pair):
            judgments.append({"pair_id": i + 1, "annotator_id": annotator_id,
                              "outcome": rng.choice(("a", "b", "a", "b", "tie", "both_bad")),
                              "left": rng.choice("ab"), "seconds": rng.uniform(2, 30), "comment": None,
                              "created_at": now, "updated_at": now})
    with db.session() as s:
        s.execute(insert(Annotator), [{"id": k + 1, "name": n} for k, n in enumerate(ANNOTATORS)])
        for table, rows in ((Prompt, prompts), (Response, responses), (Pair, pairs), (Judgment, judgments)):
            for start in range(0, len(rows), 20_000):
                s.execute(insert(table), rows[start:start + 20_000])
    return len(judgments)


def time_clicks(annotator: str, clicks: int, overlap: int) -> list[float]:
    """Milliseconds per click: submit the pair on screen, then fetch the next one and the progress."""
    shown = queue.next_pair(annotator, overlap)
    timings = []
    for i in range(clicks):
        if shown is None:
            break
        start = time.perf_counter()
        queue.submit_judgment(annotator, shown.pair_id, queue.stored_outcome(("left", "right")[i % 2], shown.left),
                              shown.left, seconds=3.0)
        shown = queue.next_pair(annotator, overlap)
        queue.progress(annotator, overlap)
        timings.append((time.perf_counter() - start) * 1000)
    return timings


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--judgments", type=int, default=100_000)
    parser.add_argument("--per-pair", type=int, default=2)
    parser.add_argument("--waiting", type=int, default=2_000, help="pairs without judgments (newest)")
    parser.add_argument("--clicks", type=int, default=300)
    parser.add_argument("--overlap", type=int, default=2)
    args = parser.parse_args()
    # Always a fresh throw-away workspace: the benchmark writes 100,000 rows with fixed ids.
    os.environ.pop("PREFLOOP_DB", None)
    with tempfile.TemporaryDirectory(prefix="prefloop-bench-") as home:
        os.environ["PREFLOOP_HOME"] = home
        return run(args)


def run(args: argparse.Namespace) -> int:
    judged = args.judgments // args.per_pair
    t0 = time.perf_counter()
    written = seed(judged + args.waiting, judged, args.per_pair)
    print(f"seeded {judged + args.waiting} pairs and {written} judgments in {time.perf_counter() - t0:.1f} s "
          f"at {db.database_url()}", file=sys.stderr)
    timings = time_clicks("bench-annotator", args.clicks, args.overlap)
    p50 = statistics.median(timings)
    p95 = statistics.quantiles(timings, n=20)[-1]
    print(f"{len(timings)} clicks, overlap {args.overlap}: p50 {p50:.1f} ms, p95 {p95:.1f} ms, "
          f"max {max(timings):.1f} ms", file=sys.stderr)
    print(json.dumps({"p50_ms": round(p50, 2), "p95_ms": round(p95, 2)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
