"""Thumbs on single answers: the Label page's "rate one" mode shows one answer of a labeling pair
and asks 👍 or 👎. Each rating is one person's, stored per answer (`Rating`); the answers people
rated up are KTO's desirable examples and those rated down its undesirable ones (`rating_rows`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import exists, func, or_, select

from labeling import db, queue
from labeling.models import Annotator, Pair, Prompt, Rating, Response

VALUES = ("up", "down", "skip")


@dataclass(frozen=True)
class AnswerView:
    response_id: int
    messages: list[dict[str, str]]
    text: str


def next_answer(annotator: str) -> AnswerView | None:
    """The oldest answer of a labeling pair that nobody has rated yet (skips count for the one who
    skipped only), or None."""
    name = queue.check_annotator_name(annotator)
    in_pair = exists().where(Pair.kind == "label", or_(Pair.response_a_id == Response.id, Pair.response_b_id == Response.id))
    with db.session() as s:
        me = s.scalar(select(Annotator.id).where(Annotator.name == name))
        rated = exists().where(Rating.response_id == Response.id, or_(Rating.value != "skip", Rating.annotator_id == me))
        row = s.execute(select(Response.id, Prompt.messages, Response.text).join(Prompt, Prompt.id == Response.prompt_id)
                        .where(in_pair, ~rated).order_by(Response.id).limit(1)).first()
    return None if row is None else AnswerView(row[0], list(row[1]), row[2])


def rate(annotator: str, response_id: int, value: str, seconds: float | None = None) -> int:
    """Store (or replace) this person's rating of an answer; returns its id."""
    if value not in VALUES:
        raise queue.QueueError(f"Unknown rating {value!r}; expected one of {', '.join(VALUES)}.")
    name = queue.check_annotator_name(annotator)
    with db.session() as s:
        if s.get(Response, response_id) is None:
            raise queue.QueueError(f"Answer {response_id} does not exist; reload the page to get the next one.")
        person = queue.get_or_create_annotator(s, name)
        row = s.scalar(select(Rating).where(Rating.response_id == response_id, Rating.annotator_id == person.id))
        if row is None:
            row = Rating(response_id=response_id, annotator_id=person.id, value=value, seconds=seconds)
            s.add(row)
        else:
            row.value, row.seconds = value, seconds
        s.flush()
        return row.id


def counts(annotator: str | None = None) -> dict[str, int]:
    """Ratings by value (everyone's, or one person's)."""
    stmt = select(Rating.value, func.count()).group_by(Rating.value)
    if annotator:
        stmt = stmt.join(Annotator, Annotator.id == Rating.annotator_id).where(Annotator.name == annotator)
    with db.session() as s:
        found = dict(s.execute(stmt).all())
    return {v: int(found.get(v, 0)) for v in VALUES}


def rating_rows() -> list[dict[str, Any]]:
    """Every up or down rating as TRL's unpaired row {"prompt", "completion", "label"} (and the
    prompt's "split"), oldest first."""
    with db.session() as s:
        found = s.execute(select(Prompt.messages, Prompt.split, Response.text, Rating.value)
                          .join(Response, Response.id == Rating.response_id).join(Prompt, Prompt.id == Response.prompt_id)
                          .where(Rating.value != "skip").order_by(Rating.id)).all()
    return [{"prompt": list(m), "completion": [{"role": "assistant", "content": text}], "label": value == "up",
             "split": split} for m, split, text, value in found]
