"""The losses, KL penalty and advantage estimators of prefloop's rounds, as pure tensor functions.

Every function takes plain tensors and returns tensors; none touches a model, so each is unit-tested
against numbers worked out by hand (tests/test_losses.py). Masks are 1 on real tokens, 0 on padding.

References:
- Schulman et al. 2017, "Proximal Policy Optimization Algorithms", eq. 7 (clipped surrogate) and 9.
- Schulman et al. 2016, "High-Dimensional Continuous Control Using GAE", eq. 16.
- Ziegler et al. 2019, "Fine-Tuning Language Models from Human Preferences", eq. 2 (KL-penalised
  reward) and §2.2 (adaptive KL coefficient); Stiennon et al. 2020, eq. 1.
"""
from __future__ import annotations

import math

import torch


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of `x` over the positions where `mask` is 1 (over all of them, or along `dim`).

    Shape: x (B, T), mask (B, T) -> () or, with `dim`, x.shape without `dim`.
    """
    mask = mask.to(x.dtype)
    if dim is None:
        return (x * mask).sum() / mask.sum().clamp(min=1.0)
    return (x * mask).sum(dim) / mask.sum(dim).clamp(min=1.0)


def masked_var(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Population variance of `x` over the masked positions: E[(x − E[x])²].

    Shape: x (B, T), mask (B, T) -> ().
    """
    mean = masked_mean(x, mask)
    return masked_mean((x - mean) ** 2, mask)


def whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8) -> torch.Tensor:
    """(x − mean) / sqrt(var + eps) over the masked positions; padding comes back as 0.

    Used on GAE advantages before the surrogate (standard PPO practice, Schulman et al. 2017
    baselines code). With `shift_mean=False` only the scale changes.

    Shape: x (B, T), mask (B, T) -> (B, T).
    """
    mean, var = masked_mean(x, mask), masked_var(x, mask)
    out = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return out * mask.to(x.dtype)


def token_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """log softmax(logits)[label] at every position: log π(y_t | x, y_<t).

    Shape: logits (B, T, V), labels (B, T) -> (B, T).
    """
    return torch.gather(logits.log_softmax(-1), -1, labels.unsqueeze(-1)).squeeze(-1)


def exact_kl(logits_p: torch.Tensor, logits_q: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Σ_t KL(p(· | s_t) ‖ q(· | s_t)) over the masked positions of each row, the whole vocabulary
    summed at every position: KL(p‖q) = Σ_v p(v) (log p(v) − log q(v)) (Schulman 2020, "k-exact").

    Along sequences sampled from p this is an unbiased estimate of the sequence-level KL(p‖q) and,
    unlike the sampled-token estimate Σ_t log p(y_t) − log q(y_t), never negative.

    Shape: logits_p, logits_q (B, T, V), mask (B, T) -> (B,).
    """
    logp = logits_p.float().log_softmax(-1)
    logq = logits_q.float().log_softmax(-1)
    per_position = (logp.exp() * (logp - logq)).sum(-1).clamp(min=0)  # (B, T); clamp: rounding only
    return (per_position * mask.to(per_position.dtype)).sum(-1)


def entropy_from_logits(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean per-token entropy H(π(·|s_t)) = −Σ_v p_v log p_v over the masked positions, in nats.

    Shape: logits (B, T, V), mask (B, T) -> ().
    """
    logp = logits.log_softmax(-1)
    per_token = -(logp.exp() * logp).sum(-1)  # (B, T)
    return masked_mean(per_token, mask)


def last_token_index(mask: torch.Tensor) -> torch.Tensor:
    """Index of the last 1 in each row of `mask` (0 for an all-zero row).

    Shape: mask (B, T) -> (B,).
    """
    T = mask.shape[1]
    positions = torch.arange(T, device=mask.device).expand_as(mask)
    return torch.where(mask.bool(), positions, torch.zeros_like(positions)).max(dim=1).values


def kl_penalty_rewards(
    scores: torch.Tensor, logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor, beta: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token rewards r_t = −β (log π(y_t) − log π_ref(y_t)), plus the score at the last real token.

    Ziegler et al. 2019, eq. 2: R(x, y) = r(x, y) − β log(π(y|x) / π_ref(y|x)), spread over tokens
    as in Stiennon et al. 2020. Returns the rewards and the per-token KL estimate log π − log π_ref.

    Shape: scores (B,), logprobs (B, T), ref_logprobs (B, T), mask (B, T) -> rewards (B, T), kl (B, T).
    """
    mask = mask.to(logprobs.dtype)
    kl = (logprobs - ref_logprobs) * mask
    rewards = -beta * kl
    last = last_token_index(mask)
    rewards[torch.arange(len(scores), device=rewards.device), last] += scores.to(rewards.dtype)
    return rewards, kl


def gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimates and the returns the value head regresses on.

    Schulman et al. 2016, eq. 16: δ_t = r_t + γ V(s_{t+1}) − V(s_t), Â_t = Σ_l (γλ)^l δ_{t+l}, computed
    backwards; the episode ends at the last real token (V after it is 0). Returns = Â + V.

    Shape: rewards (B, T), values (B, T), mask (B, T) -> advantages (B, T), returns (B, T).
    """
    mask = mask.to(values.dtype)
    values = values * mask
    T = rewards.shape[1]
    advantages = torch.zeros_like(rewards)
    next_value = torch.zeros_like(rewards[:, 0])
    next_advantage = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(T)):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        next_advantage = (delta + gamma * lam * next_advantage) * mask[:, t]
        next_value = values[:, t]
        advantages[:, t] = next_advantage
    return advantages, (advantages + values) * mask


def ppo_policy_loss(
    logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, clip_eps: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Clipped surrogate loss −min(ρ Â, clip(ρ, 1−ε, 1+ε) Â), ρ = π/π_old (Schulman et al. 2017, eq. 7).

    Also returns the share of tokens where the clipped term was the one used, and the approximate
    KL(π_old ‖ π) ≈ ½ E[(log ρ)²] (Schulman 2020, "Approximating KL divergence", k2).

    Shape: logprobs (B, T), old_logprobs (B, T), advantages (B, T), mask (B, T) -> three scalars ().
    """
    log_ratio = logprobs - old_logprobs
    ratio = log_ratio.exp()
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1 - clip_eps, 1 + clip_eps)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    clip_frac = masked_mean((clipped > unclipped).to(logprobs.dtype), mask)
    approx_kl = masked_mean(0.5 * log_ratio.detach() ** 2, mask)
    return loss, clip_frac.detach(), approx_kl


def ppo_value_loss(
    values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor, clip_value: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Clipped value loss ½ max((V − R)², (V_old + clip(V − V_old, −c, c) − R)²) and its clip fraction.

    As in the PPO baselines code behind Schulman et al. 2017 (eq. 9's L^VF with clipping).

    Shape: values (B, T), old_values (B, T), returns (B, T), mask (B, T) -> loss (), clip_frac ().
    """
    clipped_values = old_values + (values - old_values).clamp(-clip_value, clip_value)
    unclipped_err = (values - returns) ** 2
    clipped_err = (clipped_values - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(unclipped_err, clipped_err), mask)
    clip_frac = masked_mean((clipped_err > unclipped_err).to(values.dtype), mask)
    return loss, clip_frac.detach()


class AdaptiveKLController:
    """β that tracks a KL target (Ziegler et al. 2019, §2.2):

    e_t = clip(KL_t / target − 1, −0.2, 0.2),  β_{t+1} = β_t (1 + K_β e_t),  K_β = n_steps / horizon.
    """

    def __init__(self, init_beta: float, target: float, horizon: int):
        self.value, self.target, self.horizon = init_beta, target, horizon

    def update(self, current_kl: float, n_steps: int) -> float:
        error = min(max(current_kl / self.target - 1, -0.2), 0.2)
        self.value *= 1 + error * n_steps / self.horizon
        return self.value


class FixedKLController:
    """A constant β, with the same interface as `AdaptiveKLController`."""

    def __init__(self, init_beta: float):
        self.value = init_beta

    def update(self, current_kl: float, n_steps: int) -> float:
        return self.value


class RunningMoments:
    """Running mean and standard deviation of every score seen so far (Chan et al. 1979 merge),
    used to normalise reward-model scores across PPO batches."""

    def __init__(self):
        self.mean, self.var, self.count = 0.0, 1.0, 0

    def update(self, x: torch.Tensor) -> None:
        """Shape: x (N,)."""
        n = x.numel()
        batch_mean, batch_var = x.mean().item(), x.var(unbiased=False).item()
        total = self.count + n
        delta = batch_mean - self.mean
        m2 = self.var * self.count + batch_var * n + delta**2 * self.count * n / total
        self.mean += delta * n / total
        self.var, self.count = m2 / total, total

    @property
    def std(self) -> float:
        return math.sqrt(self.var)

    def normalise(self, x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
        """(x − running mean) / running std. Shape: x (N,) -> (N,)."""
        return (x - self.mean) / (self.std + eps)
