"""Any causal LM: tiny Llama, Qwen2 and GPT-2 models built in code (GPT-2 with Conv1D layers,
dropout, no pad token and no chat template) each go through generation, a reward round on the
policy backbone, DPO, PPO and evaluation; LoRA targets come from the architecture and never the
heads; an encoder reward backbone other than MiniLM (a tiny BERT) trains and scores."""
from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import pytest
import torch

from tests import tiny_models
from tests.preference_fixtures import import_pairs, snapshot_trainable
from training import lora

LLAMA_LAYERS = ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]
ARCHITECTURES = {  # name: (builder, the layers LoRA adapts)
    "llama": (tiny_models.make_tiny_policy, LLAMA_LAYERS),
    "qwen2": (tiny_models.make_tiny_qwen2, LLAMA_LAYERS),
    "gpt2": (tiny_models.make_tiny_gpt2, ["c_attn", "c_fc", "c_proj"]),
}
PROMPT = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(params=sorted(ARCHITECTURES))
def architecture(request, workspace, tmp_path, monkeypatch):
    """(name, folder): a workspace whose base policy is a tiny model of that architecture."""
    make, _ = ARCHITECTURES[request.param]
    folder = make(tmp_path / request.param)
    monkeypatch.setenv("PREFLOOP_MODEL", str(folder))
    monkeypatch.setenv("PREFLOOP_THREADS", "1")
    return request.param, folder


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_lora_targets_every_linear_layer_of_the_architecture_but_its_heads(name, tmp_path):
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    make, expected = ARCHITECTURES[name]
    folder = make(tmp_path / name)
    causal = AutoModelForCausalLM.from_pretrained(folder)
    classifier = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=1)
    assert lora.target_modules(causal) == expected and lora.target_modules(classifier) == expected
    config = lora.lora_config(causal, 4, 8)
    assert config.fan_in_fan_out == (name == "gpt2")  # Conv1D stores its weight as (in, out)


def test_targets_fall_back_to_full_paths_when_a_short_name_is_also_a_head():
    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.block = torch.nn.Sequential(torch.nn.Linear(2, 2))
            self.block.proj = torch.nn.Linear(2, 2)
            self.proj = torch.nn.Linear(2, 3)  # the output layer, named like a hidden one

        def get_output_embeddings(self):
            return self.proj

    assert lora.target_modules(Net()) == ["block.0", "block.proj"]


def _adapter_targets(version_id: str) -> list[str]:
    from training import versions

    return sorted(json.loads((Path(versions.get_version(version_id).path) / "adapter_config.json").read_text())
                  ["target_modules"])


def _merged_equals_unmerged(version_id: str, base_id: str) -> bool:
    """The merged version (load_policy) computes what the base with the adapter on top computes."""
    from peft import PeftModel

    from training import versions
    from training.model import load_policy

    merged, tokenizer = load_policy(version_id)
    stacked = PeftModel.from_pretrained(load_policy(base_id)[0], versions.get_version(version_id).path).eval()
    ids = tokenizer.apply_chat_template(PROMPT, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        return torch.allclose(merged(**ids).logits, stacked(**ids).logits, atol=1e-5)


def test_generate_reward_dpo_ppo_and_evaluate_run_on_each_architecture(architecture, tmp_path, monkeypatch):
    from training import dpo, evaluate, generate, jobs, ppo, reward, versions
    from training.dpo_config import DPORoundConfig
    from training.evaluate_config import EvaluateConfig
    from training.ppo_config import PPOConfig
    from training.reward_config import RewardRoundConfig

    name, _ = architecture
    import_pairs(tmp_path, 12)
    base = versions.ensure_base_version()
    assert generate.run(generate.GenerateConfig(prompts=2, max_new_tokens=6, batch_size=4, seed=0))["pairs"] >= 1
    reward_id = reward.run_round(RewardRoundConfig(backbone="policy", max_length=64, batch_size=4),
                                 jobs.Reporter(None), max_steps=1)["version"]

    before = {}
    snapshot_trainable(monkeypatch, before)
    summary = dpo.run_round(DPORoundConfig(learning_rate=1e-2, batch_size=2, max_length=64, max_prompt_length=32),
                            jobs.Reporter(None), max_steps=2)
    model = before.pop("__model__")
    after = dict(model.named_parameters())
    assert before and [n for n, p in before.items() if torch.equal(p, after[n].detach())] == []
    assert math.isfinite(summary["train_loss"]) and summary["steps"] == 2
    assert _adapter_targets(summary["version"]) == ARCHITECTURES[name][1]
    assert _merged_equals_unmerged(summary["version"], base)

    tuned = ppo.run_round(PPOConfig(batch_size=2, mini_batch_size=2, ppo_epochs=1, max_new_tokens=6,
                                    reward_version=reward_id), jobs.Reporter(None), max_steps=1)
    assert math.isfinite(tuned["kl"]) and versions.get_version(tuned["version"]).parent_id == summary["version"]

    measured = evaluate.evaluate(EvaluateConfig(versions=f"{base},{summary['version']}", prompts=2, samples=2,
                                                max_new_tokens=6, reward_version=reward_id))
    points = {p["version"]: p for p in measured["points"]}
    assert points[base]["kl"] == pytest.approx(0.0, abs=1e-6) and points[summary["version"]]["kl"] > 0
    assert all(math.isfinite(p["reward"]) for p in points.values())


def test_a_model_without_chat_template_or_pad_gets_the_plain_format_everywhere(workspace, tmp_path, monkeypatch,
                                                                               caplog):
    from transformers import AutoTokenizer

    from training import generate, jobs, reward, versions
    from training.model import PLAIN_CHAT_TEMPLATE, load_policy
    from training.reward_config import RewardRoundConfig

    folder = tiny_models.make_tiny_gpt2(tmp_path / "gpt2")
    monkeypatch.setenv("PREFLOOP_MODEL", str(folder))
    monkeypatch.setenv("PREFLOOP_THREADS", "1")
    with caplog.at_level(logging.WARNING, logger="training.model"):
        model, tokenizer = load_policy()
    assert "has no chat template; prompts are written as plain 'User: ...\\nAssistant:' text" in caplog.text
    assert tokenizer.pad_token == tokenizer.eos_token == "<|endoftext|>" and model.config.n_embd == 16
    assert generate.chat_texts(tokenizer, [PROMPT]) == ["User: What is the capital of France?\nAssistant:"]
    answered = tokenizer.apply_chat_template(PROMPT + [{"role": "assistant", "content": "Paris."}], tokenize=False)
    assert answered == "User: What is the capital of France?\nAssistant: Paris.<|endoftext|>"

    import_pairs(tmp_path, 10)
    reward_id = reward.run_round(RewardRoundConfig(backbone="policy", max_length=64, batch_size=4),
                                 jobs.Reporter(None), max_steps=1)["version"]
    saved = AutoTokenizer.from_pretrained(versions.get_version(reward_id).path)
    assert saved.chat_template == PLAIN_CHAT_TEMPLATE  # the reward model reads prompts as the policy writes them


def test_an_encoder_backbone_from_a_folder_trains_in_full_and_scores_from_its_version(workspace, tmp_path,
                                                                                     monkeypatch, capsys):
    from training import jobs, reward, versions
    from training.reward_config import RewardRoundConfig

    monkeypatch.setenv("PREFLOOP_THREADS", "1")
    monkeypatch.setenv("PREFLOOP_MODEL", str(tiny_models.make_tiny_policy(tmp_path / "policy")))
    bert = tiny_models.make_tiny_bert(tmp_path / "bert")
    import_pairs(tmp_path, 12)
    assert reward.main(["--backbone", "encoder", "--max-steps", "1"]) == 2
    assert "backbone encoder needs backbone_path" in capsys.readouterr().err

    before = {}
    snapshot_trainable(monkeypatch, before)
    config = RewardRoundConfig(backbone="encoder", method="fine-tune", backbone_path=str(bert), max_length=64,
                               batch_size=4, learning_rate=1e-3)
    summary = reward.run_round(config, jobs.Reporter(None), max_steps=2)
    model = before.pop("__model__")
    after = dict(model.named_parameters())
    assert type(model).__name__ == "BertForSequenceClassification" and len(before) == len(after)  # in full
    assert [n for n, p in before.items() if torch.equal(p, after[n].detach())] == []
    folder = Path(versions.get_version(summary["version"]).path)
    meta = json.loads((folder / "reward.json").read_text())
    assert (meta["backbone"], meta["lora"], meta["base_path"]) == ("encoder", False, str(bert.resolve()))
    prompts, responses = [PROMPT] * 2, ["The capital of France is Paris.", "No."]
    live = reward.make_scorer(model, reward.load_backbone(config)[1], 64)(prompts, responses)
    assert torch.allclose(reward.load_scorer(summary["version"])(prompts, responses), live, atol=1e-5)
