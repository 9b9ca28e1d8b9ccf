"""The storage layer is `labeling`: only it opens sessions or names the ORM models. `training/`,
`pages/`, `app.py` and `bench/` call its functions and get plain dataclasses and dicts back, so a
row never leaves a session and a page never depends on the schema.

Forbidden outside `labeling/`: importing `sqlalchemy` (any submodule), `labeling.models` or
`labeling.db` (which holds the engine and `session()`). The workspace folder, the one thing of
the database module training needs, is `labeling.workspace.home()`, which has no SQL.
"""
from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CHECKED = ["app.py", "training", "pages", "bench"]
FORBIDDEN = ("sqlalchemy", "labeling.models", "labeling.db")
# Benchmarks of the storage layer itself, which must reach under it. Each entry says why.
EXEMPT = {
    "bench/labeling.py": "seeds 100,000 judgments in bulk with fixed ids, faster than any import path",
    "bench/concurrency.py": "creates throw-away PostgreSQL databases and checks the stored rows "
                            "against what concurrent callers were told",
}


def checked_files() -> list[Path]:
    files = []
    for name in CHECKED:
        path = ROOT / name
        files += sorted(path.rglob("*.py")) if path.is_dir() else [path]
    return files


def imported_modules(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, dotted name) of every module an import statement brings in, anywhere in the file:
    `from labeling import db` counts as `labeling.db`, `from labeling.models import Job` as
    `labeling.models.Job`."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names]
    return found


def forbidden_imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    return [f"{path.relative_to(ROOT)}:{line} imports {name}" for line, name in imported_modules(tree)
            if any(name == f or name.startswith(f + ".") for f in FORBIDDEN)]


def test_only_the_storage_layer_imports_the_orm_or_sessions():
    problems = [p for path in checked_files() if str(path.relative_to(ROOT)) not in EXEMPT
                for p in forbidden_imports(path)]
    assert problems == [], "Call a function of labeling instead (see the README's code map):\n" + "\n".join(problems)


def test_the_check_sees_every_kind_of_import():
    samples = {"import sqlalchemy": 1, "from sqlalchemy.orm import Session": 1, "from labeling import db": 1,
               "from labeling.models import Job": 1, "import labeling.db": 1,
               "def f():\n    from labeling import models": 1, "from labeling import store, queue": 0,
               "from labeling.workspace import home": 0, "from training import jobs": 0}
    for source, expected in samples.items():
        names = [n for _, n in imported_modules(ast.parse(source))]
        hits = [n for n in names if any(n == f or n.startswith(f + ".") for f in FORBIDDEN)]
        assert len(hits) == expected, (source, names)


def test_each_exemption_is_still_needed():
    for name in EXEMPT:
        assert forbidden_imports(ROOT / name), f"{name} no longer reaches under the storage layer: drop it from EXEMPT"


def test_what_training_hands_out_is_plain_frozen_records(workspace):
    from labeling import runs
    from labeling.models import Base
    from training import jobs, versions

    version_id = versions.create_version("policy", "base", None, None, [], None, lambda folder: None)
    job_id = runs.queue_job("generate", {"prompts": 4}, unless_active=())
    records = [versions.get_version(version_id), *versions.list_versions(), *versions.lineage(version_id),
               jobs.get_job(job_id), *jobs.list_jobs(), *jobs.active_jobs()]
    assert len(records) == 6
    assert all(dataclasses.is_dataclass(r) and not isinstance(r, Base) for r in records)
    assert (records[0].id, records[0].kind, records[3].kind, records[3].config) == (version_id, "policy", "generate",
                                                                                    {"prompts": 4})
    with pytest.raises(dataclasses.FrozenInstanceError):
        records[0].is_current = True
