"""Paired comparisons of two model versions on the same prompts, with uncertainty clustered by prompt.

Several samples of one prompt are not independent draws (a hard prompt is hard for every sample),
so every interval here resamples whole prompts (the cluster bootstrap), and every standard error
is computed over per-prompt means. numpy only: the pages, the benchmark and the evaluation share it.

    win_rate([0.3, 0.9], [0.1, 0.9], prompts=[0, 1])  ->  WinRate(rate=0.75, low=..., high=..., ...)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np


@dataclass(frozen=True)
class WinRate:
    rate: float  # P(new beats old), ties counted half
    low: float  # 95% interval, prompts resampled
    high: float
    wins: int
    ties: int
    losses: int
    prompts: int  # clusters


def outcomes(new: Sequence[float], old: Sequence[float], tie_margin: float = 0.0) -> np.ndarray:
    """1 where new > old by more than `tie_margin`, 0 where old wins by more, 0.5 otherwise.

    Shape: new, old (N,) -> (N,).
    """
    diff = np.asarray(new, dtype=float) - np.asarray(old, dtype=float)
    return np.where(diff > tie_margin, 1.0, np.where(diff < -tie_margin, 0.0, 0.5))


def _cluster_means(values: np.ndarray, clusters: Sequence) -> np.ndarray:
    """Mean of `values` within each cluster (clusters in sorted order). Shape: (N,) -> (C,)."""
    _, index = np.unique(np.asarray(clusters), return_inverse=True)
    sums = np.bincount(index, weights=values)
    counts = np.bincount(index)
    return sums / counts


def clustered_mean_se(values: Sequence[float], clusters: Sequence) -> tuple[float, float]:
    """(mean, standard error) of `values` with the error taken over cluster means (prompts), so K
    samples of one prompt count as one observation. Equal cluster sizes make the mean the plain one.

    Shape: values, clusters (N,).
    """
    values = np.asarray(values, dtype=float)
    if len(values) == 0:
        return float("nan"), float("nan")
    means = _cluster_means(values, clusters)
    se = float(means.std(ddof=1) / np.sqrt(len(means))) if len(means) > 1 else 0.0
    return float(values.mean()), se


def cluster_bootstrap(values: Sequence[float], clusters: Sequence, rounds: int = 2000, seed: int = 0,
                      level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of the mean of `values`, resampling whole clusters with replacement.

    Shape: values, clusters (N,).
    """
    values = np.asarray(values, dtype=float)
    _, index = np.unique(np.asarray(clusters), return_inverse=True)
    sums, counts = np.bincount(index, weights=values), np.bincount(index)
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(sums), size=(rounds, len(sums)))  # (rounds, C) clusters drawn
    means = sums[picks].sum(1) / counts[picks].sum(1)
    tail = (1 - level) / 2
    return float(np.quantile(means, tail)), float(np.quantile(means, 1 - tail))


def win_rate(new: Sequence[float], old: Sequence[float], prompts: Sequence, tie_margin: float = 0.0,
             rounds: int = 2000, seed: int = 0) -> WinRate:
    """How often `new` beats `old`, paired sample by sample (same prompt, same seed), ties half,
    with a 95% cluster-bootstrap interval over prompts.

    Shape: new, old, prompts (N,).
    """
    o = outcomes(new, old, tie_margin)
    if len(o) == 0:
        return WinRate(float("nan"), float("nan"), float("nan"), 0, 0, 0, 0)
    low, high = cluster_bootstrap(o, prompts, rounds, seed)
    return WinRate(float(o.mean()), low, high, int((o == 1).sum()), int((o == 0.5).sum()), int((o == 0).sum()),
                   len(set(prompts)))
