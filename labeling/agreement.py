"""Does the AI judge agree with people as well as people agree with each other?

Verdicts fall in three classes: response a better, b better, no winner (a person's tie or
both-bad). Agreement is measured on items, each two verdicts on one pair: the judge's beside one
person's (`suggestions.verdicts_beside_people`), or two people's (`suggestions.people_beside_each_other`).
Cohen's κ (Cohen 1960) corrects the share of agreeing items for the agreement two raters with those
marginals would reach by chance; its 95 % interval comes from a bootstrap over pairs, since the
items of one pair are not independent.

The gate lets a judge's verdicts stand in for labels only when its κ with people, on at least 10
pairs, reaches the threshold: the admin's, else people's own κ (on at least 10 pairs, and never
under 0.4), else 0.6.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from labeling import suggestions

CLASSES = ("a", "b", "tie")
BOOTSTRAP = 1000
MIN_PAIRS = 10  # pairs a κ must rest on before the gate reads it
FLOOR = 0.4  # the lowest bar people's own κ may set: poorly agreeing people do not lower it further


def cohen_kappa(first: list[str], second: list[str]) -> float:
    """κ = (p_o − p_e) / (1 − p_e) of two raters' verdicts on the same items; nan when there are
    none, or when chance agreement is certain (both always say the same one class)."""
    return measure([(i, x, y) for i, (x, y) in enumerate(zip(first, second))], ci=False)["kappa"]


def measure(items: list[tuple[int, str, str]], seed: int = 0, ci: bool = True) -> dict[str, Any]:
    """Accuracy (share of items where the two verdicts match) and Cohen's κ, each with a 95 %
    bootstrap interval over pairs (`ci`: skip the intervals). `items`: (pair_id, verdict, verdict)."""
    nan = float("nan")
    out = {"pairs": len({p for p, _, _ in items}), "items": len(items), "accuracy": nan, "accuracy_ci": (nan, nan),
           "kappa": nan, "kappa_ci": (nan, nan)}
    if not items:
        return out
    code = {c: i for i, c in enumerate(CLASSES)}
    pairs = {p: i for i, p in enumerate(sorted({p for p, _, _ in items}))}
    cell = np.array([code[x] * len(CLASSES) + code[y] for _, x, y in items])  # the confusion matrix cell of each item
    member = np.array([pairs[p] for p, _, _ in items])

    def stats(weights: np.ndarray) -> tuple[float, float]:
        table = np.bincount(cell, weights=weights, minlength=len(CLASSES) ** 2).reshape(len(CLASSES), len(CLASSES))
        total = table.sum()
        p_o = np.trace(table) / total
        p_e = float((table.sum(1) / total) @ (table.sum(0) / total))
        return float(p_o), (nan if math.isclose(p_e, 1.0) else float((p_o - p_e) / (1 - p_e)))

    out["accuracy"], out["kappa"] = stats(np.ones(len(items)))
    if not ci:
        return out
    rng = np.random.default_rng(seed)
    draws = [stats(np.bincount(rng.integers(0, len(pairs), len(pairs)), minlength=len(pairs))[member].astype(float))
             for _ in range(BOOTSTRAP)]
    out["accuracy_ci"] = tuple(float(v) for v in np.percentile([a for a, _ in draws], [2.5, 97.5]))
    kappas = [k for _, k in draws if not math.isnan(k)]  # a draw whose verdicts all fall in one class has none
    if kappas:
        out["kappa_ci"] = tuple(float(v) for v in np.percentile(kappas, [2.5, 97.5]))
    return out


def judge_agreement(judge: str, rubric_version: int, ci: bool = True) -> dict[str, Any]:
    """The judge's agreement with people on the pairs both judged."""
    return measure(suggestions.verdicts_beside_people(judge, rubric_version), ci=ci)


def people_agreement(ci: bool = True) -> dict[str, Any]:
    """People's agreement with each other on the pairs two or more of them judged."""
    return measure(suggestions.people_beside_each_other(), ci=ci)


def gate(judge: str, rubric_version: int, threshold: float | None = None) -> dict[str, Any]:
    """Whether this judge's verdicts may stand in for labels: {"open", "kappa", "threshold",
    "threshold_from", "judge": judge_agreement, "people": people_agreement, "why"}. Open only when
    its κ with people, measured on at least MIN_PAIRS pairs, reaches the threshold: the admin's;
    else people's own κ once it rests on MIN_PAIRS pairs, but never under FLOOR; else
    DEFAULT_THRESHOLD."""
    mine, people = judge_agreement(judge, rubric_version, ci=False), people_agreement(ci=False)
    if threshold is not None:
        bar, source = float(threshold), "set by an admin"
    elif people["pairs"] >= MIN_PAIRS and not math.isnan(people["kappa"]):
        bar, source = max(people["kappa"], FLOOR), f"people's own κ on {people['pairs']} pairs, at least {FLOOR}"
    else:
        bar, source = suggestions.DEFAULT_THRESHOLD, "the default (people's own κ is not known yet)"
    result = {"judge": mine, "people": people, "threshold": bar, "threshold_from": source, "kappa": mine["kappa"]}
    if mine["pairs"] < MIN_PAIRS:
        why = (f"The judge {judge} has verdicts on {mine['pairs']} pairs people judged; it needs at least {MIN_PAIRS} "
               f"before its agreement with people means anything. Label more, or run the judge on judged pairs.")
    elif math.isnan(mine["kappa"]) or mine["kappa"] < bar:
        why = f"The judge's κ with people is {mine['kappa']:.2f}, under the threshold {bar:.2f} ({source})."
    else:
        why = None
    return {**result, "open": why is None, "why": why}


def ai_labels_in_use() -> dict[str, Any] | None:
    """{"judge", "rubric", "threshold"} when an admin has turned AI labels on and the judge passes
    the gate now, else None: training then uses people's labels only."""
    setting = suggestions.ai_label_setting()
    if setting is None:
        return None
    return setting if gate(setting["judge"], setting["rubric"], setting.get("threshold"))["open"] else None
