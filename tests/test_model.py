"""The base model and model versions: PREFLOOP_MODEL, clear errors, LoRA lineage merged exactly,
and (slow) the real SmolLM2 GGUF converted once and answering sensibly."""
from __future__ import annotations

import pytest
import torch

from labeling import db
from labeling.models import ModelVersion
from tests.tiny_models import make_tiny_policy
from training import model as models


def _logits(model, tokenizer, text="What is the capital of France?"):
    enc = tokenizer([text], return_tensors="pt")
    with torch.no_grad():
        return model(**enc).logits


def _add_version(version_id, path, parent=None, method="dpo", kind="policy", current=False):
    with db.session() as s:
        if current:
            for row in s.query(ModelVersion).filter_by(is_current=True, kind=kind):
                row.is_current = False
        s.add(ModelVersion(id=version_id, kind=kind, method=method, parent_id=parent, path=str(path),
                           is_current=current))


def _save_lora(base_model, folder, seed):
    """A LoRA adapter with random (non-zero) B, so it really changes the outputs."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    peft_model = get_peft_model(base_model, config)
    peft_model.save_pretrained(folder, safe_serialization=True)
    return peft_model


def test_prefloop_model_folder_is_the_base(tiny):
    assert models.base_model_path() == tiny.resolve()
    model, tokenizer = models.load_policy()
    assert type(model).__name__ == "LlamaForCausalLM"
    assert model.config.num_hidden_layers == 2 and model.config.hidden_size == 16
    assert not model.training
    assert tokenizer.padding_side == "left" and tokenizer.pad_token is not None
    assert tokenizer.chat_template


def test_wrong_model_path_is_one_sentence(workspace, tmp_path, monkeypatch):
    missing = tmp_path / "no-such-model"
    monkeypatch.setenv("PREFLOOP_MODEL", str(missing))
    with pytest.raises(models.ModelPathError) as err:
        models.base_model_path()
    message = str(err.value)
    assert f"PREFLOOP_MODEL={missing}" in message and "unset it" in message and "\n" not in message

    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "pytorch_model.bin").write_bytes(b"not loaded")  # pickles are never loaded
    monkeypatch.setenv("PREFLOOP_MODEL", str(empty))
    with pytest.raises(models.ModelPathError, match="has no config.json and \\*.safetensors"):
        models.load_policy()


def test_hub_id_offline_fails_with_a_sentence(workspace, monkeypatch):
    monkeypatch.setenv("PREFLOOP_MODEL", "prefloop-test/no-such-model")
    with pytest.raises(models.ModelPathError, match="could not be fetched from the Hugging Face hub"):
        models.base_model_path()


def test_lineage_of_adapters_is_merged_exactly(tiny, tmp_path):
    base, tokenizer = models.load_policy()
    base_logits = _logits(base, tokenizer)
    _add_version("base", tiny, method="base")
    first = _save_lora(base, tmp_path / "v1", seed=1)
    first_logits = _logits(first, tokenizer)
    _add_version("v1", tmp_path / "v1", parent="base", current=True)

    loaded, _ = models.load_policy()  # the current version: v1
    assert type(loaded).__name__ == "LlamaForCausalLM"  # a plain model, adapters merged
    torch.testing.assert_close(_logits(loaded, tokenizer), first_logits, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(first_logits, base_logits, atol=1e-3)

    # a second round trained on top of v1's merged weights
    second = _save_lora(loaded, tmp_path / "v2", seed=2)
    second_logits = _logits(second, tokenizer)
    _add_version("v2", tmp_path / "v2", parent="v1")
    torch.testing.assert_close(_logits(models.load_policy("v2")[0], tokenizer), second_logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(_logits(models.load_policy("base")[0], tokenizer), base_logits)


def test_full_model_version_replaces_its_parents(tiny, tmp_path):
    other = make_tiny_policy(tmp_path / "full", seed=7)
    _add_version("base", tiny, method="base")
    _add_version("full", other, parent="base", method="ppo")
    model, tokenizer = models.load_policy("full")
    torch.testing.assert_close(_logits(model, tokenizer), _logits(models.load_model(other), tokenizer))


def test_bad_versions_are_one_sentence(tiny, tmp_path):
    with pytest.raises(models.ModelPathError, match="There is no model version 'nope'"):
        models.load_policy("nope")
    _add_version("rm", tiny, method="reward", kind="reward")
    with pytest.raises(models.ModelPathError, match="is a reward model, not a policy"):
        models.load_policy("rm")
    _add_version("gone", tmp_path / "gone", parent=None)
    with pytest.raises(models.ModelPathError, match="of model version 'gone' is missing"):
        models.load_policy("gone")
    (tmp_path / "odd").mkdir()
    (tmp_path / "odd" / "adapter_model.bin").write_bytes(b"pickles are never loaded")
    _add_version("odd", tmp_path / "odd", parent=None)
    with pytest.raises(models.ModelPathError, match="of model version 'odd' holds neither a LoRA adapter"):
        models.load_policy("odd")


def test_a_failed_conversion_leaves_no_half_copy_and_clears_old_ones(tmp_path, monkeypatch):
    from training import model as models

    out = tmp_path / "models" / "base"
    stale = tmp_path / "models" / ".base.tmp-99999"  # from a conversion killed mid-way
    stale.mkdir(parents=True)

    def failing(gguf, tmp):
        tmp.mkdir()
        (tmp / "model.safetensors").write_bytes(b"half")
        raise KeyboardInterrupt  # as a cancel or Ctrl-C arrives

    monkeypatch.setattr(models, "_convert", failing)
    with pytest.raises(KeyboardInterrupt):
        models.convert_default_model(tmp_path / "x.gguf", out)
    assert [p.name for p in out.parent.iterdir() if ".tmp-" in p.name or p.name == "base"] == []

    def complete(gguf, tmp):
        tmp.mkdir()
        for name in ("config.json", "model.safetensors", "tokenizer_config.json"):
            (tmp / name).write_text("{}")

    monkeypatch.setattr(models, "_convert", complete)
    assert models.convert_default_model(tmp_path / "x.gguf", out) == out
    assert [p.name for p in out.parent.iterdir() if ".tmp-" in p.name or p.name == "base"] == ["base"]


@pytest.mark.slow
def test_default_gguf_converted_once_and_answers(model_cache_home, monkeypatch):
    monkeypatch.setenv("PREFLOOP_HOME", str(model_cache_home))
    monkeypatch.delenv("PREFLOOP_MODEL", raising=False)
    monkeypatch.delenv("PREFLOOP_DB", raising=False)
    folder = models.base_model_path()
    assert folder == model_cache_home.resolve() / "models" / "base"
    assert (folder / "model.safetensors").is_file() and (folder / "tokenizer_config.json").is_file()
    assert not list(folder.parent.glob(".base.tmp-*"))  # the temporary folder was renamed
    weights_mtime = (folder / "model.safetensors").stat().st_mtime_ns

    model, tokenizer = models.load_policy()
    assert (folder / "model.safetensors").stat().st_mtime_ns == weights_mtime  # loaded, not reconverted
    assert "<|im_start|>assistant" in tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert model.config.num_hidden_layers == 30 and model.dtype == torch.float32
    enc = tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                        add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=20, do_sample=False)
    answer = tokenizer.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "Paris" in answer
