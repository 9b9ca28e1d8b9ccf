"""A round under `accelerate launch` (or `torchrun`): several processes train one model
data-parallel, and exactly one of them, the main process (rank 0), speaks for the round.

The launcher sets RANK and WORLD_SIZE in each process. The trainers (TRL on top of transformers'
Trainer, which runs on accelerate) average the gradients by themselves; a round's `batch_size`
stays the batch of one optimizer step, each process taking its share (`per_process`), so a round
makes the same steps on any number of cards. What is prefloop's is who reads and who writes: the
main process reads what the round trains on and which policy is current, and hands them to the
others (`from_main`), so a vote or a rollback landing meanwhile cannot give two processes
different data; only the main process writes the database (the job's progress and status, the
new version's row, the reward model's suggestions), the version folder, the printed summary and
the job's log lines. The others train, then exit without writing. `start` opens the process group
early (gloo on a CPU, NCCL on CUDA); the trainers use the group already open.

Each process holds the whole model (data-parallel, or DeepSpeed ZeRO-2, which shards only the
optimizer state and gradients), so the main process can save the adapter alone; configurations
that shard the weights themselves (ZeRO-3, FSDP) are not supported.

Light to import: torch is imported only when a group is opened.
"""
from __future__ import annotations

import os
from typing import Callable, TypeVar

T = TypeVar("T")
ACCELERATE_CONFIG_ENV = "PREFLOOP_ACCELERATE_CONFIG"


def world_size() -> int:
    """Processes in this round (1 when it was not started by a distributed launcher)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def is_main() -> bool:
    """True in the one process that writes (and in every run that is not distributed)."""
    return rank() == 0


def start() -> None:
    """Open the process group of a distributed run (no-op in a single process or when it is open)."""
    if world_size() == 1:
        return
    import torch
    import torch.distributed as dist

    from training import device

    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.device().type == "cuda" else "gloo")
        if torch.cuda.is_available() and device.device().type == "cuda":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))


def wait_for_everyone() -> None:
    """A barrier across the round's processes (no-op in a single process)."""
    if world_size() == 1:
        return
    import torch.distributed as dist

    if dist.is_initialized():
        dist.barrier()


def finish() -> None:
    """Close the process group, so each process exits cleanly."""
    if world_size() == 1:
        return
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


def from_main(read: Callable[[], T]) -> T:
    """`read()` in the main process, its result (or the error it raised) sent to the others, which
    return (or raise) the same; every process must call this at the same point. Just `read()`
    outside a distributed round."""
    if world_size() == 1:
        return read()
    import torch.distributed as dist

    box: list = [None]
    if is_main():
        try:
            box = [(True, read())]
        except Exception as exc:  # noqa: BLE001  the others must hear of it, or they would wait forever
            box = [(False, exc)]
    dist.broadcast_object_list(box, src=0)
    ok, value = box[0]
    if not ok:
        raise value
    return value


def main_first(work: Callable[[], T]) -> T:
    """`work()` in the main process first, then in the others (for a one-time extraction into the
    workspace that the others then find done)."""
    if world_size() == 1:
        return work()
    result = work() if is_main() else None
    wait_for_everyone()
    return result if is_main() else work()


def per_process(batch_size: int) -> int:
    """Each process's share of a step's `batch_size`; NotReady when it does not divide evenly."""
    n = world_size()
    if batch_size % n:
        from training.preferences import NotReady

        raise NotReady(f"batch_size {batch_size} does not divide among {n} processes; make it a multiple of {n}.")
    return batch_size // n


def launch_command(kind: str, config_path: str, job_id: int, python: str) -> list[str]:
    """The command the job runner starts for round `kind`: `python -m training <kind> ...`, or, when
    PREFLOOP_ACCELERATE_CONFIG names an accelerate config file, the same under `accelerate launch`
    with that file."""
    own = [python, "-m", "training", kind, "--config", config_path, "--job-id", str(job_id)]
    accelerate_config = os.environ.get(ACCELERATE_CONFIG_ENV)
    if not accelerate_config:
        return own
    return [python, "-m", "accelerate.commands.launch", "--config_file", accelerate_config, *own[1:]]
