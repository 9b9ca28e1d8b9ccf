"""Blind votes between model versions: win rates with Wilson intervals and Bradley-Terry ratings
with bootstrap intervals, as Chatbot Arena reports them.

An arena vote is an ordinary judgment on a pair of kind "arena" whose two responses came from two
different policy versions, so every vote is also a training pair for the next round.
"""
from __future__ import annotations

import math
from collections import Counter, defaultdict
from dataclasses import dataclass

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import aliased

from labeling import db
from labeling.models import Judgment, Pair, Prompt, Response
from labeling.stats import wilson_interval


@dataclass(frozen=True)
class Vote:
    """One decisive or tied comparison: `winner` is "a", "b" or "tie"."""

    model_a: str
    model_b: str
    winner: str


def _win_matrix(votes: list[Vote], models: list[str], prior: float) -> np.ndarray:
    """W[i, j] = wins of i over j (a tie is half a win each way), plus `prior`/2 virtual wins
    each way for every pair of models, which keeps the fit finite for an undefeated model."""
    index = {m: k for k, m in enumerate(models)}
    n = len(models)
    wins = np.full((n, n), prior / 2.0)
    np.fill_diagonal(wins, 0.0)
    for v in votes:
        i, j = index[v.model_a], index[v.model_b]
        if v.winner == "a":
            wins[i, j] += 1
        elif v.winner == "b":
            wins[j, i] += 1
        else:
            wins[i, j] += 0.5
            wins[j, i] += 0.5
    return wins


def bradley_terry(votes: list[Vote], prior: float = 0.5, iters: int = 500, tol: float = 1e-9,
                  models: list[str] | None = None) -> dict[str, float]:
    """Maximum-likelihood Bradley-Terry strengths by Hunter's (2004) MM algorithm.

    P(i beats j) = p_i / (p_i + p_j);  update p_i ← W_i / Σ_j n_ij / (p_i + p_j),
    where W_i is i's total wins and n_ij the games between i and j. Returned on the Elo scale
    used by Chatbot Arena: 1000 + 400·log10(p_i / geometric mean of p). `models` fixes the set rated,
    where the prior's virtual games keep a model with no vote (in a bootstrap resample) defined.
    """
    models = models or sorted({v.model_a for v in votes} | {v.model_b for v in votes})
    if not models:
        return {}
    wins = _win_matrix(votes, models, prior)
    games = wins + wins.T
    p = np.ones(len(models))
    for _ in range(iters):
        denom = (games / (p[:, None] + p[None, :])).sum(axis=1)
        new = wins.sum(axis=1) / denom
        new /= np.exp(np.log(new).mean())
        if np.abs(new - p).max() < tol:
            p = new
            break
        p = new
    return {m: 1000.0 + 400.0 * math.log10(x) for m, x in zip(models, p)}


def bootstrap_samples(votes: list[Vote], rounds: int = 200, seed: int = 0) -> dict[str, list[float]]:
    """Every model's rating in each of `rounds` resamples of the votes. A model that no vote of a
    resample names is still rated there (from the prior alone) instead of dropped, which would
    leave its interval computed over the lucky resamples only."""
    rng = np.random.default_rng(seed)
    models = sorted({v.model_a for v in votes} | {v.model_b for v in votes})
    samples: dict[str, list[float]] = defaultdict(list)
    for _ in range(rounds):
        resample = [votes[k] for k in rng.integers(0, len(votes), len(votes))]
        for m, r in bradley_terry(resample, models=models).items():
            samples[m].append(r)
    return samples


def bootstrap_ratings(votes: list[Vote], rounds: int = 200, seed: int = 0) -> dict[str, tuple[float, float, float]]:
    """Rating and a 95 % percentile bootstrap interval per model: {model: (rating, low, high)}."""
    point = bradley_terry(votes)
    samples = bootstrap_samples(votes, rounds, seed)
    return {m: (r, float(np.percentile(samples[m], 2.5)), float(np.percentile(samples[m], 97.5)))
            for m, r in point.items()}


def win_rates(votes: list[Vote]) -> list[dict]:
    """Per unordered pair of models: wins each way, ties, and A's win rate over decisive votes
    with its Wilson interval. A is the alphabetically first model of the two."""
    tally: dict[tuple[str, str], Counter] = defaultdict(Counter)
    for v in votes:
        a, b = sorted((v.model_a, v.model_b))
        flipped = a != v.model_a
        winner = {"a": "b", "b": "a"}.get(v.winner, v.winner) if flipped else v.winner
        tally[(a, b)][winner] += 1
    rows = []
    for (a, b), c in sorted(tally.items()):
        decisive = c["a"] + c["b"]
        low, high = wilson_interval(c["a"], decisive)
        rows.append({"model_a": a, "model_b": b, "wins_a": c["a"], "wins_b": c["b"], "ties": c["tie"],
                     "win_rate_a": c["a"] / decisive if decisive else None, "low": low, "high": high})
    return rows


def arena_votes() -> list[Vote]:
    """Every arena judgment as a Vote between the two responses' model versions (skips and
    both-bad votes say nothing about which version is better and are left out)."""
    ra, rb = aliased(Response), aliased(Response)
    query = (
        select(ra.model_version, rb.model_version, Judgment.outcome)
        .join(Pair, Judgment.pair_id == Pair.id)
        .join(ra, Pair.response_a_id == ra.id)
        .join(rb, Pair.response_b_id == rb.id)
        .where(Pair.kind == "arena", Judgment.outcome.in_(("a", "b", "tie")))
    )
    with db.session() as s:
        return [Vote(a, b, outcome) for a, b, outcome in s.execute(query)]


def comparisons(version_a: str, version_b: str) -> list[dict]:
    """Arena pairs between two versions, side by side: the prompt, each version's answer, and the
    reward score and base-model log-prob stored with each answer. Sides follow the arguments."""
    ra, rb = aliased(Response), aliased(Response)
    query = (
        select(Pair.id, Pair.prompt_id, Prompt.messages, ra, rb)
        .join(Prompt, Pair.prompt_id == Prompt.id)
        .join(ra, Pair.response_a_id == ra.id)
        .join(rb, Pair.response_b_id == rb.id)
        .where(Pair.kind == "arena", ra.model_version.in_((version_a, version_b)),
               rb.model_version.in_((version_a, version_b)), ra.model_version != rb.model_version)
        .order_by(Pair.id)
    )
    rows = []
    with db.session() as s:
        for pair_id, prompt_id, messages, first, second in s.execute(query):
            mine = {first.model_version: first, second.model_version: second}
            a, b = mine[version_a], mine[version_b]
            rows.append({"pair_id": pair_id, "prompt_id": prompt_id, "messages": messages, "text_a": a.text, "text_b": b.text,
                         **{f"{k}_{side}": (r.generation or {}).get(k) for side, r in (("a", a), ("b", b))
                            for k in ("reward", "base_logprob", "tokens")}})
    return rows
