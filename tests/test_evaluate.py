"""Evaluation, β sweep and arena on tiny models: real sampling, real KL, a real (tiny) reward model."""
import json

import pytest
import torch

from tests.preference_fixtures import import_pairs, use_tiny_policy
from training import jobs, points, versions
from training.evaluate_config import EvaluateConfig


@pytest.fixture
def trained(workspace, tmp_path, monkeypatch):
    """A workspace with 24 labeled pairs, a tiny base policy, a tiny reward model and a DPO version."""
    from training import dpo, reward
    from training.dpo_config import DPORoundConfig
    from training.reward_config import RewardRoundConfig

    torch.manual_seed(0)
    use_tiny_policy(tmp_path, monkeypatch)
    import_pairs(tmp_path, 24)
    base = versions.ensure_base_version()
    reward_id = reward.run_round(RewardRoundConfig(backbone="policy", max_length=64), jobs.Reporter(None), max_steps=2)["version"]
    tuned = dpo.run_round(DPORoundConfig(beta=0.1, learning_rate=5e-2, max_length=64, max_prompt_length=32),
                          jobs.Reporter(None), max_steps=4)["version"]
    return {"base": base, "reward": reward_id, "tuned": tuned}


def _models(version_id):
    from training.model import load_policy

    return load_policy(version_id)


def test_kl_is_zero_for_identical_models_and_positive_after_training(trained):
    from training.evaluate import heldout_prompts, measure
    from training.reward import load_scorer

    base, tokenizer = _models(trained["base"])
    tuned, _ = _models(trained["tuned"])
    prompts = [m for _, m in heldout_prompts(4)]
    config = EvaluateConfig(prompts=4, samples=2, max_new_tokens=12)
    scorer = load_scorer(trained["reward"])
    same = measure(base, base, tokenizer, prompts, scorer, config)
    assert same["kl"] == 0.0 and same["kl_per_token"] == 0.0 and same["samples"] == 8
    moved = measure(tuned, base, tokenizer, prompts, scorer, config)
    assert moved["kl"] > 0 and moved["kl_per_token"] > 0 and moved["kl_se"] >= 0


def test_sequence_logprobs_ignore_left_padding(trained):
    from training.evaluate import sequence_logprobs

    model, _ = _models(trained["base"])
    ids = torch.tensor([[7, 8, 9, 10, 11]])
    padded = torch.tensor([[0, 0, 7, 8, 9, 10, 11]])
    one = sequence_logprobs(model, ids, torch.ones_like(ids), torch.tensor([[0, 0, 0, 1, 1]]))
    two = sequence_logprobs(model, padded, torch.tensor([[0, 0, 1, 1, 1, 1, 1]]), torch.tensor([[0, 0, 0, 0, 0, 1, 1]]))
    assert torch.allclose(one, two, atol=1e-5)


def test_sequence_logprobs_read_every_response_token_when_the_head_skips_the_prompts(trained):
    from training.evaluate import sequence_logprobs

    model, _ = _models(trained["base"])
    ids = torch.tensor([[7, 8, 9, 10, 11, 12], [7, 8, 9, 10, 11, 0], [7, 8, 0, 0, 0, 0]])
    attention = (ids != 0).long()
    response = torch.tensor([[0, 0, 0, 0, 1, 1], [0, 0, 1, 1, 1, 0], [0, 0, 0, 0, 0, 0]])  # starts 4 and 2; none
    with torch.no_grad():
        logps = torch.log_softmax(model(input_ids=ids, attention_mask=attention).logits[:, :-1].float(), -1)
    by_hand = (logps.gather(-1, ids[:, 1:, None])[..., 0] * response[:, 1:]).sum(-1)  # every position's logits
    with torch.no_grad():
        assert torch.allclose(sequence_logprobs(model, ids, attention, response), by_hand, atol=1e-5)
        assert sequence_logprobs(model, ids[2:], attention[2:], response[2:]).tolist() == [0.0]
        assert sequence_logprobs(model, ids[:, :1], attention[:, :1], response[:, :1]).tolist() == [0.0] * 3


def test_evaluate_cli_stores_points_that_the_chart_shows(trained, capsys):
    from training.evaluate import main

    assert main(["--prompts", "4", "--samples", "2", "--max-new-tokens", "12"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    measured = {p["version"]: p for p in result["points"]}
    assert set(measured) == {trained["base"], trained["tuned"]}
    assert measured[trained["base"]]["kl"] == 0.0 and measured[trained["tuned"]]["kl"] > 0
    shown = {p["version"]: p for p in points.latest_points()}
    for version, p in measured.items():
        assert (shown[version]["reward"], shown[version]["kl"]) == (p["reward"], p["kl"])
        assert shown[version]["reward_version"] == trained["reward"]
    with open(result["plot"], "rb") as png:
        assert png.read(8) == b"\x89PNG\r\n\x1a\n"
    from sqlalchemy import func, select

    from labeling import db
    from labeling.models import Prompt

    with db.session() as s:  # too few held-out prompts: training prompts fill in, and the points say how many
        held = s.scalar(select(func.count(Prompt.id)).where(Prompt.split == "heldout"))
    assert result["train_prompts"] == max(4 - held, 0)
    assert all(p["train_prompts"] == result["train_prompts"] for p in points.latest_points())


def test_measuring_all_versions_skips_one_whose_folder_is_gone(trained, capsys):
    import shutil

    from training.evaluate import main

    shutil.rmtree(versions.get_version(trained["tuned"]).path)
    assert main(["--prompts", "2", "--samples", "1", "--max-new-tokens", "6"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert [p["version"] for p in result["points"]] == [trained["base"]] and result["skipped"] == [trained["tuned"]]
    assert main(["--versions", trained["tuned"], "--prompts", "2"]) == 1  # named: one sentence, why
    assert f"of model version '{trained['tuned']}' is missing" in capsys.readouterr().err


def test_a_deleted_reward_model_folder_is_one_sentence_before_any_work(trained, capsys, monkeypatch):
    import shutil

    from training import arena_answers, reward
    from training.evaluate import main

    shutil.rmtree(versions.get_version(trained["reward"]).path)
    assert main(["--prompts", "2"]) == 1
    assert f"The reward model '{trained['reward']}' has no files at" in capsys.readouterr().err
    monkeypatch.setattr(arena_answers, "answer", lambda *a: pytest.fail("answers generated before the reward check"))
    with pytest.raises(reward.RewardError, match="was the folder deleted"):
        arena_answers.run_arena(arena_answers.ArenaConfig(prompts=2), jobs.Reporter(None))


def test_evaluate_without_reward_model_is_one_sentence(workspace, tmp_path, monkeypatch, capsys):
    from training.evaluate import main

    use_tiny_policy(tmp_path, monkeypatch)
    assert main(["--prompts", "2"]) == 1
    assert "needs a reward model" in capsys.readouterr().err


def test_sweep_makes_one_tagged_version_per_beta_and_a_frontier(trained):
    from training.sweep import SweepConfig, run_sweep

    class Recorder:
        def __init__(self):
            self.total, self.steps = None, []

        def start(self, total):
            self.total = total

        def step(self, step, metrics=None):
            self.steps.append(step)

    bar = Recorder()
    result = run_sweep(SweepConfig(betas="0.05,0.5", prompts=3, samples=1, max_new_tokens=8, max_steps=2,
                                   learning_rate=3e-4, max_length=96), bar)
    # one bar for the whole sweep: two rounds and the evaluation, never going back
    assert bar.total == 300 and bar.steps == sorted(bar.steps) and bar.steps[-1] == 300 and 100 in bar.steps
    assert len(result["versions"]) == 2
    configs = [versions.get_version(v).config for v in result["versions"]]
    assert {c["sweep"] for c in configs} == {result["sweep"]}
    assert [(c["beta"], c["learning_rate"], c["max_length"]) for c in configs] == [(0.05, 3e-4, 96), (0.5, 3e-4, 96)]
    assert versions.current_policy_id() == trained["tuned"]  # a sweep does not move the current policy
    rows = points.latest_points(trained["reward"])
    assert len([p for p in rows if p["sweep"] == result["sweep"]]) == 2 and len(rows) >= 4
    assert points.frontier(rows)[0]["kl"] == min(p["kl"] for p in rows)


def test_arena_pairs_carry_scores_and_votes_become_ratings_and_training_pairs(trained):
    from labeling import arena, queue
    from labeling.export import preference_rows
    from training.arena_answers import ArenaConfig, run_arena

    before = len(preference_rows().rows)
    result = run_arena(ArenaConfig(prompts=4, max_new_tokens=12), jobs.Reporter(None))
    assert (result["version_a"], result["version_b"]) == (trained["base"], trained["tuned"])
    assert result["pairs"] >= 2
    again = run_arena(ArenaConfig(prompts=4, max_new_tokens=12), jobs.Reporter(None))
    assert (again["pairs"], again["skipped"]) == (0, 4)  # same seed, same answers: already stored
    comparisons = arena.comparisons(trained["base"], trained["tuned"])
    assert len(comparisons) == result["pairs"]
    assert all(c["reward_a"] is not None and c["base_logprob_b"] < 0 for c in comparisons)
    for _ in range(result["pairs"]):
        view = queue.next_pair("ana", kind="arena")
        queue.submit_judgment("ana", view.pair_id, "b", view.left, seconds=1.0)
    assert queue.next_pair("ana", kind="arena") is None
    votes = arena.arena_votes()
    assert len(votes) == result["pairs"]
    ratings = arena.bradley_terry(votes)
    assert ratings[trained["tuned"]] > ratings[trained["base"]]
    assert len(preference_rows().rows) == before + result["pairs"]


def test_an_answer_whose_last_allowed_token_is_its_stop_token_ended(tmp_path):
    """"ended" is read from the tokens, not from the count: an answer as long as max_new_tokens
    whose last token is a stop token ended; one without a stop token was cut."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tests import tiny_models
    from training.evaluate import sample_and_score

    folder = tiny_models.make_tiny_policy(tmp_path / "policy")
    model, tokenizer = AutoModelForCausalLM.from_pretrained(folder).eval(), AutoTokenizer.from_pretrained(folder)
    prompts = [[{"role": "user", "content": "Say hi."}], [{"role": "user", "content": "Name a colour."}]]
    model.generation_config.eos_token_id = [tokenizer.eos_token_id]
    cut = sample_and_score(model, model, tokenizer, prompts, 2, max_new_tokens=1, seed=0, batch_size=4)
    model.generation_config.eos_token_id = list(range(model.config.vocab_size))  # every token stops
    ended = sample_and_score(model, model, tokenizer, prompts, 2, max_new_tokens=1, seed=0, batch_size=4)
    assert cut["tokens"] == ended["tokens"] == [1, 1, 1, 1]  # each at the cap of one token
    assert cut["ended"] == [False] * 4 and ended["ended"] == [True] * 4
