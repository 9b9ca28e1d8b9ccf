"""Did a round help? The version against its parent and the base from stored per-sample points, the
Goodhart meter's two sentences, and the Evaluate page's panel (AppTest)."""
from __future__ import annotations

import pytest

from labeling import db
from labeling.models import EvalPoint, ModelVersion
from training import verdict

PROMPTS = [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5]
CONFIG = {"samples": 2, "seed": 0, "max_new_tokens": 64}


def point(version: str, scores: list[float], tokens: list[int]) -> EvalPoint:
    per_sample = {"score": scores, "tokens": tokens, "prompt": PROMPTS, "kl": [0.0] * len(scores)}
    return EvalPoint(version_id=version, reward_version_id="v2-reward", reward=sum(scores) / len(scores),
                     reward_se=0.1, kl=0.0 if version == "v1-base" else 3.0, kl_se=0.5, kl_per_token=0.0,
                     details={"prompt_ids": list(range(6)), "config": CONFIG, "samples": 12,
                              "mean_tokens": sum(tokens) / len(tokens), "per_sample": per_sample})


def seed(new_scores, new_tokens, base_scores=None, base_tokens=None):
    base_scores = base_scores or [0.1 * (i % 5) for i in range(12)]
    base_tokens = base_tokens or [40 + i for i in range(12)]
    with db.session() as s:
        s.add(ModelVersion(id="v1-base", kind="policy", method="base", path="/m"))
        s.add(ModelVersion(id="v2-reward", kind="reward", method="reward", path="/r"))
        s.add(ModelVersion(id="v3-dpo", kind="policy", method="dpo", parent_id="v1-base", path="/d", is_current=True))
        s.flush()
        s.add(point("v1-base", base_scores, base_tokens))
        s.add(point("v3-dpo", new_scores, new_tokens))


def test_a_real_gain_at_equal_length_has_no_warning(workspace):
    seed([0.1 * (i % 5) + 1 for i in range(12)], [40 + i for i in range(12)])
    report = verdict.round_report("v3-dpo")
    parent = report["comparisons"]["parent"]
    assert (parent["version"], parent["win_rate"], parent["prompts"]) == ("v1-base", 1.0, 6)
    assert parent["low"] == 1.0 and parent["length_change"] == pytest.approx(0.0)
    assert parent["reward_gain"] == pytest.approx(1.0) and parent["gain_at_equal_length"] == pytest.approx(1.0)
    # equal lengths everywhere: the length-controlled rate is the raw one
    assert parent["lc_win_rate"] == pytest.approx(1.0, abs=1e-4) and parent["lc_low"] == pytest.approx(1.0, abs=1e-4)
    assert report["warnings"] == [] and "missing" not in report


def test_the_length_controlled_win_rate_sees_through_a_reward_for_length(workspace):
    base_tokens = [40 + i for i in range(12)]
    # mostly longer, a few answers 2 tokens shorter or longer: the reward model scores length only
    new_tokens = [t + d for t, d in zip(base_tokens, [30, -2, 25, 2, 20, -2, 35, 2, 28, -2, 22, 2])]
    seed([0.01 * t for t in new_tokens], new_tokens, [0.01 * t for t in base_tokens], base_tokens)
    parent = verdict.round_report("v3-dpo")["comparisons"]["parent"]
    assert parent["win_rate"] == 0.75  # the longer answer wins 9 of 12
    assert parent["lc_win_rate"] == pytest.approx(0.5, abs=0.05) and parent["lc_low"] < 0.5 < parent["lc_high"]


def test_a_gain_that_length_alone_explains_is_named(workspace):
    base_tokens = [40 + i for i in range(12)]
    new_tokens = [2 * t for t in base_tokens]
    # the reward model scores length only: 0.01 per token
    seed([0.01 * t for t in new_tokens], new_tokens, [0.01 * t for t in base_tokens], base_tokens)
    report = verdict.round_report("v3-dpo")
    parent = report["comparisons"]["parent"]
    assert parent["low"] > 0.5 and parent["gain_at_equal_length"] == pytest.approx(0.0, abs=1e-9)
    (sentence,) = report["warnings"]
    assert sentence.startswith("v3-dpo's answers are +100% the length of v1-base's") and "length alone" in sentence


def test_people_who_do_not_share_the_reward_models_preference_are_heard(workspace, monkeypatch):
    seed([0.1 * (i % 5) + 1 for i in range(12)], [40 + i for i in range(12)])
    monkeypatch.setattr(verdict, "human_win_rate",
                        lambda a, b: {"win_rate": 0.3, "low": 0.11, "high": 0.6, "votes": 10})
    (sentence,) = verdict.round_report("v3-dpo")["warnings"]
    assert sentence == ("The reward model prefers v3-dpo to v1-base (100% of answers), but people preferred it in "
                        "only 30% of 10 blind votes: the gain may be the reward model's, not people's.")
    monkeypatch.setattr(verdict, "human_win_rate",
                        lambda a, b: {"win_rate": 0.3, "low": 0.11, "high": 0.6, "votes": 3})
    assert verdict.round_report("v3-dpo")["warnings"] == []  # 3 votes say nothing either way


def test_versions_measured_differently_are_not_compared(workspace):
    seed([1.0] * 12, [40] * 12)
    with db.session() as s:
        p = s.query(EvalPoint).filter_by(version_id="v1-base").one()
        p.details = {**p.details, "config": {**CONFIG, "seed": 1}}
    report = verdict.round_report("v3-dpo")
    assert report["comparisons"] == {} and "was not measured with the same prompts" in report["missing"]


def test_the_evaluate_page_shows_the_panel_and_the_goodhart_sentence(workspace):
    from tests.test_app_label import open_app

    base_tokens = [40 + i for i in range(12)]
    new_tokens = [2 * t for t in base_tokens]
    seed([0.01 * t for t in new_tokens], new_tokens, [0.01 * t for t in base_tokens], base_tokens)
    at = open_app(page="evaluate.py")
    assert not at.exception
    assert at.selectbox(key="verdict-version").value == "v3-dpo"
    panel = at.dataframe[-1].value
    assert list(panel["against"]) == ["parent (v1-base)"]
    assert list(panel["reward-model win rate"]) == ["1.00 [1.00, 1.00]"]
    # every v3 answer is twice as long, so no pair is near equal length and the logistic can only
    # extrapolate: the win goes to the intercept. The Goodhart meter's least squares, pooled over
    # both versions' answers, is what names this case (the warning below).
    assert list(panel["length-controlled win rate"]) == ["1.00 [1.00, 1.00]"]
    assert list(panel["people's win rate"]) == ["no arena votes"]
    assert any("length alone may explain" in w.value for w in at.warning)
