"""Looking up stored pairs and the judgments on them, for training and the reward card: where
each pair came from, and which pairs a set of judgments judged. Plain ids and names come back."""
from __future__ import annotations

from sqlalchemy import and_, select

from labeling import db, model_versions
from labeling.models import Judgment, Pair, Response


def pair_sources() -> dict[int, str]:
    """{pair id: data source} for every pair in the workspace."""
    with db.session() as s:
        return dict(s.execute(select(Pair.id, Pair.source)).all())


def sampled_condition(names: set[str]):
    """SQL condition on Pair: both answers were sampled by a model stored under one of `names` (the
    generator stores the version id with each answer; an imported pair's answers are
    "imported:<source>", so never one)."""
    def sampler(side):
        return select(Response.model_version).where(Response.id == side).scalar_subquery()
    return and_(sampler(Pair.response_a_id).in_(names), sampler(Pair.response_b_id).in_(names))


def sampled_by(version_id: str | None) -> set[int]:
    """Ids of the pairs both of whose answers the policy version `version_id` sampled (None: the base
    before any version existed)."""
    with db.session() as s:
        return set(s.scalars(select(Pair.id).where(sampled_condition(model_versions.answer_names(s, version_id)))))


def judged_pairs(judgment_ids: set[int]) -> set[int]:
    """Ids of the pairs that the judgments `judgment_ids` judged (ids no longer stored count for nothing)."""
    with db.session() as s:
        judged = s.execute(select(Judgment.id, Judgment.pair_id))
        return {pair for judgment, pair in judged if judgment in judgment_ids}


def judgments_of(pair_ids: set[int], allowed: list[int]) -> list[int]:
    """The ids among `allowed` of the judgments on `pair_ids`, sorted."""
    allowed_set = set(allowed)
    with db.session() as s:
        rows = s.execute(select(Judgment.id, Judgment.pair_id).where(Judgment.pair_id.in_(pair_ids)))
        return sorted(jid for jid, _ in rows if jid in allowed_set)
