"""Settings of a DPO round: one dataclass, from which the CLI flags and the Train page form are built."""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

from training import distributed
from training.distributed import ACCELERATE_CONFIG_ENV

LOSS_TYPES = ("sigmoid", "ipo", "hinge", "robust", "bco_pair", "sppo_hard", "nca_pair", "exo_pair",
              "aot", "aot_unpaired", "apo_zero", "apo_down", "discopop", "sigmoid_norm")

# A LoRA round on a hundred-odd pairs learns little in one pass at a full fine-tune's rate: it aims
# for about TARGET_STEPS optimizer steps, repeating the pairs at most MAX_EPOCHS times (bench/learning.py).
TARGET_STEPS = 96
MAX_EPOCHS = 4

SMOOTHED_LOSSES = ("robust", "exo_pair", "aot", "aot_unpaired")  # the losses TRL applies label_smoothing to
MARGIN_LOSSES = ("sigmoid", "hinge", "robust", "exo_pair", "discopop")  # functions of β·(chosen − rejected log-ratio) alone


@dataclass
class DPORoundConfig:
    """Direct Preference Optimization on the labeled pairs, with a LoRA adapter on the current policy."""

    beta: float = field(default=0.1, metadata={"basic": True, "above": 0,
        "help": "β: how far the policy may move from the reference (the starting policy). Smaller = further."})
    loss_type: str = field(default="sigmoid", metadata={"basic": True,
        "help": "DPO loss: sigmoid (the paper's), ipo, hinge, robust, ... (TRL's names).", "choices": LOSS_TYPES})
    learning_rate: float = field(default=5e-4, metadata={"basic": True, "above": 0, "help": (
        "AdamW learning rate of the LoRA adapter. On 128 labels of one taste (bench/learning.py), 5e-5 for one "
        "pass left the policy where it was (win rate 0.51 against the base); 5e-4 for 3 passes reached 0.96.")})
    epochs: float | None = field(default=None, metadata={"basic": True, "above": 0, "help": (
        f"Passes over the training pairs; empty = enough for about {TARGET_STEPS} optimizer steps, from 1 to "
        f"{MAX_EPOCHS} (3 for 128 pairs at batch 4, 1 from {TARGET_STEPS * 4} pairs on).")})
    batch_size: int = field(default=4, metadata={"min": 1, "help": "Pairs per optimizer step."})
    max_length: int = field(default=512, metadata={"min": 8,
        "help": "Longest prompt + response in tokens; longer responses are cut at the end."})
    max_prompt_length: int = field(default=256, metadata={"min": 1,
        "help": "Longest prompt in tokens (at most half of max length, so the responses keep room); the "
                "oldest turns of longer conversations are dropped."})
    label_smoothing: float = field(default=0.0, metadata={"min": 0, "below": 0.5, "help": (
        "Share of preference labels assumed flipped; only the robust, exo_pair, aot and aot_unpaired losses use "
        "it (exo_pair needs it above 0, e.g. 1e-3).")})
    ld_alpha: float | None = field(default=None, metadata={"min": 0, "max": 1, "help": (
        "Length-desensitised DPO (LD-DPO, Liu et al. 2024): the log-probability of the tokens past the shorter "
        "answer's length counts this much (0.5 is a common choice); empty = plain DPO. Use it when the labels "
        "favour longer answers and the tuned model grows wordy.")})
    length_alpha: float | None = field(default=None, metadata={"min": 0, "help": (
        "Length-regularised DPO (R-DPO, Park et al. 2024): each pair's margin gets length_alpha × (chosen tokens − "
        "rejected tokens), so a pair won by the longer answer teaches less and one won by the shorter teaches more "
        "(0.01–0.05 with β 0.1); empty = plain DPO. Use it when people pick the longer answer more than the content "
        "deserves. Held-out accuracy is still the implicit reward's alone. Needs the reference log-probs computed "
        "once (precompute auto or yes), so not on several processes, and a loss of the margin (sigmoid, hinge, "
        "robust, exo_pair, discopop).")})
    lora_r: int = field(default=16, metadata={"min": 1, "help": "LoRA rank of the new adapter."})
    lora_alpha: int = field(default=32, metadata={"min": 1, "help": "LoRA alpha (scale = alpha / r)."})
    reference: str = field(default="base", metadata={
        "help": "The reference the KL is held to: base (the base model, so the KL a round controls is the KL the "
                "Evaluate page plots, however many rounds came before) or parent (the version this round starts "
                "from).", "choices": ("base", "parent")})
    precompute_ref_log_probs: str = field(default="auto", metadata={
        "help": "Compute the reference log-probs once before training: auto = when it pays (more than one "
                "epoch), yes, or no.", "choices": ("auto", "yes", "no")})
    gradient_checkpointing: bool = field(default=True, metadata={
        "help": "Recompute activations in the backward pass instead of keeping them: on SmolLM2, 16 pairs peaked "
                "at 5.6 GB instead of 9.3 GB, in 175 s both ways (bench/dpo.py, back to back)."})
    heldout_fraction: float = field(default=0.1, metadata={"min": 0, "below": 1,
        "help": "Share of prompts held out for evaluation when the workspace has no held-out prompts yet."})
    seed: int = field(default=0, metadata={"help": "Random seed of data order and the adapter's initialisation."})
    pairs: str = field(default="all", metadata={"choices": ("all", "on-policy"), "help": (
        "Which labeled pairs to train on: all, or on-policy: only those whose two answers the current policy "
        "sampled, with any rewrite or AI verdict on them (iterative DPO: each round learns the labels made on its "
        "starting policy's own answers, and its time does not grow with every label made before; the Data page's "
        "queue order \"the current policy's pairs first\" serves them first).")})
    auto_pairs: bool = field(default=False, metadata={
        "help": "Also train on the autopilot's automatic pairs (best against worst of the policy's answers by "
                "the reward model) that nobody judged; the autopilot turns this on for its rounds."})
    make_current: bool = field(default=True, metadata={
        "help": "Make the new version the current policy that generation uses."})

    @property
    def on_policy(self) -> bool:
        """Whether the round trains on the current policy's own pairs alone (`pairs: on-policy`)."""
        return self.pairs == "on-policy"

    def epochs_for(self, pairs: int) -> float:
        """The passes a round on `pairs` training pairs makes: `epochs`, or chosen from the pairs."""
        if self.epochs:
            return self.epochs
        steps_per_epoch = max(1, math.ceil(pairs / self.batch_size))
        return float(min(MAX_EPOCHS, max(1, round(TARGET_STEPS / steps_per_epoch))))

    def plan(self, pairs: int) -> dict[str, float]:
        """What a round on `pairs` training pairs will do: {"pairs", "epochs", "steps"}."""
        epochs = self.epochs_for(pairs)
        return {"pairs": pairs, "epochs": epochs, "steps": math.ceil(math.ceil(pairs / self.batch_size) * epochs)}

    def problem(self) -> str | None:
        """The sentence saying why these settings do not go together, or None."""
        if self.loss_type == "exo_pair" and self.label_smoothing <= 0:
            return "The exo_pair loss needs label_smoothing above 0 (for example 1e-3)."
        several_processes = bool(os.environ.get(ACCELERATE_CONFIG_ENV)) or distributed.world_size() > 1
        if self.precompute_ref_log_probs == "yes" and several_processes:
            return ("precompute_ref_log_probs: yes does not work under accelerate launch (each process caches the "
                    "reference in its own temporary folder); use auto or no.")
        if self.length_alpha and self.loss_type not in MARGIN_LOSSES:
            return (f"length_alpha adds to the chosen-minus-rejected margin, which the {self.loss_type} loss does not "
                    f"use as such; pick one of {', '.join(MARGIN_LOSSES)}, or leave length_alpha empty.")
        if self.length_alpha and (self.precompute_ref_log_probs == "no" or several_processes):
            return ("length_alpha needs the reference log-probs computed once before training: set "
                    "precompute_ref_log_probs to auto or yes, and run the round in one process.")
        if self.label_smoothing > 0 and self.loss_type not in SMOOTHED_LOSSES:
            return (f"label_smoothing has no effect on the {self.loss_type} loss; set it to 0 or pick one of "
                    f"{', '.join(SMOOTHED_LOSSES)}.")
        return None
