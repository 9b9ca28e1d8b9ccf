"""Settings of a reward round: one dataclass, from which the CLI flags and the Train page form are built."""
from __future__ import annotations

from dataclasses import dataclass, field

BACKBONES = ("policy", "minilm", "encoder")
METHODS = ("heads", "fine-tune")
LENGTHS = ("free", "remove", "keep")  # training/reward_heads.py
# The hidden states whose mean over the response the heads read, as fractions of the depth (0: the
# token embeddings, 1: the last layer); training/reward_heads.py says why the embeddings are in.
LAYER_SETS = {"embeddings+hidden": (0.0, 0.5, 1.0), "hidden": (0.5, 1.0)}
DEFAULT_LAYERS = "embeddings+hidden"
# LoRA on the policy; full fine-tune of MiniLM or of an encoder of one's own
DEFAULT_LEARNING_RATE = {"policy": 1e-4, "minilm": 6e-5, "encoder": 6e-5}


@dataclass
class RewardRoundConfig:
    """A Bradley-Terry reward model trained on the labeled pairs."""

    backbone: str = field(default="policy", metadata={"basic": True, "choices": BACKBONES,
        "help": "policy: the policy's base model (the default; with method heads it reads your labeled answers "
                "best, bench/reward.py); minilm: the small all-MiniLM-L6-v2 encoder, about 12x quicker to read (pick it for thousands of "
                "pairs on a CPU: SmolLM2 reads about 1.5 answers a second on one core); "
                "encoder: the encoder in backbone_path."})
    backbone_path: str = field(default="", metadata={
        "help": "With backbone encoder: a folder holding an encoder model (config.json and safetensors weights, "
                "e.g. a BERT, DistilBERT or DeBERTa) and its tokenizer."})
    method: str = field(default="heads", metadata={"basic": True, "choices": METHODS,
        "help": "heads: the backbone stays frozen and an ensemble of linear Bradley-Terry heads is fitted on its "
                "features (seconds once the responses are read; its spread is the reward's uncertainty); "
                "fine-tune: the backbone is trained too (fully for an encoder, LoRA on the policy), many minutes "
                "on a CPU."})
    heads: int = field(default=8, metadata={"min": 1, "help": "Heads in the ensemble (method heads): the first fits "
                                            "every pair, the others bootstrap resamples of the conversations."})
    length: str = field(default="free", metadata={"basic": True, "choices": LENGTHS,
        "help": "Method heads: free reads the features as they are; keep fits a length head beside a length-free "
                "content head, so the reward weighs length exactly as your labels did; remove drops that length "
                "head when scoring, so the reward ignores length (for annotators who favour long answers without "
                "meaning to, and for PPO that should not learn to pad)."})
    layers: str = field(default=DEFAULT_LAYERS, metadata={"choices": tuple(LAYER_SETS),
        "help": "Method heads: what the heads read of each answer. embeddings+hidden: the mean of its token "
                "embeddings (which words it uses) and of the middle and last layers' hidden states; hidden: the "
                "hidden states alone (the default before 2026-12-07)."})
    learning_rate: float | None = field(default=None, metadata={"above": 0,
        "help": "Method fine-tune: AdamW learning rate; empty = the backbone's default (1e-4 with LoRA, 6e-5 for MiniLM)."})
    epochs: float = field(default=1.5, metadata={"above": 0, "help": "Method fine-tune: passes over the training pairs."})
    batch_size: int = field(default=8, metadata={"min": 1, "help": "Pairs per optimizer step (method fine-tune); "
                                                 "responses read at once (method heads)."})
    max_length: int = field(default=256, metadata={"min": 8,
        "help": "Longest prompt + response in tokens: the response's end is cut first, and a long prompt loses "
                "its oldest turns (the response keeps at least half)."})
    lora_r: int = field(default=16, metadata={"min": 1, "help": "LoRA rank (policy backbone)."})
    lora_alpha: int = field(default=32, metadata={"min": 1, "help": "LoRA alpha (scale = alpha / r)."})
    center_rewards_coefficient: float = field(default=0.01, metadata={"min": 0,
        "help": "Pulls mean rewards towards zero (Eisenstein et al. 2023), so scores are comparable across rounds."})
    heldout_fraction: float = field(default=0.1, metadata={"min": 0, "below": 1,
        "help": "Share of prompts held out for evaluation when the workspace has no held-out prompts yet."})
    seed: int = field(default=0, metadata={"help": "Random seed of data order and the head's initialisation."})

    def problem(self) -> str | None:
        """The sentence saying why these settings do not go together, or None."""
        if self.backbone == "encoder" and not self.backbone_path.strip():
            return "backbone encoder needs backbone_path: a folder with the encoder's config.json and safetensors."
        if self.backbone != "encoder" and self.backbone_path.strip():
            return "backbone_path is read only with backbone encoder; clear it or set backbone to encoder."
        if self.method != "heads" and self.layers != DEFAULT_LAYERS:
            return f"layers is read only with method heads; set it back to {DEFAULT_LAYERS} or set method to heads."
        return None

    @property
    def lr(self) -> float:
        return self.learning_rate or DEFAULT_LEARNING_RATE[self.backbone]
