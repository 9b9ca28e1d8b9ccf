"""Paired win rates and clustered errors, against values worked out by hand."""
import math

import numpy as np
import pytest

from labeling.paired import cluster_bootstrap_ci, clustered_mean_se, length_controlled_win_rate, outcomes, win_rate


def test_outcomes_count_ties_half():
    assert outcomes([3, 1, 2], [1, 3, 2]).tolist() == [1.0, 0.0, 0.5]
    assert outcomes([1.05], [1.0], tie_margin=0.1).tolist() == [0.5]


def test_clustered_se_is_taken_over_prompt_means():
    # prompt 0: samples 1, 1; prompt 1: samples 0, 0 -> prompt means 1 and 0
    mean, se = clustered_mean_se([1, 1, 0, 0], [0, 0, 1, 1])
    assert mean == 0.5
    assert se == pytest.approx(np.std([1, 0], ddof=1) / math.sqrt(2))  # 0.5, not the naive 0.289
    naive = np.std([1, 1, 0, 0], ddof=1) / 2
    assert se > naive


def test_win_rate_interval_resamples_prompts_and_brackets_the_rate():
    new = [1, 1, 1, 0, 1, 1, 0, 1]
    old = [0, 0, 0, 0, 0, 1, 1, 0]
    prompts = [0, 0, 1, 1, 2, 2, 3, 3]
    w = win_rate(new, old, prompts)
    assert (w.wins, w.ties, w.losses, w.prompts) == (5, 2, 1, 4)
    assert w.rate == pytest.approx((5 + 0.5 * 2) / 8)
    assert w.low <= w.rate <= w.high
    # prompts whose samples all agree: every resample gives the same mean, the interval is a point
    assert cluster_bootstrap_ci([1, 1, 1, 1], [7, 7, 8, 8]) == (1.0, 1.0)


def test_win_rate_of_identical_outputs_is_one_half():
    w = win_rate([0.2, 0.4], [0.2, 0.4], [0, 1])
    assert (w.rate, w.low, w.high) == (0.5, 0.5, 0.5)


def test_length_controlled_win_rate_at_equal_lengths_is_the_raw_rate():
    # 3 wins, 1 tie, 1 loss, 1 win -> (4 + 0.5) / 6 = 0.75; with Δ = 0 everywhere the slope has
    # nothing to fit and σ(θ₀) is the mean outcome (ties half), the raw rate
    new, old = [3, 2, 1, 5, 0, 4], [1, 1, 1, 6, -1, 0]
    prompts = [0, 0, 1, 1, 2, 2]
    lc = length_controlled_win_rate(outcomes(new, old), [0] * 6, prompts)
    w = win_rate(new, old, prompts)
    assert lc.rate == pytest.approx(0.75, abs=1e-5) and lc.raw == w.rate == 0.75 and lc.length_slope == 0.0
    assert lc.prompts == 3 and lc.low <= lc.rate <= lc.high
    # every sample a win: the rate stays (all but) 1, not NaN or an overflow
    assert length_controlled_win_rate([1.0] * 4, [0] * 4, [0, 0, 1, 1]).rate == pytest.approx(1.0, abs=1e-4)


def test_a_pure_length_preference_has_a_length_controlled_rate_near_one_half():
    rng = np.random.default_rng(0)
    prompts = np.repeat(np.arange(100), 4)
    # both versions' lengths drawn from one distribution, and the longer answer always wins: length
    # separates the outcomes, so the rate at equal length rests on the ridge and the few pairs of
    # nearly equal length (other seeds give 0.45-0.60); its interval is wide to match
    new, old = rng.integers(20, 300, (2, 400))
    diff = (new - old).astype(float)
    diff[diff == 0] = 1
    lc = length_controlled_win_rate((diff > 0).astype(float), diff, prompts)
    assert lc.length_slope > 3 and abs(lc.rate - 0.5) < 0.1 and lc.low < 0.5 < lc.high
    # the new version is longer in about 70% of samples, and the longer answer wins with
    # probability σ(2Δ/rms(Δ)): nothing but length matters, yet the raw rate is far above 0.5
    diff = (rng.integers(60, 400, 400) - rng.integers(20, 300, 400)).astype(float)
    z = diff / np.sqrt(np.mean(diff ** 2))
    wins = (rng.random(400) < 1 / (1 + np.exp(-2 * z))).astype(float)
    lc = length_controlled_win_rate(wins, diff, prompts)
    assert lc.raw > 0.65 and cluster_bootstrap_ci(wins, prompts)[0] > 0.5  # raw: surely above a coin flip
    assert abs(lc.rate - 0.5) < 0.08 and lc.low < 0.5 < lc.high
    assert lc.length_slope == pytest.approx(2, abs=0.6)


def test_a_gain_beside_length_survives_length_control():
    # new wins 3 of 4 at every length difference, the differences symmetric: length explains nothing
    diff = np.tile([-40, -10, 10, 40], 20)
    wins = np.tile([1, 1, 1, 0, 0, 1, 1, 1, 1, 1, 0, 1, 1, 0, 1, 1], 5).astype(float)
    lc = length_controlled_win_rate(wins, diff, np.repeat(np.arange(40), 2))
    assert lc.raw == 0.75 and lc.rate == pytest.approx(0.75, abs=0.03) and lc.low > 0.5
