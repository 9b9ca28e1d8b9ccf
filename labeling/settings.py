"""Workspace settings an admin changes on the Data page, kept in the workspace database (the Meta
table), so every annotator's session and every server on that database reads the same value.

    overlap()        # how many annotators judge each pair: as saved, else PREFLOOP_OVERLAP, else 1
    set_overlap(2)   # two people judge each pair, so the Data page can report their agreement
    queue_order()    # "oldest" first; "uncertain": the reward model's least sure pairs first; "current":
                     # the current policy's own pairs first (for on-policy DPO rounds)

The labeling guidelines, another such setting, live beside the queue (`queue.guidelines`).
"""
from __future__ import annotations

import os

from labeling import db
from labeling.models import Meta

OVERLAP_KEY = "labeling_overlap"
MAX_OVERLAP = 20  # more people per pair than this is a typo, not a plan


class SettingError(ValueError):
    """A setting prefloop cannot use; one sentence naming it and what to do."""


def read_value(key: str) -> str | None:
    """A workspace setting's stored text, or None."""
    with db.session() as s:
        row = s.get(Meta, key)
        return None if row is None else row.value


def write_value(key: str, value: str | None) -> None:
    """Store a workspace setting's text (None deletes it)."""
    with db.session() as s:
        row = s.get(Meta, key)
        if value is None:
            if row is not None:
                s.delete(row)
        elif row is None:
            s.add(Meta(key=key, value=value))
        else:
            row.value = value


def _check_overlap(value: object, where: str) -> int:
    try:
        overlap = int(str(value).strip())
    except ValueError:
        overlap = 0
    if not 1 <= overlap <= MAX_OVERLAP:
        raise SettingError(f"{where} must be a whole number from 1 to {MAX_OVERLAP}, got {value!r}.")
    return overlap


def default_overlap() -> int:
    """PREFLOOP_OVERLAP, the value until an admin saves one; 1 when it is unset."""
    value = os.environ.get("PREFLOOP_OVERLAP", "").strip()
    return _check_overlap(value, "PREFLOOP_OVERLAP") if value else 1


def overlap() -> int:
    """How many annotators judge each pair: the workspace's saved setting, else default_overlap()."""
    stored = read_value(OVERLAP_KEY)
    return _check_overlap(stored, "The saved overlap") if stored is not None else default_overlap()


def set_overlap(value: int) -> int:
    """Save how many annotators judge each pair, for the whole workspace; returns it."""
    overlap = _check_overlap(value, "Overlap")
    write_value(OVERLAP_KEY, str(overlap))
    return overlap


QUEUE_ORDER_KEY = "queue_order"
QUEUE_ORDERS = ("oldest", "uncertain", "current")  # oldest pair first; the reward model's least sure; the current policy's


def queue_order() -> str:
    """Which pair the queue serves next: "oldest" (the default), "uncertain" (the pairs whose
    reward-model probability is nearest 0.5 first, with a share drawn at random) or "current" (the
    pairs whose two answers the current policy sampled first, oldest first among each; labeling/queue.py)."""
    stored = read_value(QUEUE_ORDER_KEY)
    return stored if stored in QUEUE_ORDERS else "oldest"


def set_queue_order(order: str) -> str:
    if order not in QUEUE_ORDERS:
        raise SettingError(f"Unknown queue order {order!r}; use one of {', '.join(QUEUE_ORDERS)}.")
    write_value(QUEUE_ORDER_KEY, order)
    return order


def autogenerate() -> bool:
    """The app generates pairs by itself unless PREFLOOP_AUTOGENERATE=0 (e.g. a demo on imported pairs only)."""
    return os.environ.get("PREFLOOP_AUTOGENERATE", "1") != "0"


LENGTH_RATIO_KEY = "pair_length_ratio"
MAX_LENGTH_RATIO = 10.0


def pair_length_ratio() -> float:
    """How alike in length the generator makes the two answers of a pair: 0 (the default) takes
    them as sampled; r > 1 resamples a pair whose longer answer has more than r times the shorter's
    tokens (training/generate.py), so people judge content rather than length."""
    stored = read_value(LENGTH_RATIO_KEY)
    try:
        return float(stored) if stored is not None else 0.0
    except ValueError:
        return 0.0


def length_ratio_problem(value: float, name: str = "The length ratio") -> str | None:
    """One sentence when `value` is no length ratio (the Data page's setting, the generator's field)."""
    if value != 0 and not 1 < value <= MAX_LENGTH_RATIO:
        return (f"{name} must be 0 (off) or above 1 and at most {MAX_LENGTH_RATIO:g}, got {value:g}"
                + (": at 1 or below every pair is resampled." if 0 < value <= 1 else "."))
    return None


def set_pair_length_ratio(value: float) -> float:
    value = float(value)
    if problem := length_ratio_problem(value):
        raise SettingError(problem)
    write_value(LENGTH_RATIO_KEY, str(value))
    return value


TRAINING_EXCLUDE_KEY = "training_exclude"


def training_exclusions() -> tuple[str, ...]:
    """The pair-audit checks (labeling/audit.py CHECKS) whose flagged pairs every round leaves out;
    none until an admin picks some on the Train page."""
    stored = read_value(TRAINING_EXCLUDE_KEY)
    return tuple(stored.split(",")) if stored else ()


def set_training_exclusions(checks: list[str] | tuple[str, ...]) -> tuple[str, ...]:
    from labeling.export import AUDIT_CHECKS

    if unknown := [c for c in checks if c not in AUDIT_CHECKS]:
        raise SettingError(f"Unknown pair-audit check '{unknown[0]}'; pick any of {', '.join(AUDIT_CHECKS)}.")
    chosen = tuple(c for c in AUDIT_CHECKS if c in checks)  # in the audit's order
    write_value(TRAINING_EXCLUDE_KEY, ",".join(chosen))
    return chosen
