"""Planning an import: hashing records and setting aside what is empty, identical or repeated.

Pure: nothing here touches the database. `Planner` works chunk by chunk and remembers what it
has seen, so a repeat in chunk 9 of something in chunk 1 is still caught. `planned_chunks` reads
a file and plans it in chunks; `planned_in_worker` does the same in a second process, so that on
a large file the reading, checking and hashing run beside the database writes (labeling/store.py)
instead of before them. The chunks hold only strings, ints and bools: cheap to send between
processes.
"""
from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

import orjson

from labeling.importers import InputError, PairRecord, PromptRecord, stream
from labeling.records import content_hash, pair_hash

HELDOUT_EVERY = 10  # one prompt in ten, chosen by its hash, is kept for evaluation
CHUNK_RECORDS = 5_000  # records per chunk: bounded memory, few round trips
FIRST_CHUNK_RECORDS = 500  # a small first chunk, so that writing starts at once
WORKER_MIN_BYTES = 4 << 20  # smaller files are planned in-process: a second process takes ~0.1 s to start


def split_for(prompt_hash: str) -> str:
    """ "heldout" for about one prompt in ten, always the same ones; "train" for the rest."""
    return "heldout" if int(prompt_hash[:8], 16) % HELDOUT_EVERY == 0 else "train"


@dataclass
class PlannedChunk:
    """What one chunk of a file adds, once empty, identical and repeated records are set aside."""

    fmt: str
    # (hash, messages as JSON text, split) of each prompt first seen in this chunk
    prompts: list[tuple[str, str, str]] = field(default_factory=list)
    # (pair hash, prompt hash, response a hash, response a text, response b hash, response b text, labeled,
    #  the label's reason tags as JSON text or None)
    pairs: list[tuple[str, str, str, str, str, str, bool, str | None]] = field(default_factory=list)
    # records set aside so far in the whole file (not only this chunk)
    dropped: dict[str, int] = field(default_factory=dict)


def _is_empty(messages: list[dict[str, str]]) -> bool:
    return not messages or not any(m["content"].strip() for m in messages)


def _json_text(messages: list[dict[str, str]]) -> str:
    """Messages as the JSON column stores them (keys in their order; the hash sorted them). The
    standard encoder takes what orjson refuses, such as a lone surrogate from generated text."""
    try:
        return orjson.dumps(messages).decode()
    except (TypeError, orjson.JSONEncodeError):
        return json.dumps(messages)


class ReaderError(RuntimeError):
    """The reader process failed or died: not the file's fault, one sentence for the user."""


class Planner:
    """Hashes records and sets aside the empty, identical and repeated ones.

    Pair hashes are order-free, so the same two responses given twice (in either order) for one
    prompt count as one pair; the first occurrence wins.
    """

    def __init__(self) -> None:
        self.prompts: set[str] = set()
        self.pairs: set[str] = set()
        self.dropped = {"empty": 0, "identical": 0, "duplicate_in_file": 0}

    def plan(self, fmt: str, records: Iterable[PairRecord | PromptRecord]) -> PlannedChunk:
        chunk, dropped = PlannedChunk(fmt), self.dropped
        for rec in records:
            if _is_empty(rec.prompt):
                dropped["empty"] += 1
                continue
            p_hash = content_hash(rec.prompt)
            if isinstance(rec, PromptRecord):
                if p_hash in self.prompts:
                    dropped["duplicate_in_file"] += 1
                else:
                    self._add_prompt(chunk, p_hash, rec.prompt)
                continue
            a, b = rec.response_a.strip(), rec.response_b.strip()
            if not a or not b:
                dropped["empty"] += 1
                continue
            if a == b:
                dropped["identical"] += 1
                continue
            h_a, h_b = content_hash(rec.response_a), content_hash(rec.response_b)
            ph = pair_hash(p_hash, h_a, h_b)
            if ph in self.pairs:
                dropped["duplicate_in_file"] += 1
                continue
            self.pairs.add(ph)
            if p_hash not in self.prompts:
                self._add_prompt(chunk, p_hash, rec.prompt)
            reasons = orjson.dumps(rec.reasons).decode() if rec.reasons and rec.labeled else None
            chunk.pairs.append((ph, p_hash, h_a, rec.response_a, h_b, rec.response_b, rec.labeled, reasons))
        chunk.dropped = dict(dropped)
        return chunk

    def _add_prompt(self, chunk: PlannedChunk, p_hash: str, messages: list[dict[str, str]]) -> None:
        self.prompts.add(p_hash)
        chunk.prompts.append((p_hash, _json_text(messages), split_for(p_hash)))


def planned_chunks(path: str | Path, fmt: str = "auto") -> Iterator[PlannedChunk]:
    """A file read, checked and planned a chunk of records at a time. InputError as soon as a
    record is wrong. An empty prompts file gives one empty chunk, so the caller always learns the
    format."""
    # Only a .txt file can hold no records without an InputError, and it holds prompts.
    planner, batch, fmt_read, yielded = Planner(), [], "prompts" if fmt == "auto" else fmt, False
    size = FIRST_CHUNK_RECORDS
    for fmt_read, record in stream(path, fmt):
        batch.append(record)
        if len(batch) == size:
            yield planner.plan(fmt_read, batch)
            batch, yielded, size = [], True, CHUNK_RECORDS
    if batch or not yielded:
        yield planner.plan(fmt_read, batch)


def serve(path: str, fmt: str, out) -> None:
    """The worker's whole life: pickle the file's chunks into `out`, then None; or the error that
    stopped it. Quiet when the caller has gone (a broken pipe): there is no one to tell."""
    try:
        try:
            for chunk in planned_chunks(path, fmt):
                pickle.dump(chunk, out, protocol=pickle.HIGHEST_PROTOCOL)
                out.flush()
            result = None
        except InputError as e:
            result = InputError(str(e))
        except BrokenPipeError:
            raise
        except Exception as e:  # a bug or MemoryError: reported by the parent, never hidden
            result = ReaderError(f"The import's reader process failed on {path}: {type(e).__name__}: {e}.")
        pickle.dump(result, out)
        out.flush()
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), out.fileno())  # so that the exit's own flush is quiet too


def _worker_command(path: str | Path, fmt: str) -> list[str]:
    # -P: the caller's working folder is not put on sys.path, so nothing there shadows prefloop
    return [sys.executable, "-P", "-m", "labeling.planning", str(path), fmt]


def _worker_env() -> dict[str, str]:
    """This environment, with prefloop importable wherever the caller's working folder is."""
    root = str(Path(__file__).resolve().parent.parent)
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}


def planned_in_worker(path: str | Path, fmt: str = "auto") -> Iterator[PlannedChunk]:
    """`planned_chunks` run in a second process, which is stopped when the caller stops early
    (as on a database error) and dies on its next write when the caller dies.

    A fresh interpreter (`python -m labeling.planning`), not a fork: a forked child would hold
    the caller's database sockets open, so a killed import would keep its locks on PostgreSQL.
    """
    # its own session: a Ctrl-C at the terminal reaches the caller only, which then stops it
    worker = subprocess.Popen(_worker_command(path, fmt), stdout=subprocess.PIPE, env=_worker_env(),
                              start_new_session=True)
    try:
        while True:
            try:
                item = pickle.load(worker.stdout)
            except (EOFError, pickle.UnpicklingError):  # it ended, or was killed mid-chunk
                raise ReaderError(f"The import's reader process stopped (exit code {worker.wait()}) while "
                                  f"reading {path}; nothing was imported. Try again, or check memory.") from None
            if item is None:
                return
            if isinstance(item, Exception):
                raise item
            yield item
    finally:
        worker.kill()  # a no-op once it has finished
        worker.wait()
        worker.stdout.close()


def planned(path: str | Path, fmt: str = "auto") -> Iterator[PlannedChunk]:
    """The chunks of a file: planned in a second process when the file is large enough to pay
    for it, in this one otherwise (and for folders and hub names)."""
    try:
        large = os.path.isfile(path) and os.path.getsize(path) >= WORKER_MIN_BYTES
    except OSError:
        large = False
    return planned_in_worker(path, fmt) if large else planned_chunks(path, fmt)


if __name__ == "__main__":  # python -m labeling.planning PATH FORMAT: the worker of planned_in_worker
    from labeling import planning  # under its own name, so that the chunks unpickle in the caller

    out, sys.stdout = sys.stdout.buffer, sys.stderr  # nothing but chunks may reach the pipe
    planning.serve(sys.argv[1], sys.argv[2], out)
