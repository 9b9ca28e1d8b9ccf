"""PPO round: `python -m training ppo`. TRL no longer ships PPO, so this is ours, in the style of
the seed's objective (Ziegler et al. 2019; Stiennon et al. 2020; Ouyang et al. 2022):

  for each step: sample responses to a batch of training prompts from the policy (a fresh LoRA on the
  current policy) → score them with the reward model, normalise → per-token reward −β(log π − log π_ref)
  plus the score at the last token, the reference being the same model with adapters disabled →
  GAE advantages (whitened) and returns → several epochs of minibatches of the clipped surrogate plus
  the clipped value loss → optionally adapt β.

The value head is saved beside the adapter; a round that starts from a PPO version starts from its
value head (trained on that very policy's states) instead of a fresh one.

The maths lives in `training/losses.py` (pure, tested by hand), the sampling in `training/rollout.py`.
"""
from __future__ import annotations

from dataclasses import asdict, replace
from typing import TYPE_CHECKING, Any, Callable

from training import distributed, engine, merged, registry
from training.config_fields import settings_problem
from training.ppo_config import PPOConfig
from training.preferences import NotReady, load_train_prompts

if TYPE_CHECKING:  # torch is imported inside the functions, so the CLI answers --help without it
    import torch

    from training.rollout import RewardFn, Rollout

LOG_KEYS = ("reward", "kl", "entropy", "clip_frac", "approx_kl", "value_loss", "policy_loss", "beta", "ended")


def step_rewards(rollout: Rollout, normalised_scores: torch.Tensor, beta: float, config: PPOConfig):
    """KL-penalised per-token rewards → GAE → whitened advantages and returns.

    Shape: normalised_scores (B,) -> advantages (B, R), returns (B, R), kl per token (B, R).
    """
    from training.losses import gae, kl_penalty_rewards, whiten

    mask = rollout.response_mask
    rewards, kl = kl_penalty_rewards(normalised_scores, rollout.logprobs, rollout.ref_logprobs, mask, beta)
    advantages, returns = gae(rewards, rollout.values, mask, config.gamma, config.lam)
    return whiten(advantages, mask), returns, kl


def minibatch_loss(model, value_head, batch: Rollout, advantages, returns, config: PPOConfig):
    """Clipped surrogate + vf_coef × clipped value loss on one minibatch, with its statistics."""
    import torch

    from training.losses import entropy_from_logits, ppo_policy_loss, ppo_value_loss
    from training.rollout import score_tokens

    logprobs, values, logits = score_tokens(model, value_head, batch.query_ids, batch.query_mask,
                                            batch.response_ids, batch.response_mask, config.temperature,
                                            with_logits=True)
    mask = batch.response_mask
    policy_loss, clip_frac, approx_kl = ppo_policy_loss(logprobs, batch.logprobs, advantages, mask, config.clip_eps)
    value_loss, _ = ppo_value_loss(values, batch.values, returns, mask, config.clip_value)
    with torch.no_grad():
        entropy = entropy_from_logits(logits, mask)
    stats = {"policy_loss": policy_loss, "value_loss": value_loss, "clip_frac": clip_frac,
             "approx_kl": approx_kl, "entropy": entropy}
    return policy_loss + config.vf_coef * value_loss, {k: v.item() for k, v in stats.items()}


def ppo_update(model, value_head, optimizer, rollout: Rollout, advantages, returns, config: PPOConfig,
               generator: torch.Generator, scaler: torch.amp.GradScaler | None = None) -> dict[str, float]:
    """`ppo_epochs` passes of shuffled minibatches over one rollout; returns the mean statistics.

    The policy stays in eval mode (dropout off) while it learns, as in the rollout that sampled and
    scored these tokens: with dropout on, π/π_old would differ from 1 before any update. `scaler`
    scales the loss in fp16 (training/device.py); None or a disabled one changes nothing."""
    import torch

    scaler = scaler or torch.amp.GradScaler(enabled=False)
    model.eval()
    params = [p for group in optimizer.param_groups for p in group["params"]]
    B = len(rollout.scores)
    sums: dict[str, float] = {}
    n = 0
    for _ in range(config.ppo_epochs):
        order = torch.randperm(B, generator=generator)
        for start in range(0, B, config.mini_batch_size):
            index = order[start:start + config.mini_batch_size]
            loss, stats = minibatch_loss(model, value_head, rollout.select(index), advantages[index],
                                         returns[index], config)
            optimizer.zero_grad()
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)  # clip the true gradients
            torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
            scaler.step(optimizer)
            scaler.update()
            sums = {k: sums.get(k, 0.0) + v for k, v in stats.items()}
            n += 1
    return {k: v / n for k, v in sums.items()}


def prompt_batches(prompts: list, batch_size: int, generator: torch.Generator):
    """Endless batches of prompts: a fresh shuffle every pass over the list."""
    import torch

    while True:
        order = torch.randperm(len(prompts), generator=generator).tolist()
        for start in range(0, len(order) - batch_size + 1, batch_size):
            yield [prompts[i] for i in order[start:start + batch_size]]
        if len(order) < batch_size:  # fewer prompts than a batch: repeat them
            yield [prompts[order[i % len(order)]] for i in range(batch_size)]


def ended(rollout: Rollout, stop: list[int]) -> torch.Tensor:
    """Whether each response ended with a stop token within max_new_tokens (`sampling.ended`; its
    mask runs up to and including the first stop token). Shape: -> (B,) bool."""
    from training import sampling

    return sampling.ended(rollout.response_ids, rollout.response_mask, stop)


def train_ppo(model, tokenizer, prompts: list[list[dict]], reward_fn: RewardFn, config: PPOConfig,
              on_step: Callable[[int, dict], None] | None = None, value_head=None,
              reference=None, sampler=None) -> dict[str, Any]:
    """Train a fresh LoRA adapter on `model` (a plain causal LM, the starting policy) with PPO.

    `reward_fn(prompts, response_texts)` returns one score per response, shape (B,). `value_head`
    is the critic to start from (default: a fresh one, zero everywhere). `reference` is the model
    the KL is held to (default: `model` itself with the adapter off). `sampler` samples the rollouts
    instead of `model` (`rollout_engine: vllm`). Returns
    {"model": the PeftModel (save its adapter), "value_head", "metrics": the last step's, "history"}.
    """
    import torch

    from training import device
    from training.losses import AdaptiveKLController, FixedKLController, RunningMoments
    from training.rollout import ValueHead, collect_rollout, wrap_with_lora
    from training.sampling import stop_ids

    if not prompts:
        raise NotReady("PPO needs at least one training prompt; import prompts first.")
    if problem := settings_problem(config):
        raise NotReady(problem)
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = wrap_with_lora(model, config.lora_r, config.lora_alpha)
    value_head = device.place(value_head if value_head is not None else ValueHead(model.config.hidden_size))
    trainable = [p for p in model.parameters() if p.requires_grad] + list(value_head.parameters())
    optimizer = torch.optim.AdamW(trainable, lr=config.learning_rate)
    scaler = device.grad_scaler()
    if reference is not None:
        reference.eval()
    stop = stop_ids(model, tokenizer)
    kl_ctl = (AdaptiveKLController(config.beta, config.kl_target, config.horizon) if config.adaptive_kl
              else FixedKLController(config.beta))
    moments, batches, history = RunningMoments(), prompt_batches(prompts, config.batch_size, generator), []
    for step in range(1, config.total_steps + 1):
        rollout = collect_rollout(model, value_head, tokenizer, next(batches), reward_fn, config.max_new_tokens,
                                  config.temperature, config.max_prompt_tokens, reference, sampler)
        moments.update(rollout.scores)
        scores = moments.normalise(rollout.scores) if config.normalize_scores else rollout.scores.clone()
        finished = ended(rollout, stop)
        scores[~finished] -= config.missing_eos_penalty
        beta = kl_ctl.value
        advantages, returns, kl = step_rewards(rollout, scores, beta, config)
        stats = ppo_update(model, value_head, optimizer, rollout, advantages, returns, config, generator, scaler)
        kl_per_response = kl.sum(1).mean().item()
        kl_ctl.update(kl_per_response, config.batch_size)
        metrics = {**stats, "reward": rollout.scores.mean().item(), "kl": kl_per_response, "beta": beta,
                   "ended": finished.float().mean().item(),
                   "response_length": rollout.response_mask.sum(1).float().mean().item()}
        history.append(metrics)
        if on_step is not None:
            on_step(step, metrics)
    return {"model": model, "value_head": value_head, "metrics": history[-1] if history else {},
            "history": history}


# ---------------------------------------------------------------- the round


def rollout_engine_problem(config: PPOConfig) -> str | None:
    """Why `rollout_engine: vllm` cannot run here, in one sentence, or None (checked before anything loads)."""
    from training import device

    if config.rollout_engine != "vllm":
        return None
    if problem := engine.vllm_problem("set rollout_engine to transformers"):
        return problem
    if device.quantization():
        return (f"PPO's vLLM rollouts take full-precision weights, and {device.QUANT_VAR} is {device.quantization()}; "
                f"unset it or set rollout_engine to transformers.")
    return None


def run_round(config: PPOConfig, reporter, max_steps: int | None = None,
              max_pairs: int | None = None) -> dict[str, Any]:
    """Reward model and prompts → current policy → train → save a new policy version → metrics.
    `max_pairs` caps the prompts rolled out on (PPO has no pairs). Returns {"version": id, **metrics}.
    Whoever starts it asks the registry first whether it can run (`training.registry.run` does)."""
    from training import reward, versions
    from training.model import load_policy
    from training.rollout import load_value_head, save_value_head

    if distributed.world_size() > 1:
        raise NotReady("PPO runs in one process: start it without accelerate launch (reward, DPO, KTO and SFT "
                       "rounds can run on several).")
    config = replace(config, max_steps=max_steps or config.max_steps, max_prompts=max_pairs or config.max_prompts)
    reward_id = config.reward_version or versions.latest_reward_id()
    prompts = load_train_prompts(config.max_prompts)
    scorer = reward.load_scorer(reward_id, penalty=config.uncertainty_penalty)
    base_id = versions.ensure_base_version()
    parent_id = versions.current_policy_id()
    if problem := rollout_engine_problem(config):
        raise NotReady(problem)
    model, tokenizer = load_policy(parent_id, quantize=True)
    sampler = None
    if config.rollout_engine == "vllm":  # started on the parent's weights; `sync` brings the adapter's in
        from training.sampling import stop_ids

        sampler = engine.VllmSampler(merged.folder(parent_id), tokenizer, stop_ids(model, tokenizer))
    parent = versions.get_version(parent_id)
    value_head = load_value_head(model.config.hidden_size, parent.path if parent.method == "ppo" else None)
    reference = load_policy(base_id, quantize=True)[0] if config.reference == "base" and parent_id != base_id else None
    reporter.start(config.total_steps)
    result = train_ppo(model, tokenizer, prompts, scorer, config, on_step=reporter.step, value_head=value_head,
                       reference=reference, sampler=sampler)

    def write(folder):
        result["model"].save_pretrained(folder, safe_serialization=True)
        save_value_head(result["value_head"], folder)
        tokenizer.save_pretrained(folder)

    metrics = {k: result["metrics"][k] for k in LOG_KEYS}
    metrics.update(initial_reward=result["history"][0]["reward"], prompts=len(prompts), reward_version=reward_id)
    with_judgments = versions.get_version(reward_id).judgment_ids  # lineage runs through the reward model
    version_id = versions.create_version("policy", "ppo", parent_id, asdict(config), with_judgments, metrics,
                                         write, make_current=config.make_current)
    # current: whether the new version is now the current policy (not when make_current is off, or
    # when someone made another version current while this round ran)
    return {"version": version_id, "parent": parent_id, "current": versions.current_policy_id() == version_id,
            **metrics}


def main(argv: list[str]) -> int:
    """`python -m training ppo [--config FILE.yaml] [--job-id N] [--max-steps N] [--max-pairs N] [--<field> V]`."""
    return registry.main("ppo", argv)
