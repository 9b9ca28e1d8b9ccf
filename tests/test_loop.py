"""The home page's next step: a pure function of where the loop stands (every state by hand), the
state read from a seeded workspace, and what the current version improved, in sentences."""
from __future__ import annotations

import pytest

from labeling import db
from labeling.export import decided_judgments
from labeling.models import ModelVersion
from tests.preference_fixtures import import_pairs
from tests.test_verdict import point
from training import loop
from training.loop import LoopState, next_step

TRAINED = dict(labeled_pairs=60, new_since_reward=0, new_since_policy=0, newest_policy="v3-dpo",
               newest_parent="v1-base")


@pytest.mark.parametrize("state, step", [
    (LoopState(0, None, None), ("Label 40 more pairs", "Label")),
    (LoopState(39, None, None), ("Label 1 more pair", "Label")),
    (LoopState(38, 0, 0, "v3-dpo", "v1-base", True), ("Label 2 more pairs", "Label")),  # labels come first
    (LoopState(40, None, None), ("Train a reward model", "Train")),
    (LoopState(60, 20, 0, "v3-dpo", "v1-base", True), ("Train a reward model", "Train")),  # 20 new labels
    (LoopState(60, 0, None), ("Run a DPO round", "Train")),
    (LoopState(60, 19, None), ("Run a DPO round", "Train")),  # 19 new labels: the reward model will do
    (LoopState(60, 0, 25, "v3-dpo", "v1-base", True), ("Run a DPO round", "Train")),
    (LoopState(**TRAINED), ("Measure v3-dpo", "Evaluate")),
    (LoopState(**TRAINED, newest_measured=True), ("Compare v3-dpo with v1-base", "Compare")),
    (LoopState(**{**TRAINED, "new_since_policy": 19}, newest_measured=True),
     ("Compare v3-dpo with v1-base", "Compare")),
])
def test_next_step_in_each_state_of_the_loop(state, step):
    assert next_step(state) == step


def test_an_annotator_is_sent_to_label_where_an_admin_would_train():
    assert next_step(LoopState(40, None, None, can_train=False)) == ("Label more pairs", "Label")
    assert next_step(LoopState(60, 0, None, can_train=False)) == ("Label more pairs", "Label")
    assert next_step(LoopState(**TRAINED, can_train=False)) == ("Measure v3-dpo", "Evaluate")


def add_version(version_id, kind, parent=None, judgments=()):
    method = version_id.split("-")[1]
    with db.session() as s:
        s.add(ModelVersion(id=version_id, kind=kind, method=method, parent_id=parent, path=f"/{version_id}",
                           judgment_ids=sorted(judgments), is_current=kind == "policy"))


def all_judgments() -> list[int]:
    return [j for ids in decided_judgments().values() for j in ids]


def test_loop_state_reads_labels_versions_and_points(workspace, tmp_path):
    assert loop.loop_state() == LoopState(0, None, None)
    import_pairs(tmp_path, 45)
    add_version("v1-base", "policy")
    trained_on = all_judgments()[:30]  # 15 labels came after it
    add_version("v2-reward", "reward", judgments=trained_on)
    add_version("v3-dpo", "policy", "v1-base", judgments=all_judgments())
    assert loop.loop_state() == LoopState(45, 15, 0, "v3-dpo", "v1-base", False)
    with db.session() as s:
        s.add(point("v3-dpo", [1.0] * 12, [40] * 12))
    assert loop.loop_state(can_train=False).newest_measured is True


def test_improvement_in_sentences(workspace):
    assert "No model version yet" in loop.improvement(None)["sentence"]
    add_version("v1-base", "policy")
    add_version("v2-reward", "reward")
    assert loop.improvement("v1-base")["sentence"] == "v1-base has not been measured yet: press Measure on the " \
                                                     "Evaluate page."
    add_version("v3-dpo", "policy", "v1-base")
    with db.session() as s:
        s.add(point("v1-base", [0.1 * (i % 5) for i in range(12)], [40 + i for i in range(12)]))
        s.add(point("v3-dpo", [0.1 * (i % 5) + 1 for i in range(12)], [40 + i for i in range(12)]))
    assert loop.improvement("v1-base") == {"sentence": "v1-base is the base model: later rounds are compared with it.",
                                           "better": None, "warnings": []}
    found = loop.improvement("v3-dpo")
    assert found["better"] is True and found["warnings"] == []
    assert found["sentence"] == ("v3-dpo (dpo from v1-base): the reward model prefers its answers to v1-base's 100% of "
                                 "the time (95% interval 100%–100%, 6 held-out prompts), a measurable gain.")
