"""The Compare page in AppTest: answers side by side with their scores, blind votes stored as
judgments with the right winner whichever side it stood on, ratings and win rates shown."""
from __future__ import annotations

from sqlalchemy import select

from labeling import db
from labeling.models import Judgment, ModelVersion, Pair, Response
from labeling.store import add_generated_pair, add_prompts
from tests.test_app_label import open_app


def seed_arena(n=3):
    add_prompts([f"Question {i}?" for i in range(n)], source="test")
    with db.session() as s:
        s.add(ModelVersion(id="v1-base", kind="policy", method="base", path="/m"))
        s.add(ModelVersion(id="v2-dpo", kind="policy", method="dpo", parent_id="v1-base", path="/d", is_current=True))
        s.flush()
        for prompt_id in range(1, n + 1):
            add_generated_pair(s, prompt_id, f"base answer {prompt_id}", f"tuned answer {prompt_id} <script>alert(1)</script>",
                               ("v1-base", "v2-dpo"),
                               ({"reward": -1.0, "base_logprob": -20.0, "tokens": 5},
                                {"reward": 2.0, "base_logprob": -25.0, "tokens": 7}), kind="arena")


def test_side_by_side_shows_both_versions_with_scores(workspace):
    seed_arena()
    at = open_app(page="compare.py")
    assert not at.exception
    assert (at.selectbox(key="compare-a").value, at.selectbox(key="compare-b").value) == ("v1-base", "v2-dpo")
    assert len(at.expander) >= 3
    captions = " ".join(c.value for c in at.caption)
    assert "reward 2.000 · log-prob under base -25.0 over 7 tokens" in captions and "reward -1.000" in captions


def test_with_the_base_current_b_defaults_to_another_version_and_unscored_answers_show(workspace):
    seed_arena()
    with db.session() as s:
        s.get(ModelVersion, "v2-dpo").is_current = False
        s.get(ModelVersion, "v1-base").is_current = True
        for response in s.scalars(select(Response).where(Response.model_version == "v2-dpo")):
            response.generation = None  # as an answer label generation had stored before
    at = open_app(page="compare.py")
    assert not at.exception
    assert (at.selectbox(key="compare-a").value, at.selectbox(key="compare-b").value) == ("v1-base", "v2-dpo")
    assert "no reward score · not scored under the base model" in " ".join(c.value for c in at.caption)


def test_blind_votes_store_the_winner_and_feed_ratings(workspace):
    seed_arena()
    at = open_app(name="bo", page="compare.py")
    for _ in range(3):
        # the tuned answer is the one with "tuned" in it, wherever the shuffle put it
        sides = [m.value for m in at.markdown if "answer" in m.value]
        left_is_tuned = "tuned" in sides[-2]
        at.button(key=[b.key for b in at.button if b.label == ("A is better" if left_is_tuned else "B is better")][0]).click().run()
    with db.session() as s:
        winners = s.execute(select(Judgment.outcome, Response.model_version).join(Pair, Judgment.pair_id == Pair.id)
                            .join(Response, Pair.response_b_id == Response.id)).all()
    assert len(winners) == 3 and all(outcome == "b" and version == "v2-dpo" for outcome, version in winners)
    assert "No arena pairs wait" in at.info[-1].value
    ratings = at.dataframe[-2].value
    assert list(ratings["version"]) == ["v2-dpo", "v1-base"]
    wins = at.dataframe[-1].value
    assert (wins["wins_a"][0], wins["wins_b"][0]) == (0, 3)


def test_version_boxes_show_name_method_parent_and_date(workspace):
    import datetime as dt

    seed_arena()
    with db.session() as s:
        s.get(ModelVersion, "v1-base").created_at = dt.datetime(2026, 11, 20, 9, 0)
        s.get(ModelVersion, "v2-dpo").created_at = dt.datetime(2026, 11, 23, 12, 45)
    at = open_app(page="compare.py")
    labels = ["v1-base · base model · 2026-11-20 09:00", "v2-dpo · DPO from v1-base · 2026-11-23 12:45 · current"]
    for key in ("compare-a", "compare-b"):
        assert at.selectbox(key=key).options == labels
    assert (at.selectbox(key="compare-a").value, at.selectbox(key="compare-b").value) == ("v1-base", "v2-dpo")
