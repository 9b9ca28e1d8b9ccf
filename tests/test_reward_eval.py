"""The reward card: figures and baselines worked out by hand on a small fixture, the held-out pairs
never sharing a prompt with training, the untrained baseline being the network a round starts
from, and `python -m training reward-eval` on a tiny model with a user's file (a bad row refused
with its file and line, nothing stored)."""
import json
import math
from pathlib import Path

import numpy as np
import pytest

from labeling.importers import InputError
from tests.preference_fixtures import import_pairs, snapshot_trainable, use_tiny_policy
from training import jobs, metrics, reward, reward_eval, reward_report, versions
from training.reward_config import RewardRoundConfig
from training.reward_report import EvalSet

A, B, C = ([{"role": "user", "content": text}] for text in ("about tea", "about rain", "about chess"))
FIXTURE = EvalSet("fixture", [A, A, B, C], ["long answer here", "ok", "same", "medium one"],
                  ["no", "longer reply", "four", "tiny"])
MODEL = (np.array([2.0, 1.0, 0.5, 0.0]), np.array([1.0, 0.0, 0.5, 1.0]))  # right, right, tie, wrong
UNTRAINED = (np.zeros(4), np.zeros(4))  # every pair a tie


def test_card_figures_by_hand():
    summary = reward_report.summarise(FIXTURE, MODEL, UNTRAINED)
    accuracy = {k: v["accuracy"] for k, v in summary["accuracy"].items()}
    # longer wins: 16 > 2 chars right, 2 < 12 wrong, 4 = 4 half, 10 > 4 right; shorter wins: the opposite
    assert accuracy == {"model": 0.625, "untrained": 0.5, "longer": 0.625, "shorter": 0.375}
    assert (summary["pairs"], summary["conversations"]) == (4, 3)  # the two pairs about tea are one conversation
    for a in summary["accuracy"].values():
        assert a["low"] <= a["accuracy"] <= a["high"]
    # margins 1, 1, 0, −1: three picks at confidence σ(1), two of them right; the tie at 0.5, half right
    assert summary["ece"] == pytest.approx(3 / 4 * (1 / (1 + math.exp(-1)) - 2 / 3))
    assert [b["count"] for b in summary["reliability"]] == [1, 0, 0, 0, 3, 0, 0, 0, 0, 0]
    # scores (2, 1, .5, 0, 1, 0, .5, 1) vs log(1 + characters (16, 2, 4, 10, 2, 12, 4, 4))
    assert summary["length_correlation"] == pytest.approx(
        metrics.pearson([2, 1, .5, 0, 1, 0, .5, 1], [math.log(1 + n) for n in (16, 2, 4, 10, 2, 12, 4, 4)]))


def test_verdict_says_where_the_model_does_not_beat_longer_wins():
    report = reward_report.build_report([FIXTURE], [MODEL], [UNTRAINED])
    assert report["verdict"] == ('The reward model does not beat "longer wins" on fixture (0.62 vs 0.62): there it '
                                 'ranks answers no better than their length does, so it should not steer training '
                                 'on such data.')
    better = (np.array([2.0, 1.0, 0.5, 2.0]), np.array([1.0, 0.0, 0.0, 1.0]))
    other = EvalSet("other", FIXTURE.prompts, FIXTURE.chosen, FIXTURE.rejected)
    report = reward_report.build_report([FIXTURE, other], [MODEL, better], [UNTRAINED, UNTRAINED])
    assert 'does not beat "longer wins" on fixture (0.62 vs 0.62):' in report["verdict"]
    assert "other" not in report["verdict"]
    assert report["all"]["pairs"] == 8 and report["all"]["accuracy"]["model"]["accuracy"] == (2.5 + 4) / 8
    report = reward_report.build_report([other], [better], [UNTRAINED])
    assert report["verdict"] == 'The reward model beats "longer wins" on other (1.00 vs 0.62).'


def test_card_rows_and_a_single_conversation_without_interval():
    one = EvalSet("one prompt", [A, A], ["a", "bb"], ["cc", "d"])
    report = reward_report.build_report([one], [(np.array([1.0, 1.0]), np.array([0.0, 0.0]))],
                                        [(np.zeros(2), np.zeros(2))])
    assert json.loads(json.dumps(report)) == report  # no nan: JSON-ready
    assert report["sets"][0]["accuracy"]["model"] == {"accuracy": 1.0, "low": None, "high": None}
    (row,) = reward_report.card_rows(report)
    assert row["reward model"] == "1.00 (1 conversation: no CI)" and row["longer wins"].startswith("0.50")
    assert row["length r"] == "0.00" and row["ECE"] == "0.27"  # both picks right at σ(1) = 0.73
    table = reward_report.format_table(report)
    assert "untrained backbone" in table.splitlines()[0] and table.splitlines()[-1] == report["verdict"]


def test_read_file_takes_the_importers_formats_and_refuses_bad_rows(tmp_path):
    good = tmp_path / "mine.csv"
    good.write_text("prompt,chosen,rejected\nHi?,Hello! How can I help?,go away\nSame?,yes,yes\n")
    pairs = reward_eval.read_file(good)
    assert (pairs.name, pairs.prompts, pairs.chosen, pairs.rejected) == (
        "mine.csv", [[{"role": "user", "content": "Hi?"}]], ["Hello! How can I help?"], ["go away"])
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "chosen": "b", "rejected": "c"}\n{"prompt": "a", "chosen": "b"}\n')
    with pytest.raises(InputError, match=r"bad.jsonl, line 2: missing field 'rejected'"):
        reward_eval.read_file(bad)
    unlabeled = tmp_path / "unlabeled.jsonl"
    unlabeled.write_text('{"prompt": "a", "response_a": "b", "response_b": "c"}\n')
    with pytest.raises(InputError, match="unlabeled.jsonl: its first row is unlabeled"):
        reward_eval.read_file(unlabeled)


@pytest.fixture
def tiny_reward(workspace, tmp_path, monkeypatch):
    """A reward version trained for 2 steps on the tiny policy with 12 imported pairs."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("PREFLOOP_THREADS", "1")
    use_tiny_policy(tmp_path, monkeypatch)
    import_pairs(tmp_path, 12)
    snapshot = {}
    snapshot_trainable(monkeypatch, snapshot)
    config = RewardRoundConfig(backbone="policy", method="fine-tune", learning_rate=1e-2, batch_size=4, seed=3)
    summary = reward.run_round(config, jobs.Reporter(None), max_steps=2)
    return summary, snapshot, config


def test_the_round_ends_with_a_card_on_pairs_whose_prompts_it_never_trained_on(tiny_reward):
    summary, snapshot, config = tiny_reward
    row = versions.get_version(summary["version"])
    stored = json.loads((Path(row.path) / reward_report.REPORT_FILE).read_text())
    assert [s["name"] for s in stored["sets"]] == ["test-pairs (held-out)"]
    assert summary["heldout_pairs"] == stored["all"]["pairs"] >= 1 and summary["verdict"] == stored["verdict"]
    assert summary["heldout_accuracy"] == stored["all"]["accuracy"]["model"]["accuracy"]
    assert row.metrics["heldout_longer_wins"] == stored["all"]["accuracy"]["longer"]["accuracy"]
    # held out by whole prompt: no held-out prompt is among the prompts the round trained on
    from labeling.export import preference_rows

    heldout = reward_eval.heldout_rows(row)
    heldout_prompts = {r["prompt_id"] for r in heldout}
    trained = [r for r in preference_rows().rows if r["pair_id"] not in {h["pair_id"] for h in heldout}]
    assert len(heldout) == summary["heldout_pairs"] and len(trained) == summary["pairs"]
    assert heldout_prompts and not heldout_prompts & {r["prompt_id"] for r in trained}
    # the untrained baseline is the very network training started from: same seed, same new head
    model, _, _ = reward.load_backbone(config)
    start = {n: p for n, p in model.named_parameters() if n in snapshot}
    heads = [n for n in start if "score" in n]
    assert heads and all(np.array_equal(start[n].detach().numpy(), snapshot[n].numpy()) for n in heads)


def test_reward_eval_command_scores_a_user_file_and_refuses_a_bad_one(tiny_reward, tmp_path, capsys):
    summary, _, _ = tiny_reward
    version = summary["version"]
    report_path = Path(versions.get_version(version).path) / reward_report.REPORT_FILE
    mine = tmp_path / "mine.jsonl"
    mine.write_text("".join(json.dumps({"prompt": f"Tell me about tea ({i}).", "chosen": "Sure, here is tea.",
                                        "rejected": "No."}) + "\n" for i in range(3)))
    assert reward_eval.main([version, str(mine)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    printed = json.loads(lines[-1])
    assert printed["version"] == version
    assert [s["name"] for s in printed["sets"]] == ["test-pairs (held-out)", "mine.jsonl"]
    mine_set = printed["sets"][1]
    assert mine_set["pairs"] == 3 and mine_set["accuracy"]["longer"]["accuracy"] == 1.0
    assert mine_set["accuracy"]["shorter"]["accuracy"] == 0.0
    assert any(line.startswith("mine.jsonl") for line in lines) and printed["verdict"] in lines
    stored = json.loads(report_path.read_text())
    assert stored == {k: v for k, v in printed.items() if k != "version"}

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "chosen": "b", "rejected": "c"}\n{"prompt": "a", "chosen": 5, "rejected": "c"}\n')
    assert reward_eval.main([version, str(mine), str(bad)]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1
    assert f"{bad}, line 2, field 'chosen'" in captured.err
    assert json.loads(report_path.read_text()) == stored  # nothing stored

    assert reward_eval.main(["v99-reward"]) == 1
    assert "There is no reward model 'v99-reward'" in capsys.readouterr().err


def test_reward_eval_scores_a_heads_version_beside_random_heads(workspace, tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    use_tiny_policy(tmp_path, monkeypatch)
    import_pairs(tmp_path, 12)
    summary = reward.run_round(RewardRoundConfig(backbone="policy", heads=2, max_length=64), jobs.Reporter(None))
    report = reward_eval.evaluate(summary["version"], [])
    systems = report["all"]["accuracy"]
    assert set(systems) == {"model", "untrained", "longer", "shorter"}
    assert systems["model"]["accuracy"] == summary["heldout_accuracy"]


def test_the_card_scores_the_pairs_its_round_held_out_when_rewrites_were_among_them(workspace, tmp_path, monkeypatch):
    """Rewrites' pairs are training rows but not labeled pairs: splitting the labeled pairs again
    (the old way) gave the card a pair the round trained on for this seed (pair 11)."""
    from labeling import demonstrations, queue
    from tests.test_queue import seed_pairs
    from training import preferences

    monkeypatch.setenv("PREFLOOP_THREADS", "1")
    use_tiny_policy(tmp_path, monkeypatch)
    import_pairs(tmp_path, 12)
    for pair_id in seed_pairs([(f"Rewrite me {i}?", f"Bad {i}.", f"Worse {i}.") for i in range(3)]):
        queue.submit_judgment("ann", pair_id, "both_bad", "a", seconds=1.0)
        demonstrations.add_rewrite("ann", pair_id, f"A good answer {pair_id}.")
    config = RewardRoundConfig(backbone="policy", method="fine-tune", learning_rate=1e-2, batch_size=4, seed=1)
    summary = reward.run_round(config, jobs.Reporter(None), max_steps=1)
    row = versions.get_version(summary["version"])
    _, held_out, _ = preferences.split_by_conversation(preferences.training_rows().rows, config.heldout_fraction, 1)
    assert row.metrics["heldout_pair_ids"] == sorted({r["pair_id"] for r in held_out})
    assert [r["pair_id"] for r in reward_eval.heldout_rows(row)] == [r["pair_id"] for r in held_out]
    assert len(held_out) == summary["heldout_pairs"]
    # an admin leaving pairs out of later rounds changes nothing on this version's card
    from labeling import audit, settings

    monkeypatch.setattr(audit, "only_longer", lambda chosen, rejected: True)  # every pair flagged
    settings.set_training_exclusions(["only_longer"])
    assert len(preferences.training_rows().rows) < len(preferences.training_rows(audit_exclusions=False).rows)
    assert [r["pair_id"] for r in reward_eval.heldout_rows(row)] == [r["pair_id"] for r in held_out]
