"""Looking up stored pairs and the judgments on them, for training and the reward card: where
each pair came from, and which pairs a set of judgments judged. Plain ids and names come back."""
from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import aliased

from labeling import db
from labeling.models import Judgment, Pair, Response


def pair_sources() -> dict[int, str]:
    """{pair id: data source} for every pair in the workspace."""
    with db.session() as s:
        return dict(s.execute(select(Pair.id, Pair.source)).all())


def sampled_by(model_versions: set[str]) -> set[int]:
    """Ids of the pairs both of whose answers one of `model_versions` sampled (the generator stores the
    version id with each answer; an imported pair's answers are "imported:<source>", so never one)."""
    a, b = aliased(Response), aliased(Response)
    with db.session() as s:
        return set(s.scalars(select(Pair.id).join(a, Pair.response_a_id == a.id).join(b, Pair.response_b_id == b.id)
                             .where(a.model_version.in_(model_versions), b.model_version.in_(model_versions))))


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
