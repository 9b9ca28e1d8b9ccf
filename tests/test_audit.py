"""The pair audit against hand-made pairs: an answer only made longer, near-identical answers,
annotators who disagree and one who always picks the left answer; flagged pairs left out of the
export on request, nothing changed without it."""
from __future__ import annotations

import json

import pandas as pd
import pytest

from sqlalchemy import select

from labeling import audit, db, export, queue
from labeling.__main__ import main as labeling_main
from labeling.models import Annotator, Judgment
from tests.test_queue import seed_pairs

SHORT = "Paris is the capital of France."
LONG = "Paris is the capital of France, a city of two million people on the Seine, known for its museums."
SAME_A = "The answer is 4 because two plus two makes four and never five."
SAME_B = "The answer is 4 because two plus two makes four and never five!"


def test_only_longer_needs_the_length_and_the_words():
    assert audit.only_longer(LONG, SHORT)  # 19 words against 6, and every word of the short one
    assert not audit.only_longer(SHORT, LONG)
    assert not audit.only_longer("Lyon is a city in the south east of the country, not far from Italy.", SHORT)
    assert not audit.only_longer("Paris is the capital of France, yes indeed.", SHORT)  # 8 / 6 < 1.5


def test_similarity_is_difflibs_ratio_over_words():
    # 13 words each, 12 the same in order: 2 · 12 / 26
    assert audit.similarity(SAME_A, SAME_B) == pytest.approx(24 / 26)
    assert audit.similarity("a b c d", "a b c d") == 1.0
    # quick_ratio's bound answers for unlike texts: 1 shared word of 4 + 4 -> 2 · 1 / 8
    assert audit.similarity("one two three four", "one five six seven") == pytest.approx(0.25)


def test_skewed_annotators_are_those_whose_interval_leaves_out_one_half():
    rows = [(i, "dan", "a", "a", "x y", "z w") for i in range(8)]  # always the left, lengths equal
    rows += [(i, "eve", o, l, "x y z", "w") for i, (o, l) in enumerate(zip("abab", "aabb"))]  # 2 of 4 left
    frame = pd.DataFrame(rows, columns=["pair_id", "annotator", "outcome", "left", "response_a", "response_b"])
    skewed = audit.skewed_annotators(frame)
    assert skewed[["annotator", "bias", "share", "decisive"]].values.tolist() == [["dan", "left", 1.0, 8]]
    assert skewed["ci_low"].iloc[0] > 0.5  # Wilson (8 of 8): [0.676, 1]


@pytest.fixture
def voted(workspace):
    """Pair 1: the chosen answer is the rejected one made longer; 2: near-identical answers; 3: a
    2-1 vote; 4: nothing wrong; 5-12: dan, who always picks the left answer, alone."""
    ids = seed_pairs([("Capital?", SHORT, LONG), ("2+2?", SAME_A, SAME_B),
                      ("Colour of the sky?", "Blue, by day.", "Green."), ("Hello?", "Hi there.", "Go away.")]
                     + [(f"Q{i}?", f"answer {i} one", f"answer {i} two") for i in range(8)])
    queue.submit_judgment("ana", ids[0], "b", "a")  # the longer one, shown on the right
    queue.submit_judgment("ana", ids[1], "a", "a")
    for name, outcome, left in (("ana", "a", "b"), ("ben", "a", "b"), ("cleo", "b", "a")):
        queue.submit_judgment(name, ids[2], outcome, left)
    queue.submit_judgment("ana", ids[3], "a", "a")
    for pair_id in ids[4:]:
        queue.submit_judgment("dan", pair_id, "b", "b")  # the left one, every time
    return ids


def test_the_audit_flags_each_pair_for_what_is_wrong_with_it(voted):
    result = export.pair_audit()
    assert result.pairs == 12
    assert result.counts() == {"only_longer": 1, "near_identical": 1, "disagreement": 1, "skewed_annotator": 8}
    flags = result.flags.set_index("check")
    assert flags.loc["only_longer", "pair_id"] == voted[0] and flags.loc["only_longer", "chosen"] == LONG
    assert flags.loc["near_identical", "why"] == "the answers' words are 92% alike"
    assert flags.loc["disagreement", "why"] == "ana: chosen, ben: chosen, cleo: rejected"
    assert flags.loc["disagreement", "prompt"] == "Colour of the sky?"
    assert result.pair_ids(("skewed_annotator",)) == set(voted[4:])
    assert flags.loc["skewed_annotator", "why"].iloc[0] == "dan picks the left answer in 100% [68%, 100%] of 8 decisive votes"
    assert result.skewed["annotator"].tolist() == ["dan"]


def test_flagged_pairs_leave_the_export_only_when_asked(voted, tmp_path, capsys):
    everything = export.preference_rows()
    assert len(everything.rows) == 12 and set(everything.excluded) == set(export.EXCLUDED_KINDS)
    fewer = export.preference_rows(exclude=("near_identical", "only_longer"))
    assert [r["pair_id"] for r in fewer.rows] == voted[2:]
    assert fewer.excluded == {**everything.excluded, "near_identical": 1, "only_longer": 1}
    with db.session() as s:  # dan's votes decided pairs 5-12: they leave the lineage with the pairs
        dans = set(s.scalars(select(Judgment.id).join(Annotator).where(Annotator.name == "dan")))
    kept = export.preference_rows(exclude=("skewed_annotator",))
    assert len(dans) == 8 and set(kept.judgment_ids) == set(everything.judgment_ids) - dans
    with pytest.raises(export.ExportError, match="Unknown pair-audit check 'longer'"):
        export.preference_rows(exclude=("longer",))
    out = tmp_path / "out.jsonl"
    assert labeling_main(["export", str(out), "--exclude", "disagreement, skewed_annotator"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["exported"] == 3 and summary["excluded"]["skewed_annotator"] == 8
    assert [json.loads(line)["pair_id"] for line in out.read_text().splitlines()] == voted[:2] + voted[3:4]


def test_the_export_knows_the_audits_checks():
    assert export.AUDIT_CHECKS == audit.CHECKS
