"""The labeling queue: which pair an annotator sees next, and storing what they said about it.

Business functions over `db.session()`, no Streamlit, so the app, the CLI and the benchmark call
the same code. A judgment's `outcome` names the pair's response_a / response_b; the screen shows
sides "A" (left) and "B" (right), and which response stands on the left is decided per pair and
annotator by a hash (`left_side`), so a reload shows the same layout and position bias can be
measured later (Judgment.left).

The order of the queue lives in one function, `queue_order`: oldest first, or (an admin's setting)
the pairs the reward model is least sure of first, with a share of random draws, or the current
policy's own pairs first.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import Select, and_, case, delete, exists, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from labeling import db, model_versions, pairs, settings
from labeling.models import (OUTCOMES, Annotator, Job, Judgment, Meta, ModelVersion, Pair, PairLease, Prompt, Suggestion,
                             utcnow)
from labeling.reasons import ReasonError, check_reasons

# What a click on the screen means: the left response won, the right one won, or no winner.
CHOICES = ("left", "right", "tie", "both_bad", "skip")
ACTIVE_JOB_STATUSES = ("queued", "running")
MAX_NAME_LENGTH = 200
DEFAULT_GUIDELINES = Path(__file__).with_name("guidelines.md")
GUIDELINES_KEY = "labeling_guidelines"
LEASE = dt.timedelta(minutes=10)  # how long a pair drawn for someone is held for them
RANDOM_SHARE = 0.2  # of draws in the uncertainty-first order that take a random waiting pair


class QueueError(ValueError):
    """A request the queue cannot honour; the message is one sentence for the user."""


@dataclass(frozen=True)
class PairView:
    """One pair as a given annotator sees it: the conversation and the two sides of the screen."""

    pair_id: int
    messages: list[dict[str, str]]
    left: str  # "a" or "b": which of the pair's responses stands on the left (side "A")
    left_text: str
    right_text: str
    source: str


@dataclass(frozen=True)
class Progress:
    today: int  # this annotator's judgments (skips excluded) since midnight UTC
    total: int  # this annotator's judgments (skips excluded), ever
    skipped: int
    waiting: int  # pairs this annotator could still judge


@dataclass(frozen=True)
class WorkspaceSummary:
    prompts: int
    pairs: int
    pairs_waiting: int  # pairs with fewer judgments than the overlap asks (skips do not count)
    judgments: int  # people's, skips excluded
    imported_labels: int  # judgments that came with imported datasets
    annotators: int
    current_model: str | None
    running_jobs: list[dict[str, Any]] = field(default_factory=list)
    judgments_today: int = 0  # people's, skips excluded, since midnight UTC


def check_annotator_name(name: str) -> str:
    """The name stripped of surrounding spaces, or QueueError saying what is wrong with it."""
    clean = (name or "").strip()
    if not clean:
        raise QueueError("The annotator name is empty; type a name such as 'ana'.")
    if len(clean) > MAX_NAME_LENGTH:
        raise QueueError(f"The annotator name has {len(clean)} characters; use at most {MAX_NAME_LENGTH}.")
    if any(ord(c) < 32 or 0xD800 <= ord(c) <= 0xDFFF or ord(c) == 127 for c in clean):
        raise QueueError("The annotator name holds a control character; use letters, digits, spaces and punctuation.")
    if clean.startswith("import:"):  # how schema 2 named imported labels; kept apart from people still
        raise QueueError("Annotator names starting with 'import:' are reserved for imported labels; pick another name.")
    return clean


def left_side(pair_id: int, annotator: str) -> str:
    """Which response ("a" or "b") this annotator sees on the left for this pair.

    A hash, not a random draw, so reloads and undo show the same layout; over many pairs each side
    is on the left about half of the time.
    """
    digest = hashlib.sha256(f"{pair_id}:{annotator}".encode("utf-8")).digest()
    return "a" if digest[0] % 2 == 0 else "b"


def stored_outcome(choice: str, left: str) -> str:
    """Map a click on the screen to the stored outcome. choice: one of CHOICES; left: "a" or "b".

    >>> stored_outcome("left", "b"), stored_outcome("right", "b"), stored_outcome("tie", "a")
    ('b', 'a', 'tie')
    """
    if choice not in CHOICES:
        raise QueueError(f"Unknown choice {choice!r}; expected one of {', '.join(CHOICES)}.")
    if left not in ("a", "b"):
        raise QueueError(f"Unknown left side {left!r}; expected 'a' or 'b'.")
    right = "b" if left == "a" else "a"
    return {"left": left, "right": right}.get(choice, choice)


def queue_order(stmt: Select, s: Session | None = None, draw: float | None = None) -> Select:
    """The one place that orders the queue: oldest pair first (ties broken by id); when an admin set
    the order "current" (labeling/settings.py), the pairs whose two answers the current policy sampled
    first, so an on-policy DPO round (`pairs: on-policy`) gets its labels before the older policies'
    backlog; or, with "uncertain" and a reward model that has scored pairs, those it is least sure of
    first (probability nearest 0.5; pairs it has not scored after them), except that a RANDOM_SHARE
    of draws (`draw` < RANDOM_SHARE, random when None) takes a random waiting pair, so the labels
    stay a fair sample too and every pair is served in the end."""
    oldest = stmt.order_by(Pair.created_at, Pair.id)
    order = s.get(Meta, settings.QUEUE_ORDER_KEY) if s is not None else None
    if order is not None and order.value == "current":
        current = pairs.sampled_condition(model_versions.current_answer_names(s))
        return stmt.order_by(case((current, 0), else_=1), Pair.created_at, Pair.id)
    if order is None or order.value != "uncertain":
        return oldest
    reward = s.scalar(select(ModelVersion.id).where(ModelVersion.kind == "reward")
                      .order_by(ModelVersion.created_at.desc(), ModelVersion.id.desc()).limit(1))
    if reward is None:
        return oldest
    if (random.random() if draw is None else draw) < RANDOM_SHARE:
        return stmt.order_by(func.random())
    p = (select(Suggestion.probability).where(Suggestion.pair_id == Pair.id, Suggestion.source == "reward",
                                              Suggestion.name == reward).scalar_subquery())
    return stmt.order_by(case((p.is_(None), 1), else_=0), func.abs(p - 0.5), Pair.created_at, Pair.id)


def get_or_create_annotator(s: Session, name: str) -> Annotator:
    """The annotator named `name`, added (and flushed, so it has an id) when new."""
    annotator = s.scalar(select(Annotator).where(Annotator.name == name))
    if annotator is None:
        annotator = Annotator(name=name)
        s.add(annotator)
        s.flush()
    return annotator


def _annotator_id(s: Session, name: str) -> int | None:
    """The id of the annotator named `name`; None when they have judged nothing yet."""
    return s.scalar(select(Annotator.id).where(Annotator.name == name))


def _waiting_condition(annotator_id: int | None, overlap: int, kind: str = "label"):
    """Pairs of `kind` ("label", or "arena" for blind votes between versions) that this annotator
    has not judged (or skipped) and that have fewer than `overlap` real judgments (skips do not
    count toward overlap)."""
    # judgment_count is kept by triggers (labeling/models.py) and indexed with kind and created_at,
    # so this reads only the waiting pairs however many judged ones lie before them.
    condition = and_(Pair.kind == kind, Pair.judgment_count < overlap)
    if annotator_id is not None:
        mine = exists().where(Judgment.pair_id == Pair.id, Judgment.annotator_id == annotator_id)
        condition = and_(condition, ~mine)
    return condition


def _leases(name: str | None):
    """Running leases per pair, of anyone but `name` (of anyone when None): (pair_id, n)."""
    query = select(PairLease.pair_id, func.count().label("n")).where(PairLease.expires_at > utcnow())
    if name is not None:
        query = query.where(PairLease.annotator != name)
    return query.group_by(PairLease.pair_id).subquery()


def _held(s: Session, overlap: int, name: str | None, condition=None) -> list[int]:
    """Ids of the pairs that the leases on other screens fill up (judgments + leases >= overlap),
    among those meeting `condition`. Read from the leases, which are few, then the pairs by id:
    never a pass over the waiting pairs, which may be 100,000."""
    leased = dict(s.execute(select(_leases(name))).all())
    if not leased:
        return []
    rows = s.execute(select(Pair.id, Pair.judgment_count).where(Pair.id.in_(leased), *(
        [condition] if condition is not None else [])))
    return [pair_id for pair_id, judged in rows if judged + leased[pair_id] >= overlap]


def _count_waiting(s: Session, annotator_id: int | None, overlap: int, name: str | None = None) -> int:
    """Labeling pairs waiting (as `_waiting_condition`), less those the leases on other screens fill up."""
    condition = _waiting_condition(annotator_id, overlap)
    return _count(s, select(func.count(Pair.id)).where(condition)) - len(_held(s, overlap, name, condition))


def _lease(s: Session, pair_id: int, name: str) -> None:
    """Hold `pair_id` for `name` for LEASE from now (and drop the leases that ran out)."""
    db.serialize(s, "lease")  # PostgreSQL: two tabs of one annotator do not both insert the same lease row
    now = utcnow()
    # the leases that ran out, and this person's others: one screen, one pair
    s.execute(delete(PairLease).where((PairLease.expires_at <= now)
                                      | ((PairLease.annotator == name) & (PairLease.pair_id != pair_id))))
    s.merge(PairLease(pair_id=pair_id, annotator=name, expires_at=now + LEASE))


def _check_overlap(overlap: int) -> None:
    if not isinstance(overlap, int) or overlap < 1:
        raise QueueError(f"overlap must be a whole number of at least 1, got {overlap!r}.")


def _view(pair: Pair, annotator: str) -> PairView:
    left = left_side(pair.id, annotator)
    texts = {"a": pair.response_a.text, "b": pair.response_b.text}
    return PairView(
        pair_id=pair.id,
        messages=list(pair.prompt.messages),
        left=left,
        left_text=texts[left],
        right_text=texts["b" if left == "a" else "a"],
        source=pair.source,
    )


def next_pair(annotator: str, overlap: int = 1, kind: str = "label") -> PairView | None:
    """The next pair for `annotator`, or None when nothing waits for them.

    A pair qualifies when it is of `kind` (a labeling pair, or an arena pair), this annotator has not judged or skipped it, and
    it has fewer than `overlap` judgments from anyone (k > 1 lets agreement be measured), a pair
    on someone else's screen counting as one. The pair drawn is leased to this annotator until
    they judge it (or for LEASE), so the next person gets another one.
    """
    name = check_annotator_name(annotator)
    _check_overlap(overlap)
    with db.session() as s:
        db.serialize(s, "next_pair")  # PostgreSQL: two draws at the same moment see each other's lease
        annotator_id = _annotator_id(s, name)
        waiting = and_(_waiting_condition(annotator_id, overlap, kind), Pair.id.not_in(_held(s, overlap, name)))
        pair_id = s.scalar(queue_order(select(Pair.id).where(waiting), s).limit(1))
        if pair_id is None:
            return None
        _lease(s, pair_id, name)
        return _view(s.get(Pair, pair_id), name)


def pair_view(pair_id: int, annotator: str) -> PairView:
    """One given pair as `annotator` sees it (the pair on screen, shown again on each rerun of the
    page, or after "Undo last"); seeing it renews its lease, so a pair being worked on stays held."""
    name = check_annotator_name(annotator)
    with db.session() as s:
        pair = s.get(Pair, pair_id)
        if pair is None:
            raise QueueError(f"Pair {pair_id} does not exist; it may have been deleted.")
        annotator_id = _annotator_id(s, name)
        judged = annotator_id is not None and s.scalar(
            select(Judgment.id).where(Judgment.pair_id == pair.id, Judgment.annotator_id == annotator_id))
        if not judged:  # a pair this person judged or skipped (in another tab) is not held again
            _lease(s, pair.id, name)
        return _view(pair, name)


def _upsert(s: Session, annotator_id: int, pair_id: int, values: dict[str, Any]) -> int:
    judgment = s.scalar(
        select(Judgment).where(Judgment.pair_id == pair_id, Judgment.annotator_id == annotator_id)
    )
    if judgment is None:
        judgment = Judgment(pair_id=pair_id, annotator_id=annotator_id, **values)
        s.add(judgment)
    else:
        for key, value in values.items():
            setattr(judgment, key, value)
        judgment.updated_at = utcnow()
    s.flush()
    return judgment.id


def submit_judgment(
    annotator: str,
    pair_id: int,
    outcome: str,
    left: str | None,
    seconds: float | None = None,
    comment: str | None = None,
    reasons: list[str] | None = None,
) -> int:
    """Store (or replace) this annotator's judgment of this pair and return its id.

    Idempotent: one row per pair and annotator, so a double click or a reload that submits again
    updates the row instead of adding one. `outcome` is in terms of response_a / response_b;
    `reasons` are optional tags saying why (labeling/reasons.py).
    """
    name = check_annotator_name(annotator)
    try:
        tags = check_reasons(reasons)
    except ReasonError as error:
        raise QueueError(str(error)) from None
    if outcome not in OUTCOMES:
        raise QueueError(f"Unknown outcome {outcome!r}; expected one of {', '.join(OUTCOMES)}.")
    if left not in ("a", "b", None):
        raise QueueError(f"Unknown left side {left!r}; expected 'a', 'b' or None.")
    values = {
        "outcome": outcome,
        "left": left,
        "seconds": None if seconds is None else round(float(seconds), 3),
        # NUL cannot be stored in PostgreSQL text, nor a lone surrogate anywhere: a pasted one is dropped
        "comment": re.sub("[\x00\ud800-\udfff]", "", comment or "").strip() or None,
        "reasons": tags or None,
    }
    for attempt in range(2):  # a concurrent insert of the same row (PostgreSQL) loses once, then updates
        try:
            with db.session() as s:
                if s.get(Pair, pair_id) is None:
                    raise QueueError(f"Pair {pair_id} does not exist; reload the page to get the next pair.")
                judgment_id = _upsert(s, get_or_create_annotator(s, name).id, pair_id, values)
                # judged (or skipped): the pair no longer waits on this screen
                s.execute(delete(PairLease).where(PairLease.pair_id == pair_id, PairLease.annotator == name))
                return judgment_id
        except IntegrityError:
            if attempt:
                raise
    raise AssertionError("unreachable")


def undo_last(annotator: str, kind: str = "label") -> int | None:
    """Delete this annotator's most recent judgment of a `kind` pair (a label, or an arena vote);
    return its pair id, or None if there is none."""
    name = check_annotator_name(annotator)
    with db.session() as s:
        annotator_id = _annotator_id(s, name)
        if annotator_id is None:
            return None
        last = s.execute(
            select(Judgment.id, Judgment.pair_id)
            .join(Pair, Pair.id == Judgment.pair_id)
            .where(Judgment.annotator_id == annotator_id, Pair.kind == kind)
            .order_by(Judgment.updated_at.desc(), Judgment.id.desc())
            .limit(1)
        ).first()
        if last is None:
            return None
        s.execute(delete(Judgment).where(Judgment.id == last.id))
        _lease(s, last.pair_id, name)  # back on this annotator's screen
        return last.pair_id


def _count(s: Session, stmt: Select) -> int:
    return int(s.scalar(stmt) or 0)


def progress(annotator: str, overlap: int = 1) -> Progress:
    """This annotator's judgments today and in total, skips, and pairs still waiting for them."""
    name = check_annotator_name(annotator)
    _check_overlap(overlap)
    midnight = dt.datetime.combine(utcnow().date(), dt.time())
    with db.session() as s:
        annotator_id = _annotator_id(s, name)
        waiting = _count_waiting(s, annotator_id, overlap, name)
        if annotator_id is None:
            return Progress(today=0, total=0, skipped=0, waiting=waiting)
        mine = (select(func.count(Judgment.id)).join(Pair, Pair.id == Judgment.pair_id)
                .where(Judgment.annotator_id == annotator_id, Pair.kind == "label"))  # arena votes apart
        real = mine.where(Judgment.outcome != "skip")
        return Progress(
            today=_count(s, real.where(Judgment.created_at >= midnight)),
            total=_count(s, real),
            skipped=_count(s, mine.where(Judgment.outcome == "skip")),
            waiting=waiting,
        )


def pairs_waiting(overlap: int = 1) -> int:
    """Labeling pairs with fewer than `overlap` judgments (skips excluded), whoever looks."""
    _check_overlap(overlap)
    with db.session() as s:
        return _count_waiting(s, None, overlap)


def judgments_per_minute(window_minutes: float = 5.0) -> float:
    """People's labeling judgments (skips included: each moves someone to the next pair) per minute
    over the last `window_minutes`, everybody together: how fast the queue is being used up."""
    since = utcnow() - dt.timedelta(minutes=window_minutes)
    with db.session() as s:
        done = _count(s, select(func.count(Judgment.id)).join(Pair, Pair.id == Judgment.pair_id)
                      .where(Judgment.source == "human", Pair.kind == "label", Judgment.created_at >= since))
    return done / window_minutes


def workspace_summary(overlap: int = 1) -> WorkspaceSummary:
    """What the home view shows: counts, the current model version and the jobs under way; pairs
    waiting are those with fewer than `overlap` judgments."""
    _check_overlap(overlap)
    with db.session() as s:
        jobs = s.scalars(
            select(Job).where(Job.status.in_(ACTIVE_JOB_STATUSES)).order_by(Job.created_at)
        )
        running = [
            {"id": j.id, "kind": j.kind, "status": j.status, "step": j.step, "total_steps": j.total_steps}
            for j in jobs
        ]
        current = s.scalar(
            select(ModelVersion.id)
            .where(ModelVersion.is_current.is_(True), ModelVersion.kind == "policy")
            .order_by(ModelVersion.created_at.desc())
            .limit(1)
        )
        people = select(func.count(Judgment.id)).where(Judgment.source == "human", Judgment.outcome != "skip")
        midnight = dt.datetime.combine(utcnow().date(), dt.time())
        return WorkspaceSummary(
            prompts=_count(s, select(func.count(Prompt.id))),
            pairs=_count(s, select(func.count(Pair.id)).where(Pair.kind == "label")),
            pairs_waiting=_count_waiting(s, None, overlap),
            judgments=_count(s, people),
            imported_labels=_count(s, select(func.count(Judgment.id)).where(Judgment.source == "import")),
            annotators=_count(s, select(func.count(Annotator.id))),
            current_model=current,
            running_jobs=running,
            judgments_today=_count(s, people.where(Judgment.created_at >= midnight)),
        )


def annotator_names() -> list[str]:
    """Every annotator's name, alphabetically: people only (imported labels have no annotator)."""
    with db.session() as s:
        return list(s.scalars(select(Annotator.name).order_by(Annotator.name)))


def guidelines() -> str:
    """The workspace's labeling guidelines (markdown): as last saved, else prefloop's defaults."""
    with db.session() as s:
        row = s.get(Meta, GUIDELINES_KEY)
        return row.value if row is not None else DEFAULT_GUIDELINES.read_text(encoding="utf-8")


def save_guidelines(text: str) -> None:
    """Store edited guidelines in the workspace database, where every annotator reads them."""
    if not text.strip():
        raise QueueError("The guidelines are empty; write at least one line, or reload to keep the old ones.")
    settings.write_value(GUIDELINES_KEY, text)
