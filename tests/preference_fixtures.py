"""Labeled pairs and a tiny policy for the training-round tests: a workspace whose pairs are
imported through `labeling.store.import_file`, like a user's, and PREFLOOP_MODEL pointing at a
2-layer model built in code."""
from __future__ import annotations

import json
from pathlib import Path

from tests.tiny_models import make_tiny_policy

TOPICS = ["France", "the sea", "Python lists", "sleep", "photosynthesis", "tea", "rain", "chess",
          "bread", "music", "trees", "stars", "rivers", "cats", "bikes", "snow"]


def preference_records(n: int) -> list[dict]:
    """n labeled pairs on n distinct prompts; the chosen answer is always the polite one."""
    return [{"prompt": f"Tell me about {TOPICS[i % len(TOPICS)]} ({i}).",
             "chosen": f"Sure, here is a short answer about {TOPICS[i % len(TOPICS)]}.",
             "rejected": "No."} for i in range(n)]


def import_pairs(tmp_path: Path, n: int) -> dict:
    from labeling.store import import_file

    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in preference_records(n)))
    return import_file(path, fmt="pairs", source="test-pairs")


def use_tiny_policy(tmp_path: Path, monkeypatch) -> Path:
    folder = make_tiny_policy(tmp_path / "tiny-policy")
    monkeypatch.setenv("PREFLOOP_MODEL", str(folder))
    return folder
