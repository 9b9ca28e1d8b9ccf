"""A round under `accelerate launch` (or `torchrun`): several processes train one model
data-parallel, and exactly one of them, the main process (rank 0), speaks for the round.

The launcher sets RANK and WORLD_SIZE in each process. The trainers (TRL on top of transformers'
Trainer, which runs on accelerate) split the batches and average the gradients by themselves; what
is prefloop's is who writes: only the main process writes the database (the job's progress and
status, the new version's row, the reward model's suggestions), the version folder, the printed
summary and the job's log lines. The others train, then exit without writing. `start` opens the
process group early (gloo on a CPU, NCCL on CUDA), so the main process can register the base model
before the others read it; the trainers use the group already open.

Light to import: torch is imported only when a group is opened.
"""
from __future__ import annotations

import os

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


def launch_command(kind: str, config_path: str, job_id: int, python: str) -> list[str]:
    """The command the job runner starts for round `kind`: `python -m training <kind> ...`, or, when
    PREFLOOP_ACCELERATE_CONFIG names an accelerate config file, the same under `accelerate launch`
    with that file."""
    own = [python, "-m", "training", kind, "--config", config_path, "--job-id", str(job_id)]
    accelerate_config = os.environ.get(ACCELERATE_CONFIG_ENV)
    if not accelerate_config:
        return own
    return [python, "-m", "accelerate.commands.launch", "--config_file", accelerate_config, *own[1:]]
