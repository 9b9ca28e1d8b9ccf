"""bench/reward.py and bench/reward_trained.py: DPO's implicit reward (β·log π/π_ref of each
response, read as the reward round reads it, with the adapter off as the reference), how a
fine-tuned option is named, OASST's rank gaps, and the command line's refusals."""
from __future__ import annotations

import numpy as np
import pytest


def test_the_implicit_reward_is_beta_times_the_log_ratio_of_the_response_and_zero_before_training(tmp_path):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from bench.reward_trained import implicit_rewards
    from tests import tiny_models
    from training.evaluate import sequence_logprobs
    from training.reward import encode_parts

    folder = tiny_models.make_tiny_policy(tmp_path / "policy")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    tokenizer.padding_side = "left"  # as the policy's tokenizer pads: the scorer pads on its own
    torch.manual_seed(0)
    policy = get_peft_model(AutoModelForCausalLM.from_pretrained(folder).eval(),
                            LoraConfig(r=4, target_modules=["q_proj", "v_proj"], lora_dropout=0.0))
    prompts = [[{"role": "user", "content": "Name a colour."}], [{"role": "user", "content": "Say hi."}]] * 2
    responses = ["Blue, like the sky on a clear day.", "Hi.", "Red.", "Hello there, how are you today?"]

    total, per_token, count = implicit_rewards(policy, tokenizer, prompts, responses, max_length=64, beta=0.1)
    np.testing.assert_allclose(total, 0.0, atol=1e-6)  # LoRA starts at zero: the policy is its reference

    for name, weight in policy.named_parameters():
        if "lora_B" in name:
            weight.data.normal_(0, 0.5)
    total, per_token, count = implicit_rewards(policy, tokenizer, prompts, responses, max_length=64, beta=0.1,
                                               batch_size=3)  # a batch pads short answers beside long ones
    for k in range(len(responses)):
        ids = encode_parts(tokenizer, prompts[k], responses[k], 64)[0]
        start = len(tokenizer.apply_chat_template(prompts[k], tokenize=True, add_generation_prompt=True,
                                                  return_dict=False))
        x, mask = torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.long)
        response = torch.zeros_like(mask)
        response[0, start:] = 1
        with torch.no_grad():
            tuned = sequence_logprobs(policy, x, mask, response)
            with policy.disable_adapter():
                reference = sequence_logprobs(policy, x, mask, response)
        assert count[k] == len(ids) - start
        np.testing.assert_allclose(total[k], 0.1 * float(tuned - reference), rtol=1e-4, atol=1e-5)
    assert np.abs(total).min() > 0
    np.testing.assert_allclose(per_token, total / count)


def test_a_finetune_spec_reads_backbone_source_and_pairs_and_refuses_anything_else():
    from bench.reward_trained import finetune_spec

    assert finetune_spec("policy:hh:400") == ("policy", "hh", 400)
    assert finetune_spec("minilm:both") == ("minilm", "both", None)
    for bad in ("policy", "policy:hh:0", "policy:hh:x", "gpt:hh", "policy:web", "policy:hh:4:5"):
        with pytest.raises(ValueError, match="BACKBONE:SOURCE"):
            finetune_spec(bad)


def test_rank_gaps_count_the_places_between_two_ranked_siblings_and_a_lone_pair_is_one_place():
    from bench.reward import rank_gaps

    def row(prompt, chosen, rejected):
        return {"prompt": [{"role": "user", "content": prompt}], "chosen": [{"role": "assistant", "content": chosen}],
                "rejected": [{"role": "assistant", "content": rejected}]}

    ranked = ["a", "b", "c", "d"]  # one prompt's replies, best first: every ranked pair, as the importer makes them
    rows = [row("Q", ranked[i], ranked[j]) for i in range(4) for j in range(i + 1, 4)] + [row("H", "yes", "no")]
    assert rank_gaps(rows).tolist() == [1, 2, 3, 1, 2, 1, 1]

    other = [dict(row("Q", "a", "z"), source="hh")]  # the same prompt in another source is another ranking
    assert rank_gaps([dict(r, source="oasst") for r in rows[:6]] + other).tolist() == [1, 2, 3, 1, 2, 1, 1]
    # a ranking a, b, c whose pair a > c the store dropped (a repeat) counts a and b alike: never below one place
    assert rank_gaps([row("R", "a", "b"), row("R", "b", "c")]).tolist() == [1, 1]


@pytest.mark.parametrize("argv, message", [
    (["--finetune-set", "learning_rte=5e-4"], "unknown field 'learning_rte'"),
    (["--finetune-set", "learning_rate=fast"], "learning_rate"),
    (["--no-finetune", "--finetune-set", "learning_rate=5e-4"], "--no-finetune turns off"),
    (["--margins", "0.5,x"], "--margins takes comma-separated numbers"),
    (["--margins", "0,1"], "numbers above 0"),
    (["--curve", "100", "--margins", "1"], "--curve and --implicit measure only themselves"),
    (["--finetune-set", "learning_rate"], "write FIELD=VALUE"),
    (["--finetune-set", "backbone=minilm"], "--finetune names the backbone"),
    (["--finetune-only", "--margins", "1"], "--finetune-only leaves out"),
])
def test_the_bench_refuses_settings_it_cannot_use_before_reading_anything(argv, message):
    from bench import reward

    with pytest.raises(SystemExit) as stopped:
        reward.parse_args(argv)
    assert message in str(stopped.value)


def test_the_bench_reads_its_fine_tuning_settings_and_margin_scales():
    from bench import reward

    args = reward.parse_args(["--finetune", "policy:oasst", "--finetune-set", "learning_rate=5e-4", "--margins", "0.5,2"])
    assert args.specs == [("policy", "oasst", None)] and args.settings == {"learning_rate": "5e-4"}
    assert args.margin_scales == [0.5, 2.0]


def test_a_fine_tuned_option_trains_on_its_source_alone_and_is_scored_on_pairs_it_never_saw(workspace, tmp_path,
                                                                                             monkeypatch):
    from bench.reward_trained import run_finetune
    from tests.preference_fixtures import use_tiny_policy

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    use_tiny_policy(tmp_path, monkeypatch)

    def row(k, chosen, rejected):
        return {"prompt": [{"role": "user", "content": f"Tell me about tea ({k})."}], "conversation": f"c{k}",
                "chosen": [{"role": "assistant", "content": chosen}], "rejected": [{"role": "assistant", "content": rejected}]}

    polite, curt = "Sure, here is a short answer about tea.", "No."
    rows = [row(k, polite, curt) for k in range(16)] + [row(k, curt, polite) for k in range(16, 32)]  # OASST: the other way
    k = np.arange(32)
    hh_train, hh_heldout, oasst, folds = k < 12, (k >= 12) & (k < 16), k >= 16, np.where(k < 24, 0, 1)
    settings = {"learning_rate": 1e-2, "batch_size": 4}
    on_hh = run_finetune(rows, hh_train, hh_heldout, oasst, folds, tmp_path, backbone="policy", source="hh", pairs=8,
                         max_steps=4, settings=settings)
    assert (on_hh["pairs"], on_hh["steps"], on_hh["settings"]) == (8, 4, settings)
    assert on_hh["option"].startswith("policy fine-tuned (LoRA r") and on_hh["option"].endswith("trained on 8 hh pairs")
    assert set(on_hh) >= {"hh", "hh_to_oasst"} and "oasst_fold0" not in on_hh  # trained on hh: hh held out, then OASST
    assert (on_hh["hh"]["longer_wins"], on_hh["hh_to_oasst"]["longer_wins"]) == (1.0, 0.0)  # polite is the longer
    # trained on the other source, it learns the other way: what it learned came from its own pairs
    on_oasst = run_finetune(rows, hh_train, hh_heldout, oasst, folds, tmp_path, backbone="policy", source="oasst",
                            max_steps=4, settings=settings)
    assert on_oasst["pairs"] == 8 and set(on_oasst) >= {"oasst_fold0", "oasst_to_hh"} and "hh" not in on_oasst
    assert (on_hh["hh"]["accuracy"], on_hh["hh_to_oasst"]["accuracy"]) == (1.0, 0.0)
    assert (on_oasst["oasst_fold0"]["accuracy"], on_oasst["oasst_to_hh"]["accuracy"]) == (1.0, 0.0)
    assert on_hh["hh"]["low"] <= on_hh["hh"]["accuracy"] <= on_hh["hh"]["high"]


def test_taste_layers_labels_every_pair_again_by_each_taste_and_scores_each_choice_of_layers(workspace, tmp_path,
                                                                                            monkeypatch, capsys):
    """bench/taste_layers.py on the tiny policy: the stored pairs read once, each taste's decided
    pairs counted by hand, an accuracy in [0, 1] for every choice of layers; a missing database is
    one sentence."""
    import json

    from bench import taste_layers
    from tests.preference_fixtures import import_pairs, use_tiny_policy

    monkeypatch.setenv("PREFLOOP_THREADS", "1")
    use_tiny_policy(tmp_path, monkeypatch)
    from labeling import store

    store.add_prompts(["A prompt with no pairs yet?"], "test")
    db = str(workspace / "prefloop.db")
    with pytest.raises(SystemExit, match="no pairs stored"):
        taste_layers.main(["--db", db])
    import_pairs(tmp_path, 16)  # "Sure, here is a short answer about X." against "No."
    assert taste_layers.main(["--db", db, "--db", db, "--taste", "concise", "--taste", "digits",
                              "--layer-sets", "0.5,1", "0,0.5,1"]) == 0
    result = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert result["concise"]["decided"] == 16  # every pair once, though the database was named twice
    assert result["digits"] == {"decided": 0, "0.5,1": None, "0,0.5,1": None}  # neither answer has a digit
    # "No." is always the shorter answer: a head that reads any layer finds it on prompts it never saw
    assert result["concise"]["0.5,1"] == result["concise"]["0,0.5,1"] == 1.0
    with pytest.raises(SystemExit, match="no such database"):
        taste_layers.main(["--db", str(tmp_path / "none.db")])
    with pytest.raises(SystemExit, match="nosuch"):
        taste_layers.main(["--db", db, "--taste", "nosuch"])
