"""Issue 16's optional GPU paths, as far as a CPU can prove them: QLoRA (PREFLOOP_QUANT) and vLLM
sampling are refused with one sentence where they cannot run and leave stored data alone; where
they can (CUDA and bitsandbytes faked), a round loads the version's merged weights with the QLoRA
recipe's settings; the merged folder equals the lineage `load_policy` merges."""
from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from sqlalchemy import func, select

from labeling import db, store
from labeling.models import ModelVersion, Response
from tests.test_model import _add_version, _logits, _save_lora
from tests.tiny_models import make_tiny_policy
from training import device, engine, generate, merged
from training import model as models


def _fake_cuda(monkeypatch, bitsandbytes: bool):
    """torch sees a bf16 card; bitsandbytes is installed or not."""
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: (object() if bitsandbytes else None) if name == "bitsandbytes" else real(name, *a))


def test_quantization_is_off_unless_asked_and_refused_with_one_sentence_where_it_cannot_run(tiny, monkeypatch):
    assert device.quantization() is None and device.quantization_kwargs() is None
    assert device.describe()["quantization"] is None
    for value, sentence in [("4bit", "PREFLOOP_QUANT=4bit (QLoRA) needs a CUDA GPU, and the device is the cpu"),
                            ("3bit", "PREFLOOP_QUANT=3bit is not one of none, 4bit, 8bit")]:
        monkeypatch.setenv("PREFLOOP_QUANT", value)
        with pytest.raises(device.DeviceError) as err:
            device.quantization()
        assert sentence in str(err.value) and str(err.value).count(". ") == 0
    monkeypatch.setenv("PREFLOOP_QUANT", "8bit")
    _fake_cuda(monkeypatch, bitsandbytes=False)
    with pytest.raises(device.DeviceError, match=r"needs bitsandbytes, which is not installed \(pip install"):
        device.quantization()


def test_with_a_card_and_bitsandbytes_4bit_is_the_qlora_recipe_and_8bit_is_llm_int8(tiny, monkeypatch):
    _fake_cuda(monkeypatch, bitsandbytes=True)
    monkeypatch.setenv("PREFLOOP_QUANT", "4BIT")
    assert device.quantization_kwargs() == {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4",
                                            "bnb_4bit_use_double_quant": True, "bnb_4bit_compute_dtype": torch.bfloat16}
    monkeypatch.setenv("PREFLOOP_QUANT", "8bit")
    assert device.quantization_kwargs() == {"load_in_8bit": True}


def test_the_merged_folder_is_the_lineage_merged_once_and_the_start_folder_without_adapters(tiny, tmp_path):
    base, tokenizer = models.load_policy()
    _add_version("base", tiny, method="base")
    assert merged.folder(None) == merged.folder("base") == tiny  # nothing to merge: nothing copied
    _save_lora(base, tmp_path / "v1", seed=1)
    _add_version("v1", tmp_path / "v1", parent="base", current=True)
    folder = merged.folder(None)
    assert folder.parent.name == "merged" and (folder / "model.safetensors").is_file()
    made = (folder / "model.safetensors").stat().st_mtime_ns
    torch.testing.assert_close(_logits(models.load_model(folder), tokenizer),
                               _logits(models.load_policy("v1")[0], tokenizer), atol=1e-5, rtol=1e-5)
    assert merged.folder("v1") == folder and (folder / "model.safetensors").stat().st_mtime_ns == made
    make_tiny_policy(tmp_path / "v1", seed=3)  # the version's files changed: merged again, elsewhere
    second = merged.folder("v1")
    assert second != folder and folder.is_dir()
    make_tiny_policy(tmp_path / "v1", seed=4)
    assert merged.folder("v1") != second and second.is_dir() and not folder.exists()  # only the last two stay


def test_a_round_loads_the_merged_weights_quantized_where_it_can(tiny, tmp_path, monkeypatch):
    """What a QLoRA round asks transformers for, with CUDA and bitsandbytes faked (the load itself
    needs a card): the version's merged folder, NF4 settings, placed by bitsandbytes on the card."""
    from transformers import AutoModelForCausalLM

    base, tokenizer = models.load_policy()
    _add_version("base", tiny, method="base")
    _save_lora(base, tmp_path / "v1", seed=1)
    _add_version("v1", tmp_path / "v1", parent="base", current=True)
    merged_folder = merged.folder("v1")
    _fake_cuda(monkeypatch, bitsandbytes=True)
    monkeypatch.setenv("PREFLOOP_QUANT", "4bit")
    asked = {}
    real = AutoModelForCausalLM.from_pretrained.__func__

    def record(cls, folder, **kwargs):
        asked.update(kwargs, folder=folder)
        kwargs = {k: v for k, v in kwargs.items() if k not in ("quantization_config", "device_map")}
        return real(cls, folder, **kwargs)  # loaded plainly on the CPU: only the request is checked

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", classmethod(record))
    model, _ = models.load_policy("v1", quantize=True)
    bits = asked["quantization_config"]
    assert asked["folder"] == merged_folder and asked["device_map"] == {"": torch.device("cuda")}
    assert bits.load_in_4bit and bits.bnb_4bit_quant_type == "nf4" and bits.bnb_4bit_use_double_quant
    assert bits.bnb_4bit_compute_dtype == torch.bfloat16 and not model.training
    asked.clear()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.delenv("PREFLOOP_QUANT")
    models.load_policy("v1", quantize=True)  # without PREFLOOP_QUANT a round loads as it always did
    assert "quantization_config" not in asked and asked["folder"] == tiny.resolve()


def test_a_qlora_round_on_the_cpu_fails_with_the_sentence_and_writes_nothing(tiny, tmp_path, monkeypatch, capsys):
    from tests.preference_fixtures import import_pairs
    from training import dpo

    import_pairs(tmp_path, 10)
    monkeypatch.setenv("PREFLOOP_QUANT", "4bit")
    assert dpo.main(["--max-steps", "1"]) == 1
    assert "PREFLOOP_QUANT=4bit (QLoRA) needs a CUDA GPU" in capsys.readouterr().err
    with db.session() as s:
        assert s.scalar(select(func.count()).select_from(ModelVersion).where(ModelVersion.method == "dpo")) == 0


def test_vllm_is_refused_with_one_sentence_where_it_is_missing_or_there_is_no_card(tiny, monkeypatch, capsys):
    import importlib.util

    store.add_prompts(["Question number one?", "Question number two?"], "test")
    assert generate.main(["--engine", "vllm", "--prompts", "2", "--max-new-tokens", "4"]) == 1
    assert "vLLM is not installed (pip install vllm); set the generator's engine to auto." in capsys.readouterr().err
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name == "vllm" else real(name, *a))
    with pytest.raises(engine.EngineError, match="vLLM samples on a CUDA GPU, and the device is the cpu"):
        engine.load_generator(None, "vllm", threads=1)
    with db.session() as s:
        assert s.scalar(select(func.count()).select_from(Response)) == 0
    assert engine.load_generator(None, "auto", threads=1)[2] != "vllm"  # never chosen unless asked


def test_a_vllm_completion_counts_its_stop_token_once(tiny):
    sampler = engine.VllmSampler.__new__(engine.VllmSampler)
    sampler.stop = [2]
    done = SimpleNamespace(token_ids=[5, 6, 2], finish_reason="stop", text=" Paris. ")
    left_out = SimpleNamespace(token_ids=[5, 6], finish_reason="stop", text="Paris.")
    cut = SimpleNamespace(token_ids=[5, 6, 7, 8], finish_reason="length", text="Paris is the")
    last_allowed = SimpleNamespace(token_ids=[5, 2], finish_reason="length", text="Paris")  # the stop token came last
    assert [sampler.row(c) for c in (done, left_out, cut, last_allowed)] == [
        ("Paris.", 3, True), ("Paris.", 3, True), ("Paris is the", 4, False), ("Paris", 2, True)]
    sampler.dtype = "bf16"
    assert engine.sampler_record(sampler) == {"engine": "vllm", "dtype": "bf16"}


def test_the_train_page_says_a_round_runs_on_quantized_weights_and_estimates_their_memory():
    from training import env

    info = {"device": "cuda:0", "dtype": "bf16", "quantization": "4bit", "torch": "2.13", "free_bytes": 8 * env.GB,
            "total_bytes": 16 * env.GB, "parameters": 10**9, "dpo_peak_bytes": env.dpo_peak_bytes(10**9, env.QUANT_BYTES["4bit"])}
    said = env.sentence(info)
    assert said.startswith("Runs on cuda:0 in bf16, LoRA rounds on 4bit weights (torch 2.13)")
    assert "peaks near 3.7 GB" in said  # 1e9 weights × half a byte × 8, against 14.9 GB in bf16


# ---------------------------------------------------------------- PPO's rollouts on vLLM, with a stand-in


def _peft_tiny(tmp_path, seed=1):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    folder = make_tiny_policy(tmp_path / "tiny-peft")
    torch.manual_seed(seed)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(folder),
                           LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"],
                                      init_lora_weights=False))
    return folder, model


def test_merged_weights_are_the_adapted_model_under_the_base_names_and_leave_it_untouched(tmp_path):
    from transformers import AutoModelForCausalLM

    folder, policy = _peft_tiny(tmp_path)
    frozen = {n: p.detach().clone() for n, p in policy.named_parameters()}
    fresh = AutoModelForCausalLM.from_pretrained(folder)
    weights = dict(engine.merged_weights(policy))
    assert set(weights) == {n for n, _ in fresh.named_parameters()}  # no lora_ or base_layer names left
    fresh.load_state_dict(weights, strict=False)
    ids = torch.tensor([[5, 9, 17, 33, 2]])
    with torch.no_grad():
        torch.testing.assert_close(fresh(ids).logits, policy(ids).logits, atol=1e-5, rtol=1e-5)
    assert all(torch.equal(p, frozen[n]) for n, p in policy.named_parameters())


class _StandInLLM:
    """What prefloop uses of vLLM's `LLM`: `generate` on token ids with one or per-prompt sampling
    settings, and the in-process model's `load_weights`, backed by a transformers copy of the model
    that samples as vLLM would. Odd-numbered completions keep their stop token, even ones leave it
    out (vLLM's versions differ), and `events` records syncs and samples in order."""

    def __init__(self, folder, tokenizer):
        from transformers import AutoModelForCausalLM

        self.model, self.tokenizer = AutoModelForCausalLM.from_pretrained(folder), tokenizer
        self.names = {n for n, _ in self.model.named_parameters()}
        self.synced, self.events = [], []
        runner = SimpleNamespace(model=SimpleNamespace(load_weights=self.load_weights))
        self.llm_engine = SimpleNamespace(model_executor=SimpleNamespace(driver_worker=SimpleNamespace(model_runner=runner)))

    def load_weights(self, weights):
        weights = {name: tensor.detach().clone() for name, tensor in weights}
        assert set(weights) == self.names  # every weight, under the names vLLM's model has
        self.model.load_state_dict(weights, strict=False)
        self.synced.append(weights)
        self.events.append("sync")

    def reset_prefix_cache(self):
        pass

    def generate(self, prompts, params, use_tqdm=False):
        outs = []
        for k, (prompt, p) in enumerate(zip(prompts, params if isinstance(params, list) else [params] * len(prompts))):
            ids = torch.tensor([prompt["prompt_token_ids"]])
            torch.manual_seed(p.seed if getattr(p, "seed", None) is not None else k)
            with torch.no_grad():
                new = self.model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=True, top_k=0,
                                          temperature=p.temperature, top_p=p.top_p, max_new_tokens=p.max_tokens,
                                          eos_token_id=p.stop_token_ids, pad_token_id=p.stop_token_ids[0]
                                          )[0, ids.shape[1]:].tolist()
            stopped = bool(new) and new[-1] in p.stop_token_ids
            kept = new if (not stopped or k % 2) else new[:-1]
            text = self.tokenizer.decode([i for i in new if i not in p.stop_token_ids], skip_special_tokens=True)
            outs.append(SimpleNamespace(outputs=[SimpleNamespace(token_ids=kept, text=text,
                                                                 finish_reason="stop" if stopped else "length")]))
            self.events.append("sample")
        return outs


def _stand_in_vllm(monkeypatch, folder, tokenizer, stop):
    import sys

    monkeypatch.setitem(sys.modules, "vllm", SimpleNamespace(SamplingParams=lambda **kw: SimpleNamespace(**kw)))
    sampler = engine.VllmSampler.__new__(engine.VllmSampler)
    sampler.llm, sampler.tokenizer, sampler.stop, sampler.dtype = _StandInLLM(folder, tokenizer), tokenizer, stop, "fp32"
    return sampler


def test_ppo_rollouts_sample_from_vllm_synced_with_the_policy_before_each_rollout(tmp_path, monkeypatch):
    from tests.test_ppo import PROMPTS, config as ppo_config, load, target_share_reward
    from training import rollout
    from training.ppo import train_ppo
    from training.sampling import stop_ids

    folder = make_tiny_policy(tmp_path / "tiny")
    model, tokenizer = load(folder)
    sampler = _stand_in_vllm(monkeypatch, folder, tokenizer, stop_ids(model, tokenizer))
    masks = []
    real = rollout.collect_rollout

    def keep_masks(*args, **kwargs):
        out = real(*args, **kwargs)
        masks.append((out.response_ids, out.response_mask))
        return out

    monkeypatch.setattr(rollout, "collect_rollout", keep_masks)
    result = train_ppo(model, tokenizer, PROMPTS, target_share_reward(tokenizer),
                       ppo_config(steps=3, batch_size=4, max_new_tokens=6), sampler=sampler)
    llm = sampler.llm
    assert llm.events == ["sync"] + ["sample"] * 4 + ["sync"] + ["sample"] * 4 + ["sync"] + ["sample"] * 4
    first, last = llm.synced[0], llm.synced[-1]
    assert torch.equal(first["model.embed_tokens.weight"], model.get_input_embeddings().weight.detach())
    assert any(not torch.equal(first[n], last[n]) for n in first)  # the updates reached vLLM
    assert all(math.isfinite(row["policy_loss"]) and 0 < row["response_length"] <= 6 for row in result["history"])
    stop = sampler.stop
    for ids, mask in masks:  # as sampling.sample gives them: 1 up to and including the stop token, then 0
        for row, m in zip(ids.tolist(), mask.tolist()):
            n = sum(m)
            assert m == [1] * n + [0] * (len(m) - n) and (n == 6 or row[n - 1] in stop)


def test_pairs_to_label_sample_with_vllm_when_asked(tiny, monkeypatch):
    from sqlalchemy import select as sql_select

    from training.sampling import folder_stop_ids

    store.add_prompts([f"Question number {i}?" for i in range(3)], "test")
    monkeypatch.setattr(engine, "vllm_problem", lambda: None)

    def stand_in(self, folder, tokenizer, stop):
        assert stop == folder_stop_ids(folder, tokenizer) == [2]  # read from the files, no model loaded
        made = _stand_in_vllm(monkeypatch, folder, tokenizer, stop)
        self.llm, self.tokenizer, self.stop, self.dtype = made.llm, tokenizer, stop, "fp32"

    monkeypatch.setattr(engine.VllmSampler, "__init__", stand_in)
    result = generate.run(generate.GenerateConfig(prompts=3, max_new_tokens=5, seed=4, engine="vllm"))
    assert result["engine"] == "vllm" and result["pairs"] >= 2
    with db.session() as s:
        rows = [r.generation for r in s.scalars(sql_select(Response))]
    assert {g["engine"] for g in rows} == {"vllm"} and all(1 <= g["new_tokens"] <= 5 for g in rows)
    assert all(g["new_tokens"] == 5 for g in rows if not g["eos"])


def test_ppo_with_vllm_rollouts_is_refused_with_one_sentence_where_it_cannot_run(tiny, monkeypatch):
    from training.ppo import rollout_engine_problem
    from training.ppo_config import PPOConfig

    assert rollout_engine_problem(PPOConfig()) is None
    assert rollout_engine_problem(PPOConfig(rollout_engine="vllm")) == (
        "vLLM is not installed (pip install vllm); set rollout_engine to transformers.")
