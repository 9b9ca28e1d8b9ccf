import math

import numpy as np
import pytest

from labeling.arena import Vote, bootstrap_ratings, bradley_terry, win_rates
from labeling.stats import wilson_interval


def test_wilson_interval_matches_hand_computed_values():
    # p = 8/10, z = 1.96: centre = (0.8 + 0.19208) / 1.38416 = 0.716738,
    # half = 1.96 * sqrt(0.016 + 0.009604) / 1.38416 = 0.226581
    low, high = wilson_interval(8, 10)
    assert low == pytest.approx(0.490157, abs=1e-5)
    assert high == pytest.approx(0.943319, abs=1e-5)


def test_bradley_terry_two_models_matches_closed_form():
    # With only two models the MLE is p_a / p_b = wins_a / wins_b (prior 0): 30 vs 10 → ratio 3.
    votes = [Vote("x", "y", "a")] * 30 + [Vote("x", "y", "b")] * 10
    r = bradley_terry(votes, prior=0.0)
    assert r["x"] - r["y"] == pytest.approx(400 * math.log10(3), abs=1e-3)
    assert (r["x"] + r["y"]) / 2 == pytest.approx(1000)


def test_bradley_terry_recovers_known_strengths_from_synthetic_votes():
    rng = np.random.default_rng(0)
    strength = {"base": 1.0, "dpo": 2.0, "ppo": 4.0}
    names = list(strength)
    votes = []
    for _ in range(6000):
        i, j = rng.choice(3, size=2, replace=False)
        a, b = names[i], names[j]
        p_a = strength[a] / (strength[a] + strength[b])
        votes.append(Vote(a, b, "a" if rng.random() < p_a else "b"))
    r = bradley_terry(votes)
    assert r["dpo"] - r["base"] == pytest.approx(400 * math.log10(2), abs=15)
    assert r["ppo"] - r["base"] == pytest.approx(400 * math.log10(4), abs=15)


def test_bootstrap_interval_contains_point_and_undefeated_model_stays_finite():
    votes = [Vote("a", "b", "a")] * 5 + [Vote("b", "c", "a")] * 3 + [Vote("a", "c", "tie")]
    ratings = bootstrap_ratings(votes, rounds=100)
    for rating, low, high in ratings.values():
        assert math.isfinite(rating) and low <= rating <= high
    assert ratings["a"][0] > ratings["b"][0] > ratings["c"][0]


def test_win_rates_fold_both_orders_of_a_pair():
    votes = [Vote("v1", "v2", "a"), Vote("v2", "v1", "a"), Vote("v2", "v1", "b"), Vote("v1", "v2", "tie")]
    (row,) = win_rates(votes)
    assert (row["model_a"], row["wins_a"], row["wins_b"], row["ties"]) == ("v1", 2, 1, 1)
    assert row["win_rate_a"] == pytest.approx(2 / 3)


def test_a_model_missing_from_a_resample_keeps_its_rating_there():
    from labeling.arena import bootstrap_samples

    # v3 appears in one vote of 21: most resamples lack it, and every one must still rate it
    votes = [Vote("v1", "v2", "a")] * 12 + [Vote("v1", "v2", "b")] * 8 + [Vote("v3", "v1", "a")]
    samples = bootstrap_samples(votes, rounds=100, seed=1)
    assert {m: len(r) for m, r in samples.items()} == {"v1": 100, "v2": 100, "v3": 100}
    # without v3's one win, the prior alone puts it at the middle of the scale: its interval reaches down there
    assert min(samples["v3"]) < 1000 + 50 < max(samples["v3"])
