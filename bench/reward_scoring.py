"""How bench/reward.py and bench/reward_trained.py score a reward option: accuracy on held-out pairs
with a 95 % interval over whole conversations, beside "longer wins" and "shorter wins"."""
from __future__ import annotations

import numpy as np

from training import metrics


def texts(rows: list[dict], side: str) -> list[str]:
    return [r[side][-1]["content"] for r in rows]


def accuracy(won: np.ndarray, conversations: list[str]) -> dict:
    low, high = metrics.cluster_bootstrap_ci(won, conversations)
    return {"accuracy": round(float(won.mean()), 3), "low": round(low, 3), "high": round(high, 3)}


def baselines(rows: list[dict]) -> dict:
    conversations = [r["conversation"] for r in rows]
    return {"longer": accuracy(metrics.longer_wins(texts(rows, "chosen"), texts(rows, "rejected")), conversations),
            "shorter": accuracy(metrics.shorter_wins(texts(rows, "chosen"), texts(rows, "rejected")), conversations)}
