"""The autopilot on a tiny model: it makes the stated number of versions from best-against-worst
pairs the reward model picks, marks every automatic pair, sends a share to people's queue, and
stops early when people disagree with the audited pairs."""
from __future__ import annotations

import json

import pytest

from labeling import auto_pairs, queue
from tests.preference_fixtures import import_pairs, tiny_single_thread
from training import autopilot, jobs, reward, versions
from training.autopilot import AutopilotConfig
from training.reward_config import RewardRoundConfig


def test_best_and_worst_per_prompt():
    pairs = autopilot.best_and_worst([7, 8], ["a", "bb", "c", "same", "same", "same"], [0.1, 0.9, 0.5, 1, 2, 3], 3)
    assert pairs == [{"prompt_id": 7, "best": "bb", "worst": "a", "margin": pytest.approx(0.8)}]


@pytest.fixture
def ready(workspace, tmp_path, monkeypatch):
    tiny_single_thread(workspace, tmp_path, monkeypatch)
    import_pairs(tmp_path, 12)
    return reward.run_round(RewardRoundConfig(backbone="policy", method="heads", heads=2, max_length=64),
                            jobs.Reporter(None))["version"]


SMALL = dict(prompts=6, samples=3, max_new_tokens=8, heldout_prompts=2, dpo_max_steps=2, audit_share=0.5,
             stop_when_flat=False)


def test_the_autopilot_makes_its_rounds_and_marks_every_automatic_pair(ready, capsys):
    from training.__main__ import main

    flags = [f"--{k.replace('_', '-')}={v}" for k, v in SMALL.items() if k != "stop_when_flat"]
    assert main(["autopilot", "--rounds", "2", "--no-stop-when-flat", *flags]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert len(result["versions"]) == 2 and result["stopped"] is None
    made = [versions.get_version(v) for v in result["versions"]]
    assert made[1].parent_id == made[0].id and versions.current_policy_id() == made[1].id
    assert all(v.metrics["pairs_automatic"] > 0 and v.config["reference"] == "base" for v in made)
    assert len(made[0].judgment_ids) == 12  # people's labels too
    assert all(0 <= r["win_rate"] <= 1 for r in result["rounds"])
    audit = [r["audited"] for r in result["rounds"]]
    assert sum(audit) == queue.pairs_waiting() > 0  # only the audit share reached people's queue
    assert len(auto_pairs.auto_rows()) == sum(r["automatic_pairs"] for r in result["rounds"])


def test_people_who_disagree_with_the_audit_stop_it(ready):
    autopilot.run(AutopilotConfig(rounds=1, **SMALL))
    while (view := queue.next_pair("ana")) is not None:  # people say the automatic choice was the worse one
        queue.submit_judgment("ana", view.pair_id, "b", view.left)
    before = len(versions.list_versions("policy"))
    result = autopilot.run(AutopilotConfig(rounds=2, audit_min=1, **SMALL))
    assert result["versions"] == [] and "People agreed with 0 of" in result["stopped"]
    assert len(versions.list_versions("policy")) == before
