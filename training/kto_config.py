"""Settings of a KTO round: one dataclass, from which the CLI flags and the Train page form are built."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class KTORoundConfig:
    """Kahneman-Tversky Optimization (Ethayarajh et al. 2024) on single answers marked good or bad: each
    labeled pair's chosen answer is a desirable example and its rejected one an undesirable example,
    with a LoRA adapter on the current policy; the reference is that policy."""

    beta: float = field(default=0.1, metadata={"basic": True, "above": 0,
        "help": "β: how far the policy may move from the reference. Smaller = further."})
    learning_rate: float = field(default=5e-4, metadata={"basic": True, "above": 0,
        "help": "AdamW learning rate of the LoRA adapter (DPO's default, which moved SmolLM2 on 128 labels)."})
    epochs: float = field(default=3.0, metadata={"basic": True, "above": 0, "help": "Passes over the examples."})
    batch_size: int = field(default=4, metadata={"min": 2,
        "help": "Examples per optimizer step (at least 2: KTO estimates its KL term from mismatched pairs in a batch)."})
    desirable_weight: float | None = field(default=None, metadata={"above": 0, "help": (
        "Weight of the desirable examples' loss; empty = balanced from the counts, so desirable weight × "
        "desirable examples equals undesirable weight × undesirable examples (TRL's advice: a ratio in [1, 4/3]).")})
    max_length: int = field(default=512, metadata={"min": 8,
        "help": "Longest prompt + answer in tokens; longer ones are cut."})
    lora_r: int = field(default=16, metadata={"min": 1, "help": "LoRA rank of the new adapter."})
    lora_alpha: int = field(default=32, metadata={"min": 1, "help": "LoRA alpha (scale = alpha / r)."})
    heldout_fraction: float = field(default=0.1, metadata={"min": 0, "below": 1,
        "help": "Share of prompts held out when the workspace has no held-out prompts yet (kept out of training)."})
    seed: int = field(default=0, metadata={"help": "Random seed of data order and the adapter's initialisation."})
    make_current: bool = field(default=True, metadata={
        "help": "Make the new version the current policy that generation uses."})
