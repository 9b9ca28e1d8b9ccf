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


def snapshot_trainable(monkeypatch, store: dict) -> None:
    """Wrap runner.progress_callback so a test sees the trainable parameters as training begins:
    `store` gets {name: copy of the tensor} and "__model__", the model being trained."""
    from training import runner

    real = runner.progress_callback

    def wrapped(reporter, rename):
        callback = real(reporter, rename)
        begin = callback.on_train_begin

        def on_train_begin(args, state, control, model=None, **kw):
            store.update({n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad})
            store["__model__"] = model
            return begin(args, state, control, model=model, **kw)

        callback.on_train_begin = on_train_begin
        return callback

    monkeypatch.setattr(runner, "progress_callback", wrapped)


def on_the_cpu_in_fp32(monkeypatch) -> None:
    """Rounds train on the CPU in fp32 without quantization whatever the environment says, so what a
    version records ("cpu fp32", versions.trained_on) is known."""
    for name in ("PREFLOOP_DTYPE", "PREFLOOP_QUANT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PREFLOOP_DEVICE", "cpu")


def single_thread_tiny_policy(tmp_path: Path, monkeypatch) -> Path:
    """The tiny policy's folder (`use_tiny_policy`), with jobs and torch on one thread and the
    device, dtype and quantization left to their defaults. The `tiny` fixture (conftest.py)."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("PREFLOOP_THREADS", "1")
    for name in ("PREFLOOP_DEVICE", "PREFLOOP_DTYPE", "PREFLOOP_QUANT"):
        monkeypatch.delenv(name, raising=False)
    return use_tiny_policy(tmp_path, monkeypatch)


def tiny_single_thread(workspace: Path, tmp_path: Path, monkeypatch) -> Path:
    """A workspace whose base policy is the tiny model, with jobs on one thread."""
    single_thread_tiny_policy(tmp_path, monkeypatch)
    return workspace
