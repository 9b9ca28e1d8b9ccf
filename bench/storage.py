"""Import 100,000 synthetic labeled pairs from a JSONL file and export them as an HF dataset, in one run.

The workspace is a fresh temp PREFLOOP_HOME unless one is given. Import time covers the whole
`store.import_file` call: reading and checking the file, hashing, and the one write transaction
(on a file this large the reading and hashing run in a second process, beside the writes).
Export time covers `export.export(..., fmt="hf")`: the majority vote, the row query and the
`datasets` folder.

    python bench/storage.py [--pairs 100000]

Last line printed: JSON {"import_pairs_per_s": x, "export_s": y} (targets >= 20,000 pairs/s, <= 5 s).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from labeling import export, store  # noqa: E402

TOPICS = ("tides", "compilers", "bread", "volcanoes", "chess", "photosynthesis", "budgets", "jazz")


def write_pairs(path: Path, n: int, seed: int = 0) -> None:
    """n labeled pairs with distinct prompts and responses of a few sentences each."""
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n):
            topic = rng.choice(TOPICS)
            prompt = [{"role": "user", "content": f"Question {i}: explain {topic} to a student in {i % 7 + 2} sentences."}]
            chosen = f"Here is a clear account of {topic} ({i}). " + "It works step by step. " * rng.randint(3, 8)
            rejected = f"{topic} is complicated ({i}). " + "Not sure. " * rng.randint(2, 6)
            f.write(json.dumps({"prompt": prompt, "chosen": chosen, "rejected": rejected}) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=100_000)
    args = parser.parse_args()
    os.environ.setdefault("PREFLOOP_HOME", tempfile.mkdtemp(prefix="prefloop-bench-"))
    home = Path(os.environ["PREFLOOP_HOME"])
    data = home / "bench-pairs.jsonl"
    write_pairs(data, args.pairs)

    # CPU seconds beside wall seconds: on a shared machine the difference is time spent waiting
    # for a core, not prefloop's work.
    start, cpu = time.perf_counter(), time.process_time()
    summary = store.import_file(data, source="bench")
    import_s = time.perf_counter() - start
    print(f"imported {summary['imported']} pairs in {import_s:.2f} s ({time.process_time() - cpu:.2f} s CPU in "
          f"this process, the reader process not counted) into {home}", file=sys.stderr)

    start, cpu = time.perf_counter(), time.process_time()
    exported = export.export(home / "bench-export", fmt="hf")
    export_s = time.perf_counter() - start
    print(f"exported {exported['exported']} rows to an HF dataset in {export_s:.2f} s "
          f"({time.process_time() - cpu:.2f} s CPU, importing `datasets` included)", file=sys.stderr)
    if summary["imported"] != args.pairs or exported["exported"] != args.pairs:
        print(f"expected {args.pairs} pairs imported and exported, got {summary} / {exported}", file=sys.stderr)
        return 1
    print(json.dumps({"import_pairs_per_s": round(summary["imported"] / import_s), "export_s": round(export_s, 2)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
