"""Model versions: every trained artefact (policy or reward model) with its lineage.

A version is a stored record (`labeling.model_versions.Version`: id, kind, method, parent, config,
the exact judgment ids it trained on, metrics, time) and a folder `$PREFLOOP_HOME/versions/<id>` holding a
LoRA adapter or weights as safetensors, with the tokenizer. The folder is written as
`versions/.tmp-<id>` and renamed only once complete, and the row is committed only after the
rename, so a crash never leaves half a version. The base model is version 1 (method "base"), whose
path is the converted base model itself.

One policy version is *current*: generation uses it; rollback is `set_current(older_id)`.

    python -m training versions                       # all versions, one JSON line
    python -m training versions --set-current v2-dpo  # rollback / roll forward
    python -m training versions --export v3-dpo OUT   # merged standalone folder
"""
from __future__ import annotations

import argparse
import re
import shutil
from pathlib import Path
from typing import Any, Callable

from labeling import atomic, model_versions
from labeling.command import run_command
from labeling.model_versions import Version
from labeling.workspace import home
from training import distributed, registry


class VersionError(RuntimeError):
    """A version that cannot be found, made current or exported; one sentence for the user."""


def versions_root() -> Path:
    path = home() / "versions"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _next_id(ids: list[str], method: str) -> str:
    """v<n>-<method> with n one more than the highest number used so far (`ids` or folders)."""
    numbers = [int(m.group(1)) for vid in ids if (m := re.match(r"v(\d+)-", vid))]
    numbers += [int(m.group(1)) for p in versions_root().iterdir() if (m := re.match(r"(?:\.tmp-)?v(\d+)-", p.name))]
    return f"v{max(numbers, default=0) + 1}-{method}"


def trained_on() -> str:
    """What a round started now trains on: "cpu fp32", or with QLoRA "cuda bf16 4bit"."""
    from training import device

    made_in = [device.device().type, device.DTYPE_NAMES[device.dtype()], device.quantization()]
    return " ".join(filter(None, made_in))


def create_version(kind: str, method: str, parent_id: str | None, config: dict[str, Any] | None,
                   judgment_ids: list[int] | None, metrics: dict[str, Any] | None,
                   write: Callable[[Path], None], make_current: bool = False) -> str | None:
    """Write a version's files with `write(tmp_folder)`, rename the folder, then commit the row.

    If `write` raises, the temporary folder is removed and no row is added. With `make_current`
    the new version becomes current, unless the current policy is no longer `parent_id` (someone
    rolled back while the round ran: their choice stands). Returns the new id; None in the other
    processes of a distributed round, which write nothing.
    """
    if not distributed.is_main():  # another process of a distributed round: the main one writes
        return None
    if registry.version_kind(method) != kind:  # the method is the round that made it, or "base"
        raise VersionError(f"A '{method}' version must be of kind '{registry.version_kind(method)}', not '{kind}'.")
    if parent_id is not None and get_version(parent_id) is None:
        raise VersionError(f"The parent version '{parent_id}' does not exist.")
    if method != "base":  # what trained it (the Train page's versions table shows it)
        metrics = {**(metrics or {}), "trained_on": trained_on()}
    version_id = _next_id(model_versions.version_ids(), method)
    tmp, final = versions_root() / f".tmp-{version_id}", versions_root() / version_id
    tmp.mkdir()  # named for the id, so the next id skips it and a dead worker's is found (jobs.py)
    with atomic.write(final, tmp=tmp):
        write(tmp)
    try:
        model_versions.add_version(version_id, kind, method, parent_id, str(final), config,
                                   sorted(judgment_ids or []), metrics)
    except BaseException:
        shutil.rmtree(final, ignore_errors=True)
        raise
    if make_current:  # unless the current policy changed while this version was made
        set_current(version_id, if_current=parent_id)
    return version_id


def ensure_base_version() -> str:
    """The base model's version id, registering it first; it becomes current when none is."""
    from training.model import base_model_path  # converts the default model on first use

    path = str(Path(base_model_path()).resolve())
    version_id = model_versions.base_version_id(path, lambda ids: _next_id(ids, "base"))
    if current_policy_id() is None:
        set_current(version_id)
    return version_id


def get_version(version_id: str) -> Version | None:
    """The stored version `version_id`, or None."""
    return model_versions.get_version(version_id)


def list_versions(kind: str | None = None) -> list[Version]:
    """All versions (of one kind), oldest first."""
    return model_versions.list_versions(kind)


METHOD_WORDS = {"base": "base model", "dpo": "DPO", "ppo": "PPO", "reward": "reward model"}


def describe(row: Version) -> str:
    """A version as a select box shows it: name, method, parent and date.

    "v3-dpo · DPO from v1-base · 2026-11-24 05:10 · current"."""
    method = METHOD_WORDS.get(row.method, row.method) + (f" from {row.parent_id}" if row.parent_id else "")
    return f"{row.id} · {method} · {row.created_at:%Y-%m-%d %H:%M}" + (" · current" if row.is_current else "")


def version_labels(kind: str | None = "policy") -> dict[str, str]:
    """{id: describe(version)} of every version (of `kind`), oldest first."""
    return {row.id: describe(row) for row in list_versions(kind)}


_MAIN_READ: list[str | None] = []  # in the other processes of a distributed round: the main one's reading


def current_policy_id() -> str | None:
    """The current policy's id, or None. In the other processes of a distributed round, the one the
    main process read as the round started (`follow_main`), so a rollback meanwhile cannot give the
    processes different parents."""
    if _MAIN_READ and not distributed.is_main():
        return _MAIN_READ[0]
    return model_versions.current_policy_id()


def follow_main() -> None:
    """At the start of a distributed round (every process): fix the current policy to the main
    process's reading."""
    _MAIN_READ[:] = [distributed.from_main(model_versions.current_policy_id)]


def set_current(version_id: str, if_current: str | None = None) -> bool:
    """Make a policy version the one generation uses (rollback = an older one). With `if_current`,
    only while that version is still current (a round finishing after someone rolled back leaves
    their choice alone); returns whether `version_id` was made current."""
    row, made = model_versions.make_current(version_id, if_current)
    if row is None:
        raise VersionError(f"There is no version '{version_id}'; `python -m training versions` lists them.")
    if row.kind != "policy":
        raise VersionError(f"Version '{version_id}' is a {row.kind} model; only a policy can be current.")
    return made


def latest_reward_id() -> str | None:
    rewards = list_versions("reward")
    return rewards[-1].id if rewards else None


def lineage(version_id: str) -> list[Version]:
    """The chain from the base version to `version_id`, base first."""
    chain = model_versions.chain(version_id)
    if not chain:
        raise VersionError(f"There is no version '{version_id}'; `python -m training versions` lists them.")
    return chain[::-1]


def as_dict(row: Version) -> dict[str, Any]:
    """A version as the CLI prints it: a JSON-ready dict, the judgments counted."""
    return {"id": row.id, "kind": row.kind, "method": row.method, "parent_id": row.parent_id,
            "path": row.path, "is_current": row.is_current, "created_at": row.created_at.isoformat(),
            "judgments": len(row.judgment_ids or []), "config": row.config, "metrics": row.metrics}


def export_problem(version_id: str, out_folder: str | Path) -> str | None:
    """Why `export_merged(version_id, out_folder)` cannot run, as one sentence, or None. Quick:
    the Train page asks before it starts the export job."""
    if not str(out_folder).strip():
        return "Type a folder to export to."
    row = get_version(version_id)
    if row is None:
        return f"There is no version '{version_id}'; `python -m training versions` lists them."
    if row.kind != "policy":
        return f"Version '{version_id}' is a reward model; only policy versions export as causal LMs."
    out = Path(out_folder)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        return f"The export folder {out} is not empty; choose a new folder."
    return None


def export_merged(version_id: str, out_folder: str | Path) -> Path:
    """Write policy `version_id` with every adapter of its lineage merged, as a standalone folder
    that `AutoModelForCausalLM.from_pretrained(out_folder)` loads."""
    problem = export_problem(version_id, out_folder)
    if problem:
        raise VersionError(problem)
    out = Path(out_folder)
    from training.model import load_policy

    model, tokenizer = load_policy(version_id)
    out.parent.mkdir(parents=True, exist_ok=True)
    # a temporary folder of its own: two exports to one folder cannot write into each other's files;
    # the second rename then fails on the first's complete folder
    with atomic.write(out) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
    return out


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m training versions", description="List model versions.")
    parser.add_argument("--kind", choices=("policy", "reward"), help="Only versions of this kind.")
    parser.add_argument("--set-current", metavar="ID", help="Make this policy version current (rollback).")
    parser.add_argument("--export", nargs=2, metavar=("ID", "OUT"), help="Write a merged standalone folder.")
    args = parser.parse_args(argv)

    def work() -> Any:
        if args.set_current:
            set_current(args.set_current)
        if args.export:
            return {"exported": args.export[0], "path": str(export_merged(*args.export))}
        return [as_dict(v) for v in list_versions(args.kind)]

    return run_command(work, {VersionError: 2})  # bad input: one sentence, exit 2, as every command
