"""Settings of an evaluation run: one dataclass for the CLI flags and the Evaluate page form."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class EvaluateConfig:
    """Measure policy versions: mean reward and KL from the base model on held-out prompts."""

    versions: str = field(default="", metadata={"help": "Comma-separated policy versions to measure (empty = all)."})
    prompts: int = field(default=16, metadata={"min": 1,
        "help": "Held-out prompts per version (the same for every version)."})
    samples: int = field(default=2, metadata={"min": 1, "help": "Responses sampled per prompt."})
    max_new_tokens: int = field(default=64, metadata={"min": 1, "help": "Longest response sampled, in tokens."})
    seed: int = field(default=0, metadata={"help": "Seed of the sampling; fixed so versions see the same draws."})
    reward_version: str | None = field(default=None, metadata={"help": "Reward version that scores (default: latest)."})
    batch_size: int = field(default=16, metadata={"min": 1, "help": "Sequences per forward pass."})
