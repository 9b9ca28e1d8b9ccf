"""Paired comparisons of two model versions on the same prompts, with uncertainty clustered by prompt.

Several samples of one prompt are not independent draws (a hard prompt is hard for every sample),
so every interval here resamples whole prompts (the cluster bootstrap), and every standard error
is computed over per-prompt means. numpy only: the pages, the benchmark and the evaluation share it.

    win_rate([0.3, 0.9], [0.1, 0.9], prompts=[0, 1])  ->  WinRate(rate=0.75, low=..., high=..., ...)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Sequence

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


def _cluster_draws(clusters: Sequence, resamples: int, seed: int) -> tuple[np.ndarray, int, Iterator[np.ndarray]]:
    """(index of each sample's cluster (n,), number of clusters k, batches of draws): each batch
    holds up to 256 resamples of k clusters drawn with replacement, Shape (b, k). Bounded memory,
    and one seed draws the same clusters for every caller, so their intervals are paired."""
    keys, index = np.unique(np.asarray([str(c) for c in clusters]), return_inverse=True)
    k = len(keys)
    rng = np.random.default_rng(seed)
    batches = (rng.integers(0, k, size=(min(256, resamples - start), k)) for start in range(0, resamples, 256))
    return index, k, batches


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
    index, k, batches = _cluster_draws(clusters, resamples, seed)
    if k < 2:
        return (float("nan"), float("nan"))
    sums = np.bincount(index, weights=values, minlength=k)  # (k,)
    counts = np.bincount(index, minlength=k).astype(float)  # (k,)
    means = [sums[draws].sum(axis=1) / counts[draws].sum(axis=1) for draws in batches]  # (b,) each
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


SLOPE_PRIOR = 1 / 2.5 ** 2  # ridge on the length slope: a N(0, 2.5²) prior per unit of scaled length
INTERCEPT_PRIOR = 1e-6  # all but none: keeps the intercept finite when every sample wins (or loses)


@dataclass(frozen=True)
class LengthControlled:
    rate: float  # σ(intercept): P(new beats old) when both answers have the same length
    low: float  # 95% interval, prompts resampled
    high: float
    raw: float  # the plain win rate, ties half
    length_slope: float  # log-odds of a win per root-mean-square length difference
    prompts: int


def _fit_length_logit(y: np.ndarray, z: np.ndarray, w: np.ndarray, start: tuple[float, float] = (0.0, 0.0),
                      iterations: int = 60) -> tuple[np.ndarray, np.ndarray]:
    """Penalised logistic regression P(win) = σ(a + b·z), fitted by Newton's method for B weightings
    of the samples at once (the full data, or bootstrap resamples), minimising

        −Σ_i w_i [y_i log p_i + (1 − y_i) log(1 − p_i)] + INTERCEPT_PRIOR a²/2 + SLOPE_PRIOR b²/2.

    y: outcomes in [0, 1], Shape (N,); z: scaled length difference, Shape (N,); w: sample weights,
    Shape (B, N); start: (a, b) to begin from (bootstrap fits start from the full fit's). Returns
    (a, b), each Shape (B,). The objective is strictly convex, so Newton's steps (a 2×2 solve each)
    converge; the ridge keeps b finite when length separates the outcomes.
    """
    a, b = np.full(len(w), float(start[0])), np.full(len(w), float(start[1]))
    for _ in range(iterations):
        p = 1 / (1 + np.exp(-(a[:, None] + b[:, None] * z)))  # (B, N)
        r, v = w * (y - p), w * p * (1 - p)  # residuals and curvature, (B, N)
        g_a, g_b = r.sum(1) - INTERCEPT_PRIOR * a, (r * z).sum(1) - SLOPE_PRIOR * b
        h_aa, h_ab, h_bb = v.sum(1) + INTERCEPT_PRIOR, (v * z).sum(1), (v * z * z).sum(1) + SLOPE_PRIOR
        det = h_aa * h_bb - h_ab ** 2
        step_a, step_b = (h_bb * g_a - h_ab * g_b) / det, (h_aa * g_b - h_ab * g_a) / det
        a, b = a + step_a, b + step_b
        if max(np.abs(step_a).max(), np.abs(step_b).max()) < 1e-9:
            break
    return a, b


def length_controlled_win_rate(outcome: Sequence[float], length_diff: Sequence[float], prompts: Sequence,
                               rounds: int = 2000, seed: int = 0) -> LengthControlled:
    """The win rate at equal length, as AlpacaEval 2's length-controlled win rate (Dubois et al.
    2024, "Length-Controlled AlpacaEval"): regress each paired outcome on the length difference,

        P(new beats old | Δ) = σ(θ₀ + θ₁ · Δ / rms(Δ)),   reported: σ(θ₀), the rate at Δ = 0,

    with a 95% interval from the cluster bootstrap over prompts (the same draws as `win_rate`'s).

    Δ = length(new) − length(old), scaled by its root mean square but not centred, so that zero
    stays "equal length". A tie enters as y = 0.5: its log-likelihood equals one win row and one
    loss row of weight ½ each, so ties count half as in `win_rate`, and with equal lengths
    everywhere σ(θ₀) is the raw win rate (dropping ties would not give it back). When longer
    always wins, length alone separates the outcomes and θ₁ would run off to infinity; a weak
    ridge on θ₁ (SLOPE_PRIOR, a N(0, 2.5²) prior as Gelman et al. 2008 suggest for scaled inputs)
    keeps it finite, and the rate at equal length then comes out near 0.5. When every difference
    has one sign (each new answer longer), no sample sits near equal length and σ(θ₀) is an
    extrapolation that leans to the raw rate: read it beside a pooled control such as
    training/verdict.py's least-squares gain at equal length.

    Shape: outcome, length_diff, prompts (N,); outcome from `outcomes(new, old)`.
    """
    y = np.asarray(outcome, dtype=float)
    if len(y) == 0:
        return LengthControlled(float("nan"), float("nan"), float("nan"), float("nan"), float("nan"), 0)
    d = np.asarray(length_diff, dtype=float)
    scale = np.sqrt(np.mean(d ** 2))
    z = d / scale if scale > 0 else np.zeros_like(d)
    (a,), (b,) = _fit_length_logit(y, z, np.ones((1, len(y))))
    index, k, batches = _cluster_draws(prompts, rounds, seed)
    low = high = float("nan")
    if k >= 2:
        rates = []
        for draws in batches:  # (b, k) -> how often each cluster was drawn -> each sample's weight
            counts = np.bincount((draws + k * np.arange(len(draws))[:, None]).ravel(), minlength=len(draws) * k)
            a_boot, _ = _fit_length_logit(y, z, counts.reshape(len(draws), k)[:, index].astype(float), (a, b))
            rates.append(1 / (1 + np.exp(-a_boot)))
        low, high = (float(q) for q in np.quantile(np.concatenate(rates), [0.025, 0.975]))
    return LengthControlled(float(1 / (1 + np.exp(-a))), low, high, float(y.mean()), float(b), k)
