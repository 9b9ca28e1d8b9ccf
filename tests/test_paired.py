"""Paired win rates and clustered errors, against values worked out by hand."""
import math

import numpy as np
import pytest

from labeling.paired import cluster_bootstrap_ci, clustered_mean_se, outcomes, win_rate


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
