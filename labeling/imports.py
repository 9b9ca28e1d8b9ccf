"""An import as one unit: what each imported dataset brought into the workspace, and deleting it.

An import named X (its `--source`, by default the file's name) stored its new prompts with source
X, its responses as model version "imported:X", its pairs with source X, and for labeled pairs one
judgment each with source "import" and source_name X. That is what these functions find again.

    python -m labeling imports             # one JSON line: every import and its counts
    python -m labeling delete-import NAME  # its pairs, their judgments, and what nothing else uses
"""
from __future__ import annotations

from typing import Any

from sqlalchemy import Select, String, and_, delete, exists, func, literal, or_, select
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from labeling import db
from labeling.models import Demonstration, Judgment, ModelVersion, Pair, PairLease, Prompt, Rating, Response, Suggestion


class UnknownImport(ValueError):
    """No import has this name; the message is one sentence for the user."""


PREFIX = "imported:"  # the model version of an import's responses: imported:<name>


def _pairs_of(name: str) -> Select:
    """The ids of the pairs import `name` stored (their responses came from it)."""
    return (select(Pair.id).join(Response, Response.id == Pair.response_a_id)
            .where(Pair.source == name, Response.model_version == PREFIX + name))


def _counts(s: Session, stmt: Select) -> dict[str, int]:
    return {name: int(n) for name, n in s.execute(stmt) if name is not None}


def list_imports() -> list[dict[str, Any]]:
    """Every import: [{"name", "prompts" (first stored by it), "pairs", "labels"}], by name."""
    with db.session() as s:
        prompts = _counts(s, select(Prompt.source, func.count()).group_by(Prompt.source))
        pairs = _counts(s, select(Pair.source, func.count()).join(Response, Response.id == Pair.response_a_id)
                        .where(Response.model_version == literal(PREFIX, String) + Pair.source)
                        .group_by(Pair.source))
        labels = _counts(s, select(Judgment.source_name, func.count()).where(Judgment.source == "import")
                         .group_by(Judgment.source_name))
    names = sorted(prompts.keys() | pairs.keys() | labels.keys())
    return [{"name": n, "prompts": prompts.get(n, 0), "pairs": pairs.get(n, 0), "labels": labels.get(n, 0)}
            for n in names]


def _trained_on(s: Session, judgment_ids: set[int]) -> list[str]:
    """The model versions whose recorded training judgments include any of `judgment_ids`."""
    rows = s.execute(select(ModelVersion.id, ModelVersion.judgment_ids).order_by(ModelVersion.id))
    return [version for version, ids in rows if ids and judgment_ids.intersection(ids)]


def _delete_unused(conn: Connection, name: str) -> tuple[int, int]:
    """Delete the import's responses that no pair uses, then its prompts that no pair or response
    uses; return how many of each went. Each check reads the pairs of one prompt (indexed)."""
    used = exists().where(Pair.prompt_id == Response.prompt_id,
                          or_(Pair.response_a_id == Response.id, Pair.response_b_id == Response.id))
    responses = conn.execute(delete(Response).where(Response.model_version == PREFIX + name, ~used)).rowcount
    used = or_(exists().where(Pair.prompt_id == Prompt.id), exists().where(Response.prompt_id == Prompt.id),
               exists().where(Demonstration.prompt_id == Prompt.id))
    prompts = conn.execute(delete(Prompt).where(Prompt.source == name, ~used)).rowcount
    return responses, prompts


def delete_import(name: str) -> dict[str, Any]:
    """Delete import `name` in one transaction: its pairs with every judgment of them (its labels,
    and people's judgments of its pairs), then its responses and prompts that nothing else uses
    (a prompt that generated pairs or another import share stays). Model versions keep the ids of
    the judgments they trained on; the summary names those versions. Raises UnknownImport."""
    with db.session() as s:
        pairs = s.scalar(select(func.count()).select_from(_pairs_of(name).subquery()))
        prompts = s.scalar(select(func.count()).where(Prompt.source == name))
        demos = s.scalar(select(func.count()).where(Demonstration.source == "import", Demonstration.source_name == name))
        if not (pairs or prompts or demos):
            raise UnknownImport(f"There is no import named '{name}'; `python -m labeling imports` lists them.")
        judged = s.execute(select(Judgment.id, Judgment.source).where(Judgment.pair_id.in_(_pairs_of(name)))).all()
        trained_on = _trained_on(s, {judgment_id for judgment_id, _ in judged})
        conn = s.connection()  # Core deletes: no ORM bookkeeping for rows never loaded
        conn.execute(delete(PairLease).where(PairLease.pair_id.in_(_pairs_of(name))))
        conn.execute(delete(Judgment).where(Judgment.pair_id.in_(_pairs_of(name))))
        conn.execute(delete(Suggestion).where(Suggestion.pair_id.in_(_pairs_of(name))))
        conn.execute(delete(Demonstration).where(or_(Demonstration.pair_id.in_(_pairs_of(name)), and_(
            Demonstration.source == "import", Demonstration.source_name == name))))
        conn.execute(delete(Pair).where(Pair.id.in_(_pairs_of(name))))
        conn.execute(delete(Rating).where(Rating.response_id.in_(  # thumbs on the answers about to go
            select(Response.id).where(Response.model_version == PREFIX + name))))
        responses, prompts_deleted = _delete_unused(conn, name)
    sources = [source for _, source in judged]
    return {"deleted": name, "pairs": pairs, "labels": sources.count("import"),
            "people_judgments": sources.count("human"), "responses": responses, "prompts": prompts_deleted,
            "prompts_kept": prompts - prompts_deleted, "demonstrations": demos, "versions_trained_on_it": trained_on}
