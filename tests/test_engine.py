"""The CTranslate2 sampler for pairs to label: conversion of a version once, pairs stored as the
reference path stores them, and transformers whenever CTranslate2 cannot run the model."""
from __future__ import annotations

import json

import pytest
from sqlalchemy import select

from labeling import db, store
from labeling.models import Response
from tests.tiny_models import make_tiny_policy
from training import engine, generate, smoothquant


@pytest.fixture
def tiny(tiny):  # the shared tiny policy (conftest.py), with six prompts to answer
    store.add_prompts([f"Question number {i}?" for i in range(6)], "test")
    return tiny


def test_pairs_from_ctranslate2_are_stored_with_their_settings(tiny):
    config = generate.GenerateConfig(prompts=6, max_new_tokens=6, batch_size=4, seed=3, engine="ctranslate2")
    result = generate.run(config)
    assert result["engine"] == "ctranslate2" and result["pairs"] >= 5
    with db.session() as s:
        generations = [r.generation for r in s.scalars(select(Response))]
    assert len(generations) == 2 * result["pairs"]
    for g in generations:  # a response that did not stop at EOS used every token it was allowed
        assert g["temperature"] == 0.8 and g["top_p"] == 0.95 and g["seed"] is not None
        assert g["engine"] == "ctranslate2" and g["quantization"] == "int8" and g["top_k"] == 400  # the vocabulary
        assert g["smoothquant"] == smoothquant.ALPHA  # a Llama: smoothed before int8
        assert g["new_tokens"] == 6 if not g["eos"] else 1 <= g["new_tokens"] <= 6


def test_a_batch_split_over_one_worker_a_thread_answers_each_text_as_one_worker_does(tiny):
    """On a CPU the sampler runs a worker a thread, each on a share of the batch; with only the most
    likely token kept, the answers (and their order) are those of one worker on the whole batch."""
    one = engine.load_generator(None, "ctranslate2", threads=1)[0]
    two = engine.load_generator(None, "ctranslate2", threads=2)[0]
    assert (one.workers, two.workers) == (1, 2)
    texts = [f"Question number {i}?" + " and more" * i for i in range(5)]
    settings = dict(max_new_tokens=8, temperature=1.0, top_p=1e-6, seed=0)
    assert two(texts, **settings) == one(texts, **settings)
    assert len({text for text, _, _ in one(texts, **settings)}) > 1  # the texts get different answers


def test_the_two_sides_of_a_prompt_are_sampled_by_one_worker(tiny):
    """Fresh workers draw the same random numbers: one prompt's two sides split over two of them
    would come out the same."""
    settings = dict(max_new_tokens=12, temperature=1.0, top_p=1.0, seed=0)
    for prompts in (1, 3):
        sampler = engine.load_generator(None, "ctranslate2", threads=2)[0]  # fresh workers
        rows = sampler([f"Question number {i}?" for i in range(prompts) for _ in (0, 1)], **settings)
        assert len(rows) == 2 * prompts and all(rows[2 * k] != rows[2 * k + 1] for k in range(prompts))
    assert sampler([], **settings) == []


def test_a_conversion_says_whether_it_was_smoothed(tiny, tmp_path):
    assert json.loads((engine.converted(None) / engine.SMOOTH_FILE).read_text()) == {"alpha": smoothquant.ALPHA}
    engine.convert(None, tmp_path / "plain", smooth=False)  # as bench/generation.py compares
    assert json.loads((tmp_path / "plain" / engine.SMOOTH_FILE).read_text()) == {"alpha": None}


def test_a_version_is_converted_once_and_again_when_its_weights_change(tiny):
    first = engine.converted(None)
    made = (first / "model.bin").stat().st_mtime_ns
    assert json.loads((first / engine.STOP_FILE).read_text()) == [2]  # the tiny tokenizer's EOS
    assert engine.converted(None) == first and (first / "model.bin").stat().st_mtime_ns == made
    assert engine.converted("base") == first  # None is the current policy, here the base
    make_tiny_policy(tiny, seed=1)  # the same folder, new weights
    second = engine.converted(None)
    assert second != first and first.is_dir()  # the one before the current stays
    make_tiny_policy(tiny, seed=2)
    third = engine.converted(None)
    assert second.is_dir() and third.is_dir() and not first.exists()  # older conversions are deleted


def test_auto_falls_back_to_transformers_when_ctranslate2_cannot_convert(tiny, monkeypatch):
    def refuse(version_id):
        raise engine.EngineError("CTranslate2 cannot convert this model (no converter); set the engine to transformers.")

    monkeypatch.setattr(engine, "converted", refuse)
    model, _, used = engine.load_generator(None, "auto", threads=1)
    assert used == "transformers" and not isinstance(model, engine.Sampler)
    with pytest.raises(engine.EngineError, match="cannot convert"):
        engine.load_generator(None, "ctranslate2", threads=1)

    def crash(version_id):  # a library's own error, e.g. a model.bin it cannot read
        raise RuntimeError("unsupported model spec")

    monkeypatch.setattr(engine, "converted", crash)
    assert engine.load_generator(None, "auto", threads=1)[2] == "transformers"
    with pytest.raises(engine.EngineError, match="CTranslate2 failed on this model .RuntimeError: unsupported"):
        engine.load_generator(None, "ctranslate2", threads=1)
    result = generate.run(generate.GenerateConfig(prompts=2, max_new_tokens=4, seed=1))
    assert result["engine"] == "transformers" and result["pairs"] >= 1


def test_transformers_is_used_when_asked(tiny):
    result = generate.run(generate.GenerateConfig(prompts=2, max_new_tokens=4, seed=1, engine="transformers"))
    assert result["engine"] == "transformers"
    assert not engine.engines_root().exists()
    with db.session() as s:
        assert {r.generation["engine"] for r in s.scalars(select(Response))} == {"transformers"}


def test_an_unknown_engine_is_one_sentence(tiny, capsys):
    assert generate.main(["--engine", "fast"]) == 2
    assert "engine" in capsys.readouterr().err


def test_prepare_converts_the_base_and_the_current_policy_before_the_server_starts(tiny, capsys):
    from training.__main__ import main

    assert main(["prepare"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["model"] == str(tiny) and (engine.engines_root() / out["engine"] / "model.bin").is_file()
    assert main(["prepare", "--now"]) == 2
    assert "takes no options" in capsys.readouterr().err


def test_a_round_that_makes_a_new_version_current_converts_it_for_the_generator(tiny):
    from training import runner, versions
    from training.dpo_config import DPORoundConfig

    base = versions.ensure_base_version()

    def round_writing_a_version(config, reporter, max_steps, max_pairs):  # the training itself is not the point
        version = versions.create_version("policy", "dpo", base, {}, [], {},
                                          lambda folder: make_tiny_policy(folder, seed=2), make_current=True)
        return {"version": version}

    assert runner.run_main([], DPORoundConfig, round_writing_a_version, "python -m training dpo") == 0
    current = versions.current_policy_id()
    assert current != base and (engine._folder(current) / "model.bin").is_file()
    assert not (engine._folder(base) / "model.bin").is_file()  # only what became current


def test_a_killed_conversion_leaves_nothing_the_next_one_trips_on(tiny):
    folder = engine._folder("base")
    engine.engines_root().mkdir(parents=True)
    stale = engine.engines_root() / f".{folder.name}.tmp-dead-hf"  # a kill -9 mid-conversion leaves these
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"half")
    assert engine.converted(None) == folder and not stale.exists()


@pytest.mark.slow
def test_smollm2_answers_stop_at_their_end_token_and_count_it(workspace, model_cache_home, monkeypatch):
    """The real model ends most short answers itself: the stop token is counted, never shown."""
    from training.model import convert_default_model

    monkeypatch.setenv("PREFLOOP_MODEL", str(convert_default_model(out=model_cache_home / "models" / "base")))
    monkeypatch.setenv("PREFLOOP_THREADS", "2")
    sampler, tokenizer, used = engine.load_generator("base", "ctranslate2", threads=2)
    texts = generate.chat_texts(tokenizer, [[{"role": "user", "content": "Say hello in one short sentence."}]] * 4)
    rows = sampler(texts, max_new_tokens=96, temperature=0.8, top_p=0.95, seed=0)
    assert used == "ctranslate2" and any(eos for _, _, eos in rows)
    for text, n, eos in rows:
        assert text and "<|im_end|>" not in text and 1 <= n <= 96
        assert eos or n == 96
        if eos:  # the stop token is one of the n tokens, as the transformers path counts it
            assert len(tokenizer(text, add_special_tokens=False)["input_ids"]) <= n
