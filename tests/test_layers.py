"""The storage layer is `labeling`: only it opens sessions or names the ORM models. `training/`,
`pages/`, `app.py` and `bench/` call its functions and get plain dataclasses and dicts back, so a
row never leaves a session and a page never depends on the schema.

Forbidden outside `labeling/`: importing `sqlalchemy` (any submodule), `labeling.models` or
`labeling.db` (which holds the engine and `session()`). The workspace folder, the one thing of
the database module training needs, is `labeling.workspace.home()`, which has no SQL.

Imports inside a function are for start-up time alone: of a package that takes a tenth of a second
or more to load (torch, transformers, pandas, SQLAlchemy...), of our module that loads one, or to
break an import cycle; any other says why in a comment. Everything else is imported at the top.
`bench/` is held to that for the standard library only: a benchmark often imports prefloop's modules
inside its functions, after it has set the workspace (`PREFLOOP_HOME`) and the threads.
"""
from __future__ import annotations

import ast
import dataclasses
import sys
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


# ---------------------------------------------------------------- imports inside functions

# Packages that take a tenth of a second or more to import: importing them inside the function
# that needs them keeps the app's pages and `--help` fast. Anything else belongs at the top.
HEAVY = {"accelerate", "altair", "bitsandbytes", "ctranslate2", "datasets", "gguf", "huggingface_hub", "matplotlib", "numpy",
         "pandas", "peft", "pyarrow", "safetensors", "sqlalchemy", "streamlit", "torch", "transformers", "trl", "vllm"}
OURS = ["app.py", "training", "pages", "labeling"]


def _module_name(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts)


def _imported(node: ast.AST, module: str) -> list[str]:
    """The modules an import statement loads: `from training import jobs` loads training.jobs."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = node.module or ""
    if node.level:
        base = ".".join(module.split(".")[:-node.level] + ([base] if base else []))
    return [f"{base}.{a.name}" if (ROOT / f"{base}.{a.name}".replace(".", "/")).with_suffix(".py").exists() else base
            for a in node.names]


def import_graph() -> tuple[dict[str, set[str]], dict[str, list[tuple[int, str, bool]]]]:
    """({module: modules it imports at load time}, {module: [(line, module, has a comment)] of the
    imports inside its functions}) over our own code."""
    top, inner = {}, {}
    files = [p for name in OURS for p in ((ROOT / name).rglob("*.py") if (ROOT / name).is_dir() else [ROOT / name])]
    for path in files:
        module = _module_name(path)
        top[module], inner[module] = file_imports(path)
    return top, inner


def file_imports(path: Path) -> tuple[set[str], list[tuple[int, str, bool]]]:
    """(modules the file imports at load time, [(line, module, has a comment)] of those imported inside functions)."""
    module, lines = _module_name(path), path.read_text(encoding="utf-8").splitlines()
    tree = ast.parse("\n".join(lines), filename=str(path))
    in_function = {id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
                   for n in ast.walk(f) if isinstance(n, (ast.Import, ast.ImportFrom))}
    top, inner = set(), []
    for node in ast.walk(tree):
        if not isinstance(node, (ast.Import, ast.ImportFrom)) or getattr(node, "module", None) == "__future__":
            continue
        if id(node) in in_function:
            commented = "#" in lines[node.lineno - 1] or lines[node.lineno - 2].strip().startswith("#")
            inner += [(node.lineno, name, commented) for name in _imported(node, module)]
        else:
            top.update(_imported(node, module))
    return top, inner


def _reaches(top: dict[str, set[str]], start: str, goal) -> bool:
    seen, todo = set(), [start]
    while todo:
        module = todo.pop()
        if goal(module):
            return True
        if module not in seen and module in top:
            seen.add(module)
            todo += top[module]
    return False


def needless_function_imports() -> list[str]:
    """Imports inside functions that buy nothing: not of a heavy package (nor of our module that loads
    one), not breaking a cycle, and with no comment saying why."""
    top, inner = import_graph()
    heavy = lambda m: m.split(".")[0] in HEAVY  # noqa: E731
    return [f"{module.replace('.', '/')}.py:{line} imports {name}" for module, found in inner.items()
            for line, name, commented in found
            if not commented and not _reaches(top, name, heavy) and not _reaches(top, name, lambda m: m == module)]


def test_benchmarks_import_the_standard_library_at_the_top():
    stdlib = sys.stdlib_module_names
    problems = [f"{path.relative_to(ROOT)}:{line} imports {name}" for path in sorted((ROOT / "bench").rglob("*.py"))
                for line, name, commented in file_imports(path)[1] if name.split(".")[0] in stdlib and not commented]
    assert problems == [], "Import these at the top of the benchmark:\n" + "\n".join(problems)


def test_imports_inside_functions_buy_start_up_time_or_say_why():
    problems = needless_function_imports()
    assert problems == [], "Import these at the top of the module (or say why not in a comment):\n" + "\n".join(problems)


def test_the_function_import_check_tells_heavy_from_light(tmp_path, monkeypatch):
    package = tmp_path / "training"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "light.py").write_text("import json\n")
    (package / "heavy.py").write_text("import torch\n")
    (package / "cycle.py").write_text("from training import user\n")
    (package / "user.py").write_text(
        "def a():\n    import json\n"                           # stdlib: belongs at the top
        "def b():\n    from training import light\n"           # light module of ours: at the top
        "def c():\n    from training import heavy\n"           # loads torch: fine inside
        "def d():\n    from training import cycle\n"           # imports us back: fine inside
        "def e():\n    import tomllib  # only on 3.11+\n")     # a comment says why: fine
    here = sys.modules[__name__]
    monkeypatch.setattr(here, "ROOT", tmp_path)
    monkeypatch.setattr(here, "OURS", ["training"])
    assert needless_function_imports() == ["training/user.py:2 imports json", "training/user.py:4 imports training.light"]
