"""labeling/atomic.py's housekeeping: conversions of versions no longer used are deleted, the most
recently used ones, folders being built and folders another process is building are kept."""
from __future__ import annotations

import os

from filelock import FileLock

from labeling import atomic


def test_only_the_most_recently_used_folders_stay(tmp_path):
    folders = []
    for i, name in enumerate(["a", "b", "c", "d"]):
        (tmp_path / name).mkdir()
        (tmp_path / name / "model.bin").write_bytes(b"x")
        os.utime(tmp_path / name, ns=(i * 10**9, i * 10**9))  # a used first, d last
        folders.append(tmp_path / name)
    (tmp_path / ".e.tmp-1234").mkdir()  # a build under way
    assert atomic.keep_recent(tmp_path / "a", 2) == tmp_path / "a"  # a used again: it and d stay
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")) == [".e.tmp-1234", "a", "d"]
    with FileLock(str(tmp_path / ".a.lock")):  # another process is building a again
        atomic.keep_recent(tmp_path / "d", 1)
    assert (tmp_path / "a").is_dir() and (tmp_path / "d").is_dir()
    atomic.keep_recent(tmp_path / "d", 1)
    assert not (tmp_path / "a").exists() and (tmp_path / "d" / "model.bin").is_file()
