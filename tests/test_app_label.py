"""The Label page in AppTest: every button stores the right outcome whichever side each response
stood on; undo; reloads and double submits make no duplicates; overlap k; comments; first visit."""
from __future__ import annotations

import functools
import sys
import tempfile
import types
from pathlib import Path

import pytest
from sqlalchemy import select
from streamlit.testing.v1 import AppTest

import training
from labeling import db, queue
from labeling.models import Judgment, Pair, Response
from tests.test_queue import judgments, seed_pairs

ROOT = Path(__file__).resolve().parent.parent


@functools.cache
def entry_script() -> str:
    """app.py run from a folder without a `pages/` directory.

    AppTest resets Streamlit's "this app uses the pages/ folder" flag before every run, so with
    our real `pages/` beside app.py each switched-to page would run alone, without the router
    (a real server clears that flag for good on the first st.navigation call). From here the
    router always runs; `views` links to our pages so switch_page finds them.
    """
    folder = Path(tempfile.mkdtemp(prefix="prefloop-apptest-"))
    (folder / "views").symlink_to(ROOT / "pages")
    (folder / "entry.py").write_text(f"import runpy\nrunpy.run_path({str(ROOT / 'app.py')!r}, run_name='__main__')\n")
    return str(folder / "entry.py")


def open_app(name: str | None = "ana", page: str | None = None) -> AppTest:
    """A fresh browser session (a reload) with ?annotator=name, on the home view or `page`."""
    at = AppTest.from_file(entry_script(), default_timeout=30)
    if name:
        at.query_params["annotator"] = name
    at.run()  # the home view first: st.navigation registers the pages on the first run
    if page:
        at.switch_page(f"views/{page}")
        at.run()
    return at
EXPECTED = {"A is better": "left", "B is better": "right", "Tie": "tie", "Both bad": "both_bad", "Skip": "skip"}


@pytest.fixture
def generator(monkeypatch):
    """A stand-in for training.generate that records calls, so no model is ever loaded."""
    fake = types.ModuleType("training.generate")
    fake.calls = []
    fake.ensure_pairs_waiting = (lambda min_waiting=None, waiting=None:
                                 fake.calls.append(("ensure", min_waiting, waiting)) or 7)
    fake.start_generation = lambda prompts: fake.calls.append(("start", prompts)) or 8
    fake.recent_failure = lambda: None
    monkeypatch.setitem(sys.modules, "training.generate", fake)
    monkeypatch.setenv("PREFLOOP_AUTOGENERATE", "1")
    monkeypatch.setattr(training, "generate", fake, raising=False)
    return fake


def open_label(name: str | None = "ana") -> AppTest:
    return open_app(name, "label.py")


def click(at: AppTest, label: str) -> AppTest:
    next(b for b in at.button if b.label == label).click()
    return at.run()


def shown_sides(at: AppTest) -> tuple[str, str]:
    """The response texts under the "Response A" and "Response B" headings."""
    values = [m.value for m in at.markdown]
    return values[values.index("#### Response A") + 1], values[values.index("#### Response B") + 1]


def response_texts(pair_id: int) -> tuple[str, str]:
    with db.session() as s:
        pair = s.get(Pair, pair_id)
        return s.get(Response, pair.response_a_id).text, s.get(Response, pair.response_b_id).text


def shown_pair_id(at: AppTest) -> int:
    left, _ = shown_sides(at)
    with db.session() as s:
        response_id = s.scalar(select(Response.id).where(Response.text == left))
        return s.scalar(select(Pair.id).where((Pair.response_a_id == response_id) | (Pair.response_b_id == response_id)))


@pytest.mark.parametrize("label", list(EXPECTED))
def test_each_button_stores_the_outcome_of_the_response_on_that_side(workspace, generator, label):
    ids = seed_pairs([(f"Q{i}?", f"alpha {i}", f"beta {i}") for i in range(8)])
    at = open_label()
    lefts = set()
    for pair_id in ids:
        left_text, right_text = shown_sides(at)
        text_a, text_b = response_texts(pair_id)
        assert {left_text, right_text} == {text_a, text_b}
        left = "a" if left_text == text_a else "b"
        lefts.add(left)
        at = click(at, label)
        expected = {"left": left, "right": "b" if left == "a" else "a"}.get(EXPECTED[label], EXPECTED[label])
        assert judgments("ana")[-1] == (pair_id, "ana", expected, left)
    assert lefts == {"a", "b"}, "eight pairs should show response_a on the left at least once and not always"
    assert not at.exception


def test_undo_last_brings_the_pair_back_and_deletes_the_row(workspace, generator):
    ids = seed_pairs(3)
    at = click(open_label(), "A is better")
    assert shown_pair_id(at) == ids[1]
    at = click(at, "Undo last")
    assert judgments() == []
    assert shown_pair_id(at) == ids[0]
    at = click(at, "Tie")
    assert [(p, o) for p, _, o, _ in judgments()] == [(ids[0], "tie")]


def test_reload_and_double_submit_make_no_duplicates(workspace, generator):
    ids = seed_pairs(3)
    at = open_label()
    first = next(b for b in at.button if b.label == "B is better")
    first.click()
    at.run()
    first.click()  # the second click of a double click, on the button drawn for the first pair
    at.run()
    assert [p for p, *_ in judgments()] == [ids[0]]
    reloaded = open_label()  # a reload is a new session with the same ?annotator=
    assert shown_pair_id(reloaded) == ids[1]
    assert shown_pair_id(reloaded.run()) == ids[1]
    assert len(judgments()) == 1


def test_overlap_k_shows_a_pair_to_k_annotators(workspace, generator, monkeypatch):
    monkeypatch.setenv("PREFLOOP_OVERLAP", "2")
    ids = seed_pairs(3)
    assert shown_pair_id(open_label("ana")) == ids[0]
    click(open_label("ana"), "A is better")
    ben = open_label("ben")
    assert shown_pair_id(ben) == ids[0]
    click(ben, "B is better")
    assert shown_pair_id(open_label("chen")) == ids[2]  # the second is on ana's and ben's screens
    assert sorted(n for p, n, *_ in judgments() if p == ids[0]) == ["ana", "ben"]


def test_comment_and_seconds_are_stored(workspace, generator):
    seed_pairs(1)
    at = open_label()
    at.text_input[0].input("left one cites a source")
    at = click(at, "A is better")
    with db.session() as s:
        row = s.scalar(select(Judgment))
        assert row.comment == "left one cites a source"
        assert row.seconds is not None and row.seconds >= 0


def test_first_visit_asks_for_a_name_and_keeps_it_in_the_url(workspace, generator):
    seed_pairs(1)
    at = open_label(name=None)
    assert not any(b.label == "A is better" for b in at.button)
    at.text_input(key="typed-name").input("  dara ")
    next(b for b in at.button if b.label == "Start labeling").click()
    at.run()
    assert at.session_state["annotator"] == "dara"
    assert at.query_params["annotator"] == "dara"
    assert any(b.label == "A is better" for b in at.button)


def test_empty_queue_asks_the_generator_and_says_so(workspace, generator):
    at = open_label()
    assert ("ensure", None, 0) in generator.calls
    assert any("No pairs are waiting" in i.value for i in at.info)
    assert not at.exception


def test_empty_queue_says_why_when_generating_failed_and_starts_no_new_job(workspace, monkeypatch):
    from labeling import runs

    monkeypatch.setenv("PREFLOOP_AUTOGENERATE", "1")  # the real generator module: no model loads, since it fails
    job_id = runs.queue_job("generate", {}, unless_active=())
    runs.finish_job(job_id, "failed", None, "The model folder /nowhere does not exist.")
    at = open_label()
    assert not at.exception
    assert any("Generating pairs failed: The model folder /nowhere does not exist. It is tried again 5 minutes"
               in e.value for e in at.error), [e.value for e in at.error]
    assert runs.last_job("generate").id == job_id  # no new job until the failure is 5 minutes old


def test_pairs_i_skipped_do_not_count_as_waiting_for_me(workspace, generator):
    ids = seed_pairs(25)
    for pair_id in ids:
        queue.submit_judgment("ana", pair_id, "skip", "a")
    at = open_label()  # 25 pairs nobody has judged, none of them for ana: she needs new ones
    assert ("ensure", None, 0) in generator.calls
    assert any("No pairs are waiting" in i.value for i in at.info)


def test_switching_annotator_does_not_hand_over_the_pair_on_screen(workspace, generator, monkeypatch):
    monkeypatch.setenv("PREFLOOP_OVERLAP", "2")
    ids = seed_pairs(2)
    queue.submit_judgment("ben", ids[0], "a", "a")
    at = open_label("ana")
    assert shown_pair_id(at) == ids[0]  # ana sees the oldest pair
    next(b for b in at.button if b.key == "switch-annotator").click()
    at.run()
    at.query_params["annotator"] = "ben"
    at.switch_page("views/label.py")
    at.run()
    assert shown_pair_id(at) == ids[1]  # ben judged the first already: he gets his own next pair
    assert not at.exception


def test_exact_text_shows_the_characters_markdown_would_change(workspace, generator):
    left_text, right_text = "Roses are red\nViolets are *blue*", "def f(*args):\n    return __name__"
    seed_pairs([("Say it $exactly$", left_text, right_text)])
    at = open_label()
    assert set(shown_sides(at)) == {left_text, right_text} and not at.code  # Markdown by default
    at.toggle(key="plain-text").set_value(True)
    at = at.run()
    assert [c.value for c in at.code][0] == "Say it $exactly$"
    assert {c.value for c in at.code[1:]} == {left_text, right_text}
    assert not at.exception
    at.switch_page("views/compare.py")
    at.run()
    at.switch_page("views/label.py")
    at.run()
    assert at.toggle(key="plain-text").value and len(at.code) == 3  # the choice outlives a page change


def test_raw_html_is_passed_to_markdown_as_text_not_allowed_html(workspace, generator):
    seed_pairs([("Say hi", "<script>alert(1)</script>", "<img src=x onerror=alert(1)>")])
    at = open_label()
    assert set(shown_sides(at)) == {"<script>alert(1)</script>", "<img src=x onerror=alert(1)>"}
    assert all(not m.proto.allow_html for m in at.markdown)


def test_guidelines_are_shown_and_edits_are_stored_in_the_workspace(workspace, generator):
    seed_pairs(1)
    at = open_label()
    assert any("How to judge a pair" in m.value for m in at.expander[0].markdown)
    at.toggle(key="edit-guidelines").set_value(True)
    at = at.run()
    at.text_area(key="guidelines-text").input("Prefer **short** answers.")
    at = click(at, "Save guidelines")
    assert queue.guidelines() == "Prefer **short** answers."
    at.text_area(key="guidelines-text").input("   ")
    at = click(at, "Save guidelines")
    assert len(at.error) == 1 and "empty" in at.error[0].value
    assert queue.guidelines() == "Prefer **short** answers."


def test_reason_tags_go_with_the_vote_and_the_next_pair_starts_without_them(workspace, generator):
    from labeling import reasons

    ids = seed_pairs(2)
    reasons.save_extra_reasons(["cites a source"])
    at = open_label()
    (pills,) = at.pills
    assert pills.options == [*reasons.BUILTIN_REASONS, "cites a source"]
    at = pills.set_value(["more correct", "cites a source"]).run()
    assert shown_pair_id(at) == ids[0] and judgments() == []  # picking a tag is not a vote
    at = click(at, "B is better")
    with db.session() as s:
        assert s.scalar(select(Judgment.reasons).where(Judgment.pair_id == ids[0])) == ["more correct", "cites a source"]
    assert shown_pair_id(at) == ids[1] and at.pills[0].value == []
    at = click(at, "Tie")  # no tag picked: none stored
    with db.session() as s:
        assert s.scalar(select(Judgment.reasons).where(Judgment.pair_id == ids[1])) is None


def test_suggestions_show_after_the_vote_not_before_unless_an_admin_says_so(workspace, generator):
    from labeling import suggestions

    ids = seed_pairs(2)
    suggestions.store(ids[0], "ai", "local:judge", "a", 0.8, "a answers the question", rubric_version=1)
    suggestions.store(ids[0], "reward", "r1-reward", "b", 0.3)
    at = open_label()
    assert shown_pair_id(at) == ids[0] and not at.info  # nothing to anchor the vote
    left = "a" if shown_sides(at)[0] == response_texts(ids[0])[0] else "b"
    at = click(at, "Tie")
    (info,) = at.info
    side_a = "A" if left == "a" else "B"
    assert "On the pair you just judged" in info.value
    assert f"The AI judge (local:judge) preferred **{side_a}**" in info.value and "a answers the question" in info.value
    assert f"The reward model (r1-reward) preferred **{'B' if side_a == 'A' else 'A'}**" in info.value
    assert judgments("ana") == [(ids[0], "ana", "tie", left)]  # the vote counts, not the suggestions
    at = at.run()
    assert not at.info  # shown once, for the pair just judged

    suggestions.set_show_before_vote(True)
    suggestions.store(ids[1], "ai", "local:judge", "tie", None, "alike", rubric_version=1)
    at = open_label()
    assert shown_pair_id(at) == ids[1] and "saw no winner" in at.info[0].value


def test_both_bad_offers_a_rewrite_started_from_a_side_and_stores_it(workspace, generator):
    from labeling import demonstrations

    ids = seed_pairs([("Is the sea salty?", "No.", "Maybe."), ("Q2?", "x", "y"), ("Q3?", "u", "v")])
    at = click(open_label(), "Both bad")
    assert judgments("ana")[0][:3] == (ids[0], "ana", "both_bad")
    assert shown_pair_id(at) == ids[1]  # the next pair is on screen; the box is for the one just judged
    at = click(at, "Start from A")
    box = at.text_area(key=f"rewrite-text-{ids[0]}")
    assert box.value in ("No.", "Maybe.")
    box.input("Yes: sea water is about 3.5 % salt.")
    at = click(at, "Save rewrite")
    (row,) = demonstrations.sft_rows()
    assert row["completion"][0]["content"] == "Yes: sea water is about 3.5 % salt." and not at.exception
    assert not [b for b in at.button if b.label == "Save rewrite"]  # the box is gone once saved
    at = click(at, "Both bad")  # the second pair: the box comes back for it; an empty save is one sentence
    at = click(at, "Save rewrite")
    assert any("The rewrite is empty" in e.value for e in at.error) and len(demonstrations.sft_rows()) == 1
    at = click(at, "A is better")  # voting on without a rewrite dismisses the box
    assert not [b for b in at.button if b.label == "Save rewrite"]


def test_rate_one_mode_shows_one_answer_and_stores_thumbs(workspace, generator):
    from labeling import ratings

    seed_pairs([("Is the sea salty?", "Yes.", "No.")])
    at = open_label()
    at = at.segmented_control(key="label-mode").set_value("Rate one").run()
    assert "Response A" not in [m.value for m in at.markdown] and "#### The answer" in [m.value for m in at.markdown]
    at = click(at, "Good")
    at = click(at, "Bad")
    assert ratings.counts("ana") == {"up": 1, "down": 1, "skip": 0} and judgments() == []
    assert any("No answer is waiting" in i.value for i in at.info)
    at = at.segmented_control(key="label-mode").set_value("Compare two").run()
    assert "#### Response A" in [m.value for m in at.markdown]  # the pair itself still waits for a comparison
