"""Reading stored prompts for training and evaluation: the training split, the held-out split,
and the prompts that have the fewest pairs to label. Each prompt leaves as its id and its
messages (a list of {"role", "content"})."""
from __future__ import annotations

from sqlalchemy import func, select

from labeling import db
from labeling.models import Pair, Prompt


def train_prompts(max_prompts: int | None) -> list[list[dict]]:
    """Messages of the prompts in the "train" split, oldest first, at most `max_prompts` (None or 0: all)."""
    query = select(Prompt.messages).where(Prompt.split == "train").order_by(Prompt.id)
    if max_prompts:
        query = query.limit(max_prompts)
    with db.session() as s:
        return list(s.scalars(query))


def heldout_prompts(n: int) -> list[tuple[int, list[dict]]]:
    """(id, messages) of the first `n` held-out prompts by id (train prompts fill in when too few
    are held out)."""
    with db.session() as s:
        rows = list(s.execute(select(Prompt.id, Prompt.messages).where(Prompt.split == "heldout")
                              .order_by(Prompt.id).limit(n)))
        if len(rows) < n:
            rows += list(s.execute(select(Prompt.id, Prompt.messages).where(Prompt.split == "train")
                                   .order_by(Prompt.id).limit(n - len(rows))))
    return [(r[0], r[1]) for r in rows]


def count_heldout(prompt_ids: list[int]) -> int:
    """How many of `prompt_ids` are distinct prompts of the held-out split."""
    with db.session() as s:
        return len(set(s.scalars(select(Prompt.id).where(Prompt.id.in_(prompt_ids), Prompt.split == "heldout"))))


def least_paired_prompts(n: int, kinds: tuple[str, ...] = ("label",)) -> list[tuple[int, list[dict]]]:
    """(id, messages) of `n` training prompts, those with the fewest pairs of `kinds` first (then by id)."""
    pairs = (select(Pair.prompt_id, func.count(Pair.id).label("n")).where(Pair.kind.in_(kinds))
             .group_by(Pair.prompt_id).subquery())
    stmt = (select(Prompt.id, Prompt.messages).outerjoin(pairs, pairs.c.prompt_id == Prompt.id)
            .where(Prompt.split == "train").order_by(func.coalesce(pairs.c.n, 0), Prompt.id).limit(n))
    with db.session() as s:
        return [(row.id, row.messages) for row in s.execute(stmt)]
