"""`python -m training <command> ...`: a round from the registry (`training/registry.py`), or one of
the other commands, each in its own module, imported lazily, so `versions` answers in a blink and
only the rounds pay for torch."""
from __future__ import annotations

import importlib
import sys

from training import registry

COMMANDS = {  # the commands that are not rounds
    "generate": "training.generate",
    "prepare": "training.engine",
    "reward-eval": "training.reward_eval",
    "versions": "training.versions",
    "evaluate": "training.evaluate",
    "sweep": "training.sweep",
    "arena": "training.arena_answers",
    "judge": "training.judge",
    "suggest": "training.suggest",
    "autopilot": "training.autopilot",
    "export": "training.export",
    "env": "training.env",
    "worker": "training.jobs",
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv[0] if argv else None
    if command in registry.ROUNDS:
        return registry.main(command, argv[1:])
    if command not in COMMANDS:
        print(f"usage: python -m training {{{','.join([*registry.ROUNDS, *COMMANDS])}}} [options]", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[command])
    return module.main(argv[1:]) or 0


if __name__ == "__main__":
    sys.exit(main())
