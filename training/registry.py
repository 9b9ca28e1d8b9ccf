"""Every kind of training round, declared once.

A round has a name (its command `python -m training <name>`, its job kind, and the method of the
versions it makes), a label on the Train page, its settings dataclass and its run function (both
"module:name", imported only when used, so reading the registry never loads torch), what it makes
(a policy or a reward model), the check that says why it cannot run yet, a caution when it can run
but may teach little, the curves the Train page draws, which quick-run limits the page offers beside
its form, how a β sweep sets it up, and whether it may run on several processes under `accelerate
launch`.

The CLI, the job runner, the Train page, the versions table, the β sweep and the reward-vs-KL chart
read ROUNDS. Adding a round is one module (a config dataclass and `run_round(config, reporter,
max_steps=None, max_pairs=None) -> summary dict`) and one entry here.
"""
from __future__ import annotations

import functools
import importlib
import sys
from dataclasses import dataclass, field
from typing import Any, Callable

from training import distributed, preferences, runner
from training.config_fields import settings_problem


@dataclass(frozen=True)
class Round:
    name: str  # command, job kind and version method: "dpo"
    label: str  # on the Train page: "DPO"
    config: str  # "module:Class" of the settings dataclass (the CLI flags and the form come from it)
    run: str  # "module:function" run(config, reporter, max_steps=None, max_pairs=None) -> {"version": id, ...}
    produces: str  # the kind of version it makes: "policy" or "reward"
    ready: Callable[[Any], str | None] | None = None  # ready(config): why it cannot run now, or None
    curves: tuple[str, ...] = ()  # logged metrics the Train page draws while it runs
    quick_limits: tuple[str, ...] = ("max_steps", "max_pairs")  # RoundLimits offered beside the form
    # β-sweep setting -> the config field it sets (the config needs `make_current`); None: cannot be swept
    sweep: dict[str, str] | None = field(default=None, hash=False)
    plan: str | None = None  # "module:function" plan() -> what a round would do now, shown above its form
    # "module:function" caution(config, max_pairs) -> a warning the round may run but teach little, or None
    caution: str | None = None
    distributed: bool = True  # may run on several processes under `accelerate launch` (training/distributed.py)

    def config_class(self) -> type:
        return _load(self.config)

    def run_function(self) -> Callable[..., dict[str, Any]]:
        return _load(self.run)

    def plan_sentence(self, here: str | None = None) -> str | None:
        """What a round with the default settings would do on the data there is now, or None; `here`:
        what this machine trains on ("cpu fp32", `versions.trained_on()`), when known."""
        return _load(self.plan)(None, here) if self.plan else None

    def caution_sentence(self, config: Any = None, max_pairs: int | None = None) -> str | None:
        """A warning that the round with `config` (default: its defaults) can run on the data there is
        now but may teach little, or None."""
        return _load(self.caution)(config, max_pairs) if self.caution else None

    def problem(self, config: Any = None) -> str | None:
        """Why the round cannot run with `config` (default: its defaults) now, as one sentence, or
        None: a setting out of bounds or not going with the others, then its readiness check."""
        config = self.config_class()() if config is None else config
        return settings_problem(config) or (self.ready(config) if self.ready else None)


def _load(path: str) -> Any:
    """The object at "module:name" (looked up each time, so a test's monkeypatch is seen)."""
    module, name = path.split(":")
    return getattr(importlib.import_module(module), name)


ROUNDS: dict[str, Round] = {r.name: r for r in (
    Round("reward", "Reward model", "training.reward_config:RewardRoundConfig", "training.reward:run_round",
          produces="reward", ready=preferences.needs_pairs("The reward round"), curves=("loss", "accuracy", "margin")),
    Round("dpo", "DPO", "training.dpo_config:DPORoundConfig", "training.dpo:run_round", produces="policy",
          ready=preferences.needs_pairs("DPO"), curves=("loss", "accuracy", "margin"), plan="training.dpo:plan_sentence",
          caution="training.preferences:few_pairs_caution",
          sweep={"beta": "beta", "learning_rate": "learning_rate", "max_length": "max_length"}),
    Round("ppo", "PPO", "training.ppo_config:PPOConfig", "training.ppo:run_round", produces="policy",
          ready=preferences.needs_reward_model("PPO"), curves=("reward", "kl", "policy_loss", "value_loss", "entropy"),
          quick_limits=(), distributed=False,  # its form has max_steps and max_prompts of its own
          sweep={"beta": "beta", "learning_rate": "learning_rate", "max_length": "max_new_tokens",
                 "max_steps": "steps"}),
    Round("kto", "KTO", "training.kto_config:KTORoundConfig", "training.kto:run_round", produces="policy",
          ready=lambda config: _load("training.kto:ready")(config), curves=("loss", "kl", "reward_desirable", "reward_undesirable")),
    Round("sft", "SFT", "training.sft_config:SFTRoundConfig", "training.sft:run_round", produces="policy",
          ready=lambda config: _load("training.sft:ready")(config), curves=("loss", "token_accuracy")),
)}


def get(name: str) -> Round:
    return ROUNDS[name]


def names(produces: str | None = None) -> list[str]:
    """The rounds' names in registry order (only those making `produces` versions, when given)."""
    return [r.name for r in ROUNDS.values() if produces in (None, r.produces)]


def sweepable() -> tuple[str, ...]:
    """The rounds a β sweep can run (the choices of SweepConfig.method)."""
    return tuple(r.name for r in ROUNDS.values() if r.sweep is not None)


def version_kind(method: str) -> str | None:
    """The kind of version ("policy" or "reward") a method makes; the base model is a policy."""
    if method == "base":
        return "policy"
    return ROUNDS[method].produces if method in ROUNDS else None


def run(name: str, config: Any, reporter, max_steps: int | None = None,
        max_pairs: int | None = None) -> dict[str, Any]:
    """Run round `name` after the same check the Train page shows; NotReady with its sentence if it
    cannot run. In a distributed round the main process checks and the others follow its answer, so
    a label arriving meanwhile cannot start some processes and stop others."""
    problem = distributed.from_main(lambda: ROUNDS[name].problem(config))
    if problem:
        raise preferences.NotReady(problem)
    if distributed.is_main() and (caution := ROUNDS[name].caution_sentence(config, max_pairs)):
        print(caution, file=sys.stderr, flush=True)  # the job's log (the Train page shows it above the form)
    return ROUNDS[name].run_function()(config, reporter, max_steps=max_steps, max_pairs=max_pairs)


def main(name: str, argv: list[str]) -> int:
    """`python -m training <name> [--config FILE.yaml] [--job-id N] [--max-steps N] [--max-pairs N] [--<field> V]`."""
    return runner.run_main(argv, ROUNDS[name].config_class(), functools.partial(run, name),
                           f"python -m training {name}")
