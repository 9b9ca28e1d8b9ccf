"""How a round runs: the command-line `main` of a job (flags, the job's Reporter, exit codes and the
JSON summary), progress from a transformers `Trainer`, and the skeleton of a round that trains a
LoRA adapter on the current policy with a TRL trainer.

Light to import: the registry (which the Train page reads) names `run_main`; torch and transformers
are imported inside the functions that run a round.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
from typing import Any, Callable

from labeling.command import run_command
from training import distributed, engine
from training.config_fields import ConfigError, config_from_args
from training.preferences import NotReady

HELPER_GRACE_SECONDS = 10  # a failing process of a distributed round waits this long before it exits


def lora_policy_round(method: str, config: Any, make_trainer: Callable, judgment_ids: list[int],
                      metrics: dict[str, Any], after_train: Callable[[Any], dict] | None = None) -> dict[str, Any]:
    """What a round that trains a LoRA adapter on the current policy with a TRL trainer shares (KTO,
    SFT): load the parent, `make_trainer(model, tokenizer, output_dir)`, train in a temporary folder,
    save the adapter as a new policy version of `method` with `metrics` (and `after_train(trainer)`'s).
    Returns the round's summary: {"version", "parent", "current", **metrics without the id lists}."""
    from training import versions
    from training.model import load_policy

    parent_id = versions.current_policy_id() or versions.ensure_base_version()
    model, tokenizer = load_policy(parent_id, quantize=True)
    with tempfile.TemporaryDirectory(prefix=f"{method}-", dir=versions.versions_root().parent) as output_dir:
        trainer = make_trainer(model, tokenizer, output_dir)
        started = time.perf_counter()
        output = trainer.train()
        seconds = time.perf_counter() - started
    metrics = {"train_loss": output.training_loss, "train_seconds": seconds, "steps": trainer.state.global_step,
               **metrics, **(after_train(trainer) if after_train else {})}

    def write(folder):
        trainer.model.save_pretrained(folder, safe_serialization=True)
        tokenizer.padding_side = "left"  # as generation reads it
        tokenizer.save_pretrained(folder)

    version_id = versions.create_version("policy", method, parent_id, dataclasses.asdict(config), judgment_ids, metrics,
                                         write, make_current=config.make_current)
    return {"version": version_id, "parent": parent_id, "current": versions.current_policy_id() == version_id,
            **{k: v for k, v in metrics.items() if not k.endswith("_ids")}}


def progress_callback(reporter, rename: dict[str, str]):
    """A TrainerCallback that reports total steps at the start and `rename`d metrics at every log;
    `Reporter.step` raises Cancelled when the job was cancelled, which stops the trainer."""
    from transformers import TrainerCallback

    class Progress(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            reporter.start(state.max_steps)

        def on_log(self, args, state, control, logs=None, **kwargs):
            values = {new: logs[old] for old, new in rename.items() if old in (logs or {})}
            if values and not any(k.startswith("eval_") for k in logs):
                reporter.step(state.global_step, values)

    return Progress()


def run_main(argv: list[str], config_class: type, run_round: Callable[..., dict], prog: str,
             user_errors: tuple[type[Exception], ...] = ()) -> int:
    """Parse flags and --config onto `config_class`, run the round (or any job: generate, evaluate,
    judge...) under a job Reporter, and print its summary as JSON on the last line. A bad flag or
    config prints one sentence and returns 2; another error the user can fix (a round that is not
    ready, a wrong model path or version, an unusable device, or one of `user_errors`) returns 1; a
    cancelled job 130.

    Under `accelerate launch` only the main process reports, writes and prints (training/distributed.py);
    the others run the same round silently."""
    from training import jobs, versions
    from training.device import DeviceError
    from training.model import ModelPathError
    from training.versions import VersionError

    def work() -> dict:
        try:
            config, extras = config_from_args(config_class, argv, prog)
        except ConfigError as exc:
            if distributed.is_main():
                _fail_job(argv, str(exc))
            raise
        main = distributed.is_main()
        with jobs.reporting(extras["job_id"] if main else None, quiet=not main) as reporter:
            jobs.set_threads()
            if distributed.world_size() > 1:  # the main process registers the base before the others read it
                distributed.start()
                if extras["job_id"] is not None:
                    jobs.lower_priority()  # the launcher started each process in a session of its own
                if main:
                    versions.ensure_base_version()
                versions.follow_main()
            before = versions.current_policy_id()
            summary = run_round(config, reporter, max_steps=extras["max_steps"], max_pairs=extras["max_pairs"])
            if main and (after := versions.current_policy_id()) != before:  # ready for the generator's next pairs
                engine.prepare(after)
            reporter.result = summary
            print(json.dumps(summary), flush=True)  # before the job row says done: whoever sees done finds the line
        distributed.finish()
        return summary

    if not distributed.is_main():
        sys.stdout = open(os.devnull, "w")  # one summary line in the job's log: the main process's
    try:
        code = run_command(work, {ConfigError: 2,
                                  (NotReady, ModelPathError, VersionError, DeviceError, *user_errors): 1},  # the user's to fix
                           echo=False)
    except jobs.Cancelled:
        print(json.dumps({"cancelled": True}))
        code = 130
    if code and not distributed.is_main():  # the main process likely met the same error: let it write its sentence
        time.sleep(HELPER_GRACE_SECONDS)  # before the launcher, seeing this process end, stops it
    return code


def _fail_job(argv: list[str], message: str) -> None:
    """Mark the job failed with `message` when the round could not even read its config."""
    from training import jobs

    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--job-id", type=int)
    job_id = parser.parse_known_args(argv)[0].job_id
    if job_id is not None:
        jobs.Reporter(job_id).finish("failed", error=message)
