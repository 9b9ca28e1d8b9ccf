"""`python -m training <command> ...`: each command lives in its own module and is imported lazily,
so `versions` answers in a blink and only the rounds pay for torch."""
from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "generate": "training.generate",
    "reward": "training.reward",
    "reward-eval": "training.reward_eval",
    "dpo": "training.dpo",
    "ppo": "training.ppo",
    "versions": "training.versions",
    "evaluate": "training.evaluate",
    "sweep": "training.sweep",
    "arena": "training.arena",
    "export": "training.export",
    "env": "training.env",
    "worker": "training.jobs",
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        print(f"usage: python -m training {{{','.join(COMMANDS)}}} [options]", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[argv[0]])
    return module.main(argv[1:]) or 0


if __name__ == "__main__":
    sys.exit(main())
