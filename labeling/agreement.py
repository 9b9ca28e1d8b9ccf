"""Does the AI judge agree with people as well as people agree with each other?

Verdicts fall in three classes: response a better, b better, no winner (a person's tie or
both-bad). Agreement is measured on items, each two verdicts on one pair: the judge's beside one
person's (`suggestions.verdicts_beside_people`), or two people's (`suggestions.people_beside_each_other`).
Cohen's κ (Cohen 1960) corrects the share of agreeing items for the agreement two raters with those
marginals would reach by chance; its 95 % interval comes from a bootstrap over pairs, since the
items of one pair are not independent.

The gate lets a judge's verdicts stand in for labels only when its κ with people reaches the
threshold: the admin's, else the people's own κ, else 0.6.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from labeling import suggestions

CLASSES = ("a", "b", "tie")
BOOTSTRAP = 1000


def cohen_kappa(first: list[str], second: list[str]) -> float:
    """κ = (p_o − p_e) / (1 − p_e) of two raters' verdicts on the same items; nan when there are
    none, or when chance agreement is certain (both always say the same one class)."""
    if not first:
        return float("nan")
    x, y = np.asarray(first), np.asarray(second)
    p_o = float((x == y).mean())
    p_e = sum(float((x == c).mean()) * float((y == c).mean()) for c in CLASSES)
    return float("nan") if math.isclose(p_e, 1.0) else (p_o - p_e) / (1 - p_e)


def measure(items: list[tuple[int, str, str]], seed: int = 0) -> dict[str, Any]:
    """Accuracy (share of items where the two verdicts match) and Cohen's κ, each with a 95 %
    bootstrap interval over pairs. `items`: (pair_id, verdict, verdict)."""
    pairs = sorted({p for p, _, _ in items})
    out = {"pairs": len(pairs), "items": len(items), "accuracy": float("nan"), "accuracy_ci": (float("nan"),) * 2,
           "kappa": float("nan"), "kappa_ci": (float("nan"),) * 2}
    if not items:
        return out
    by_pair: dict[int, list[tuple[str, str]]] = {}
    for p, x, y in items:
        by_pair.setdefault(p, []).append((x, y))
    out["accuracy"] = float(np.mean([x == y for _, x, y in items]))
    out["kappa"] = cohen_kappa([x for _, x, _ in items], [y for _, _, y in items])
    rng = np.random.default_rng(seed)
    accuracies, kappas = [], []
    for _ in range(BOOTSTRAP):
        drawn = [v for i in rng.integers(0, len(pairs), len(pairs)) for v in by_pair[pairs[i]]]
        accuracies.append(np.mean([x == y for x, y in drawn]))
        kappas.append(cohen_kappa([x for x, _ in drawn], [y for _, y in drawn]))
    kappas = [k for k in kappas if not math.isnan(k)]
    out["accuracy_ci"] = tuple(float(v) for v in np.percentile(accuracies, [2.5, 97.5]))
    if kappas:
        out["kappa_ci"] = tuple(float(v) for v in np.percentile(kappas, [2.5, 97.5]))
    return out


def judge_agreement(judge: str, rubric_version: int) -> dict[str, Any]:
    """The judge's agreement with people on the pairs both judged."""
    return measure(suggestions.verdicts_beside_people(judge, rubric_version))


def people_agreement() -> dict[str, Any]:
    """People's agreement with each other on the pairs two or more of them judged."""
    return measure(suggestions.people_beside_each_other())


def gate(judge: str, rubric_version: int, threshold: float | None = None) -> dict[str, Any]:
    """Whether this judge's verdicts may stand in for labels: {"open", "kappa", "threshold",
    "threshold_from", "judge": judge_agreement, "people": people_agreement, "why"}. Open only when
    its κ with people, measured on at least 10 pairs, reaches the threshold."""
    mine, people = judge_agreement(judge, rubric_version), people_agreement()
    if threshold is not None:
        bar, source = float(threshold), "set by an admin"
    elif not math.isnan(people["kappa"]):
        bar, source = people["kappa"], f"people's own κ on {people['pairs']} pairs"
    else:
        bar, source = suggestions.DEFAULT_THRESHOLD, "the default (people's own κ is not known yet)"
    result = {"judge": mine, "people": people, "threshold": bar, "threshold_from": source, "kappa": mine["kappa"]}
    if mine["pairs"] < 10:
        why = (f"The judge {judge} has verdicts on {mine['pairs']} pairs people judged; it needs at least 10 "
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
