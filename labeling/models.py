"""The workspace's tables, as typed SQLAlchemy 2.0 models.

Human answers (`Judgment`, one per pair and annotator) and model outputs (`Response`, with the
`model_version` that produced it) live in separate tables, as in Argilla. A `Pair` is a prompt and
two responses; which one a labeler saw on the left is stored on the judgment, so position bias can
be measured. Training artefacts (`ModelVersion`), background jobs (`Job`, `JobMetric`) and
evaluation points (`EvalPoint`) are records too, so they survive restarts; the files they point to
live under the workspace folder.

SQL stays portable (SQLite and PostgreSQL): JSON columns, no dialect-only types.
"""
from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import DDL, JSON, CheckConstraint, ForeignKey, Index, String, Text, UniqueConstraint, event
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

SCHEMA_VERSION = 5  # labeling/migrations.py takes older workspaces here

OUTCOMES = ("a", "b", "tie", "both_bad", "skip")


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


class Meta(Base):
    """Key/value facts about the workspace itself, such as `schema_version`."""

    __tablename__ = "meta"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class Annotator(Base):
    __tablename__ = "annotators"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    role: Mapped[str] = mapped_column(String(20), default="annotator")
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class Prompt(Base):
    """A prompt: a conversation (list of {role, content}) ending where the model should answer."""

    __tablename__ = "prompts"
    id: Mapped[int] = mapped_column(primary_key=True)
    content_hash: Mapped[str] = mapped_column(String(64), unique=True)
    messages: Mapped[list[Any]]
    source: Mapped[str] = mapped_column(String(200))
    split: Mapped[str] = mapped_column(String(10), default="train", index=True)  # "train" or "heldout"
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class Response(Base):
    """One model output (or imported text) for a prompt."""

    __tablename__ = "responses"
    __table_args__ = (UniqueConstraint("prompt_id", "model_version", "content_hash"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    prompt_id: Mapped[int] = mapped_column(ForeignKey("prompts.id"))  # indexed by the unique constraint
    text: Mapped[str] = mapped_column(Text)
    content_hash: Mapped[str] = mapped_column(String(64))
    # a ModelVersion id, or "imported:<source>" for text that came from a file
    model_version: Mapped[str] = mapped_column(String(200))
    generation: Mapped[dict[str, Any] | None]  # sampling settings, seed, token count
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class Pair(Base):
    """A prompt and two responses to compare. `kind` is "label" or "arena" (blind version votes)."""

    __tablename__ = "pairs"
    # The labeling queue reads waiting pairs straight off this index (see labeling/queue.py).
    __table_args__ = (Index("ix_pairs_queue", "kind", "judgment_count", "created_at", "id"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    pair_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prompt_id: Mapped[int] = mapped_column(ForeignKey("prompts.id"), index=True)
    response_a_id: Mapped[int] = mapped_column(ForeignKey("responses.id"))
    response_b_id: Mapped[int] = mapped_column(ForeignKey("responses.id"))
    source: Mapped[str] = mapped_column(String(200), index=True)
    kind: Mapped[str] = mapped_column(String(10), default="label")
    # Judgments of this pair other than skips. Kept by database triggers (below) whoever writes
    # judgments, as Argilla keeps a record's status, so the queue never counts 100,000 rows.
    judgment_count: Mapped[int] = mapped_column(default=0, server_default="0")
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow, index=True)

    prompt: Mapped[Prompt] = relationship(lazy="joined")
    response_a: Mapped[Response] = relationship(foreign_keys=[response_a_id], lazy="joined")
    response_b: Mapped[Response] = relationship(foreign_keys=[response_b_id], lazy="joined")


class PairLease(Base):
    """A pair on someone's screen: while the lease runs, the queue counts it as one judgment on
    its way, so with overlap 1 two annotators opening the Label page together get different pairs
    (Label Studio locks a task the same way). Ended by the judgment, or by time for a pair left
    open. Keyed by name: looking does not make anyone an annotator."""

    __tablename__ = "pair_leases"
    pair_id: Mapped[int] = mapped_column(ForeignKey("pairs.id", ondelete="CASCADE"), primary_key=True)
    annotator: Mapped[str] = mapped_column(String(200), primary_key=True)
    expires_at: Mapped[dt.datetime] = mapped_column(index=True)


class Judgment(Base):
    """One verdict on one pair: by an annotator (`source` "human"), or a label that came with an
    imported dataset (`source` "import", `source_name` the import's name, no annotator), so
    statistics about people count people only. `outcome` names the pair's response_a / response_b
    (not the screen side); `left` says which of the two was shown on the left ("a", "b", or None
    when it was never shown, as for imported labels)."""

    __tablename__ = "judgments"
    __table_args__ = (
        UniqueConstraint("pair_id", "annotator_id"),
        Index("ix_judgments_annotator_created", "annotator_id", "created_at"),
        CheckConstraint("(annotator_id IS NOT NULL) = (source = 'human')", name="ck_judgments_annotator_iff_human"),
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    pair_id: Mapped[int] = mapped_column(ForeignKey("pairs.id"))  # indexed by the unique constraint
    annotator_id: Mapped[int | None] = mapped_column(ForeignKey("annotators.id"))
    # Who gave it: "human" (a person, an Annotator: only these have one), "import" (a labeled dataset
    # brought in by an import) or, later, "ai" (a model acting as judge).
    source: Mapped[str] = mapped_column(String(10), default="human", server_default="human")
    source_name: Mapped[str | None] = mapped_column(String(200))  # the import's name (later: the AI judge)
    outcome: Mapped[str] = mapped_column(String(10))
    left: Mapped[str | None] = mapped_column(String(1))
    seconds: Mapped[float | None]
    comment: Mapped[str | None] = mapped_column(Text)
    # why: optional reason tags ("more helpful", "safer", ...; labeling/reasons.py), a JSON list
    reasons: Mapped[list[Any] | None] = mapped_column(JSON(none_as_null=True))  # no reason: SQL NULL
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    annotator: Mapped[Annotator | None] = relationship(lazy="joined")


class Rating(Base):
    """A person's thumbs on one answer ("up", "down", or "skip"), from the Label page's "rate one"
    mode: faster than comparing when people label alone, and the KTO round's desirable and
    undesirable examples (beside the sides of the pairwise judgments)."""

    __tablename__ = "ratings"
    __table_args__ = (UniqueConstraint("response_id", "annotator_id"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    response_id: Mapped[int] = mapped_column(ForeignKey("responses.id"))
    annotator_id: Mapped[int] = mapped_column(ForeignKey("annotators.id"))
    value: Mapped[str] = mapped_column(String(4))
    seconds: Mapped[float | None]
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class Demonstration(Base):
    """A good answer written by a person: a rewrite for a pair whose two answers were both bad
    (`pair_id`, `annotator_id`, `source` "human"), or one that came with an imported TRL messages
    dataset (`source` "import", `source_name` the import's name, no pair, no annotator). It feeds
    the SFT round, and a rewrite also makes two preference pairs (rewrite ≻ each answer) for DPO."""

    __tablename__ = "demonstrations"
    __table_args__ = (UniqueConstraint("pair_id", "annotator_id"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    prompt_id: Mapped[int] = mapped_column(ForeignKey("prompts.id"), index=True)
    pair_id: Mapped[int | None] = mapped_column(ForeignKey("pairs.id", ondelete="CASCADE"))
    annotator_id: Mapped[int | None] = mapped_column(ForeignKey("annotators.id"))
    source: Mapped[str] = mapped_column(String(10), default="human")
    source_name: Mapped[str | None] = mapped_column(String(200))
    text: Mapped[str] = mapped_column(Text)
    content_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class Suggestion(Base):
    """A machine's opinion of a pair, kept apart from the judgments so nothing a model writes
    can change or hide what a person said: the reward model's preference (`source` "reward",
    `name` its version) or an AI judge's verdict (`source` "ai", `name` the judge, `rubric` the
    version of the rubric it read). `outcome` names response_a / response_b ("a", "b", "tie"),
    or "error" when the judge failed (its `reason` says why; the next run tries again);
    `probability` is P(a is better) when the model gives one."""

    __tablename__ = "suggestions"
    __table_args__ = (UniqueConstraint("pair_id", "source", "name", "rubric"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    pair_id: Mapped[int] = mapped_column(ForeignKey("pairs.id", ondelete="CASCADE"))
    source: Mapped[str] = mapped_column(String(10))  # "reward" or "ai"
    name: Mapped[str] = mapped_column(String(200))
    rubric: Mapped[int] = mapped_column(default=0)  # the rubric version an AI judge read; 0 for a reward model
    outcome: Mapped[str] = mapped_column(String(10))
    probability: Mapped[float | None]
    reason: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


# Pair.judgment_count follows every insert, delete and outcome change of a judgment, whether it
# comes from the app, an import or raw SQL. One statement per trigger for SQLite; PostgreSQL
# gets the same rule as one plpgsql function.
_SQLITE_COUNT_TRIGGERS = (
    """CREATE TRIGGER judgments_count_insert AFTER INSERT ON judgments WHEN NEW.outcome != 'skip'
    BEGIN UPDATE pairs SET judgment_count = judgment_count + 1 WHERE id = NEW.pair_id; END""",
    """CREATE TRIGGER judgments_count_delete AFTER DELETE ON judgments WHEN OLD.outcome != 'skip'
    BEGIN UPDATE pairs SET judgment_count = judgment_count - 1 WHERE id = OLD.pair_id; END""",
    """CREATE TRIGGER judgments_count_update AFTER UPDATE OF outcome, pair_id ON judgments
    BEGIN
      UPDATE pairs SET judgment_count = judgment_count - 1 WHERE id = OLD.pair_id AND OLD.outcome != 'skip';
      UPDATE pairs SET judgment_count = judgment_count + 1 WHERE id = NEW.pair_id AND NEW.outcome != 'skip';
    END""",
)
_POSTGRES_COUNT_TRIGGER = (
    """CREATE FUNCTION judgments_count() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
      IF TG_OP IN ('UPDATE', 'DELETE') AND OLD.outcome <> 'skip' THEN
        UPDATE pairs SET judgment_count = judgment_count - 1 WHERE id = OLD.pair_id;
      END IF;
      IF TG_OP IN ('UPDATE', 'INSERT') AND NEW.outcome <> 'skip' THEN
        UPDATE pairs SET judgment_count = judgment_count + 1 WHERE id = NEW.pair_id;
      END IF;
      RETURN NULL;
    END $$""",
    """CREATE TRIGGER judgments_count AFTER INSERT OR DELETE OR UPDATE OF outcome, pair_id
    ON judgments FOR EACH ROW EXECUTE FUNCTION judgments_count()""",
)
for _sql in _SQLITE_COUNT_TRIGGERS:
    event.listen(Judgment.__table__, "after_create", DDL(_sql).execute_if(dialect="sqlite"))
for _sql in _POSTGRES_COUNT_TRIGGER:
    event.listen(Judgment.__table__, "after_create", DDL(_sql).execute_if(dialect="postgresql"))


class ModelVersion(Base):
    """A trained artefact (policy or reward model) and its lineage."""

    __tablename__ = "model_versions"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    kind: Mapped[str] = mapped_column(String(10))  # "policy" or "reward"
    method: Mapped[str] = mapped_column(String(10))  # base / dpo / ppo / reward
    parent_id: Mapped[str | None] = mapped_column(ForeignKey("model_versions.id"))
    path: Mapped[str] = mapped_column(Text)
    config: Mapped[dict[str, Any] | None]
    judgment_ids: Mapped[list[Any] | None]
    metrics: Mapped[dict[str, Any] | None]
    is_current: Mapped[bool] = mapped_column(default=False)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class Job(Base):
    """A background round (reward / dpo / ppo / generate / evaluate / sweep) and its progress."""

    __tablename__ = "jobs"
    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(20))
    status: Mapped[str] = mapped_column(String(12), default="queued", index=True)
    config: Mapped[dict[str, Any] | None]
    step: Mapped[int] = mapped_column(default=0)
    total_steps: Mapped[int | None]
    pid: Mapped[int | None]
    heartbeat_at: Mapped[dt.datetime | None]
    error: Mapped[str | None] = mapped_column(Text)
    result: Mapped[dict[str, Any] | None]
    log_path: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    started_at: Mapped[dt.datetime | None]
    finished_at: Mapped[dt.datetime | None]


class JobMetric(Base):
    """Metrics logged by a job at one step, e.g. {"loss": 0.61, "kl": 0.02}."""

    __tablename__ = "job_metrics"
    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"), index=True)
    step: Mapped[int]
    values: Mapped[dict[str, Any]]
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class EvalPoint(Base):
    """One measured (reward, KL) point of a policy version, scored by one reward version."""

    __tablename__ = "eval_points"
    id: Mapped[int] = mapped_column(primary_key=True)
    version_id: Mapped[str] = mapped_column(ForeignKey("model_versions.id"), index=True)
    reward_version_id: Mapped[str | None] = mapped_column(ForeignKey("model_versions.id"))
    reward: Mapped[float]
    reward_se: Mapped[float | None]
    kl: Mapped[float]
    kl_se: Mapped[float | None]
    kl_per_token: Mapped[float | None]
    details: Mapped[dict[str, Any] | None]  # prompts, samples, seeds, sweep id
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
