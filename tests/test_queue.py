"""The labeling queue: order, overlap, idempotent submits, undo, side mapping and counts."""
from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import delete, func, select, update

from labeling import db, queue, store
from labeling.models import Job, Judgment, ModelVersion, Pair, Prompt, Response, utcnow
from labeling.records import as_messages, content_hash, pair_hash
from tests.conftest import FIXTURES


def seed_pairs(rows, source: str = "test", kind: str = "label") -> list[int]:
    """Insert pairs straight into the database. rows: (prompt, response_a, response_b) tuples,
    prompt as text or messages; or an int n for n made-up pairs. Oldest first; returns pair ids."""
    if isinstance(rows, int):
        rows = [(f"Question {i}?", f"Answer {i} one.", f"Answer {i} two.") for i in range(rows)]
    ids = []
    with db.session() as s:
        # later calls seed newer pairs, so "oldest first" follows the order of the calls
        start = utcnow() - dt.timedelta(hours=1) + dt.timedelta(seconds=s.scalar(select(func.count(Pair.id))))
        for i, (prompt, text_a, text_b) in enumerate(rows):
            messages = as_messages(prompt)
            created = start + dt.timedelta(seconds=i)
            p = Prompt(content_hash=content_hash(messages), messages=messages, source=source, created_at=created)
            s.add(p)
            s.flush()
            a, b = (Response(prompt_id=p.id, text=t, content_hash=content_hash(t),
                             model_version=f"imported:{source}") for t in (text_a, text_b))
            s.add_all([a, b])
            s.flush()
            pair = Pair(pair_hash=pair_hash(p.content_hash, a.content_hash, b.content_hash), prompt_id=p.id,
                        response_a_id=a.id, response_b_id=b.id, source=source, kind=kind, created_at=created)
            s.add(pair)
            s.flush()
            ids.append(pair.id)
    return ids


def judgments(annotator: str | None = None) -> list[tuple[int, str, str, str | None]]:
    """(pair_id, annotator name, outcome, left) of every stored judgment, by pair."""
    with db.session() as s:
        rows = s.scalars(select(Judgment).order_by(Judgment.pair_id, Judgment.id)).all()
        return [(j.pair_id, j.annotator.name, j.outcome, j.left) for j in rows
                if annotator is None or j.annotator.name == annotator]


def test_oldest_first_and_not_twice_for_the_same_annotator(workspace):
    ids = seed_pairs(3)
    first = queue.next_pair("ana")
    assert first.pair_id == ids[0]
    queue.submit_judgment("ana", first.pair_id, "a", first.left)
    assert queue.next_pair("ana").pair_id == ids[1]
    assert queue.next_pair("ben").pair_id == ids[2]  # overlap 1: ana's pair is done, her next one on her screen


def test_overlap_k_lets_k_annotators_judge_a_pair_and_no_more(workspace):
    ids = seed_pairs(2)
    for name in ("ana", "ben"):
        shown = queue.next_pair(name, overlap=2)
        assert shown.pair_id == ids[0]
        queue.submit_judgment(name, shown.pair_id, "b", shown.left)
    assert queue.next_pair("chen", overlap=2).pair_id == ids[1]
    assert queue.next_pair("chen", overlap=3).pair_id == ids[0]
    assert queue.pairs_waiting(overlap=2) == 1


def test_a_pair_on_one_screen_is_not_drawn_for_another(workspace):
    ids = seed_pairs(3)
    assert queue.next_pair("ana").pair_id == ids[0]
    assert queue.next_pair("ana").pair_id == ids[0]  # her own lease does not hide it from her
    assert queue.next_pair("ben").pair_id == ids[1]  # ana has the oldest on screen
    assert queue.pairs_waiting() == 1 and queue.progress("cy").waiting == 1
    assert queue.progress("ana").waiting == 2  # hers, and the one nobody holds
    queue.submit_judgment("ana", ids[0], "a", "a")
    assert queue.next_pair("ana").pair_id == ids[2]
    assert queue.next_pair("cy") is None  # every pair judged or on a screen
    queue.submit_judgment("ben", ids[1], "skip", "a")  # a skip gives the pair back to the others
    assert queue.next_pair("cy").pair_id == ids[1]


def test_a_lease_runs_out_and_overlap_counts_leases_as_judgments(workspace):
    from labeling.models import PairLease

    ids = seed_pairs(2)
    assert queue.next_pair("ana", overlap=2).pair_id == ids[0]
    assert queue.next_pair("ben", overlap=2).pair_id == ids[0]  # two may judge it
    assert queue.next_pair("cy", overlap=2).pair_id == ids[1]  # ana's and ben's screens fill the first
    with db.session() as s:  # ana left her screen: her lease runs out
        s.execute(update(PairLease).where(PairLease.annotator == "ana").values(expires_at=utcnow() - dt.timedelta(seconds=1)))
    assert queue.next_pair("dee", overlap=2).pair_id == ids[0]
    with db.session() as s:  # ben's runs out too, but he is still working on the pair: showing it renews it
        s.execute(update(PairLease).where(PairLease.annotator == "ben").values(expires_at=utcnow() - dt.timedelta(seconds=1)))
    queue.pair_view(ids[0], "ben")
    assert queue.next_pair("eve", overlap=2).pair_id == ids[1]  # dee's and ben's screens fill the first


def test_a_pair_judged_in_another_tab_is_not_held_again(workspace):
    ids = seed_pairs(2)
    assert queue.next_pair("ana").pair_id == ids[0]
    queue.submit_judgment("ana", ids[0], "skip", "a")  # in one tab
    queue.pair_view(ids[0], "ana")  # the other tab reruns with the same pair on screen
    assert queue.next_pair("ben").pair_id == ids[0]  # the skipped pair is free for others
    assert queue.pairs_waiting() == 1


def test_skip_hides_the_pair_from_me_but_not_from_others(workspace):
    ids = seed_pairs(2)
    queue.submit_judgment("ana", ids[0], "skip", "a")
    assert queue.next_pair("ana").pair_id == ids[1]
    assert queue.next_pair("ben").pair_id == ids[0]
    assert queue.progress("ana") == queue.Progress(today=0, total=0, skipped=1, waiting=1)


def test_submit_twice_updates_one_row(workspace):
    ids = seed_pairs(1)
    first = queue.submit_judgment("ana", ids[0], "a", "b", seconds=2.5)
    second = queue.submit_judgment("ana", ids[0], "b", "b", seconds=3.0, comment="  changed my mind ")
    assert first == second
    assert judgments() == [(ids[0], "ana", "b", "b")]
    with db.session() as s:
        row = s.scalar(select(Judgment))
        assert (row.seconds, row.comment) == (3.0, "changed my mind")
        assert s.scalar(select(Pair.judgment_count)) == 1


def test_judgment_count_follows_inserts_updates_and_deletes(workspace):
    (pid,) = seed_pairs(1)
    count = lambda: queue.pairs_waiting(1)  # noqa: E731
    queue.submit_judgment("ana", pid, "skip", "a")
    assert count() == 1
    queue.submit_judgment("ana", pid, "tie", "a")
    assert count() == 0
    with db.session() as s:  # a write that bypasses the queue (an import, raw SQL) is counted too
        s.execute(update(Judgment).values(outcome="skip"))
    assert count() == 1
    with db.session() as s:
        s.execute(update(Judgment).values(outcome="a"))
        s.execute(delete(Judgment))
        assert s.scalar(select(Pair.judgment_count)) == 0


def test_undo_last_removes_only_my_latest_judgment(workspace):
    ids = seed_pairs(3)
    queue.submit_judgment("ana", ids[0], "a", "a")
    queue.submit_judgment("ben", ids[1], "a", "a")
    queue.submit_judgment("ana", ids[2], "tie", "b")
    assert queue.undo_last("ana") == ids[2]
    assert judgments() == [(ids[0], "ana", "a", "a"), (ids[1], "ben", "a", "a")]
    assert queue.next_pair("ana").pair_id == ids[2]
    assert queue.undo_last("ana") == ids[0]
    assert queue.undo_last("ana") is None
    assert queue.undo_last("nobody") is None


def test_undo_and_progress_on_the_label_page_leave_arena_votes_alone(workspace):
    label = seed_pairs([("Label me?", "one", "two")])[0]
    vote = seed_pairs([("Vote on me?", "three", "four")], kind="arena")[0]
    queue.submit_judgment("ana", label, "a", "a")
    queue.submit_judgment("ana", vote, "b", "a")  # the latest judgment is an arena vote
    assert queue.progress("ana").total == 1
    assert queue.undo_last("ana") == label  # the label, not the vote
    assert judgments("ana") == [(vote, "ana", "b", "a")]
    assert queue.undo_last("ana") is None
    assert queue.undo_last("ana", kind="arena") == vote


def test_stored_outcome_maps_screen_sides_to_responses():
    assert queue.stored_outcome("left", "a") == "a"
    assert queue.stored_outcome("left", "b") == "b"
    assert queue.stored_outcome("right", "a") == "b"
    assert queue.stored_outcome("right", "b") == "a"
    for choice in ("tie", "both_bad", "skip"):
        assert queue.stored_outcome(choice, "b") == choice
    with pytest.raises(queue.QueueError, match="Unknown choice"):
        queue.stored_outcome("up", "a")


def test_left_side_is_stable_and_balanced(workspace):
    ids = seed_pairs([("Q?", "alpha", "beta")])
    sides = [queue.left_side(pid, "ana") for pid in range(1, 401)]
    assert sides == [queue.left_side(pid, "ana") for pid in range(1, 401)]
    assert 160 < sides.count("a") < 240
    view = queue.pair_view(ids[0], "ana")
    assert (view.left_text, view.right_text) == (("alpha", "beta") if view.left == "a" else ("beta", "alpha"))


def test_arena_pairs_are_not_in_the_label_queue(workspace):
    seed_pairs(1, kind="arena")
    assert queue.next_pair("ana") is None
    assert queue.pairs_waiting() == 0


def test_bad_input_raises_one_sentence_and_stores_nothing(workspace):
    ids = seed_pairs(1)
    with pytest.raises(queue.QueueError, match="Unknown outcome 'maybe'"):
        queue.submit_judgment("ana", ids[0], "maybe", "a")
    with pytest.raises(queue.QueueError, match="Pair 999 does not exist"):
        queue.submit_judgment("ana", 999, "a", "a")
    with pytest.raises(queue.QueueError, match="empty"):
        queue.next_pair("   ")
    with pytest.raises(queue.QueueError, match="reserved"):
        queue.submit_judgment("import:hh", ids[0], "a", "a")
    with pytest.raises(queue.QueueError, match="overlap"):
        queue.next_pair("ana", overlap=0)
    assert judgments() == []


def test_progress_counts_today_total_and_waiting(workspace):
    ids = seed_pairs(4)
    queue.submit_judgment("ana", ids[0], "a", "a")
    queue.submit_judgment("ana", ids[1], "both_bad", "a")
    with db.session() as s:  # one judgment from yesterday
        s.execute(update(Judgment).where(Judgment.pair_id == ids[0])
                  .values(created_at=utcnow() - dt.timedelta(days=1, hours=1)))
    assert queue.progress("ana") == queue.Progress(today=1, total=2, skipped=0, waiting=2)
    assert queue.progress("newcomer").waiting == 2


def test_workspace_summary(workspace):
    ids = seed_pairs(3)
    queue.submit_judgment("ana", ids[0], "a", "a")
    queue.submit_judgment("ben", ids[1], "skip", "a")
    with db.session() as s:
        s.add(ModelVersion(id="base", kind="policy", method="base", path="/m", is_current=False))
        s.add(ModelVersion(id="dpo-1", kind="policy", method="dpo", parent_id="base", path="/d", is_current=True))
        s.add(Job(kind="generate", status="running", step=3, total_steps=10))
        s.add(Job(kind="dpo", status="finished"))
    summary = queue.workspace_summary()
    assert (summary.prompts, summary.pairs, summary.pairs_waiting, summary.judgments) == (3, 3, 2, 1)
    assert summary.annotators == 2 and summary.imported_labels == 0
    assert summary.current_model == "dpo-1"
    assert [(j["kind"], j["step"], j["total_steps"]) for j in summary.running_jobs] == [("generate", 3, 10)]
    with db.session() as s:
        assert s.scalar(select(func.count(Pair.id))) == 3
    store.import_file(FIXTURES / "pairs.jsonl")  # a dataset's 3 labels: neither people nor their judgments
    after = queue.workspace_summary()
    assert (after.annotators, after.judgments, after.imported_labels) == (2, 1, 3)


def sampled(rows, versions: tuple[str, str]) -> list[int]:
    """`seed_pairs(rows)` with answer A stored as sampled by versions[0] and B by versions[1]."""
    ids = seed_pairs(rows)
    with db.session() as s:
        for pair in s.scalars(select(Pair).where(Pair.id.in_(ids))):
            for response_id, version in zip((pair.response_a_id, pair.response_b_id), versions):
                s.get(Response, response_id).model_version = version
    return ids


def test_the_pairs_a_policy_sampled_are_those_with_both_answers_from_it_and_the_queue_can_serve_them_first(workspace):
    from labeling import model_versions, pairs, settings

    imported = seed_pairs([("Q imported?", "one", "two")])
    base_named = sampled([("Q base?", "one", "two")], ("base", "base"))  # stored before any version existed
    mixed = sampled([("Q mixed?", "one", "two")], ("v1-base", "imported:test"))
    model_versions.add_version("v1-base", "policy", "base", None, "/models/base", None, [], None)
    from_base = sampled([("Q v1?", "one", "two")], ("v1-base", "v1-base"))
    model_versions.add_version("v2-dpo", "policy", "dpo", "v1-base", "/versions/v2-dpo", None, [], None)
    arena = sampled([("Q arena?", "one", "two")], ("v2-dpo", "v1-base"))  # a vote between versions
    newest = sampled([("Q v2?", "one", "two")], ("v2-dpo", "v2-dpo"))
    later = seed_pairs([("Q later?", "one", "two")])

    assert pairs.sampled_by(None) == set(base_named)  # no version yet: the generator's name for the base
    assert pairs.sampled_by("v1-base") == set(base_named + from_base)  # the base version: both its names
    assert pairs.sampled_by("v2-dpo") == set(newest)  # not the mixed pair, not the one across versions
    assert imported and mixed and arena and later

    settings.set_queue_order("current")
    model_versions.make_current("v1-base")
    served = []
    while (view := queue.next_pair("ana", overlap=3)) is not None:  # 3: others may judge them after her
        served.append(view.pair_id)
        queue.submit_judgment("ana", view.pair_id, "a", "a")
    assert served == base_named + from_base + imported + mixed + arena + newest + later  # the rest oldest first
    model_versions.make_current("v2-dpo")
    settings.set_queue_order("oldest")
    assert queue.next_pair("ben", overlap=3).pair_id == imported[0]
    settings.set_queue_order("current")
    assert queue.next_pair("cy", overlap=3).pair_id == newest[0]
