"""Annotator statistics: how much each person labeled, outcome shares, position bias, agreement.

The pure functions take a judgments frame with one row per judgment and at least the columns
`pair_id`, `annotator`, `outcome` ("a" / "b" / "tie" / "both_bad" / "skip", in terms of the pair's
response_a / response_b) and `left` (which response was shown on the left, or None for imported
labels). A row without an annotator is no person's judgment (a label that came with an imported
dataset): statistics about annotators leave it out. `judgments_frame` loads that frame, joined with
the pair's text, from the workspace.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import func, select
from sqlalchemy.orm import aliased

from labeling import db
from labeling.models import Annotator, Judgment, Pair, Prompt, Response

VERDICTS = ("a", "b", "tie", "both_bad")  # outcomes that count as an opinion (skips do not)
# source: the pair's (an import's name or a model version); judgment_source: "human" or "import"
COLUMNS = ["pair_id", "source", "prompt", "response_a", "response_b", "annotator", "judgment_source", "outcome",
           "left", "seconds", "comment", "reasons", "judged_at"]


def judgments_frame(source: str | None = None, annotator: str | None = None, outcome: str | None = None,
                    include_unjudged: bool = True, limit: int | None = None,
                    kinds: tuple[str, ...] = ("label",)) -> pd.DataFrame:
    """Pairs of `kinds` (labeling pairs; "arena" for blind votes) joined with their judgments,
    newest pair first, optionally filtered.

    One row per judgment; a pair nobody judged yet appears once with annotator/outcome None (unless
    `include_unjudged` is False or an annotator/outcome filter is set). Columns: COLUMNS.
    """
    ra, rb = aliased(Response), aliased(Response)
    stmt = (
        select(Pair.id, Pair.source, Prompt.messages, ra.text, rb.text, Annotator.name, Judgment.source,
               Judgment.outcome, Judgment.left, Judgment.seconds, Judgment.comment, Judgment.reasons,
               Judgment.created_at)
        .join(Prompt, Pair.prompt_id == Prompt.id)
        .join(ra, Pair.response_a_id == ra.id)
        .join(rb, Pair.response_b_id == rb.id)
        .outerjoin(Judgment, Judgment.pair_id == Pair.id)
        .outerjoin(Annotator, Judgment.annotator_id == Annotator.id)
        .where(Pair.kind.in_(kinds))
        .order_by(Pair.created_at.desc(), Pair.id.desc(), Judgment.id)
    )
    if source:
        stmt = stmt.where(Pair.source == source)
    if annotator:
        stmt = stmt.where(Annotator.name == annotator)
    if outcome:
        stmt = stmt.where(Judgment.outcome == outcome)
    if not include_unjudged:
        stmt = stmt.where(Judgment.id.is_not(None))
    if limit:
        stmt = stmt.limit(limit)
    with db.session() as s:
        rows = s.execute(stmt).all()
    frame = pd.DataFrame(rows, columns=COLUMNS)
    frame["prompt"] = [_prompt_text(m) for m in frame["prompt"]]
    return frame


def _prompt_text(messages: list[dict[str, str]]) -> str:
    return "\n\n".join(f"{m['role']}: {m['content']}" for m in messages)


def filter_values() -> dict[str, list[str]]:
    """The sources and annotators present in the workspace, for the Data page's filters."""
    with db.session() as s:
        sources = s.scalars(select(Pair.source).where(Pair.kind == "label").distinct().order_by(Pair.source))
        names = s.scalars(select(Annotator.name).order_by(Annotator.name))
        return {"source": list(sources), "annotator": list(names)}


def by_people(frame: pd.DataFrame) -> pd.DataFrame:
    """The rows of `frame` judged by an annotator (imported labels and unjudged pairs left out)."""
    return frame[frame["annotator"].notna()]


def judgments_per_annotator(frame: pd.DataFrame) -> pd.DataFrame:
    """Per annotator: judgments (skips excluded), skips, and median seconds per judgment.

    Shape: (annotators, 4) with columns annotator, judgments, skipped, median_seconds; most
    judgments first.
    """
    judged = by_people(frame)
    if judged.empty:
        return pd.DataFrame(columns=["annotator", "judgments", "skipped", "median_seconds"])
    grouped = judged.groupby("annotator")
    table = pd.DataFrame({
        "judgments": grouped["outcome"].apply(lambda o: int((o != "skip").sum())),
        "skipped": grouped["outcome"].apply(lambda o: int((o == "skip").sum())),
        "median_seconds": grouped["seconds"].median(),
    }).reset_index()
    return table.sort_values(["judgments", "annotator"], ascending=[False, True], ignore_index=True)


def outcome_shares(frame: pd.DataFrame) -> pd.DataFrame:
    """Count and share of each outcome among all judgments (skips included, so shares sum to 1).

    Shape: (5, 3) with columns outcome, count, share, in the order a, b, tie, both_bad, skip.
    """
    outcomes = frame["outcome"].dropna()
    counts = [int((outcomes == o).sum()) for o in (*VERDICTS, "skip")]
    total = sum(counts)
    shares = [c / total if total else float("nan") for c in counts]
    return pd.DataFrame({"outcome": [*VERDICTS, "skip"], "count": counts, "share": shares})


def wilson_interval(successes: int, trials: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (Wilson 1927; Agresti & Coull 1998, eq. 2):

        centre = (p + z²/2n) / (1 + z²/n),   half = z / (1 + z²/n) · sqrt(p(1-p)/n + z²/4n²)

    with p = successes / n. Unlike the normal (Wald) interval it stays inside [0, 1] and is sane
    for small n and p near 0 or 1. Returns (nan, nan) when trials == 0.
    """
    if trials == 0:
        return (float("nan"), float("nan"))
    n, p, z2 = trials, successes / trials, z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z / (1 + z2 / n) * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    return (max(0.0, centre - half), min(1.0, centre + half))


def position_bias(frame: pd.DataFrame) -> pd.DataFrame:
    """Per annotator, how often the response shown on the LEFT won, among decisive judgments.

    Only outcomes "a"/"b" with a known `left` count (ties, both-bad, skips and imported labels
    say nothing about sides). With responses placed left at random, an unbiased annotator's
    left-win share is 0.5; an interval (Wilson, 95 %) excluding 0.5 flags a bias.
    Shape: (annotators, 6) with columns annotator, decisive, left_wins, left_share, ci_low, ci_high.
    """
    people = by_people(frame)
    decisive = people[people["outcome"].isin(["a", "b"]) & people["left"].isin(["a", "b"])]
    rows = []
    for name, group in decisive.groupby("annotator"):
        n, wins = len(group), int((group["outcome"] == group["left"]).sum())
        low, high = wilson_interval(wins, n)
        rows.append({"annotator": name, "decisive": n, "left_wins": wins, "left_share": wins / n,
                     "ci_low": low, "ci_high": high})
    return pd.DataFrame(rows, columns=["annotator", "decisive", "left_wins", "left_share", "ci_low", "ci_high"])


def words(text: str) -> int:
    """An answer's length in words (whitespace-separated): the labeling side has no tokenizer."""
    return len(str(text).split())


def length_bias(frame: pd.DataFrame) -> pd.DataFrame:
    """Per annotator, how often the LONGER response (in words) won, among decisive judgments of
    pairs whose two responses differ in length.

    Only outcomes "a"/"b" by annotators count (ties, both-bad, skips and imported labels say
    nothing about a person's taste for length). By chance, with no taste for length, the longer
    answer wins half the time: an interval (Wilson, 95 %) above `chance` (0.5) says this person
    picks the longer answer more than content alone would explain, or that longer answers were
    better in these pairs; the pairs decide which, and the audit (labeling/audit.py) lists them.
    Shape: (annotators, 7) with columns annotator, decisive, longer_wins, longer_share, ci_low,
    ci_high, chance.
    """
    columns = ["annotator", "decisive", "longer_wins", "longer_share", "ci_low", "ci_high", "chance"]
    people = by_people(frame)
    decisive = people[people["outcome"].isin(["a", "b"])]
    length_a, length_b = decisive["response_a"].map(words), decisive["response_b"].map(words)
    differ = length_a != length_b
    longer = np.where(length_a > length_b, "a", "b")
    decisive = decisive.assign(longer_won=decisive["outcome"] == longer)[differ]
    rows = []
    for name, group in decisive.groupby("annotator"):
        n, wins = len(group), int(group["longer_won"].sum())
        low, high = wilson_interval(wins, n)
        rows.append({"annotator": name, "decisive": n, "longer_wins": wins, "longer_share": wins / n,
                     "ci_low": low, "ci_high": high, "chance": 0.5})
    return pd.DataFrame(rows, columns=columns)


def _tags(value: Any) -> list[str]:
    """A frame cell's tags: a stored list, or none (None, or NaN where pandas filled a gap)."""
    return list(value) if isinstance(value, (list, tuple)) else []


def reason_counts(frame: pd.DataFrame) -> pd.DataFrame:
    """Per annotator, how many of their verdicts (skips and imported labels left out) carry each
    reason tag: which reasons drive their choices.

    frame: the judgments frame with columns annotator, outcome, reasons (a list or None).
    Shape: (annotators, 3 + tags) with columns annotator, verdicts, with_reasons, then one column
    per tag that occurs, the most used first; most verdicts first.
    """
    people = frame[frame["annotator"].notna() & frame["outcome"].notna() & (frame["outcome"] != "skip")]
    if people.empty:
        return pd.DataFrame(columns=["annotator", "verdicts", "with_reasons"])
    table = people.groupby("annotator").agg(verdicts=("outcome", "size"),
                                            with_reasons=("reasons", lambda r: sum(bool(_tags(x)) for x in r)))
    tagged = people[["annotator"]].assign(reason=people["reasons"].map(_tags)).explode("reason")
    tagged = tagged[tagged["reason"].notna()]
    if not tagged.empty:
        counts = pd.crosstab(tagged["annotator"], tagged["reason"])
        order = counts.sum().sort_values(ascending=False, kind="stable").index
        table = table.join(counts[order]).fillna(0).astype(int)
    table = table.reset_index()
    return table.sort_values(["verdicts", "annotator"], ascending=[False, True], ignore_index=True)


def category_counts(frame: pd.DataFrame) -> np.ndarray:
    """Per pair with >= 2 verdicts by annotators (skips and imported labels excluded), how many
    annotators chose each outcome.

    Shape: (pairs, 4), columns in VERDICTS order; the input of `fleiss_kappa`.
    """
    people = by_people(frame)
    verdicts = people[people["outcome"].isin(VERDICTS)]
    table = pd.crosstab(verdicts["pair_id"], verdicts["outcome"]).reindex(columns=list(VERDICTS), fill_value=0)
    table = table[table.sum(axis=1) >= 2]
    return table.to_numpy(dtype=float)


def observed_agreement(counts: np.ndarray) -> np.ndarray:
    """Per item, the share of agreeing rater pairs (Fleiss 1971, eq. 2):

        P_i = (Σ_j n_ij² − n_i) / (n_i (n_i − 1))

    counts Shape: (items, categories), each row summing to n_i >= 2. Returns Shape: (items,).
    """
    n_i = counts.sum(axis=1)
    return ((counts ** 2).sum(axis=1) - n_i) / (n_i * (n_i - 1))


def fleiss_kappa(counts: np.ndarray) -> float:
    """Fleiss' kappa (Fleiss 1971, "Measuring nominal scale agreement among many raters"):

        κ = (P̄ − P̄_e) / (1 − P̄_e),   P̄ = mean_i P_i,   P̄_e = Σ_j p_j²,   p_j = Σ_i n_ij / Σ_i n_i

    counts Shape: (items, categories). Items may have different numbers of raters (n_i >= 2);
    P_i is then each item's own pairwise agreement and p_j pools all ratings, the usual extension
    of Fleiss' equal-n formula. With two raters per item this is Scott's pi. nan when there are
    no items or every rating falls in one category (agreement by chance is then certain).
    """
    if len(counts) == 0:
        return float("nan")
    p_bar = observed_agreement(counts).mean()
    p_j = counts.sum(axis=0) / counts.sum()
    p_e = float((p_j ** 2).sum())
    if math.isclose(p_e, 1.0):
        return float("nan")
    return float((p_bar - p_e) / (1 - p_e))


def agreement(frame: pd.DataFrame) -> dict[str, Any]:
    """Agreement on pairs with >= 2 verdicts: how many pairs, percent agreement (mean P_i: the
    share of annotator pairs who chose the same outcome), unanimous share, and Fleiss' kappa."""
    counts = category_counts(frame)
    if len(counts) == 0:
        return {"pairs": 0, "percent_agreement": float("nan"), "unanimous": float("nan"),
                "fleiss_kappa": float("nan")}
    unanimous = float((counts.max(axis=1) == counts.sum(axis=1)).mean())
    return {"pairs": len(counts), "percent_agreement": float(observed_agreement(counts).mean()),
            "unanimous": unanimous, "fleiss_kappa": fleiss_kappa(counts)}


def overlap_agreement() -> dict[str, Any]:
    """`agreement` over the labeling pairs that two or more people judged, read without the pairs'
    texts (the home page asks on every visit)."""
    shared = (select(Judgment.pair_id).where(Judgment.annotator_id.is_not(None), Judgment.outcome.in_(VERDICTS))
              .group_by(Judgment.pair_id).having(func.count(Judgment.id) >= 2))
    stmt = (select(Judgment.pair_id, Annotator.name, Judgment.outcome)
            .join(Annotator, Judgment.annotator_id == Annotator.id).join(Pair, Pair.id == Judgment.pair_id)
            .where(Pair.kind == "label", Judgment.pair_id.in_(shared)))
    with db.session() as s:
        rows = s.execute(stmt).all()
    return agreement(pd.DataFrame(rows, columns=["pair_id", "annotator", "outcome"]))
