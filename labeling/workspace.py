"""The workspace folder: `PREFLOOP_HOME` (default `./workspace`), where prefloop keeps its database,
model versions, job logs and plots. No SQL here, so training code can find its files without
reaching the database module."""
from __future__ import annotations

import os
from pathlib import Path


def home() -> Path:
    """The workspace folder, created when missing."""
    path = Path(os.environ.get("PREFLOOP_HOME", "workspace")).resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path
