"""Slowing down password guessing: failed sign-ins per name and per client address.

The first FREE_FAILURES failures of a key cost nothing (people mistype); each one after that
doubles the wait before the key may try again: 1 s, 2 s, 4 s, ... up to MAX_WAIT. A key that has
not failed for FORGET seconds starts afresh, and a right password clears its name.

The counts live in this process, not in the database: prefloop's app is one Streamlit process,
so one dict behind a lock sees every sign-in; it needs no schema migration, no write to the
workspace database per wrong guess (which a guesser could otherwise fill), and a restart, which
only someone with the server in hand can do, forgets it. Several server processes behind one
address would each count alone; that is the case where a table would be needed.

An attempt counts as a failure the moment it starts and is forgiven when the password is right,
so guesses sent in parallel from many browser tabs cannot all pass before the first one fails.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Callable, Hashable, Iterable

FREE_FAILURES = 3
FIRST_WAIT = 1.0  # seconds, after the FREE_FAILURES-th failure
MAX_WAIT = 15 * 60.0
FORGET = 60 * 60.0  # a key with no failure for this long is forgotten
MAX_KEYS = 10_000  # bound on memory, whatever names and addresses a guesser sprays


class Throttled(Exception):
    """A sign-in refused without looking at the password, because its name or address failed too
    often lately; `wait` is the seconds until it may try again."""

    def __init__(self, wait: float):
        self.wait = wait
        super().__init__(f"Too many failed sign-ins from this name or address; try again in {max(1, round(wait))} s.")


def wait_after(failures: int) -> float:
    """Seconds a key waits after its `failures`-th failure: 0 up to FREE_FAILURES, then doubling
    from FIRST_WAIT, at most MAX_WAIT. wait_after(3) == 1.0, wait_after(4) == 2.0."""
    if failures < FREE_FAILURES:
        return 0.0
    return min(MAX_WAIT, FIRST_WAIT * 2.0 ** (failures - FREE_FAILURES))


@dataclass
class _Record:
    failures: int = 0
    last: float = 0.0  # clock time of the latest failure


class Throttle:
    """Failure counts per key (("name", n) or ("address", a)); `clock` is injectable for tests."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self._records: dict[Hashable, _Record] = {}
        self._lock = threading.Lock()

    def _wait(self, key: Hashable, now: float) -> float:
        record = self._records.get(key)
        return 0.0 if record is None else max(0.0, record.last + wait_after(record.failures) - now)

    def _prune(self, now: float) -> None:
        stale = [k for k, r in self._records.items() if now - r.last > FORGET]
        for key in stale:
            del self._records[key]
        if len(self._records) >= MAX_KEYS:  # keep the keys that failed most recently
            for key in sorted(self._records, key=lambda k: self._records[k].last)[: len(self._records) - MAX_KEYS + 1]:
                del self._records[key]

    def begin(self, keys: Iterable[Hashable]) -> None:
        """Start an attempt for `keys`: raise Throttled while any of them must wait, else count
        the attempt as a failure of each until `forgive` says it succeeded."""
        keys = list(keys)
        with self._lock:
            now = self.clock()
            if any(k in self._records and now - self._records[k].last > FORGET for k in keys) \
                    or len(self._records) >= MAX_KEYS:
                self._prune(now)
            wait = max((self._wait(k, now) for k in keys), default=0.0)
            if wait > 0:
                raise Throttled(wait)
            for key in keys:
                record = self._records.setdefault(key, _Record())
                record.failures, record.last = record.failures + 1, now

    def forgive(self, clear: Iterable[Hashable] = (), undo: Iterable[Hashable] = ()) -> None:
        """After a right password: forget `clear` keys' failures, and take back this attempt's
        count from the `undo` keys (an address stays counted for the other names it guessed)."""
        with self._lock:
            for key in clear:
                self._records.pop(key, None)
            for key in undo:
                record = self._records.get(key)
                if record is not None:
                    record.failures -= 1
                    if record.failures <= 0:
                        del self._records[key]

    def failures(self, key: Hashable) -> int:
        with self._lock:
            record = self._records.get(key)
            return record.failures if record else 0
