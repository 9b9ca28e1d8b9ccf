"""Settings of an SFT round: one dataclass, from which the CLI flags and the Train page form are built."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class SFTRoundConfig:
    """Supervised fine-tuning on the answers people wrote (rewrites and imported demonstrations),
    with a LoRA adapter on the current policy; the loss is on the answer's tokens only."""

    learning_rate: float = field(default=2e-4, metadata={"basic": True, "above": 0, "help": (
        "Learning rate of the LoRA adapter.")})
    epochs: float = field(default=3.0, metadata={"basic": True, "above": 0, "help": (
        "Passes over the demonstrations (a few dozen of them teach little in one pass).")})
    batch_size: int = field(default=4, metadata={"min": 1, "help": "Demonstrations per optimizer step."})
    max_length: int = field(default=512, metadata={"min": 8, "help": (
        "Longest prompt + answer in tokens; longer ones are cut at the end.")})
    lora_r: int = field(default=16, metadata={"min": 1, "help": "LoRA rank of the new adapter."})
    lora_alpha: int = field(default=32, metadata={"min": 1, "help": "LoRA alpha (scale = alpha / r)."})
    seed: int = field(default=0, metadata={"help": "Random seed of data order and the adapter's initialisation."})
    make_current: bool = field(default=True, metadata={
        "help": "Make the new version the current policy that generation uses."})
