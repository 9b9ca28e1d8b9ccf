"""PPO on a tiny 2-layer model with synthetic rewards: it learns what the reward asks, the KL penalty
holds it near the reference, the value head learns, and the reference itself never moves.

A randomly initialised 16-dim model has logits within about ±0.3 (embeddings of std 0.02 against a
normed hidden state), so no adapter could make any token likely; the tied embeddings are scaled up
to give it the logit range of a trained model. Each run takes a few seconds on one thread.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from tests.tiny_models import make_tiny_policy
from training.losses import token_logprobs
from training.ppo import LOG_KEYS, train_ppo
from training.ppo_config import PPOConfig
from training.preferences import NotReady
from training.rollout import VALUE_HEAD_FILE, score_tokens
from training.sampling import encode_chats as encode_prompts, response_mask as response_mask_from_ids, stop_ids as eos_ids

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


def test_a_long_prompt_keeps_its_last_turn_and_the_opened_answer(tiny_folder):
    _, tok = load(tiny_folder)
    long = [{"role": "user", "content": "an old question " * 40}, {"role": "assistant", "content": "an answer"},
            {"role": "user", "content": "What is the capital of France?"}]
    full = tok.apply_chat_template(long, tokenize=False, add_generation_prompt=True)
    full_ids = tok(full, add_special_tokens=False)["input_ids"]
    ids, mask = encode_prompts(tok, [long, PROMPTS[1]], max_prompt_tokens=24)
    assert len(full_ids) > 24 and ids.shape[1] == 24
    assert ids[0].tolist() == full_ids[-24:]  # the end kept: the latest turn and the assistant header
    assert tok.truncation_side == "right"  # the tokenizer's own setting is given back


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

    cfg = config(beta=0.0, steps=15, max_new_tokens=8, vf_coef=1.0)
    history = train_ppo(model, tok, PROMPTS[:2], by_prompt, cfg)["history"]
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
    with pytest.raises(NotReady, match="at least one training prompt"):
        train_ppo(model, tok, [], target_share_reward(tok), config())


def test_max_steps_caps_the_run():
    assert config(steps=20, max_steps=3).total_steps == 3
    assert config(steps=2, max_steps=3).total_steps == 2


# ---------------------------------------------------------------- the round, as the CLI and a job run it

ROUND_FLAGS = {"batch_size": 4, "mini_batch_size": 2, "ppo_epochs": 1, "max_new_tokens": 6, "learning_rate": 1e-3}


@pytest.fixture
def round_workspace(workspace, tmp_path, monkeypatch):
    """A workspace with 12 imported pairs (their prompts are the PPO prompts) and a tiny base policy."""
    from tests.preference_fixtures import import_pairs, use_tiny_policy

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("PREFLOOP_THREADS", "1")
    use_tiny_policy(tmp_path, monkeypatch)
    import_pairs(tmp_path, 12)
    return workspace


def train_tiny_reward_model(capsys) -> str:
    from training import reward

    assert reward.main(["--backbone", "policy", "--max-steps", "2", "--batch-size", "4"]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])["version"]


def flags(values: dict) -> list[str]:
    return [x for k, v in values.items() for x in ("--" + k.replace("_", "-"), str(v))]


def test_ppo_without_a_reward_model_is_one_sentence_and_writes_nothing(round_workspace, capsys):
    from training import ppo, versions

    assert ppo.main(["--max-steps", "1"]) == 1
    captured = capsys.readouterr()
    assert captured.err.strip() == "PPO needs a reward model: train one first." and captured.out == ""
    assert [v.method for v in versions.list_versions()] in ([], ["base"])


def test_ppo_round_writes_a_current_policy_version_with_lineage(round_workspace, capsys):
    from training import ppo, versions
    from training.model import load_policy

    reward_id = train_tiny_reward_model(capsys)
    assert ppo.main(["--max-steps", "2", *flags(ROUND_FLAGS)]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert all(math.isfinite(summary[k]) for k in LOG_KEYS) and summary["reward_version"] == reward_id
    row = versions.get_version(summary["version"])
    assert (row.kind, row.method, versions.get_version(row.parent_id).method) == ("policy", "ppo", "base")
    assert row.judgment_ids == versions.get_version(reward_id).judgment_ids and len(row.judgment_ids) == 12
    assert row.config["max_steps"] == 2 and row.config["beta"] == 0.05
    assert versions.current_policy_id() == summary["version"]
    assert (Path(row.path) / "adapter_model.safetensors").is_file() and (Path(row.path) / VALUE_HEAD_FILE).is_file()
    # the saved adapter changes the policy: merged weights differ from the base model's
    trained, _ = load_policy(summary["version"])
    base, _ = load_policy("base")
    differ = [n for n, p in trained.state_dict().items() if not torch.equal(p, base.state_dict()[n])]
    assert differ and all("proj" in n for n in differ)


def test_a_conservative_round_scores_with_the_reward_heads_spread_subtracted(round_workspace, capsys, monkeypatch):
    from training import ppo, reward

    train_tiny_reward_model(capsys)  # method heads, the default: an ensemble
    penalties, real = [], reward.load_scorer

    def spy(version_id=None, batch_size=8, penalty=0.0):
        penalties.append(penalty)
        return real(version_id, batch_size, penalty)

    monkeypatch.setattr(reward, "load_scorer", spy)
    assert ppo.main(["--max-steps", "1", "--uncertainty-penalty", "2", *flags(ROUND_FLAGS)]) == 0
    assert penalties == [2.0]


def test_a_round_from_a_ppo_version_starts_from_its_saved_value_head(round_workspace, capsys, monkeypatch):
    from safetensors.torch import load_file

    from training import ppo, versions

    train_tiny_reward_model(capsys)
    assert ppo.main(["--max-steps", "1", *flags(ROUND_FLAGS)]) == 0
    first = versions.get_version(json.loads(capsys.readouterr().out.strip().splitlines()[-1])["version"])
    saved = load_file(str(Path(first.path) / VALUE_HEAD_FILE))
    assert saved["linear.weight"].abs().sum() > 0  # trained: a fresh head is all zeros

    heads = []
    original = ppo.train_ppo

    def recording(*args, value_head=None, **kwargs):
        heads.append({k: v.clone() for k, v in value_head.state_dict().items()})
        return original(*args, value_head=value_head, **kwargs)

    monkeypatch.setattr(ppo, "train_ppo", recording)
    assert ppo.main(["--max-steps", "1", *flags(ROUND_FLAGS)]) == 0  # from the current policy: the PPO version
    second = versions.get_version(json.loads(capsys.readouterr().out.strip().splitlines()[-1])["version"])
    assert second.parent_id == first.id
    assert all(torch.equal(heads[0][k], saved[k]) for k in saved)
    versions.set_current(first.parent_id)  # the base: a policy without a value head gives a fresh one
    assert ppo.main(["--max-steps", "1", *flags(ROUND_FLAGS)]) == 0
    assert all(not v.any() for v in heads[1].values())


def test_ppo_background_job_reports_every_step(round_workspace, capsys):
    from training import jobs, versions

    train_tiny_reward_model(capsys)
    job_id = jobs.start_job("ppo", {**ROUND_FLAGS, "max_steps": 2})
    job = jobs.wait(job_id, timeout=300, poll=0.2)
    log = Path(job.log_path).read_text()
    assert job.status == "done", log[-2000:]
    assert (job.step, job.total_steps) == (2, 2)
    metrics = jobs.job_metrics(job_id)
    assert [m["step"] for m in metrics] == [1, 2]
    assert all(set(LOG_KEYS) <= set(m) and math.isfinite(m["kl"]) for m in metrics)
    assert json.loads(log.strip().splitlines()[-1])["version"] == job.result["version"] == versions.current_policy_id()


def test_a_setting_ppo_cannot_use_names_the_field(tiny_folder):
    # PPO's bounds are field metadata, checked by the one check every round's settings go through
    from training.config_fields import settings_problem

    assert settings_problem(config()) is None
    assert settings_problem(config(temperature=0.0)) == "field 'temperature' must be greater than 0; got 0.0."
    assert settings_problem(config(lam=1.5)) == "field 'lam' must be at most 1; got 1.5."
    assert settings_problem(config(beta=-0.1)) == "field 'beta' must be at least 0; got -0.1."
    assert settings_problem(config(kl_horizon=0)) == "field 'kl_horizon' must be at least 1; got 0."
    model, tok = load(tiny_folder)
    with pytest.raises(NotReady, match="'mini_batch_size' must be at least 1"):
        train_ppo(model, tok, PROMPTS, target_share_reward(tok), config(mini_batch_size=0))


@pytest.mark.slow
def test_ppo_on_smollm2_with_a_reward_model_from_real_pairs(workspace, shared_data, model_cache_home, monkeypatch,
                                                            capsys):
    from labeling.store import import_file
    from training import ppo, versions
    from training.model import convert_default_model

    monkeypatch.setenv("PREFLOOP_MODEL", str(convert_default_model(out=model_cache_home / "models" / "base")))
    import_file(shared_data / "hh-rlhf-harmless-base-test.jsonl.gz", fmt="hh")
    from training import reward

    assert reward.main(["--max-pairs", "16", "--max-steps", "2", "--batch-size", "4", "--max-length", "256"]) == 0
    reward_id = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["version"]
    assert ppo.main(["--max-steps", "2", "--max-pairs", "8", *flags({**ROUND_FLAGS, "max_new_tokens": 16})]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert all(math.isfinite(summary[k]) for k in LOG_KEYS) and summary["reward_version"] == reward_id
    assert summary["prompts"] == 8 and versions.current_policy_id() == summary["version"]
    assert versions.get_version(summary["version"]).parent_id == versions.ensure_base_version()


def test_first_update_starts_on_policy_and_a_bad_reward_function_is_named(tiny_folder):
    """One minibatch, one epoch: π equals π_old when the update starts (no dropout, same positions),
    so the ratio is exactly 1: nothing is clipped and the approximate KL is 0."""
    model, tok = load(tiny_folder)
    row = train_ppo(model, tok, PROMPTS, target_share_reward(tok),
                    config(steps=1, ppo_epochs=1, mini_batch_size=8))["metrics"]
    assert row["clip_frac"] == 0.0 and row["approx_kl"] < 1e-10 and row["kl"] == 0.0  # a fresh LoRA is π_ref
    model, tok = load(tiny_folder)
    with pytest.raises(ValueError, match="one finite score per response"):
        train_ppo(model, tok, PROMPTS, lambda prompts, texts: torch.zeros(3), config(steps=1))


def test_dropout_is_off_while_the_policy_learns(tiny_folder):
    """A model with heavy dropout: the first update still starts exactly on-policy (ratio 1)."""
    model, tok = load(tiny_folder)
    model.config.attention_dropout = 0.5
    for layer in model.model.layers:
        layer.self_attn.attention_dropout = 0.5
    row = train_ppo(model, tok, PROMPTS, target_share_reward(tok),
                    config(steps=1, ppo_epochs=1, mini_batch_size=8))["metrics"]
    assert row["clip_frac"] == 0.0 and row["approx_kl"] < 1e-10


def test_a_response_that_never_ended_loses_the_missing_eos_penalty(tiny_folder, monkeypatch):
    from training import ppo
    from training.rollout import Rollout

    # padded with another token, padded with the stop token, cut at the cap, the stop token on the cap's last
    # position, and a stop token past the kept tokens (a mask by hand: the mask, not the ids, says what was kept)
    ids = torch.tensor([[5, 2, 0, 0], [5, 2, 2, 2], [5, 6, 7, 8], [5, 6, 7, 2], [5, 6, 2, 0]])
    mask = response_mask_from_ids(ids, [2])
    mask[4] = torch.tensor([1, 1, 0, 0])
    rollout = Rollout(*(torch.zeros(5, 1),) * 2, ids, mask, *(torch.zeros(5, 4),) * 3, torch.zeros(5), list("abcde"))
    assert ppo.ended(rollout, [2]).tolist() == [True, True, False, True, False]

    seen = []
    real = ppo.step_rewards
    monkeypatch.setattr(ppo, "step_rewards", lambda r, scores, *a: seen.append((ppo.ended(r, [tok.eos_token_id]),
                                                                                scores.clone())) or real(r, scores, *a))
    model, tok = load(tiny_folder)
    constant = lambda prompts, texts: torch.full((len(texts),), 0.25)  # noqa: E731
    train_ppo(model, tok, PROMPTS, constant, config(steps=2, max_new_tokens=3, normalize_scores=False,
                                                    missing_eos_penalty=0.75))
    for finished, scores in seen:
        assert torch.allclose(scores, torch.where(finished, 0.25, 0.25 - 0.75))
    assert any((~finished).any() for finished, _ in seen)  # 3 tokens: some answers never end


def test_a_second_ppo_round_holds_its_kl_to_the_base(round_workspace, capsys, monkeypatch):
    from training import ppo, versions
    from training.model import load_policy

    train_tiny_reward_model(capsys)
    assert ppo.main(["--max-steps", "1", *flags(ROUND_FLAGS)]) == 0
    first = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["version"]
    references = []
    original = ppo.train_ppo

    def recording(*args, reference=None, **kwargs):
        references.append(reference)
        return original(*args, reference=reference, **kwargs)

    monkeypatch.setattr(ppo, "train_ppo", recording)
    assert ppo.main(["--max-steps", "1", *flags(ROUND_FLAGS)]) == 0  # from the first PPO version
    base = load_policy("base")[0].state_dict()
    assert all(torch.equal(references[0].state_dict()[n], p) for n, p in base.items())
    versions.set_current(first)
    assert ppo.main(["--max-steps", "1", "--reference", "parent", *flags(ROUND_FLAGS)]) == 0
    assert references[1] is None  # the round's own network with its adapter off


def test_the_kl_horizon_suits_the_round():
    assert config(steps=20, batch_size=8).horizon == 16  # a tenth of the 160 samples drawn
    assert config(kl_horizon=10000).horizon == 10000
