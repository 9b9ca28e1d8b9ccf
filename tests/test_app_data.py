"""The Data page in AppTest: filters, statistics, import (good and bad files) and export."""
from __future__ import annotations

import json

import pytest

from sqlalchemy import func, select

from labeling import db, queue
from labeling.models import Judgment, Pair, Prompt
from tests.test_app_label import generator, open_app  # noqa: F401  (generator is a fixture)
from tests.test_audit import voted  # noqa: F401  (a fixture)
from tests.test_queue import seed_pairs


def open_data():
    return open_app("ana", "data.py")


def select_box(at, label: str, value: str):
    next(s for s in at.selectbox if s.label == label).select(value)
    return at.run()


def counts() -> tuple[int, int, int]:
    with db.session() as s:
        return tuple(s.scalar(select(func.count(m.id))) for m in (Prompt, Pair, Judgment))


def seed_judged():
    hh = seed_pairs([("Q1?", "x1", "y1"), ("Q2?", "x2", "y2")], source="hh")
    (oasst,) = seed_pairs([("Q3?", "x3", "y3")], source="oasst")
    queue.submit_judgment("ana", hh[0], "a", "a")
    queue.submit_judgment("ben", hh[0], "a", "b")
    queue.submit_judgment("ana", hh[1], "a", "b")
    queue.submit_judgment("ben", hh[1], "b", "b")
    queue.submit_judgment("ana", oasst, "tie", "a", comment="same")
    return hh, oasst


def test_table_filters_by_source_annotator_and_outcome(workspace, generator):  # noqa: F811
    hh, oasst = seed_judged()
    at = open_data()
    assert not at.exception
    assert len(at.dataframe[0].value) == 5
    at = select_box(at, "Source", "hh")
    assert sorted(at.dataframe[0].value["pair_id"]) == sorted([hh[0], hh[0], hh[1], hh[1]])
    at = select_box(at, "Annotator", "ben")
    assert at.dataframe[0].value[["pair_id", "outcome"]].values.tolist() == [[hh[1], "b"], [hh[0], "a"]]
    at = select_box(select_box(at, "Source", "All"), "Outcome", "tie")
    assert at.dataframe[0].value["pair_id"].tolist() == []  # ben never said tie
    at = select_box(at, "Annotator", "ana")
    assert at.dataframe[0].value[["pair_id", "comment"]].values.tolist() == [[oasst, "same"]]


def test_statistics_show_hand_worked_agreement(workspace, generator):  # noqa: F811
    seed_judged()
    at = open_data()
    metrics = {m.label: m.value for m in at.metric}
    # two pairs judged twice: (a, a) agree, (a, b) disagree -> 50 %; p_a = 3/4, p_b = 1/4,
    # P_e = 10/16, kappa = (0.5 - 0.625) / 0.375 = -1/3
    assert metrics["Percent agreement"] == "50.0%"
    assert metrics["Fleiss' kappa"] == "-0.333"
    frames = [d.value for d in at.dataframe]
    per_annotator = next(f for f in frames if "judgments" in f.columns)
    assert per_annotator[["annotator", "judgments"]].values.tolist() == [["ana", 3], ["ben", 2]]
    bias = next(f for f in frames if "left_share" in f.columns).set_index("annotator")
    # ana: (a, left a) left wins, (a, left b) right wins -> 1 of 2; ben: (a, b) right, (b, b) left -> 1 of 2
    assert bias.loc["ana", "left_wins"] == 1 and bias.loc["ana", "decisive"] == 2
    assert bias.loc["ben", "left_share"] == 0.5
    assert stats_frame(at, "longer_share").empty  # every answer here is one word: length says nothing


def stats_frame(at, column: str):
    return next(d.value for d in at.dataframe if column in d.value.columns)


def test_statistics_show_each_annotators_taste_for_length(workspace, generator):  # noqa: F811
    ids = seed_pairs([(f"Q{i}?", "a longer answer here", "short") for i in range(3)])
    for pair_id in ids:  # ana picks the longer answer every time, ben twice out of three
        queue.submit_judgment("ana", pair_id, "a", "a")
    for pair_id, outcome in zip(ids, "aab"):
        queue.submit_judgment("ben", pair_id, outcome, "b")
    bias = stats_frame(open_data(), "longer_share").set_index("annotator")
    assert bias.loc["ana", ["decisive", "longer_wins"]].tolist() == [3, 3]
    assert bias.loc["ben", "longer_share"] == pytest.approx(2 / 3) and bias.loc["ben", "chance"] == 0.5


def test_outcome_shares_count_people_not_imported_labels(workspace, generator):  # noqa: F811
    rows = [{"prompt": f"Question {i}?", "chosen": "yes", "rejected": "no"} for i in range(3)]
    at = upload(open_data(), "labels.jsonl", "\n".join(json.dumps(r) for r in rows).encode())
    queue.submit_judgment("ana", 1, "b", "a")
    at = open_data()
    shares = next(d.value for d in at.dataframe if "share" in d.value.columns).set_index("outcome")
    assert shares.loc["b", "count"] == 1 and shares.loc["a", "count"] == 0 and shares.loc["b", "share"] == 1.0


def upload(at, name: str, content: bytes):
    at.get("file_uploader")[0].upload(name, content)
    next(b for b in at.button if b.label == "Import").click()
    return at.run()


def test_import_of_a_good_file_stores_its_pairs(workspace, generator):  # noqa: F811
    rows = [{"prompt": "What is 2+2?", "chosen": "4", "rejected": "5"},
            {"prompt": "Capital of France?", "chosen": "Paris", "rejected": "Rome"}]
    at = open_data()
    before = counts()  # the app's built-in prompts are in
    at = upload(at, "mini.jsonl", "\n".join(json.dumps(r) for r in rows).encode())
    assert not at.error, [e.value for e in at.error]
    assert any("imported 2" in s.value for s in at.success)
    assert tuple(n - m for n, m in zip(counts(), before)) == (2, 2, 2)
    assert queue.pairs_waiting() == 0  # imported labels count as judgments: nothing waits in the queue
    assert queue.pairs_waiting(overlap=2) == 2


def test_import_of_a_bad_file_shows_one_sentence_and_stores_nothing(workspace, generator):  # noqa: F811
    seed_pairs(1)
    at = open_data()
    before = counts()
    at = upload(at, "broken.jsonl", b'{"prompt": "a", "chosen": "b", "rejected": "c"}\n{"prompt": \n')
    assert len(at.error) == 1
    message = at.error[0].value
    assert "broken.jsonl" in message and "line 2" in message and "/tmp" not in message
    assert counts() == before


def test_export_prepares_a_jsonl_download(workspace, generator):  # noqa: F811
    seed_judged()
    at = open_data()
    next(b for b in at.button if b.label == "Prepare export").click()
    at = at.run()
    assert not at.error, [e.value for e in at.error]
    name, data, _, result = at.session_state["export"]
    rows = [json.loads(line) for line in data.decode().splitlines()]
    # only the first hh pair has a majority (a, a); (a, b) is unresolved and the tie is left out
    assert name == "prefloop-preferences.jsonl" and len(rows) == result["exported"] == 1
    assert {"prompt", "chosen", "rejected"} <= set(rows[0])
    assert "x1" in json.dumps(rows[0]["chosen"]) and "y1" in json.dumps(rows[0]["rejected"])
    assert at.get("download_button")


def test_export_with_nothing_to_export_says_so(workspace, generator):  # noqa: F811
    seed_pairs(1)
    at = open_data()
    next(b for b in at.button if b.label == "Prepare export").click()
    at = at.run()
    assert len(at.error) == 1 and "nothing to export" in at.error[0].value


def test_an_admin_sets_the_overlap_and_the_guidelines_on_the_data_page(workspace, generator, monkeypatch):  # noqa: F811
    from labeling import settings

    monkeypatch.setenv("PREFLOOP_OVERLAP", "3")
    at = open_data()
    assert [t.label for t in at.tabs][-1] == "Settings"
    assert at.number_input(key="overlap").value == 3  # the environment's value until one is saved
    at.number_input(key="overlap").set_value(2)
    at.button(key="FormSubmitter:overlap-form-Save overlap").click().run()
    assert settings.overlap() == 2  # stored in the workspace: it wins over PREFLOOP_OVERLAP from now on
    assert open_data().number_input(key="overlap").value == 2
    at.text_area(key="data-guidelines-text").input("Prefer answers that cite a source.")
    at.button(key="data-guidelines-save").click().run()
    assert queue.guidelines() == "Prefer answers that cite a source."
    assert "Guidelines saved" in at.success[0].value


def test_a_bad_overlap_in_the_environment_is_one_sentence(workspace, generator, monkeypatch):  # noqa: F811
    monkeypatch.setenv("PREFLOOP_OVERLAP", "two")
    at = open_data()
    assert not at.exception
    assert "PREFLOOP_OVERLAP must be a whole number from 1 to 20, got 'two'." in [e.value for e in at.error]
    label = open_app("ana", "label.py")
    assert not label.exception and label.error[0].value.startswith("PREFLOOP_OVERLAP must be a whole number")


def test_reasons_per_annotator_and_an_admins_own_tags(workspace, generator):  # noqa: F811
    from labeling import reasons

    hh, oasst = seed_judged()
    queue.submit_judgment("ana", hh[0], "a", "a", reasons=["more correct", "safer"])
    queue.submit_judgment("ben", hh[0], "a", "b", reasons=["more correct"])
    at = open_data()
    table = stats_frame(at, "with_reasons").set_index("annotator")
    assert table.loc["ana", ["verdicts", "with_reasons", "more correct", "safer"]].tolist() == [3, 1, 1, 1]
    assert table.loc["ben", ["verdicts", "with_reasons", "more correct", "safer"]].tolist() == [2, 1, 1, 0]
    at.text_area[0].input("cites a source\nsafer\n")
    at = next(b for b in at.button if b.label == "Save reason tags").click().run()
    assert reasons.extra_reasons() == ["cites a source"]  # a built-in tag is not added twice
    assert any("offers 6 reason tags" in m.value for m in at.success)


def test_pair_audit_counts_and_examples_and_the_export_leaves_them_out(workspace, generator, voted):  # noqa: F811
    at = open_data()
    assert "only longer" not in {m.label for m in at.metric}  # computed on request only
    at = next(b for b in at.button if b.label == "Audit the pairs").click().run()
    assert not at.exception
    metrics = {m.label: m.value for m in at.metric}
    assert (metrics["only longer"], metrics["near identical"], metrics["disagreement"],
            metrics["skewed annotator"]) == ("1 of 12", "1 of 12", "1 of 12", "8 of 12")
    disagreement = next(d.value for d in at.dataframe if "why" in d.value.columns
                        and "cleo" in " ".join(d.value["why"]))
    assert disagreement["why"].tolist() == ["ana: chosen, ben: chosen, cleo: rejected"]
    at.multiselect(key="export-exclude").set_value(["skewed_annotator", "near_identical"]).run()
    at = next(b for b in at.button if b.label == "Prepare export").click().run()
    _, data, _, result = at.session_state["export"]
    assert result["exported"] == 3 and result["excluded"]["skewed_annotator"] == 8
    assert [json.loads(line)["pair_id"] for line in data.decode().splitlines()] == [voted[0], *voted[2:4]]


def test_the_ai_judge_tab_shows_agreement_and_opens_ai_labels_only_through_the_gate(workspace, generator, monkeypatch):  # noqa: F811
    from labeling import agreement, suggestions
    from tests.test_judge import FakeJudge, pairs_with_short_answers
    from training import jobs
    from training import judge as judges

    ids = pairs_with_short_answers(20)
    judges.run(judges.JudgeConfig(), judge=FakeJudge())
    for k, pair_id in enumerate(ids[:12]):
        queue.submit_judgment("ana", pair_id, "a" if k % 2 == 0 else "b", "a")
    started = []
    monkeypatch.setattr(jobs, "start_job", lambda kind, config, **kw: started.append((kind, config)) or 41)
    at = open_data()
    assert "AI judge" in [t.label for t in at.tabs] and not at.exception
    (table,) = [d.value for d in at.dataframe if "judge" in d.value.columns]
    assert table.iloc[0]["judge"] == "fake" and table.iloc[0]["κ with people [95 % CI]"].startswith("1.00")
    assert any("The gate is open" in s.value for s in at.success)
    assert agreement.ai_labels_in_use() is None
    at = at.toggle(key="judge-use-fake-1").set_value(True).run()
    assert suggestions.ai_label_setting() == {"judge": "fake", "rubric": 1, "threshold": None}
    assert any("people's labels and 8 of the judge's" in c.value for c in at.caption)

    at = at.toggle(key="judge-use-fake-1").set_value(False).run()
    assert suggestions.ai_label_setting() is None
    at = at.text_input(key="judge-threshold-fake-1").input("1.5").run()
    at = at.toggle(key="judge-use-fake-1").set_value(True).run()  # beyond κ's range: one sentence, nothing changed
    assert any("outside [-1, 1]" in e.value for e in at.error)
    assert suggestions.ai_label_setting() is None

    at.text_area(key="judge-rubric").input("Prefer the shorter answer.")
    at = at.button(key="judge-rubric-save").click().run()
    assert suggestions.rubric() == (2, "Prefer the shorter answer.")
    at = at.button(key="FormSubmitter:judge-form-Judge pairs").click().run()
    assert started and started[0][0] == "judge" and started[0][1]["limit"] == 0


def test_demonstrations_import_as_messages_and_a_bad_row_is_one_sentence(workspace, generator):  # noqa: F811
    from labeling import demonstrations

    good = {"messages": [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello!"}]}
    at = upload(open_data(), "demos.jsonl", json.dumps(good).encode())  # auto: one sentence naming the format
    assert "import them with the format messages" in at.error[0].value and demonstrations.count() == 0
    next(s for s in at.selectbox if s.label == "Format").select("messages")
    at = upload(at, "demos.jsonl", json.dumps(good).encode())
    assert any("1 demonstrations imported" in s.value for s in at.success)
    assert demonstrations.count() == 1
    assert any(b.label.startswith("Download 1 written answers") for b in at.get("download_button"))
    next(s for s in at.selectbox if s.label == "Format").select("messages")
    at = upload(at, "bad.jsonl", json.dumps({"messages": "just text"}).encode())
    (error,) = at.error
    assert "bad.jsonl" in error.value and "line 1" in error.value and demonstrations.count() == 1


def test_an_admin_turns_length_matching_on_for_new_pairs(workspace, generator, monkeypatch):  # noqa: F811
    from labeling import settings

    at = open_data()
    assert at.number_input(key="length-ratio").value == 0.0
    at.number_input(key="length-ratio").set_value(0.5)
    at.button(key="FormSubmitter:length-form-Save length matching").click().run()
    assert "The length ratio must be 0 (off) or above 1" in at.error[0].value and settings.pair_length_ratio() == 0.0
    at.number_input(key="length-ratio").set_value(1.5)
    at.button(key="FormSubmitter:length-form-Save length matching").click().run()
    assert settings.pair_length_ratio() == 1.5 and "matched in length" in at.success[0].value
