"""Reason tags on a judgment: checked, stored and replaced with the vote, offered from a workspace
setting, counted per annotator by hand, and read from every file an import takes."""
from __future__ import annotations

import json

import pandas as pd
import pytest
from sqlalchemy import select

from labeling import db, queue, reasons, stats, store
from labeling.importers import InputError
from labeling.models import Judgment
from tests.test_queue import seed_pairs


def test_tags_are_tidied_once_each_and_bad_ones_named():
    assert reasons.check_reasons([" safer", "more   correct", "safer", ""]) == ["safer", "more correct"]
    assert reasons.check_reasons(None) == []
    with pytest.raises(reasons.ReasonError, match="at most 60 characters"):
        reasons.check_reasons(["x" * 61])
    with pytest.raises(reasons.ReasonError, match="printable"):
        reasons.check_reasons(["bad\x00tag"])
    with pytest.raises(reasons.ReasonError, match="a list of texts"):
        reasons.check_reasons("safer")
    with pytest.raises(reasons.ReasonError, match="at most 20"):
        reasons.check_reasons([f"tag {i}" for i in range(21)])


def test_admins_add_tags_to_the_five_built_in(workspace):
    assert reasons.reason_tags() == list(reasons.BUILTIN_REASONS)
    assert reasons.save_extra_reasons(["cites a source", "safer", " cites  a source "]) == ["cites a source"]
    assert reasons.reason_tags() == [*reasons.BUILTIN_REASONS, "cites a source"]
    reasons.save_extra_reasons([])
    assert reasons.reason_tags() == list(reasons.BUILTIN_REASONS)


def test_a_vote_stores_its_reasons_and_a_changed_vote_replaces_them(workspace):
    (pair_id,) = seed_pairs(1)
    judgment_id = queue.submit_judgment("ana", pair_id, "a", "a", reasons=["more correct", "more correct"])
    assert queue.submit_judgment("ana", pair_id, "b", "a", reasons=["safer"]) == judgment_id
    with db.session() as s:
        assert s.get(Judgment, judgment_id).reasons == ["safer"]
    queue.submit_judgment("ana", pair_id, "b", "a")  # no reason now: none stored, not an empty list
    with db.session() as s:
        assert s.get(Judgment, judgment_id).reasons is None
    with pytest.raises(queue.QueueError, match="reason tag"):
        queue.submit_judgment("ana", pair_id, "a", "a", reasons=[3])
    assert stats.judgments_frame()["reasons"].tolist() == [None]


def test_reason_counts_per_annotator_hand_worked():
    frame = pd.DataFrame([
        ("ana", "a", ["more correct", "safer"]),
        ("ana", "b", ["more correct"]),
        ("ana", "tie", None),
        ("ana", "skip", ["safer"]),  # a skip is no choice
        ("ben", "a", ["more concise"]),
        ("ben", "b", []),
        (None, "a", ["more correct"]),  # an imported label is no annotator
    ], columns=["annotator", "outcome", "reasons"])
    table = stats.reason_counts(frame)
    # columns: the most used tag first (more correct 2, then more concise 1 and safer 1 by name)
    assert list(table.columns) == ["annotator", "verdicts", "with_reasons", "more correct", "more concise", "safer"]
    assert table.values.tolist() == [["ana", 3, 2, 2, 0, 1], ["ben", 2, 1, 0, 1, 0]]
    assert list(stats.reason_counts(frame.iloc[:0]).columns) == ["annotator", "verdicts", "with_reasons"]


def test_reasons_come_in_from_jsonl_csv_and_conversational_rows(workspace, tmp_path):
    jsonl = tmp_path / "why.jsonl"
    jsonl.write_text("\n".join(json.dumps(r) for r in [
        {"prompt": "Q1?", "chosen": "yes", "rejected": "no", "reasons": ["more correct"]},
        {"prompt": [{"role": "user", "content": "Q2?"}], "chosen": [{"role": "assistant", "content": "a"}],
         "rejected": [{"role": "assistant", "content": "b"}], "reasons": ["safer", "safer"]},
        {"chosen": [{"role": "user", "content": "Q3?"}, {"role": "assistant", "content": "c"}],
         "rejected": [{"role": "user", "content": "Q3?"}, {"role": "assistant", "content": "d"}],
         "reasons": ["better format"]},
        {"prompt": "Q4?", "chosen": "x", "rejected": "y"},  # no reasons field
    ]) + "\n", encoding="utf-8")
    csv = tmp_path / "why.csv"
    csv.write_text('prompt,chosen,rejected,reasons\nQ5?,e,f,"[""more concise""]"\nQ6?,g,h,\n', encoding="utf-8")
    assert store.import_file(jsonl)["imported"] == 4 and store.import_file(csv)["imported"] == 2
    with db.session() as s:
        stored = s.scalars(select(Judgment.reasons).order_by(Judgment.id)).all()
    assert stored == [["more correct"], ["safer"], ["better format"], None, ["more concise"], None]


@pytest.mark.parametrize("value, phrase", [
    ("safer", "expected a list of reason tags"),
    ({"tag": "safer"}, "expected a list of reason tags"),
    (["ok", 5], "must be text"),
])
def test_a_bad_reasons_field_names_the_line_and_writes_nothing(workspace, tmp_path, value, phrase):
    path = tmp_path / "bad.jsonl"
    rows = [{"prompt": "Q1?", "chosen": "a", "rejected": "b"},
            {"prompt": "Q2?", "chosen": "c", "rejected": "d", "reasons": value}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    with pytest.raises(InputError) as error:
        store.import_file(path)
    assert "line 2" in str(error.value) and "field 'reasons'" in str(error.value) and phrase in str(error.value)
    assert stats.judgments_frame().empty
