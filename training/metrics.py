"""How good a reward model is, as pure functions of its scores: preference accuracy (ties count
half), the "longer wins" / "shorter wins" baselines, a confidence interval clustered by prompt,
calibration and the reward–length correlation.

numpy only, no torch: the Train page's reward card and the CLI table read these numbers without
loading a model library. Each function is unit-tested against values worked out by hand
(tests/test_metrics.py). A torch tensor on the CPU passes wherever an array is expected.

References:
- Bradley & Terry 1952: P(chosen ≻ rejected) = σ(r_chosen − r_rejected).
- Efron & Tibshirani 1993, "An Introduction to the Bootstrap", §6 and §13 (percentile interval);
  Field & Welsh 2007, "Bootstrapping clustered data" (resample whole clusters, not rows).
- Naeini et al. 2015; Guo et al. 2017, "On Calibration of Modern Neural Networks", eq. 3 (ECE).
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from labeling.paired import cluster_bootstrap_ci, outcomes  # noqa: F401  (cluster_bootstrap_ci: one home, re-used here)

ArrayLike = Any  # a sequence of numbers, a numpy array or a CPU torch tensor


def pair_outcomes(score_chosen: ArrayLike, score_rejected: ArrayLike) -> np.ndarray:
    """Per pair, 1 when the chosen response scores higher, 0 when lower, 0.5 on a tie.

    Shape: score_chosen (pairs,), score_rejected (pairs,) -> (pairs,).
    """
    return outcomes(score_chosen, score_rejected)


def preference_accuracy(score_chosen: ArrayLike, score_rejected: ArrayLike) -> float:
    """Share of pairs where the chosen response scores higher, a tie counting one half: the one
    definition of preference accuracy in prefloop. nan for no pairs.

    Shape: score_chosen (pairs,), score_rejected (pairs,) -> ().
    """
    outcomes = pair_outcomes(score_chosen, score_rejected)
    return float(outcomes.mean()) if outcomes.size else float("nan")


def longer_wins(chosen: Sequence[str], rejected: Sequence[str]) -> np.ndarray:
    """The "longer wins" baseline's outcome per pair: it picks the response with more characters.

    Shape: (pairs,) texts -> (pairs,) in {0, 0.5, 1}; equal lengths count half.
    """
    return pair_outcomes([len(t) for t in chosen], [len(t) for t in rejected])


def shorter_wins(chosen: Sequence[str], rejected: Sequence[str]) -> np.ndarray:
    """The "shorter wins" baseline's outcome per pair (equal lengths count half). Shape: (pairs,)."""
    return pair_outcomes([-len(t) for t in chosen], [-len(t) for t in rejected])


def preference_probability(score_chosen: ArrayLike, score_rejected: ArrayLike) -> np.ndarray:
    """σ(r_chosen − r_rejected): the Bradley-Terry probability that the chosen response wins.

    Shape: (pairs,), (pairs,) -> (pairs,).
    """
    margin = np.asarray(score_chosen, dtype=float) - np.asarray(score_rejected, dtype=float)
    return 1.0 / (1.0 + np.exp(-margin))


def calibration(probability_chosen: ArrayLike, bins: int = 10) -> tuple[float, list[dict[str, Any]]]:
    """Expected calibration error of the model's pick and the reliability-plot data.

    The model picks the response it gives p ≥ 0.5 with confidence c = max(p, 1 − p) ∈ [0.5, 1];
    the pick is right (1) when p > 0.5, wrong (0) when p < 0.5, and counts half at p = 0.5. The
    confidences fall into `bins` equal-width bins over [0.5, 1] and (Guo et al. 2017, eq. 3)

        ECE = Σ_b (n_b / N) · |accuracy_b − confidence_b|.

    Returns (ece, bins) with one dict per bin: lower, upper, count, confidence (mean c) and
    accuracy (mean rightness), the last two None for an empty bin. ece is nan for no pairs.

    Shape: probability_chosen (pairs,).
    """
    p = np.asarray(probability_chosen, dtype=float)
    confidence = np.maximum(p, 1 - p)
    right = (p > 0.5) + 0.5 * (p == 0.5)
    # the small nudge puts a confidence that sits on an edge (0.7 is 0.6999… in floats) in the
    # bin above it; 1.0 goes in the last bin
    index = np.minimum(np.floor((2 * confidence - 1) * bins + 1e-9).astype(int), bins - 1)
    table, ece = [], 0.0
    for b in range(bins):
        inside = index == b
        n = int(inside.sum())
        row = {"lower": 0.5 + 0.5 * b / bins, "upper": 0.5 + 0.5 * (b + 1) / bins, "count": n,
               "confidence": float(confidence[inside].mean()) if n else None,
               "accuracy": float(right[inside].mean()) if n else None}
        if n:
            ece += n / len(p) * abs(row["accuracy"] - row["confidence"])
        table.append(row)
    return (ece if len(p) else float("nan")), table


def log_length(texts: Sequence[str]) -> np.ndarray:
    """log(1 + characters) per text: the length the reward heads' length head reads and the reward–length
    correlation is taken against (a log, so a few very long answers do not decide it). Shape: (n,)."""
    return np.log1p(np.array([len(t) for t in texts], dtype=float))


def length_correlation(rewards: ArrayLike, texts: Sequence[str]) -> float:
    """The reward–length correlation every report gives: Pearson's r between each answer's reward and
    its `log_length`. Shape: (n,), n texts -> ()."""
    return pearson(rewards, log_length(texts))


def pearson(x: ArrayLike, y: ArrayLike) -> float:
    """Pearson's correlation coefficient r = Σ dx·dy / sqrt(Σ dx² · Σ dy²); nan when either side
    is constant or has fewer than two values. Shape: (n,), (n,) -> ()."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if len(x) < 2:
        return float("nan")
    dx, dy = x - x.mean(), y - y.mean()
    denominator = math.sqrt(float((dx * dx).sum()) * float((dy * dy).sum()))
    return float((dx * dy).sum() / denominator) if denominator > 0 else float("nan")


def preferred_probability(margin: float) -> float:
    """Bradley-Terry's P(first better) = σ(margin) for a reward (or log-odds) margin, the exponent
    clamped so a huge margin gives 0 or 1 instead of an overflow."""
    return 1 / (1 + math.exp(-max(-60.0, min(60.0, float(margin)))))
