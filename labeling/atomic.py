"""Write a file or a folder whole or not at all: write it at a temporary path beside its place,
then rename it into place in one step, so a reader, a crash or a killed job never sees half of it.
Used for model versions and their exports, the converted base model, the MiniLM encoder, reward
cards, backups and the users file."""
from __future__ import annotations

import os
import secrets
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from filelock import FileLock, Timeout


@contextmanager
def write(target: str | Path, tmp: str | Path | None = None) -> Iterator[Path]:
    """Yield a path beside `target`, not yet created, to write a file or a folder at; when the
    block ends, rename it onto `target` (a file or an empty folder there is replaced; a folder
    with files stays and the rename fails). On any error, a cancelled job included, the
    temporary path is removed and `target` is left as it was.

    `tmp` names the temporary path; by default `.<name>.tmp-<random>` beside `target`, unique, so
    two writers never write into each other's files."""
    target = Path(target)
    tmp = Path(tmp) if tmp is not None else target.with_name(f".{target.name}.tmp-{secrets.token_hex(4)}")
    try:
        yield tmp
        os.replace(tmp, target)
    except BaseException:
        if tmp.is_dir() and not tmp.is_symlink():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        raise


def build_once(target: str | Path, done: Callable[[Path], bool], build: Callable[[Path], None]) -> Path:
    """`target`, made by `build(tmp)` unless `done(target)` says it is there: under a file lock beside
    it, so a second process waits for the first one's build instead of doing its own; temporary
    folders a killed build left are cleared first (the lock is ours), and the result is renamed into
    place whole (`write`), over whatever incomplete folder was there."""
    target = Path(target)
    if done(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target.parent / f".{target.name}.lock")):
        if done(target):  # another process finished while we waited
            return target
        for stale in target.parent.glob(f".{target.name}.tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)
        with write(target) as tmp:
            build(tmp)
            shutil.rmtree(target, ignore_errors=True)  # a half folder left by hand, never one of ours
    return target


def keep_recent(used: Path, count: int) -> Path:
    """Mark `used` (a folder `build_once` made) as just used, and delete its sibling folders beyond the
    `count` most recently used: a conversion of every version ever made current would otherwise stay
    on disk for good (134 MB each for SmolLM2, gigabytes for a 7B model). Folders being built (hidden
    temporaries) and a sibling whose build lock another process holds are left alone; a folder is
    renamed away under its lock before it is deleted, so a reader finds it whole or not at all.
    Returns `used`."""
    used = Path(used)
    os.utime(used)

    def last_used(folder: Path) -> int:
        try:
            return folder.stat().st_mtime_ns
        except FileNotFoundError:  # another process deleted it meanwhile
            return -1

    folders = [p for p in used.parent.iterdir() if p.is_dir() and not p.name.startswith(".")]
    for old in sorted(folders, key=last_used, reverse=True)[count:]:
        if old == used:
            continue
        try:
            with FileLock(str(old.parent / f".{old.name}.lock"), timeout=0):
                doomed = old.with_name(f".{old.name}.tmp-{secrets.token_hex(4)}")  # cleared by build_once too
                os.replace(old, doomed)
        except (Timeout, OSError):  # being built again right now, gone already, or not ours to move
            continue
        shutil.rmtree(doomed, ignore_errors=True)
    return used
