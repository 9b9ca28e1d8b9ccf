"""The reward model's suggestions and the uncertainty-first queue: probabilities stored for the
pairs waiting, the least sure pair served first, random draws kept, every pair served in the end,
and a reward round that scores the queue as it finishes."""
from __future__ import annotations


import torch

from labeling import db, queue, settings, suggestions
from labeling.models import ModelVersion
from tests.preference_fixtures import import_pairs, tiny_single_thread
from tests.test_queue import seed_pairs
from training import jobs, reward, suggest


def add_reward_version(version_id: str = "v2-reward") -> str:
    with db.session() as s:
        s.add(ModelVersion(id=version_id, kind="reward", method="reward", path="/r"))
    return version_id


def length_scorer(prompts, responses):
    """A stand-in reward model: longer is better, by a word a nat."""
    return torch.tensor([float(len(r.split())) for r in responses])


def test_reward_suggestions_are_stored_for_waiting_pairs_only(workspace):
    ids = seed_pairs([("Q1?", "one two three", "one"), ("Q2?", "x", "x y"), ("Q3?", "a b", "c d")])
    queue.submit_judgment("ana", ids[2], "tie", "a")
    reward_id = add_reward_version()
    assert suggest.score_waiting(reward_id, length_scorer) == 2
    assert suggest.score_waiting(reward_id, length_scorer) == 0  # scored once
    probabilities = suggestions.reward_probabilities(reward_id)
    assert set(probabilities) == set(ids[:2])
    assert abs(probabilities[ids[0]] - 1 / (1 + torch.exp(torch.tensor(-2.0)).item())) < 1e-6
    assert suggestions.for_pair(ids[1])[0]["outcome"] == "b"


def test_the_uncertain_queue_serves_the_least_sure_pair_first_with_random_draws(workspace, monkeypatch):
    ids = seed_pairs(5)
    reward_id = add_reward_version()
    for pair_id, p in zip(ids, [0.95, 0.1, 0.55, 0.7]):  # the last pair is not scored
        suggestions.store(pair_id, "reward", reward_id, "a" if p >= 0.5 else "b", p)
    view = queue.next_pair("ana")
    assert view.pair_id == ids[0]  # the default order: oldest first
    queue.submit_judgment("ana", view.pair_id, "skip", view.left)  # ends ana's hold on it; a skip is no judgment
    settings.set_queue_order("uncertain")
    monkeypatch.setattr(queue.random, "random", lambda: 0.99)  # no random draw
    served = []
    while (view := queue.next_pair("bo")) is not None:
        served.append(view.pair_id)
        queue.submit_judgment("bo", view.pair_id, "a", view.left)
    assert served == [ids[2], ids[3], ids[1], ids[0], ids[4]]  # |p - 0.5| rising, the unscored last


def test_a_share_of_uncertain_draws_is_random_and_every_pair_is_served(workspace, monkeypatch):
    ids = seed_pairs(40)
    reward_id = add_reward_version()
    for k, pair_id in enumerate(ids):
        suggestions.store(pair_id, "reward", reward_id, "a", 0.5 + k / 100)
    settings.set_queue_order("uncertain")
    # every fourth draw takes a random pair: SQLite's random() cannot be seeded, but with about ten such
    # draws from 40, 36, 32... waiting pairs, all of them landing on the next pair in order is ~1e-14
    draws = []
    monkeypatch.setattr(queue.random, "random", lambda: draws.append(0.1 if len(draws) % 4 == 0 else 0.9) or draws[-1])
    served = []
    while (view := queue.next_pair("ana")) is not None:
        served.append(view.pair_id)
        queue.submit_judgment("ana", view.pair_id, "a", view.left)
    assert sorted(served) == ids  # each once
    out_of_order = sum(1 for k, pair_id in enumerate(served) if pair_id != sorted(set(ids) - set(served[:k]))[0])
    # only a draw under RANDOM_SHARE may serve a pair out of the order (one may hit the next pair anyway)
    assert 1 <= out_of_order <= sum(d < queue.RANDOM_SHARE for d in draws)


def test_without_a_reward_model_the_uncertain_queue_is_oldest_first(workspace):
    ids = seed_pairs(3)
    settings.set_queue_order("uncertain")
    assert queue.next_pair("ana").pair_id == ids[0]


def test_a_reward_round_scores_the_waiting_pairs(workspace, tmp_path, monkeypatch):
    tiny_single_thread(workspace, tmp_path, monkeypatch)
    import_pairs(tmp_path, 12)
    waiting = seed_pairs(3)
    from training.reward_config import RewardRoundConfig

    summary = reward.run_round(RewardRoundConfig(backbone="policy", method="heads", heads=2, max_length=64),
                               jobs.Reporter(None))
    assert summary["pairs_scored"] == 3
    assert set(suggestions.reward_probabilities(summary["version"])) == set(waiting)
