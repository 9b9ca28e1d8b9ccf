"""Settings of a PPO round: one dataclass, from which the CLI flags and the Train page form are built.
Each field's bounds are in its metadata, checked by `training.config_fields.settings_problem` like every round's."""
from __future__ import annotations

from dataclasses import dataclass, field

from training.config_fields import limit_field


@dataclass
class PPOConfig:
    """Defaults suit SmolLM2-135M on a CPU: short responses, small batches, a LoRA adapter."""

    learning_rate: float = field(default=3e-4, metadata={"above": 0, "basic": True,
        "help": "AdamW learning rate of the LoRA adapter and value head (1e-4 moved SmolLM2 too little in 20 steps: "
                "README, Does it learn?)."})
    steps: int = field(default=20, metadata={"min": 1, "basic": True,
        "help": "Number of PPO iterations (each: one rollout batch, then several epochs on it)."})
    batch_size: int = field(default=8, metadata={"min": 1, "help": "Prompts per rollout batch."})
    mini_batch_size: int = field(default=4, metadata={"min": 1, "help": "Sequences per gradient step within a batch."})
    ppo_epochs: int = field(default=2, metadata={"min": 1, "help": "Passes over each rollout batch."})
    max_new_tokens: int = field(default=48, metadata={"min": 1, "help": "Longest response sampled in a rollout, in tokens."})
    max_prompt_tokens: int = field(default=256, metadata={"min": 1,
        "help": "Prompts longer than this keep only their last tokens."})
    temperature: float = field(default=1.0, metadata={"above": 0,
        "help": "Sampling temperature of the rollouts (log-probs use the same one)."})
    beta: float = field(default=0.05, metadata={"min": 0, "basic": True,
        "help": "KL coefficient β: per-token penalty β·(log π − log π_ref) against the starting policy."})
    adaptive_kl: bool = field(default=False, metadata={"help": "Adapt β towards kl_target (Ziegler et al. 2019)."})
    kl_target: float = field(default=6.0, metadata={"above": 0,
        "help": "KL per response the adaptive controller aims for, in nats."})
    kl_horizon: int | None = field(default=None, metadata={"min": 1, "help": (
        "Horizon of the adaptive KL controller, in samples; empty = a tenth of the samples the round draws, so β "
        "can move several-fold within one round (10,000, Ziegler et al.'s value, barely moves in 20 steps).")})
    gamma: float = field(default=1.0, metadata={"min": 0, "max": 1, "help": "Discount γ of GAE."})
    lam: float = field(default=0.95, metadata={"min": 0, "max": 1, "help": "λ of GAE: bias/variance trade-off of the advantages."})
    clip_eps: float = field(default=0.2, metadata={"above": 0, "help": "Clip range ε of the policy ratio π/π_old."})
    clip_value: float = field(default=0.2, metadata={"min": 0, "help": "Clip range of the value head's change per batch."})
    vf_coef: float = field(default=0.1, metadata={"min": 0, "help": "Weight of the value loss in the total loss."})
    missing_eos_penalty: float = field(default=1.0, metadata={"min": 0, "help": (
        "Subtracted from the (normalised) score of a response that never ended within max_new_tokens, so the "
        "policy is not rewarded for answers the reward model only saw cut off (TRL's missing_eos_penalty).")})
    reference: str = field(default="base", metadata={"choices": ("base", "parent"), "help": (
        "The reference the KL penalty holds the policy to: base (the base model: the KL penalised is the KL the "
        "Evaluate page plots) or parent (the version this round starts from).")})
    uncertainty_penalty: float = field(default=0.0, metadata={"min": 0, "help": (
        "Subtract this many standard deviations of the reward model's heads from each score (a conservative "
        "reward: the policy gains little where the ensemble disagrees, Coste et al. 2024). Needs a reward model "
        "of method heads with two or more heads; a fine-tuned one has no spread.")})
    normalize_scores: bool = field(default=True, metadata={
        "help": "Normalise reward-model scores by their running mean and std."})
    max_grad_norm: float = field(default=1.0, metadata={"min": 0, "help": "Gradient norm clip."})
    rollout_engine: str = field(default="transformers", metadata={"choices": ("transformers", "vllm"), "help": (
        "What samples the rollouts: vllm on a CUDA card where it is installed, its weights synced from the policy "
        "before each rollout; the log-probs PPO trains on always come from transformers.")})
    lora_r: int = field(default=16, metadata={"min": 1, "help": "LoRA rank of the new adapter."})
    lora_alpha: int = field(default=32, metadata={"min": 1, "help": "LoRA alpha (scale = alpha / r)."})
    max_prompts: int | None = field(default=None, metadata={"min": 0,
        "help": "Use at most this many training prompts (all if empty)."})
    seed: int = field(default=0, metadata={
        "help": "Random seed of prompt order, sampling and the adapter's initialisation."})
    max_steps: int | None = limit_field("max_steps")  # the round-wide limit, as PPO's own field (caps `steps`)
    make_current: bool = field(default=True, metadata={"help": "Make the trained policy the one generation uses."})
    reward_version: str | None = field(default=None, metadata={
        "help": "Reward model version to score with (the latest if empty)."})

    @property
    def total_steps(self) -> int:
        return min(self.steps, self.max_steps) if self.max_steps else self.steps

    @property
    def horizon(self) -> int:
        """The adaptive KL controller's horizon in samples (see kl_horizon)."""
        return self.kl_horizon or max(1, self.total_steps * self.batch_size // 10)
