"""Where the preference loop stands, and the one step that moves it on: the home page's dashboard.

    label pairs -> train a reward model -> run a DPO round -> measure it -> compare it with its parent

`next_step` is a pure function of a `LoopState`, so every state of the loop is tested without a
database; `loop_state` reads that state from the workspace (no model is loaded, no texts are read).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from training import points, verdict, versions

MIN_LABELED = 40  # fewer labeled pairs than this teach a reward model little (preferences.MIN_PAIRS is the floor)
RETRAIN_AFTER = 20  # new labels since a model was trained that make training it again the next step


@dataclass(frozen=True)
class LoopState:
    labeled_pairs: int  # pairs a round would train on now (decided by their judgments)
    new_since_reward: int | None  # labels the newest reward model did not train on; None: no reward model
    new_since_policy: int | None  # labels the newest DPO/PPO version did not train on; None: no such version
    newest_policy: str | None = None  # the newest DPO/PPO version
    newest_parent: str | None = None  # the version it started from
    newest_measured: bool = False  # whether it has an evaluation point
    can_train: bool = True  # an admin (or sign-in off): training steps are theirs


def next_step(state: LoopState) -> tuple[str, str]:
    """(the button's label, the page it opens): the first thing the loop lacks, in the loop's order."""
    if state.labeled_pairs < MIN_LABELED:
        missing = MIN_LABELED - state.labeled_pairs
        return f"Label {missing} more pair{'s' * (missing != 1)}", "Label"
    train = None
    if state.new_since_reward is None or state.new_since_reward >= RETRAIN_AFTER:
        train = "Train a reward model"
    elif state.new_since_policy is None or state.new_since_policy >= RETRAIN_AFTER:
        train = "Run a DPO round"
    if train:  # an annotator cannot train: labeling more is what they can do meanwhile
        return (train, "Train") if state.can_train else ("Label more pairs", "Label")
    if not state.newest_measured:
        return f"Measure {state.newest_policy}", "Evaluate"
    return f"Compare {state.newest_policy} with {state.newest_parent}", "Compare"


def _new_labels(decided: set[int], version) -> int:
    return len(decided - set(version.judgment_ids or []))


def loop_state(can_train: bool = True) -> LoopState:
    """The workspace's LoopState: labeled pairs, and what the newest models trained on and measured."""
    from labeling.export import decided_judgments

    deciders = decided_judgments()
    decided = {j for ids in deciders.values() for j in ids}
    rewards = versions.list_versions("reward")
    trained = [v for v in versions.list_versions("policy") if v.method != "base"]
    newest = trained[-1] if trained else None
    return LoopState(
        labeled_pairs=len(deciders),
        new_since_reward=_new_labels(decided, rewards[-1]) if rewards else None,
        new_since_policy=_new_labels(decided, newest) if newest else None,
        newest_policy=newest.id if newest else None,
        newest_parent=newest.parent_id if newest else None,
        newest_measured=newest is not None and points.newest_point(newest.id) is not None,
        can_train=can_train,
    )


def improvement(version_id: str | None) -> dict[str, Any]:
    """What a policy version improved over its parent, in sentences for the home page:
    {"sentence": str, "better": True | False | None (not known), "warnings": [str]}."""
    if version_id is None:
        return {"sentence": "No model version yet: the first round registers the base model.", "better": None,
                "warnings": []}
    report = verdict.round_report(version_id)
    parent = report["comparisons"].get("parent")
    if parent is None:
        sentence = report.get("missing") or f"{version_id} is the base model: later rounds are compared with it."
        return {"sentence": sentence, "better": None, "warnings": report["warnings"]}
    better = parent["low"] > 0.5
    sentence = (f"{version_id} ({report['method']} from {parent['version']}): the reward model prefers its answers "
                f"to {parent['version']}'s {parent['win_rate']:.0%} of the time (95% interval "
                f"{parent['low']:.0%}–{parent['high']:.0%}, {parent['prompts']} held-out prompts), "
                + ("a measurable gain." if better else "not measurably better than a coin flip."))
    if human := parent["human"]:
        sentence += (f" People preferred it in {human['win_rate']:.0%} of {human['votes']} blind votes "
                     f"({human['low']:.0%}–{human['high']:.0%}).")
    return {"sentence": sentence, "better": better, "warnings": report["warnings"]}
