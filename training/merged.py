"""A policy version as one plain model folder, for loaders that read weights from disk and cannot
apply LoRA adapters: bitsandbytes quantizes weights as they load (QLoRA rounds, PREFLOOP_QUANT in
training/device.py), vLLM loads its own copy (training/engine.py).

A version with no adapter in its lineage is its start folder, as it is. Otherwise its adapters are
merged in fp32 in CPU memory (`load_policy`) and saved in the device's dtype once under `$PREFLOOP_HOME/merged/<key>/`, keyed by the
lineage's folders and their files' modification times (`lineage_key`), written whole or not at all
under a file lock, as CTranslate2's conversions are. Only the KEPT most recently used stay: an
older one is deleted when another is used, and made again (minutes) if its version is used again.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from labeling import atomic
from labeling.workspace import home

KEPT = 2  # merged folders (and CTranslate2 conversions) kept: the current version's and the one before


def resolved(version_id: str | None) -> str:
    """A concrete id for None (the current policy, or "base"), read once: a folder's key, its
    contents and the answers sampled from it must all name the same version."""
    from training import versions

    return version_id or versions.current_policy_id() or "base"


def lineage_key(version_id: str, *salt: str) -> str:
    """A name for a policy version's files: its lineage's folders and their files' modification
    times (weights, tokenizer, generation config), with `salt` (what converts them) mixed in."""
    from training import model as models

    return _key(*models._start_of(models._version_rows(version_id)), *salt)


def _key(start: Path, adapters: list[dict], *salt: str) -> str:
    folders = [Path(start), *(Path(a["path"]) for a in adapters)]
    stamp = [(str(f.resolve()), sorted((p.name, p.stat().st_mtime_ns) for p in f.iterdir() if p.is_file()))
             for f in folders]
    return hashlib.sha1(json.dumps([*salt, stamp]).encode()).hexdigest()[:16]


def folder(version_id: str | None) -> Path:
    """The version's weights in one folder (None = the current policy), merged on first use."""
    from training import model as models

    version_id = resolved(version_id)
    start, adapters = models._start_of(models._version_rows(version_id))
    if not adapters:
        return Path(start)
    return atomic.keep_recent(atomic.build_once(home() / "merged" / _key(start, adapters),
                                                lambda out: (out / "config.json").is_file(),
                                                lambda tmp: _merge(version_id, tmp)), KEPT)


def _merge(version_id: str, out: Path) -> None:
    """Merged in fp32 in CPU memory (a 7B model in fp32 would not sit beside a round on the card),
    saved in the device's dtype (the rounding that matters is the merge's, not the file's)."""
    from training import device, model as models

    model, tokenizer = models.load_policy(version_id, dtype=device.dtype(), host=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
