"""Machines' opinions of pairs, kept apart from people's: a reward model's preference and an AI
judge's verdict (labeling/models.py `Suggestion`), the judge's rubric (versioned), and the gate
that says when a judge's verdicts may stand in for labels.

Nothing here writes a Judgment: a person's vote is never changed or hidden by a suggestion, and an
AI label only ever decides a pair that no person (and no import) has judged.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import case, exists, func, select

from labeling import db, settings
from labeling.models import Judgment, Pair, Suggestion, utcnow

SOURCES = ("reward", "ai")
VERDICTS = ("a", "b", "tie")
DEFAULT_RUBRIC = Path(__file__).with_name("judge_rubric.md")
RUBRIC_KEY, RUBRIC_VERSION_KEY = "judge_rubric", "judge_rubric_version"
AI_LABELS_KEY = "ai_labels"  # {"judge": name, "rubric": version, "threshold": κ or null} while AI labels are on
SHOW_BEFORE_KEY = "suggestions_before_vote"
DEFAULT_THRESHOLD = 0.6  # the judge's κ with people needed when the people's own κ is unknown


class SuggestionError(ValueError):
    """A request about suggestions prefloop cannot honour; one sentence for the user."""


@dataclass(frozen=True)
class PairToJudge:
    pair_id: int
    messages: list[dict[str, str]]
    a: str
    b: str


# ---------------------------------------------------------------- the rubric


def rubric() -> tuple[int, str]:
    """(version, text) of the judge's rubric: the workspace's, else the shipped one as version 1."""
    text, version = settings.read_value(RUBRIC_KEY), settings.read_value(RUBRIC_VERSION_KEY)
    if text is None:
        return 1, DEFAULT_RUBRIC.read_text(encoding="utf-8")
    return int(version or 1), text


def save_rubric(text: str) -> int:
    """Store an edited rubric and return its version: one more than before when the text changed
    (the judge's earlier verdicts stay under the version they read)."""
    clean = re.sub("[\x00\ud800-\udfff]", "", text or "").strip()  # unstorable in PostgreSQL / UTF-8
    if not clean:
        raise SuggestionError("The rubric is empty; write what makes one response better than another.")
    version, current = rubric()
    if clean == current.strip():
        return version
    settings.write_value(RUBRIC_KEY, clean)
    settings.write_value(RUBRIC_VERSION_KEY, str(version + 1))
    return version + 1


# ---------------------------------------------------------------- storing and reading suggestions


def _pairs(stmt, limit: int | None) -> list[PairToJudge]:
    """The pairs `stmt` selects (at most `limit`), with their conversation and both answers."""
    with db.session() as s:
        pairs = s.scalars(stmt.limit(limit) if limit else stmt).all()
        return [PairToJudge(p.id, list(p.prompt.messages), p.response_a.text, p.response_b.text) for p in pairs]


def pairs_to_judge(name: str, rubric_version: int, limit: int | None = None) -> list[PairToJudge]:
    """Labeling pairs this judge has no verdict on under this rubric (an earlier error is tried
    again), oldest first; pairs people judged come too, so the judge's agreement with them is known."""
    done = exists().where(Suggestion.pair_id == Pair.id, Suggestion.source == "ai", Suggestion.name == name,
                          Suggestion.rubric == rubric_version, Suggestion.outcome != "error")
    stmt = select(Pair).where(Pair.kind == "label", ~done).order_by(Pair.id)
    return _pairs(stmt, limit)


def store(pair_id: int, source: str, name: str, outcome: str, probability: float | None = None,
          reason: str | None = None, rubric_version: int = 0) -> int:
    """Store (or replace) one machine's opinion of a pair; returns its id."""
    if source not in SOURCES:
        raise SuggestionError(f"Unknown suggestion source {source!r}; expected one of {', '.join(SOURCES)}.")
    if outcome not in (*VERDICTS, "error"):
        raise SuggestionError(f"Unknown suggested outcome {outcome!r}; expected one of a, b, tie, error.")
    name = name[:200]  # the column's length (PostgreSQL refuses longer)
    values = {"outcome": outcome, "probability": None if probability is None else float(probability),
              "reason": reason, "created_at": utcnow()}
    with db.session() as s:
        if s.get(Pair, pair_id) is None:
            raise SuggestionError(f"Pair {pair_id} does not exist; it may have been deleted.")
        row = s.scalar(select(Suggestion).where(Suggestion.pair_id == pair_id, Suggestion.source == source,
                                                Suggestion.name == name, Suggestion.rubric == rubric_version))
        if row is None:
            row = Suggestion(pair_id=pair_id, source=source, name=name, rubric=rubric_version, **values)
            s.add(row)
        else:
            for key, value in values.items():
                setattr(row, key, value)
        s.flush()
        return row.id


def for_pair(pair_id: int) -> list[dict[str, Any]]:
    """The stored opinions of one pair, errors left out: source, name, rubric, outcome (of response_a
    / response_b), probability, reason; the newest reward model's, and the newest rubric of each
    judge. The autopilot's automatic verdicts are left out (people audit them)."""
    with db.session() as s:
        rows = s.scalars(select(Suggestion).where(Suggestion.pair_id == pair_id, Suggestion.outcome != "error",
                                                  ~Suggestion.name.startswith("autopilot:"))  # what an audit checks
                         .order_by(Suggestion.source, Suggestion.created_at.desc(), Suggestion.rubric.desc())).all()
        seen, out = set(), []
        for r in rows:
            key = (r.source, None if r.source == "reward" else r.name)  # the newest reward model only
            if key not in seen:
                seen.add(key)
                out.append({"source": r.source, "name": r.name, "rubric": r.rubric, "outcome": r.outcome,
                            "probability": r.probability, "reason": r.reason})
        return out


def judges() -> list[dict[str, Any]]:
    """Each AI judge and rubric version with how many pairs it judged and how many failed, newest rubric first."""
    failed = func.sum(case((Suggestion.outcome == "error", 1), else_=0))
    with db.session() as s:
        rows = s.execute(select(Suggestion.name, Suggestion.rubric, func.count(), failed)
                         .where(Suggestion.source == "ai").group_by(Suggestion.name, Suggestion.rubric)
                         .order_by(Suggestion.rubric.desc(), Suggestion.name)).all()
    return [{"judge": n, "rubric": r, "pairs": total - int(bad or 0), "errors": int(bad or 0)} for n, r, total, bad in rows]


def verdicts_beside_people(name: str, rubric_version: int) -> list[tuple[int, str, str]]:
    """(pair_id, the judge's outcome, one person's outcome) for every person's verdict on a pair the
    judge also decided; a person's tie or both-bad counts as "tie" (no winner), skips are left out."""
    stmt = (select(Suggestion.pair_id, Suggestion.outcome, Judgment.outcome)
            .join(Judgment, Judgment.pair_id == Suggestion.pair_id)
            .where(Suggestion.source == "ai", Suggestion.name == name, Suggestion.rubric == rubric_version,
                   Suggestion.outcome.in_(VERDICTS), Judgment.source == "human", Judgment.outcome != "skip")
            .order_by(Suggestion.pair_id, Judgment.id))
    with db.session() as s:
        rows = s.execute(stmt).all()
    return [(pair_id, ai, "tie" if person == "both_bad" else person) for pair_id, ai, person in rows]


def people_beside_each_other() -> list[tuple[int, str, str]]:
    """(pair_id, one person's outcome, another's) for every two people's verdicts on one labeling
    pair, in the same three classes as `verdicts_beside_people`."""
    stmt = (select(Judgment.pair_id, Judgment.outcome).join(Pair, Pair.id == Judgment.pair_id)
            .where(Pair.kind == "label", Judgment.source == "human", Judgment.outcome != "skip")
            .order_by(Judgment.pair_id, Judgment.id))
    with db.session() as s:
        rows = s.execute(stmt).all()
    by_pair: dict[int, list[str]] = {}
    for pair_id, outcome in rows:
        by_pair.setdefault(pair_id, []).append("tie" if outcome == "both_bad" else outcome)
    return [(p, votes[i], votes[j]) for p, votes in by_pair.items()
            for i in range(len(votes)) for j in range(i + 1, len(votes))]


def ai_labels(name: str, rubric_version: int) -> dict[int, tuple[int, str]]:
    """{pair_id: (suggestion id, "a" | "b")}: the judge's decided verdicts on labeling pairs that
    nobody judged (no person, no import, not even a skip): the only pairs an AI label may decide."""
    judged = exists().where(Judgment.pair_id == Suggestion.pair_id)
    stmt = (select(Suggestion.pair_id, Suggestion.id, Suggestion.outcome).join(Pair, Pair.id == Suggestion.pair_id)
            .where(Pair.kind == "label", Pair.source != "autopilot",  # an audit pair has its own verdict
                   Suggestion.source == "ai", Suggestion.name == name,
                   Suggestion.rubric == rubric_version, Suggestion.outcome.in_(("a", "b")), ~judged))
    with db.session() as s:
        return {pair_id: (sid, outcome) for pair_id, sid, outcome in s.execute(stmt).all()}


def reward_probabilities(reward_name: str) -> dict[int, float]:
    """{pair_id: P(a is better)} that reward model `reward_name` stored."""
    with db.session() as s:
        return dict(s.execute(select(Suggestion.pair_id, Suggestion.probability).where(
            Suggestion.source == "reward", Suggestion.name == reward_name, Suggestion.probability.is_not(None))).all())


def waiting_without_reward(reward_name: str, limit: int | None = None) -> list[PairToJudge]:
    """Labeling pairs nobody judged yet that reward model `reward_name` has not scored."""
    scored = exists().where(Suggestion.pair_id == Pair.id, Suggestion.source == "reward", Suggestion.name == reward_name)
    stmt = select(Pair).where(Pair.kind == "label", Pair.judgment_count == 0, ~scored).order_by(Pair.id)
    return _pairs(stmt, limit)


# ---------------------------------------------------------------- the admin's switches


def ai_label_setting() -> dict[str, Any] | None:
    """{"judge", "rubric", "threshold"} while an admin has AI labels on, else None."""
    value = settings.read_value(AI_LABELS_KEY)
    return json.loads(value) if value else None


def set_ai_labels(judge: str | None, rubric_version: int | None = None, threshold: float | None = None) -> None:
    """Turn AI labels on for one judge and rubric (with the κ it must reach; None: the people's own
    κ, or DEFAULT_THRESHOLD when unknown), or off with judge None."""
    if threshold is not None and not -1.0 <= float(threshold) <= 1.0:
        raise SuggestionError(f"The κ threshold {threshold} is outside [-1, 1]; 0.6 is a common bar.")
    value = None if judge is None else json.dumps({"judge": judge, "rubric": int(rubric_version or 0),
                                                   "threshold": None if threshold is None else float(threshold)})
    settings.write_value(AI_LABELS_KEY, value)


def show_before_vote() -> bool:
    return settings.read_value(SHOW_BEFORE_KEY) == "1"


def set_show_before_vote(on: bool) -> None:
    settings.write_value(SHOW_BEFORE_KEY, "1" if on else None)
