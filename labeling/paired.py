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


def cluster_bootstrap_ci(values: Sequence[float], clusters: Sequence, level: float = 0.95,
                         resamples: int = 2000, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of `values`, resampling whole clusters (prompts
    or conversations) with replacement, since samples of one prompt are not independent draws
    (Efron & Tibshirani 1993 §13; Field & Welsh 2007, "Bootstrapping clustered data").

    Each resample draws k of the k clusters and takes Σ sums / Σ counts of the drawn clusters. The
    same `seed` draws the same clusters for every system scored on one set, so their intervals are
    paired. (nan, nan) with fewer than two clusters: one prompt says nothing about the spread.

    Shape: values (n,), clusters (n,) -> (low, high).
    """
    values = np.asarray(values, dtype=float)
    keys, index = np.unique(np.asarray([str(c) for c in clusters]), return_inverse=True)
    k = len(keys)
    if k < 2:
        return (float("nan"), float("nan"))
    sums = np.bincount(index, weights=values, minlength=k)  # (k,)
    counts = np.bincount(index, minlength=k).astype(float)  # (k,)
    rng = np.random.default_rng(seed)
    means = []
    for start in range(0, resamples, 256):  # bounded memory: at most 256 × k draws at a time
        draws = rng.integers(0, k, size=(min(256, resamples - start), k))  # (b, k)
        means.append(sums[draws].sum(axis=1) / counts[draws].sum(axis=1))
    low, high = np.quantile(np.concatenate(means), [(1 - level) / 2, (1 + level) / 2])
    return (float(low), float(high))


def win_rate(new: Sequence[float], old: Sequence[float], prompts: Sequence, tie_margin: float = 0.0,
             rounds: int = 2000, seed: int = 0) -> WinRate:
    """How often `new` beats `old`, paired sample by sample (same prompt, same seed), ties half,
    with a 95% cluster-bootstrap interval over prompts.

    Shape: new, old, prompts (N,).
    """
    o = outcomes(new, old, tie_margin)
    if len(o) == 0:
        return WinRate(float("nan"), float("nan"), float("nan"), 0, 0, 0, 0)
    low, high = cluster_bootstrap_ci(o, prompts, resamples=rounds, seed=seed)
    return WinRate(float(o.mean()), low, high, int((o == 1).sum()), int((o == 0.5).sum()), int((o == 0).sum()),
                   len(set(prompts)))
