"""Annotator statistics against values worked out by hand (and the textbook Fleiss example)."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from labeling import queue, stats
from tests.test_queue import seed_pairs


def frame(rows):
    return pd.DataFrame(rows, columns=["pair_id", "annotator", "outcome", "left", "seconds"])


def test_wilson_interval_hand_worked():
    # 8 of 10, z = 1.96: centre = (0.8 + 0.19208) / 1.38416 = 0.716738,
    # half = 1.96 / 1.38416 * sqrt(0.016 + 0.009604) = 0.226580
    low, high = stats.wilson_interval(8, 10, z=1.96)
    assert low == pytest.approx(0.490158, abs=1e-5)
    assert high == pytest.approx(0.943318, abs=1e-5)
    # 0 of 10: the interval starts at 0 and ends at 2 * 0.19208 / 1.38416 / 2 * 2 = 0.277539
    assert stats.wilson_interval(0, 10, z=1.96) == pytest.approx((0.0, 0.277539), abs=1e-5)
    assert all(math.isnan(v) for v in stats.wilson_interval(0, 0))


def test_fleiss_kappa_matches_the_textbook_example():
    # Fleiss (1971) as worked on Wikipedia: 10 subjects, 14 raters, 5 categories -> P̄ = 0.378,
    # P̄_e = 0.213, kappa = 0.210.
    counts = np.array([
        [0, 0, 0, 0, 14], [0, 2, 6, 4, 2], [0, 0, 3, 5, 6], [0, 3, 9, 2, 0], [2, 2, 8, 1, 1],
        [7, 7, 0, 0, 0], [3, 2, 6, 3, 0], [2, 5, 3, 2, 2], [6, 5, 2, 1, 0], [0, 2, 2, 3, 7],
    ], dtype=float)
    assert stats.observed_agreement(counts).mean() == pytest.approx(0.378, abs=1e-3)
    assert stats.fleiss_kappa(counts) == pytest.approx(0.20993, abs=1e-4)


def test_agreement_hand_worked_on_judgments():
    # pair 1: a, a (agree); pair 2: a, b (disagree); pair 3: tie, tie (agree); pair 4: one verdict
    # and a skip (left out). P̄ = 2/3; p = (a 3/6, b 1/6, tie 2/6) -> P_e = 14/36; kappa = 5/11.
    rows = [(1, "ana", "a", "a", 1), (1, "ben", "a", "b", 1), (2, "ana", "a", "a", 1), (2, "ben", "b", "a", 1),
            (3, "ana", "tie", "a", 1), (3, "ben", "tie", "b", 1), (4, "ana", "a", "a", 1), (4, "ben", "skip", "a", 1)]
    result = stats.agreement(frame(rows))
    assert result["pairs"] == 3
    assert result["percent_agreement"] == pytest.approx(2 / 3)
    assert result["unanimous"] == pytest.approx(2 / 3)
    assert result["fleiss_kappa"] == pytest.approx(5 / 11)


def test_agreement_with_three_raters_on_one_pair():
    # a, a, b: agreeing rater pairs 1 of 3 -> P_i = (4 + 1 - 3) / 6 = 1/3
    rows = [(1, "ana", "a", "a", 1), (1, "ben", "a", "a", 1), (1, "chen", "b", "a", 1)]
    result = stats.agreement(frame(rows))
    assert result["percent_agreement"] == pytest.approx(1 / 3)
    assert result["unanimous"] == 0.0


def test_agreement_without_overlap_is_nan():
    result = stats.agreement(frame([(1, "ana", "a", "a", 1), (2, "ben", "b", "a", 1)]))
    assert result["pairs"] == 0 and math.isnan(result["fleiss_kappa"])
    assert math.isnan(stats.fleiss_kappa(np.array([[2.0, 0, 0, 0], [3.0, 0, 0, 0]])))


def test_position_bias_counts_left_wins_among_decisive_judgments():
    rows = [(1, "ana", "a", "a", 2), (2, "ana", "b", "a", 2), (3, "ana", "b", "b", 2),
            (4, "ana", "tie", "a", 2), (5, "ana", "a", None, 2), (1, "ben", "b", "a", 2)]
    table = stats.position_bias(frame(rows)).set_index("annotator")
    assert table.loc["ana", ["decisive", "left_wins"]].tolist() == [3, 2]
    assert table.loc["ana", "left_share"] == pytest.approx(2 / 3)
    assert (table.loc["ana", "ci_low"], table.loc["ana", "ci_high"]) == pytest.approx(stats.wilson_interval(2, 3))
    assert table.loc["ben", ["decisive", "left_wins"]].tolist() == [1, 0]


def test_outcome_shares_and_per_annotator_counts():
    rows = [(1, "ana", "a", "a", 2.0), (2, "ana", "skip", "a", 4.0), (3, "ana", "tie", "a", 6.0),
            (1, "ben", "b", "a", 1.0), (2, None, None, None, None)]
    shares = stats.outcome_shares(frame(rows)).set_index("outcome")
    assert shares["count"].tolist() == [1, 1, 1, 0, 1]
    assert shares.loc["a", "share"] == pytest.approx(0.25)
    per = stats.judgments_per_annotator(frame(rows))
    assert per.to_dict("records") == [
        {"annotator": "ana", "judgments": 2, "skipped": 1, "median_seconds": 4.0},
        {"annotator": "ben", "judgments": 1, "skipped": 0, "median_seconds": 1.0},
    ]


def test_judgments_frame_reads_and_filters_the_workspace(workspace):
    ids = seed_pairs([("Q1?", "x1", "y1"), ("Q2?", "x2", "y2")], source="hh")
    (other,) = seed_pairs([("Q3?", "x3", "y3")], source="oasst")
    queue.submit_judgment("ana", ids[0], "a", "b", seconds=2)
    queue.submit_judgment("ben", ids[0], "b", "a", seconds=3)
    everything = stats.judgments_frame()
    assert list(everything.columns) == stats.COLUMNS
    assert len(everything) == 4  # two judgments of pair 1, unjudged pairs 2 and 3 once each
    assert everything.iloc[0]["pair_id"] == other and pd.isna(everything.iloc[0]["outcome"])
    hh = stats.judgments_frame(source="hh", annotator="ben")
    assert hh[["pair_id", "annotator", "outcome", "left", "response_a", "prompt"]].values.tolist() == [
        [ids[0], "ben", "b", "a", "x1", "user: Q1?"]]
    assert len(stats.judgments_frame(outcome="a")) == 1
    assert len(stats.judgments_frame(include_unjudged=False)) == 2
    assert stats.filter_values() == {"source": ["hh", "oasst"], "annotator": ["ana", "ben"]}
    assert stats.agreement(everything)["percent_agreement"] == 0.0


def test_imported_labels_are_no_annotator_in_any_statistic(workspace):
    from labeling import store
    from tests.conftest import FIXTURES

    store.import_file(FIXTURES / "pairs.jsonl")  # 3 pairs, each labeled "a" by the dataset
    frame_ = stats.judgments_frame(include_unjudged=False)
    first = int(frame_["pair_id"].min())
    queue.submit_judgment("ana", first, "b", "a", seconds=2)  # disagrees with the import's label
    queue.submit_judgment("ben", first + 1, "a", "a", seconds=3)  # agrees with it
    frame_ = stats.judgments_frame(include_unjudged=False)
    imported = frame_[frame_["judgment_source"] == "import"]
    assert len(imported) == 3 and imported["annotator"].isna().all()
    assert sorted(frame_[frame_["judgment_source"] == "human"]["annotator"]) == ["ana", "ben"]
    assert stats.judgments_per_annotator(frame_)["annotator"].tolist() == ["ana", "ben"]
    assert stats.position_bias(frame_)["annotator"].tolist() == ["ana", "ben"]
    assert stats.outcome_shares(stats.by_people(frame_))["count"].tolist() == [1, 1, 0, 0, 0]
    assert stats.agreement(frame_)["pairs"] == 0  # one person per pair: the dataset is no second rater
    assert stats.filter_values()["annotator"] == ["ana", "ben"]


def test_length_bias_counts_longer_wins_among_decisive_judgments_of_unequal_pairs():
    long, short, same = "one two three", "one", "uno dos tres"
    rows = pd.DataFrame([
        # pair, annotator, outcome, response_a, response_b
        (1, "ana", "a", long, short),  # the longer (a) won
        (2, "ana", "a", short, long),  # the shorter (a) won
        (3, "ana", "b", short, long),  # the longer (b) won
        (4, "ana", "a", long, same),  # equal lengths: says nothing about length
        (5, "ana", "tie", long, short),  # not decisive
        (6, None, "a", long, short),  # an imported label is nobody's taste
        (1, "ben", "a", long, short),
    ], columns=["pair_id", "annotator", "outcome", "response_a", "response_b"])
    table = stats.length_bias(rows).set_index("annotator")
    assert table.loc["ana", ["decisive", "longer_wins"]].tolist() == [3, 2]
    assert table.loc["ana", "longer_share"] == pytest.approx(2 / 3) and table.loc["ana", "chance"] == 0.5
    assert (table.loc["ana", "ci_low"], table.loc["ana", "ci_high"]) == pytest.approx(stats.wilson_interval(2, 3))
    # 1 of 1, z = 1.959964: centre = (1 + z²/2) / (1 + z²) = 0.6029, half = 0.3971 -> [0.2065, 1]
    assert table.loc["ben", ["decisive", "longer_wins"]].tolist() == [1, 1]
    assert table.loc["ben", "ci_low"] == pytest.approx(0.20654, abs=1e-4) and table.loc["ben", "ci_high"] == 1.0
    assert list(stats.length_bias(rows.iloc[:0]).columns) == ["annotator", "decisive", "longer_wins",
                                                              "longer_share", "ci_low", "ci_high", "chance"]
