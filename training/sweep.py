"""`python -m training sweep --method dpo --betas 0.01,0.05,0.1,0.5`: one round per β from the same
starting policy, each then measured by `training.evaluate`, which traces the reward-vs-KL frontier.
For PPO the swept value is the KL coefficient β of its per-token penalty. Any round whose registry
entry has a `sweep` mapping can be swept; the mapping says which config field each setting sets.

Sweep versions are not made current (the starting policy stays current); each carries the sweep's
id in its config so the Evaluate page can draw the frontier through them.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from labeling import model_versions
from training import jobs, registry, runner
from training.config_fields import LIMITS, limit_field
from training.preferences import NotReady


@dataclass
class SweepConfig:
    """A β sweep: one round per β from the same start, each evaluated."""

    method: str = field(default="dpo", metadata={"help": "Round to sweep.", "choices": registry.sweepable})
    betas: str = field(default="0.01,0.1,0.5", metadata={"help": "Comma-separated β values, one round each."})
    prompts: int = field(default=16, metadata={"min": 1, "help": "Held-out prompts to evaluate each version on."})
    samples: int = field(default=2, metadata={"min": 1, "help": "Responses sampled per prompt in evaluation."})
    max_new_tokens: int = field(default=64, metadata={"min": 1, "help": "Longest response sampled in evaluation."})
    max_steps: int | None = limit_field("max_steps", help="Optimizer steps per round (None: the round's own).")
    max_pairs: int | None = limit_field("max_pairs", help="Labeled pairs per round (PPO: training prompts; None: all).")
    learning_rate: float | None = field(default=None, metadata={"above": 0,
        "help": "Learning rate of every round (None: the round's own default)."})
    max_length: int | None = field(default=None, metadata={"min": 8,
        "help": "DPO: longest prompt + response in tokens; PPO: longest response sampled (None: the round's own)."})


def parse_betas(text: str) -> list[float]:
    try:
        betas = [float(b) for b in text.split(",") if b.strip()]
    except ValueError:
        raise SweepError(f"betas must be comma-separated numbers such as 0.01,0.1,0.5; got {text!r}.") from None
    if len(betas) < 2 or any(b <= 0 for b in betas):
        raise SweepError(f"A sweep needs at least two positive β values; got {text!r}.")
    return betas


class SweepError(NotReady):
    """A sweep cannot run; one sentence for the user."""


class StageReporter:
    """One progress bar for a job made of stages (a sweep's rounds, then its evaluation): stage i
    of n fills the bar from i/n to (i+1)/n, whatever step counts the stage itself reports."""

    STEPS = 100  # bar steps per stage

    def __init__(self, reporter, stages: int):
        self.reporter, self.stages, self.index, self.total = reporter, stages, -1, None

    def next_stage(self) -> "StageReporter":
        self.index, self.total = self.index + 1, None
        if self.index == 0:
            self.reporter.start(self.stages * self.STEPS)
        else:
            self.reporter.step(self.index * self.STEPS)
        return self

    def start(self, total_steps: int | None) -> None:
        self.total = total_steps

    def step(self, step: int, metrics: dict[str, float] | None = None) -> None:
        done = min(step / self.total, 1.0) if self.total else 0.0
        self.reporter.step(self.index * self.STEPS + round(done * self.STEPS), metrics)


def _round(method: str, beta: float, config: SweepConfig, reporter) -> dict[str, Any]:
    """One round at `beta` from the current policy, not made current. The round's `sweep` mapping
    names the config field each sweep setting sets; the limits it does not map cap the run."""
    chosen = registry.get(method)
    values = {name: beta if name == "beta" else getattr(config, name) for name in chosen.sweep}
    settings = {chosen.sweep[name]: value for name, value in values.items() if value}  # empty: the round's own
    limits = {name: getattr(config, name) for name in LIMITS if name not in chosen.sweep}
    round_config = chosen.config_class()(**settings, make_current=False)
    return registry.run(method, round_config, reporter, **limits)


def run_sweep(config: SweepConfig, reporter: jobs.Reporter | None = None) -> dict[str, Any]:
    """Train one version per β, tag them with the sweep id, and evaluate them with the start."""
    from training import evaluate, versions

    betas = parse_betas(config.betas)
    stages = StageReporter(reporter or jobs.Reporter(None), len(betas) + 1)  # the rounds, then evaluation
    versions.ensure_base_version()
    start = versions.current_policy_id()
    sweep = f"{config.method}-sweep-{dt.datetime.now().strftime('%Y%m%d-%H%M%S')}"
    made = []
    for beta in betas:
        result = _round(config.method, beta, config, stages.next_stage())
        model_versions.add_to_config(result["version"], {"sweep": sweep})
        made.append(result["version"])
    base = versions.ensure_base_version()
    ids = list(dict.fromkeys([base, start, *made]))
    eval_config = evaluate.EvaluateConfig(versions=",".join(ids), prompts=config.prompts,
                                          samples=config.samples, max_new_tokens=config.max_new_tokens)
    measured = evaluate.evaluate(eval_config, stages.next_stage())
    return {"sweep": sweep, "start": start, "versions": made, **measured}


def main(argv: list[str]) -> int:
    """`python -m training sweep [--method dpo|ppo] [--betas 0.01,0.1,0.5] [--job-id N] ...`."""
    def run(config, reporter, **_):
        return run_sweep(config, reporter)

    return runner.run_main(argv, SweepConfig, run, "python -m training sweep")
