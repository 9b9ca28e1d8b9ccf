"""What a round trains on: the labeled pairs (people's, rewrites', an AI judge's that passed the
gate, the autopilot's), split by conversation so no prompt is on both sides, the training
prompts, and the readiness checks the registry declares ("DPO needs at least 8 labeled pairs; you
have 3.").

Light to import (no torch): the Train page asks a round's readiness before a job starts.
"""
from __future__ import annotations

import contextlib
import contextvars
import hashlib
import json
import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable

from training import distributed
from training.dpo_config import DPORoundConfig

MIN_PAIRS = 8  # fewer labeled pairs than this teach a model nothing measurable
# Fewer training pairs than this may teach too little to measure: in bench/learning.py one DPO round on
# 41 training pairs (after the held-out split) left a taste ("you") where it was, and 71 pairs of the
# same taste won 0.93 (README, "Does it learn?"); 43 pairs did teach `plain`, so it is a caution, not a limit.
FEW_PAIRS = 70
LEFT_OUT = {"tie": "tied", "both_bad": "both bad", "unresolved": "unresolved"}  # export's kinds, as the caution names them


class NotReady(RuntimeError):
    """A round cannot run yet (too few pairs, no reward model); one sentence for the user."""


@dataclass
class PreferenceData:
    """Rows as `labeling.export.preference_rows` gives them: prompt (messages), chosen and
    rejected ([{"role": "assistant", ...}]), pair_id, prompt_id, split."""

    train: list[dict[str, Any]]
    heldout: list[dict[str, Any]]
    judgment_ids: list[int]  # lineage: exactly the judgments behind these rows
    fallback_split: bool  # True when the workspace's held-out prompts were empty and we split here
    # lineage of the rows no person decided: {"pairs_from_people", "pairs_from_ai"[, "ai_judge",
    # "ai_rubric", "ai_label_ids"]}, stored with the version's metrics
    origin: dict[str, Any] = field(default_factory=dict)


def _rank(key: str, seed: int) -> str:
    return hashlib.sha256(f"{seed}:{key}".encode()).hexdigest()


def conversation(row: dict) -> str:
    """The conversation an export row belongs to: its prompt's first message. Pairs deeper in one
    OpenAssistant tree, or later in one dialogue, share it and are not independent of each other."""
    return json.dumps(row["prompt"][:1], sort_keys=True, ensure_ascii=False)


def split_by_conversation(rows: list[dict], heldout_fraction: float, seed: int = 0) -> tuple[list, list, bool]:
    """(train, heldout, fallback): the rows' own `split` column, or, when it leaves either side
    empty, a split by conversation: a `heldout_fraction` of the conversations (at least one when
    there are two or more), chosen by a seeded hash, so no conversation (and so no prompt) is on
    both sides."""
    train = [r for r in rows if r.get("split") != "heldout"]
    heldout = [r for r in rows if r.get("split") == "heldout"]
    if train and heldout:
        return train, heldout, False
    keys = sorted({conversation(r) for r in rows}, key=lambda k: _rank(k, seed))
    n_heldout = min(max(math.ceil(heldout_fraction * len(keys)), 1), len(keys) - 1) if len(keys) > 1 else 0
    chosen = set(keys[:n_heldout])
    return ([r for r in rows if conversation(r) not in chosen], [r for r in rows if conversation(r) in chosen], True)


IN_USE = "in use"  # training_rows' `ai` default: the AI judge whose labels are gated in now, if any
_ONE_EXPORT: contextvars.ContextVar[dict | None] = contextvars.ContextVar("one_export", default=None)


@contextlib.contextmanager
def one_export():
    """Inside the block, `training_rows` with the same arguments exports the labels once and hands
    every later caller the same result (read it, do not change it): the Train page asks a round's
    readiness, plan and caution in one rerun, and at 100,000 pairs an export takes seconds."""
    token = _ONE_EXPORT.set({})
    try:
        yield
    finally:
        _ONE_EXPORT.reset(token)


def training_rows(include_auto: bool = False, audit_exclusions: bool = True, ai: dict | None | str = IN_USE):
    """The export rows a round trains on (an ExportResult): people's labels, less the pairs the pair
    audit flags under the checks an admin chose to leave out (Train page); two rows per rewrite,
    the rewrite preferred to each answer (labeling/demonstrations.py, "origin": "rewrite"); and an
    AI judge's verdicts on pairs nobody judged while an admin has AI labels on and the judge passes
    the agreement gate (labeling/agreement.py); with `include_auto`, the autopilot's automatic pairs
    ("origin": "auto"). Its `ai` is the judge in use, or None. `audit_exclusions=False` keeps the
    pairs the audit would leave out (a past round's held-out pairs, whatever the admin chose since);
    `ai` ({"judge", "rubric"} or None) names the judge whose labels join instead of the one in use
    (a past round's judge, whatever the gate says now)."""
    from labeling import agreement, demonstrations, settings
    from labeling.export import preference_rows

    shared = _ONE_EXPORT.get()
    key = (include_auto, audit_exclusions, json.dumps(ai, sort_keys=True, default=str))
    if shared is not None and key in shared:
        return shared[key]
    ai = agreement.ai_labels_in_use() if ai == IN_USE else ai
    exclude = settings.training_exclusions() if audit_exclusions else ()  # an admin's pair-audit choice
    result = preference_rows(ai=ai, exclude=exclude)
    result.rows.extend(demonstrations.rewrite_rows())
    if include_auto:  # the autopilot's best-against-worst pairs nobody judged (labeling/auto_pairs.py)
        from labeling import auto_pairs

        result.rows.extend(auto_pairs.auto_rows())
    result.ai = ai
    if shared is not None:
        shared[key] = result
    return result


def count_pairs() -> int:
    """How many labeled pairs a round would train on now."""
    return len(training_rows().rows)


def current_policy() -> str | None:
    """The current policy's id (the one the main process read, in a distributed round), or None."""
    from training import versions  # versions imports the registry, which imports this module

    return versions.current_policy_id()


def on_policy_rows(rows: list[dict]) -> list[dict]:
    """The rows whose pair the current policy sampled, both answers (`pairs: on-policy`): the labels
    of an iterative round, made on the answers of the policy the round starts from. A rewrite's or an
    AI judge's row on such a pair is kept as well."""
    from labeling import pairs

    sampled = pairs.sampled_by(current_policy())
    return [r for r in rows if r["pair_id"] in sampled]


def on_policy_shortage(what: str, min_pairs: int, have: int, labeled: int) -> str:
    """The sentence for too few on-policy pairs: `have` of the `labeled` rows the current policy sampled."""
    return (f"{what} on on-policy pairs needs at least {min_pairs} labeled pairs that the current policy "
            f"({current_policy() or 'base'}) sampled; {have} of your {labeled} labeled pairs are. Label its pairs "
            f"first (Data page: queue order \"the current policy's pairs first\"), or set pairs to all.")


def check_pairs(what: str, min_pairs: int = MIN_PAIRS, on_policy: bool = False) -> str | None:
    """None when there are enough labeled pairs (`on_policy`: that the current policy sampled), else the sentence to show."""
    rows = training_rows().rows  # one export for both counts
    have = len(on_policy_rows(rows) if on_policy else rows)
    if have >= min_pairs:
        return None
    if on_policy:
        return on_policy_shortage(what, min_pairs, have, len(rows))
    return f"{what} needs at least {min_pairs} labeled pairs; you have {have}. Label more pairs or import labels."


def planned_split(config: Any, max_pairs: int | None = None) -> tuple[Any, list[dict], list[dict], list[dict]]:
    """What a round with `config` would read now, before it runs: (the export, its rows (the
    automatic pairs too with `auto_pairs`; at most `max_pairs`), their training side, their held-out side)."""
    export = training_rows(getattr(config, "auto_pairs", False))
    rows = export.rows[:max_pairs] if max_pairs else export.rows
    train, heldout, _ = split_by_conversation(rows, config.heldout_fraction, config.seed)
    return export, rows, train, heldout


def few_pairs_caution(config: Any = None, max_pairs: int | None = None) -> str | None:
    """One sentence when a DPO round with `config` (default: the defaults) would train on fewer than
    FEW_PAIRS pairs after the held-out split (but enough to run), naming the pairs that tied, were
    both bad or are unresolved; None otherwise. Ties and "both bad" teach DPO nothing, and on a taste
    the model rarely shows most votes are ties. An on-policy round is one of several and small by
    design (three rounds of about 40 pairs taught `plain`), so it gets none."""
    config = config or DPORoundConfig()
    if getattr(config, "on_policy", False):
        return None
    result, rows, train, _ = planned_split(config, max_pairs)
    if len(rows) < MIN_PAIRS or len(train) >= FEW_PAIRS:
        return None
    left = [f"{n} {LEFT_OUT[kind]}" for kind, n in result.excluded.items() if n and kind in LEFT_OUT]
    why = f"; of the other labeled pairs {', '.join(left)}" if left else ""
    return (f"Only {len(train)} training pairs ({len(rows) - len(train)} more held out{why}): a DPO round on fewer than "
            f"about {FEW_PAIRS} may move the model too little to measure (in prefloop's learning benchmark 41 training "
            f"pairs left a taste where it was and 71 taught it), so label more pairs first if you can.")


def needs_pairs(what: str, min_pairs: int = MIN_PAIRS) -> Callable[[Any], str | None]:
    """A round's readiness check: `what` needs at least `min_pairs` labeled pairs (that the current
    policy sampled, when the config's `pairs` is on-policy)."""
    return lambda config: check_pairs(what, min_pairs, getattr(config, "on_policy", False))


def needs_reward_model(what: str) -> Callable[[Any], str | None]:
    """A round's readiness check: a reward model to score with (the config's `reward_version`, else
    the latest) and prompts in the "train" split to sample from."""
    def check(config: Any) -> str | None:
        from training import versions

        reward_version = getattr(config, "reward_version", None)
        if reward_version is None and versions.latest_reward_id() is None:
            return f"{what} needs a reward model: train one first."
        if reward_version is not None:
            row = versions.get_version(reward_version)
            if row is None or row.kind != "reward":
                return (f"{what}'s reward_version '{reward_version}' is not a reward model; "
                        "leave it empty for the latest or pick one from `python -m training versions`.")
        if not load_train_prompts(1):
            return f'{what} needs training prompts (split "train"): import some on the Data page first.'
        return None

    return check


def load_train_prompts(max_prompts: int | None) -> list[list[dict]]:
    """Messages of the prompts in the "train" split, oldest first."""
    from labeling import prompts

    return prompts.train_prompts(max_prompts)


def _judgments_of(pair_ids: set[int], allowed: list[int]) -> list[int]:
    """The exported judgment ids that belong to `pair_ids`."""
    from labeling import pairs

    return pairs.judgments_of(pair_ids, allowed)


def preference_data(what: str, max_pairs: int | None, heldout_fraction: float, seed: int,
                    min_pairs: int = MIN_PAIRS, include_auto: bool = False, on_policy: bool = False) -> PreferenceData:
    """The exported labeled pairs (`on_policy`: only those the current policy sampled; at most
    `max_pairs`), split by prompt. Raises NotReady. In a distributed round the main process reads
    them and hands them to the others."""
    return distributed.from_main(lambda: _read_preference_data(what, max_pairs, heldout_fraction, seed, min_pairs,
                                                               include_auto, on_policy))


def _read_preference_data(what: str, max_pairs: int | None, heldout_fraction: float, seed: int, min_pairs: int,
                          include_auto: bool, on_policy: bool = False) -> PreferenceData:
    export = training_rows(include_auto)
    ai = export.ai
    available = on_policy_rows(export.rows) if on_policy else list(export.rows)
    rows = available[:max_pairs] if max_pairs else available
    if len(rows) < min_pairs <= len(available):
        raise NotReady(f"max_pairs = {max_pairs} is below the {what} round's minimum of {min_pairs} labeled pairs "
                       f"(you have {len(available)}); raise it, or use all pairs (no --max-pairs, or 0 on the Train page).")
    if len(rows) < min_pairs and on_policy:
        raise NotReady(on_policy_shortage(f"The {what} round", min_pairs, len(rows), len(export.rows)))
    if len(rows) < min_pairs:
        raise NotReady(f"The {what} round needs at least {min_pairs} labeled pairs; you have {len(rows)}. "
                       f"Label more pairs or import labels.")
    judgment_ids = list(export.judgment_ids)
    if len(rows) < len(export.rows):
        judgment_ids = _judgments_of({r["pair_id"] for r in rows}, judgment_ids)
    train, heldout, fallback = split_by_conversation(rows, heldout_fraction, seed)
    machine = {r["pair_id"] for r in rows if r.get("origin") == "ai"}
    rewrites = sorted({r["demonstration_id"] for r in rows if r.get("origin") == "rewrite"})
    kinds = Counter(r.get("origin", "human") for r in rows)
    origin = {"pairs_from_people": kinds["human"], "pairs_from_ai": kinds["ai"], "pairs_from_rewrites": kinds["rewrite"],
              "pairs_automatic": kinds["auto"]}
    if kinds["auto"]:
        origin["auto_suggestion_ids"] = sorted(r["suggestion_id"] for r in rows if r.get("origin") == "auto")
    from labeling.export import AUDIT_CHECKS

    if left_out := {check: n for check, n in export.excluded.items() if check in AUDIT_CHECKS and n}:
        origin["left_out_by_audit"] = left_out
    if rewrites:
        origin["demonstration_ids"] = rewrites
    if machine:
        ai_rows = [r for r in export.rows if r.get("origin") == "ai"]
        origin.update(ai_judge=ai["judge"], ai_rubric=ai["rubric"], ai_label_ids=sorted(
            i for r, i in zip(ai_rows, export.ai_label_ids) if r["pair_id"] in machine))
    return PreferenceData(train, heldout, judgment_ids, fallback, origin)


def trim_prompt(messages: list[dict], count_tokens: Callable[[list[dict]], int], max_tokens: int) -> list[dict]:
    """Drop the oldest turns of a conversation until it fits `max_tokens` (the last message always
    stays), so long multi-turn prompts leave room for the responses being compared."""
    start = 0
    while start < len(messages) - 1 and count_tokens(messages[start:]) > max_tokens:
        start += 1
    return messages[start:]
