"""The autopilot's automatic pairs: best against worst of a policy's answers by the reward model.

Each is a Pair with source "autopilot": kind "auto" (never in people's queue), or kind "label" for
the share sent to people as an audit. Its automatic verdict is a Suggestion (source "reward", name
"autopilot:<reward version>"), response a being the one the reward model preferred; it decides
the pair only while no person has judged it (`auto_rows`). People's votes on the audit pairs say
how far the automatic pairs can be trusted (`audit_agreement`).
"""
from __future__ import annotations

from typing import Any

from sqlalchemy import exists, select

from labeling import db, store
from labeling.export import preference_row
from labeling.models import Judgment, Pair, Prompt, Response, Suggestion

SOURCE = "autopilot"
PREFIX = "autopilot:"


def add_auto_pairs(items: list[dict[str, Any]], reward_name: str) -> list[int]:
    """Store pairs {"prompt_id", "best", "worst", "version", "probability", "audit", "generation"}
    (best as response a) with their automatic verdicts; returns the ids of the new pairs."""
    ids = []
    with db.session() as s:
        for item in items:
            pair = store.add_generated_pair(s, item["prompt_id"], item["best"], item["worst"], item["version"],
                                            item.get("generation"), kind="label" if item["audit"] else "auto")
            if pair is None:
                continue
            pair.source = SOURCE
            s.add(Suggestion(pair_id=pair.id, source="reward", name=PREFIX + reward_name, rubric=0, outcome="a",
                             probability=item["probability"], reason="best against worst of the policy's answers"))
            s.flush()
            ids.append(pair.id)
    return ids


def auto_rows() -> list[dict[str, Any]]:
    """The automatic pairs nobody judged, as export rows (labeling/export.py) decided by their
    automatic verdict, with "origin": "auto" and "suggestion_id"."""
    judged = exists().where(Judgment.pair_id == Pair.id)
    ra, rb = Response.__table__.alias("ra"), Response.__table__.alias("rb")
    stmt = (select(Pair.id, Pair.prompt_id, Prompt.messages, Prompt.split, ra.c.text, rb.c.text, Suggestion.id,
                   Suggestion.outcome)
            .join(Prompt, Prompt.id == Pair.prompt_id).join(ra, ra.c.id == Pair.response_a_id)
            .join(rb, rb.c.id == Pair.response_b_id)
            .join(Suggestion, (Suggestion.pair_id == Pair.id) & Suggestion.name.startswith(PREFIX))
            .where(Pair.source == SOURCE, ~judged).order_by(Pair.id))
    with db.session() as s:
        found = s.execute(stmt).all()
    out = []
    for pair_id, prompt_id, messages, split, text_a, text_b, suggestion_id, outcome in found:
        chosen, rejected = (text_a, text_b) if outcome == "a" else (text_b, text_a)
        out.append(preference_row(list(messages), chosen, rejected, pair_id, prompt_id, split, "auto",
                                  suggestion_id=suggestion_id))
    return out


def audit_agreement(reward_name: str) -> dict[str, Any]:
    """People's verdicts on the audit pairs whose automatic verdict came from reward model
    `reward_name`: {"judged", "agree", "agreement"} (a tie or both-bad counts as disagreeing with
    the automatic "a is better"; skips are left out)."""
    by_this_model = exists().where(Suggestion.pair_id == Pair.id, Suggestion.name == PREFIX + reward_name)
    stmt = (select(Judgment.outcome).join(Pair, Pair.id == Judgment.pair_id)
            .where(Pair.source == SOURCE, Pair.kind == "label", by_this_model, Judgment.source == "human",
                   Judgment.outcome != "skip"))
    with db.session() as s:
        outcomes = list(s.scalars(stmt))
    agree = sum(o == "a" for o in outcomes)
    return {"judged": len(outcomes), "agree": agree, "agreement": agree / len(outcomes) if outcomes else None}
