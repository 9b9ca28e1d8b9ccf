"""Background jobs: a round started from the UI runs in its own process, the same code as the CLI.

`start_job("dpo", config)` writes the config to `$PREFLOOP_HOME/jobs/<id>/config.yaml` and spawns
`python -m training dpo --config that.yaml --job-id <id>`, niced, with its own thread count, so the
app stays responsive. Inside the round a `Reporter` persists progress (step of total, ETA) and
per-step metrics to the database, so bars and curves survive reloads and restarts, and raises
`Cancelled` at the next step once the job is cancelled. One heavy job (training or generation)
runs at a time per machine: two torch processes on two cores slow each other down ~20x.

A worker that dies without saying so (kill -9, out of memory) is noticed by its stale heartbeat
and shown as failed the next time anybody looks (`refresh_stale`).
"""
from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import yaml

from labeling import runs
from labeling.runs import ACTIVE, Job, utcnow
from labeling.workspace import home
from training import distributed, registry

OTHER_HEAVY_KINDS = ("generate", "evaluate", "sweep", "arena", "judge", "autopilot")  # besides every round; an export is light
BACKGROUND_KINDS = ("generate",)  # give way to any other heavy job started meanwhile
SERVER_PID_ENV = "PREFLOOP_SERVER_PID"  # set for a worker that stops when the server that started it stops
STALE_AFTER = dt.timedelta(seconds=120)
ROOT = Path(__file__).resolve().parent.parent


class JobError(RuntimeError):
    """A job cannot start or be changed; the message is one sentence for the user."""


class Cancelled(RuntimeError):
    pass


def threads_for_job(serving: bool = False) -> int:
    """Threads a job may use: PREFLOOP_THREADS, else every core, less one when the app started the
    job (`serving`), so the server and the browser keep a core: torch's threads spin-wait, and a
    generation job on both of 2 cores beside the server and Chromium put the first pair on screen
    after 151 s, against 31 s on one thread (bench/first_pair.py)."""
    if os.environ.get("PREFLOOP_THREADS"):
        return int(os.environ["PREFLOOP_THREADS"])
    cores = os.cpu_count() or 1
    return max(1, cores - 1) if serving else cores


def threads_per_process() -> int:
    """A job's threads, shared among the processes a distributed launcher started on this machine."""
    return max(1, threads_for_job() // int(os.environ.get("LOCAL_WORLD_SIZE", "1")))


def set_threads(n: int | None = None) -> int:
    """Pin torch's intra- and inter-op thread pools; call once at the start of a process."""
    import torch

    n = n or threads_per_process()
    torch.set_num_threads(n)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set once in this process
        pass
    return n


def lower_priority(nice: int = 10) -> None:
    """Run in the worker before it starts: nice it and, where Linux groups processes by session
    (sched_autogroup), its new session's group too. Without the latter the nice counts only inside
    the worker's own group, and the group competes with the app's as an equal (measured by
    bench/soak.py: p95 of a label click 4x its idle value during a DPO round; with it, equal)."""
    os.nice(nice)
    try:
        Path("/proc/self/autogroup").write_text(str(nice))
    except OSError:  # no autogroup (other kernels, other systems): the plain nice is all there is
        pass


PROC = Path("/proc")


def pid_alive(pid: int | None) -> bool:
    """Whether process `pid` runs (a zombie, done and waiting for its parent, does not)."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return not _is_zombie(pid)


def _is_zombie(pid: int) -> bool:
    """Linux reads /proc; where there is none (macOS, the BSDs) `ps` says, without reaping the
    child as `os.waitpid` would behind its `Popen`'s back."""
    if not PROC.is_dir():
        return _ps_state(pid).startswith("Z")
    try:
        return (PROC / str(pid) / "stat").read_text().split(") ")[1].startswith("Z")
    except (OSError, IndexError):
        return False


def _ps_state(pid: int) -> str:
    """The process state `ps` prints ("S", "R+", "Z"...), "" when it cannot tell."""
    try:
        done = subprocess.run(["ps", "-o", "stat=", "-p", str(pid)], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return ""
    return done.stdout.strip()


def refresh_stale() -> int:
    """Mark as failed the active jobs whose worker is gone. Returns how many were marked."""
    def gone(job: Job, now: dt.datetime) -> bool:
        # a worker's pid is stored when it is spawned; before that only the age can tell
        return not pid_alive(job.pid) if job.pid else now - job.created_at > STALE_AFTER

    marked = runs.fail_active_jobs(gone, "The worker process stopped without reporting (killed or out of memory).")
    if marked:
        _remove_partial_versions()
    return marked


def _remove_partial_versions() -> None:
    """Delete the half-written `versions/.tmp-*` folders a killed worker left. Safe because one
    heavy job runs at a time, and the one that could be writing has just been found dead."""
    from training.versions import versions_root

    if active_jobs_rows():
        return
    for folder in versions_root().glob(".tmp-*"):
        shutil.rmtree(folder, ignore_errors=True)


def heavy_kinds() -> tuple[str, ...]:
    """Job kinds that load a model and train or sample: every registered round, and the others."""
    return (*registry.ROUNDS, *OTHER_HEAVY_KINDS)


def active_jobs_rows() -> list[Job]:
    """Heavy jobs queued or running, as stored (dead workers not looked for)."""
    return runs.active_jobs(heavy_kinds())


def active_jobs() -> list[Job]:
    """Heavy jobs queued or running, after marking dead workers as failed."""
    refresh_stale()
    return active_jobs_rows()


def start_job(kind: str, config: dict[str, Any], threads: int | None = None, stop_with_server: bool = False) -> int:
    """Queue a job of `kind` with `config` and spawn its worker. Returns the job id.

    One heavy job runs at a time; a light one (an export) runs beside it. A round started while
    the background generator runs stops it first: generating more pairs to label can wait, and the
    app starts it again when the queue runs low. With `stop_with_server`
    the worker also stops when this process (the app's server) does, instead of running on alone.
    """
    refresh_stale()
    preempts = kind in heavy_kinds() and kind not in BACKGROUND_KINDS
    for attempt in range(3):
        if preempts:
            _stop_background_jobs()
        try:
            # the check and the insert are serialized, so two pages clicking at the same moment
            # cannot both start a heavy job
            job_id = runs.queue_job(kind, config, unless_active=heavy_kinds() if kind in heavy_kinds() else ())
            break
        except runs.Busy as exc:
            busy = exc.job
            if preempts and busy.kind in BACKGROUND_KINDS and attempt < 2:
                continue  # a Label page started generating again while the last one stopped
            raise JobError(f"Job #{busy.id} ({busy.kind}) is still {busy.status}; "
                           "wait for it to finish or cancel it first.") from None
    folder = home() / "jobs" / str(job_id)
    folder.mkdir(parents=True, exist_ok=True)
    config_path = folder / "config.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    log_path = folder / "log.txt"
    env = dict(os.environ, PREFLOOP_THREADS=str(threads or threads_for_job(serving=True)))
    env["OMP_NUM_THREADS"] = env["PREFLOOP_THREADS"]
    if stop_with_server:
        env[SERVER_PID_ENV] = str(os.getpid())
    else:
        env.pop(SERVER_PID_ENV, None)
    with open(log_path, "ab") as log:
        command = ([sys.executable, "-m", "training", kind, "--config", str(config_path), "--job-id", str(job_id)]
                   if not (kind in registry.ROUNDS and registry.ROUNDS[kind].distributed)
                   else distributed.launch_command(kind, str(config_path), job_id, sys.executable))
        proc = subprocess.Popen(
            command,
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True, preexec_fn=lower_priority,
        )
    runs.set_worker(job_id, proc.pid, str(log_path))
    return job_id


def _stop_background_jobs(timeout: float = 30.0) -> None:
    """Cancel the running background jobs (generation) and wait for their workers to exit."""
    waiting = [job for job in active_jobs_rows() if job.kind in BACKGROUND_KINDS]
    for job in waiting:
        try:
            cancel(job.id)
        except JobError:  # it finished a moment ago
            pass
    deadline = time.monotonic() + timeout
    while any(pid_alive(job.pid) for job in waiting) and time.monotonic() < deadline:
        time.sleep(0.1)
    for job in waiting:  # stuck past the timeout: two torch processes must not share the cores
        if pid_alive(job.pid):
            try:
                os.killpg(job.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


def cancel(job_id: int) -> None:
    """Cancel a queued or running job: the worker stops at its next step, or is terminated."""
    job = runs.cancel_job(job_id)
    if job is None:
        raise JobError(f"There is no job #{job_id}.")
    if job.status not in ACTIVE:
        raise JobError(f"Job #{job_id} is already {job.status}.")
    pid = job.pid
    if pid_alive(pid):
        try:
            os.killpg(pid, signal.SIGTERM)
        except (ProcessLookupError, PermissionError):
            pass


def get_job(job_id: int) -> Job | None:
    """Job `job_id` (None when there is none), after marking dead workers as failed."""
    refresh_stale()
    return runs.get_job(job_id)


def list_jobs(limit: int = 50) -> list[Job]:
    """The newest `limit` jobs, newest first, after marking dead workers as failed."""
    refresh_stale()
    return runs.list_jobs(limit)


def job_metrics(job_id: int) -> list[dict[str, Any]]:
    """Per-step metrics of a job as rows {"step": n, name: value, ...}, in step order."""
    return runs.job_metrics(job_id)


def eta_seconds(job: Job) -> float | None:
    """Linear ETA at the pace of the steps logged so far: from the first logged step to the last,
    so the setup before training (data, model loading, tokenizing) does not count as step time.
    Before a second step is logged, from the time since the job started."""
    if not job.started_at or not job.total_steps or job.step <= 0:
        return None
    first, last, first_at, last_at = runs.metric_span(job.id)
    if first is not None and last > first:
        per_step = (last_at - first_at).total_seconds() / (last - first)
    else:
        per_step = (utcnow() - job.started_at).total_seconds() / job.step
    return per_step * max(job.total_steps - job.step, 0)


class Reporter:
    """Progress and metrics of one round. With `job_id=None` (a plain CLI run) it only prints."""

    def __init__(self, job_id: int | None = None, log_every: int = 1, quiet: bool = False):
        self.job_id, self.log_every, self.total, self.quiet = job_id, log_every, None, quiet

    def start(self, total_steps: int | None) -> None:
        self.total = total_steps
        if self.job_id is None:
            return
        if not runs.start_run(self.job_id, total_steps, os.getpid()):
            raise Cancelled(f"job {self.job_id} was cancelled")

    def step(self, step: int, metrics: dict[str, float] | None = None) -> None:
        """Record `metrics` at `step`; raise `Cancelled` when the job was cancelled meanwhile."""
        clean = {k: float(v) for k, v in (metrics or {}).items() if v is not None}
        if self.job_id is None:
            if clean and step % self.log_every == 0 and not self.quiet:
                print(f"step {step}/{self.total}: " + " ".join(f"{k}={v:.4g}" for k, v in clean.items()),
                      file=sys.stderr, flush=True)
            return
        if not runs.record_step(self.job_id, step, clean):
            raise Cancelled(f"job {self.job_id} was cancelled")

    def finish(self, status: str, result: dict[str, Any] | None = None, error: str | None = None) -> None:
        if self.job_id is None:
            return
        runs.finish_job(self.job_id, status, result, error)


@contextmanager
def reporting(job_id: int | None, quiet: bool = False) -> Iterator[Reporter]:
    """Run a round's body under a Reporter: done on success, failed (with the message) on error.
    A job started with `stop_with_server` is cancelled once the server that started it is gone.
    In a distributed round the launcher terminates every process when one fails: a termination
    nobody asked for is then the round's failure, not a cancel."""
    reporter = Reporter(job_id, quiet=quiet)
    signal.signal(signal.SIGTERM, _raise_cancelled)
    if job_id is not None and os.environ.get(SERVER_PID_ENV):
        threading.Thread(target=_stop_with_server, daemon=True).start()
    try:
        yield reporter
    except Exception as exc:  # the job row must say why it failed, whatever failed
        with _termination_held():
            if _terminated and distributed.world_size() > 1 and job_id is not None \
                    and runs.get_job(job_id).status != "cancelled":  # (a library may have wrapped our Cancelled)
                reporter.finish("failed", error=RANK_FAILED)
            elif isinstance(exc, Cancelled):
                reporter.finish("cancelled", error=str(exc) if str(exc) == SERVER_STOPPED else None)
            else:
                reporter.finish("failed", error=describe(exc))
        raise
    else:
        with _termination_held():
            reporter.finish("done", result=getattr(reporter, "result", None))


@contextmanager
def _termination_held() -> Iterator[None]:
    """Hold SIGTERM while the job's end is written, so the row never stays "running" half-written."""
    held = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)


def describe(exc: BaseException) -> str:
    """What a failed job says: our own errors are one sentence for the user as they are; anything
    else (a library's) keeps its class name so it can be looked up."""
    own = type(exc).__module__.split(".")[0] in ("training", "labeling")
    return str(exc) if own else f"{type(exc).__name__}: {exc}"


SERVER_STOPPED = "The server that started this job stopped."
TERMINATED = "terminated"
RANK_FAILED = "Another process of this distributed round failed, so the launcher stopped them all; its error is in the job's log."


_terminated = False  # this process received SIGTERM


def _raise_cancelled(signum, frame):
    global _terminated
    _terminated = True
    raise Cancelled(SERVER_STOPPED if _server_gone() else TERMINATED)


def _server_gone() -> bool:
    """This worker was started with `stop_with_server`, and its parent is no longer that server
    (it exited, and the worker was handed to init)."""
    server = os.environ.get(SERVER_PID_ENV)
    return bool(server) and os.getppid() != int(server)


def _stop_with_server(poll: float = 1.0) -> None:
    """Watch from a thread: once the server is gone, cancel the job the way `cancel` does, with SIGTERM."""
    while not _server_gone():
        time.sleep(poll)
    os.kill(os.getpid(), signal.SIGTERM)


def wait(job_id: int, timeout: float = 600, poll: float = 0.5) -> Job:
    """Block until the job leaves queued/running (for tests and the CLI)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = get_job(job_id)
        if job.status not in ACTIVE:
            return job
        time.sleep(poll)
    raise TimeoutError(f"job {job_id} still {job.status} after {timeout} s")


def main(argv: list[str]) -> int:
    """`python -m training worker list|cancel ID`: look at jobs from the shell."""
    if argv[:1] == ["cancel"] and len(argv) == 2:
        cancel(int(argv[1]))
        return 0
    rows = [{"id": j.id, "kind": j.kind, "status": j.status, "step": j.step, "total": j.total_steps,
             "error": j.error} for j in list_jobs()]
    print(json.dumps(rows))
    return 0
