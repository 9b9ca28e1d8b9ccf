"""PPO on a tiny 2-layer model with synthetic rewards: it learns what the reward asks, the KL penalty
holds it near the reference, the value head learns, and the reference itself never moves.

A randomly initialised 16-dim model has logits within about ±0.3 (embeddings of std 0.02 against a
normed hidden state), so no adapter could make any token likely; the tied embeddings are scaled up
to give it the logit range of a trained model. Each run takes a few seconds on one thread.
"""
from __future__ import annotations

import math

import pytest
import torch

from tests.tiny_models import make_tiny_policy
from training.losses import token_logprobs
from training.ppo import LOG_KEYS, PPOError, train_ppo
from training.ppo_config import PPOConfig
from training.rollout import encode_prompts, eos_ids, response_mask_from_ids, score_tokens

PROMPTS = [[{"role": "user", "content": c}] for c in
           ["What is the capital of France?", "Write a short poem about the sea.", "How do I sort a list?",
            "Give me three tips for sleeping better."]]
TARGET_IDS = set(range(100, 140))  # 10 % of the 400-token vocabulary


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    return make_tiny_policy(tmp_path_factory.mktemp("tiny_policy"))


def load(folder):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(1)
    model = AutoModelForCausalLM.from_pretrained(folder)
    with torch.no_grad():
        model.model.embed_tokens.weight.mul_(20)  # tied with lm_head: logits of a trained model's range
    return model, AutoTokenizer.from_pretrained(folder)


def target_share_reward(tokenizer):
    """Share of the response's tokens that are in TARGET_IDS, from the decoded text."""
    def reward_fn(prompts, texts):
        ids = [tokenizer.encode(t, add_special_tokens=False) for t in texts]
        return torch.tensor([sum(i in TARGET_IDS for i in row) / max(len(row), 1) for row in ids])
    return reward_fn


def config(**overrides) -> PPOConfig:
    base = dict(learning_rate=1e-2, steps=20, batch_size=8, mini_batch_size=4, ppo_epochs=4, max_new_tokens=12,
                lora_r=4, lora_alpha=8, seed=0)
    return PPOConfig(**{**base, **overrides})


def mean(history, key, part):
    rows = history[part]
    return sum(r[key] for r in rows) / len(rows)


def test_response_mask_keeps_the_first_stop_token_and_nothing_after():
    ids = torch.tensor([[5, 6, 2, 7, 2], [5, 5, 5, 5, 5], [2, 9, 9, 9, 9]])
    assert response_mask_from_ids(ids, [2]).tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]]


def test_scored_logprobs_are_those_generation_used(tiny_folder):
    """Left padding and position ids: PPO's log π_old must be the distribution the tokens came from."""
    model, tok = load(tiny_folder)
    query_ids, query_mask = encode_prompts(tok, PROMPTS, max_prompt_tokens=64)
    assert (query_mask[:, 0] == 0).any(), "the prompts should need left padding"
    stop = eos_ids(model, tok)
    out = model.generate(input_ids=query_ids, attention_mask=query_mask, do_sample=False, max_new_tokens=6,
                         output_logits=True, return_dict_in_generate=True, eos_token_id=stop,
                         pad_token_id=tok.pad_token_id)
    response = out.sequences[:, query_ids.shape[1]:]
    mask = response_mask_from_ids(response, stop)
    generated = token_logprobs(torch.stack(out.logits, 1), response) * mask
    scored, _, _ = score_tokens(model, None, query_ids, query_mask, response, mask, temperature=1.0)
    assert torch.allclose(scored, generated, atol=1e-4)


def test_ppo_raises_reward_and_a_larger_beta_keeps_kl_smaller(tiny_folder):
    histories = {}
    for beta in (0.05, 1.0):
        model, tok = load(tiny_folder)
        original = {k: v.clone() for k, v in model.state_dict().items()}
        steps = []
        result = train_ppo(model, tok, PROMPTS, target_share_reward(tok), config(beta=beta),
                           on_step=lambda step, metrics: steps.append(step))
        history = histories[beta] = result["history"]
        assert steps == list(range(1, 21)) and set(LOG_KEYS) <= set(history[-1])
        assert all(math.isfinite(v) for row in history for v in row.values())
        peft_model = result["model"]
        trained = dict(peft_model.named_parameters())
        lora = {k: v for k, v in trained.items() if "lora_" in k}
        assert lora and all(p.requires_grad for p in lora.values())
        assert all(not torch.equal(p, torch.zeros_like(p)) for k, p in lora.items() if "lora_B" in k)
        assert result["value_head"].linear.weight.abs().sum() > 0
        base = peft_model.get_base_model().state_dict()
        for name, before in original.items():  # the reference (adapters off) is untouched
            key = next(k for k in base if k.replace(".base_layer", "") == name)
            assert torch.equal(base[key], before), name
    low, high = histories[0.05], histories[1.0]
    # measured (seeds 0–2): reward 0.36–0.38 → 0.52–0.62 over 20 steps at β 0.05
    assert mean(low, "reward", slice(-5, None)) > mean(low, "reward", slice(0, 5)) + 0.08
    assert max(r["kl"] for r in low) < 30  # nats per 12-token response: bounded, not running away
    # measured: last-5 KL 8.9–10.1 nats at β 0.05 against 0.5–1.7 at β 1
    assert mean(high, "kl", slice(-5, None)) < 0.4 * mean(low, "kl", slice(-5, None))
    assert max(r["kl"] for r in high) < 5


def test_value_head_learns_the_return_of_each_prompt(tiny_folder):
    """The score depends only on the prompt (±1), β = 0: returns are ±1 everywhere and V must learn them.
    vf_coef 1 lets the value loss shape the shared adapter as much as the policy loss does."""
    model, tok = load(tiny_folder)

    def by_prompt(prompts, texts):
        return torch.tensor([1.0 if "France" in p[0]["content"] else -1.0 for p in prompts])

    history = train_ppo(model, tok, PROMPTS[:2], by_prompt, config(beta=0.0, steps=15, max_new_tokens=8, vf_coef=1.0))["history"]
    # measured (seeds 0–2): 0.32 at the first step → 0.006–0.02 by the last
    assert history[0]["value_loss"] > 0.2
    assert mean(history, "value_loss", slice(-3, None)) < 0.25 * history[0]["value_loss"]


def test_adaptive_kl_raises_beta_when_kl_exceeds_its_target(tiny_folder):
    model, tok = load(tiny_folder)
    cfg = config(steps=6, adaptive_kl=True, kl_target=0.1, kl_horizon=100)
    history = train_ppo(model, tok, PROMPTS, target_share_reward(tok), cfg)["history"]
    betas = [r["beta"] for r in history]
    assert betas[0] == cfg.beta and betas[-1] > betas[0]
    assert all(b2 >= b1 for (b1, r), b2 in zip(zip(betas, history), betas[1:]) if r["kl"] > cfg.kl_target)


def test_no_prompts_is_a_clear_error(tiny_folder):
    model, tok = load(tiny_folder)
    with pytest.raises(PPOError, match="at least one training prompt"):
        train_ppo(model, tok, [], target_share_reward(tok), config())


def test_max_steps_caps_the_run():
    assert config(steps=20, max_steps=3).total_steps == 3
    assert config(steps=2, max_steps=3).total_steps == 2
