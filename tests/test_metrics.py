"""training/metrics.py against values worked out by hand: preference accuracy with ties as half,
the length baselines, the cluster bootstrap, calibration and Pearson's r."""
import math

import numpy as np
import pytest

from training import metrics


def test_preference_accuracy_counts_ties_as_half():
    chosen, rejected = [1.0, 0.0, 2.0, 0.5], [0.0, 1.0, 2.0, 0.1]
    assert list(metrics.pair_outcomes(chosen, rejected)) == [1.0, 0.0, 0.5, 1.0]
    assert metrics.preference_accuracy(chosen, rejected) == pytest.approx(2.5 / 4)
    assert math.isnan(metrics.preference_accuracy([], []))


def test_preference_accuracy_takes_tensors():
    import torch

    assert metrics.preference_accuracy(torch.tensor([3.0, 1.0]), torch.tensor([1.0, 1.0])) == 0.75


def test_length_baselines_by_characters_with_equal_lengths_half():
    chosen, rejected = ["aaa", "b", "cc", "héé"], ["a", "bbb", "dd", "hee"]
    assert list(metrics.longer_wins(chosen, rejected)) == [1.0, 0.0, 0.5, 0.5]
    assert list(metrics.shorter_wins(chosen, rejected)) == [0.0, 1.0, 0.5, 0.5]


def test_cluster_bootstrap_resamples_prompts_not_pairs():
    # two prompts: A with pairs (1, 1), B with (0). A resample draws AA (mean 1, prob 1/4), BB (0,
    # 1/4) or AB/BA (2/3, 1/2), so the 2.5 % and 97.5 % quantiles are exactly 0 and 1.
    assert metrics.cluster_bootstrap_ci([1, 1, 0], ["A", "A", "B"]) == (0.0, 1.0)
    # one prompt says nothing about the spread; constant values have none
    assert all(math.isnan(v) for v in metrics.cluster_bootstrap_ci([1, 0], ["A", "A"]))
    assert metrics.cluster_bootstrap_ci([1, 1, 1], ["A", "B", "C"]) == (1.0, 1.0)


def test_repeating_pairs_inside_their_prompt_does_not_narrow_the_interval():
    values = [1, 0, 1, 1, 0, 1, 0, 1]
    prompts = list("abcdefgh")
    once = metrics.cluster_bootstrap_ci(values, prompts)
    thrice = metrics.cluster_bootstrap_ci(np.repeat(values, 3), np.repeat(prompts, 3))
    assert thrice == pytest.approx(once)
    as_if_independent = metrics.cluster_bootstrap_ci(np.repeat(values, 3), range(24))
    assert as_if_independent[1] - as_if_independent[0] < 0.8 * (once[1] - once[0])
    assert once[0] < 5 / 8 < once[1]


def test_calibration_by_hand():
    # p = σ(margin): confidences 0.92, 0.83, 0.74 (p = 0.26 picks the rejected one: wrong), 0.5
    # (a tie: half right) and 0.93 (p = 0.07: wrong). Bins of width 0.05 over [0.5, 1]:
    # bin 8 holds 0.92 and 0.93 (confidence 0.925, accuracy 0.5), bin 6 holds 0.83 (accuracy 1),
    # bin 4 holds 0.74 (accuracy 0), bin 0 holds 0.5 (accuracy 0.5).
    # ECE = (2·0.425 + 0.17 + 0.74 + 0) / 5 = 0.352
    ece, bins = metrics.calibration([0.92, 0.83, 0.26, 0.5, 0.07])
    assert ece == pytest.approx(0.352)
    assert len(bins) == 10 and [b["count"] for b in bins] == [1, 0, 0, 0, 1, 0, 1, 0, 2, 0]
    assert (bins[8]["lower"], bins[8]["upper"]) == pytest.approx((0.9, 0.95))
    assert bins[8]["confidence"] == pytest.approx(0.925) and bins[8]["accuracy"] == 0.5
    assert bins[1]["confidence"] is None and bins[1]["accuracy"] is None
    # edges: 0.7 (0.6999… in floats) falls in the bin that starts at 0.7; certainty in the last
    _, bins = metrics.calibration([0.7, 1.0])
    assert bins[4]["count"] == 1 and bins[9]["count"] == 1
    assert math.isnan(metrics.calibration([])[0])


def test_preference_probability_is_the_bradley_terry_sigmoid():
    p = metrics.preference_probability([1.0, 0.0], [0.0, 0.0])
    assert p == pytest.approx([1 / (1 + math.exp(-1)), 0.5])


def test_length_correlation_reads_the_log_of_one_plus_the_characters():
    texts = ["", "xx", "xxxxxx"]  # 0, 2 and 6 characters
    logs = [0.0, math.log(3), math.log(7)]
    assert metrics.length_correlation([0, 1, 2], texts) == pytest.approx(metrics.pearson([0, 1, 2], logs))
    assert metrics.length_correlation(logs, texts) == pytest.approx(1.0)
    assert metrics.length_correlation([0, 1, 2], texts) != pytest.approx(metrics.pearson([0, 1, 2], [0, 2, 6]))


def test_pearson_by_hand():
    # dx = (-1, 0, 1), dy = (-7/3, -1/3, 8/3): Σ dx·dy = 5, Σ dx² = 2, Σ dy² = 114/9
    assert metrics.pearson([1, 2, 3], [2, 4, 7]) == pytest.approx(5 / math.sqrt(2 * 114 / 9))
    assert metrics.pearson([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert math.isnan(metrics.pearson([1, 1, 1], [1, 2, 3])) and math.isnan(metrics.pearson([1], [2]))
