"""The reward round on a tiny model: Bradley-Terry training moves every trainable parameter, the
saved version scores like the trained model, lineage is recorded; SmolLM2 on real pairs when present."""
import json
import math
from pathlib import Path

import pytest

from tests.preference_fixtures import import_pairs, snapshot_trainable
from training import jobs, preferences, registry, reward, versions
from training.reward_config import RewardRoundConfig


def test_encoder_input_keeps_the_latest_turn_and_the_start_of_the_response(workspace):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(reward.minilm_path())
    prompt = [{"role": "user", "content": "old question " * 80}, {"role": "assistant", "content": "an answer"},
              {"role": "user", "content": "how do I pick a lock"}]
    for response, kept in (("no, I cannot help with that.", "no, i cannot help with that."),
                           ("first words " + "more " * 300, "first words more")):
        ids = reward.encode(tokenizer, prompt, response, 64)
        text = tokenizer.decode(ids)
        assert len(ids) <= 64 and text.startswith("[CLS]") and text.endswith("[SEP]")
        context, answer = text[len("[CLS] "):-len(" [SEP]")].split(" [SEP] ")
        assert context.endswith("user : how do i pick a lock") and "old question" in context
        assert answer.startswith(kept)
        assert len(ids) == 64  # the room is used: the oldest turns fill what the response leaves
    short = reward.encode(tokenizer, [{"role": "user", "content": "hi"}], "hello", 64)
    assert short == tokenizer("user: hi", "hello")["input_ids"]


def test_chat_input_keeps_the_prompt_and_cuts_the_end_of_the_response():
    from tests.tiny_models import make_tokenizer

    tokenizer = make_tokenizer()
    chat = lambda messages: tokenizer.apply_chat_template(messages, tokenize=True, return_dict=False)  # noqa: E731
    latest = {"role": "user", "content": "How do I sort a list in Python?"}
    response = "Use sorted(xs) first. " + "The sea is grey. " * 60 + "LAST WORDS"
    # a short prompt stays whole; the response keeps its start and loses its end
    ids = reward.encode(tokenizer, [latest], response, 96)
    prompt_ids = tokenizer.apply_chat_template([latest], tokenize=True, add_generation_prompt=True, return_dict=False)
    assert len(ids) == 96 and ids[:len(prompt_ids)] == prompt_ids
    text = tokenizer.decode(ids)
    assert "<|im_start|>assistant\nUse sorted(xs) first." in text and "LAST WORDS" not in text
    # a long conversation loses its oldest turns first; the latest user turn stays whole, and the
    # response still has at least half of the room
    oldest = {"role": "user", "content": "OLDEST " + "tell me about France " * 40}
    conversation = [oldest, {"role": "assistant", "content": "Paris is the capital."}, latest]
    ids = reward.encode(tokenizer, conversation, response, 96)
    text = tokenizer.decode(ids)
    assert len(ids) == 96 and "OLDEST" not in text and "How do I sort a list in Python?" in text
    assert "Paris is the capital." in text  # the turn after the dropped one fits, so it stays
    answer = text.split("<|im_start|>assistant\nUse sorted")[-1]
    assert len(tokenizer(answer)["input_ids"]) >= 96 // 2 - 2
    # a latest turn too long on its own loses its beginning and keeps its end, next to the answer
    long_question = {"role": "user", "content": "FIRST " + "please explain photosynthesis " * 40 + "in short words?"}
    text = tokenizer.decode(reward.encode(tokenizer, [long_question], response, 96))
    assert "FIRST" not in text and "in short words?<|im_end|>\n<|im_start|>assistant\nUse sorted(xs)" in text
    # what fits is left exactly as the chat template writes it
    short = [latest, {"role": "assistant", "content": "Use sorted(xs)."}]
    assert reward.encode(tokenizer, short[:1], "Use sorted(xs).", 96) == chat(short)


def test_the_response_starts_after_the_prompt_as_it_was_kept_even_when_the_prompt_was_cut(workspace):
    from transformers import AutoTokenizer

    from tests.tiny_models import make_tokenizer

    chat_tokenizer, encoder_tokenizer = make_tokenizer(), AutoTokenizer.from_pretrained(reward.minilm_path())
    latest = {"role": "user", "content": "How do I sort a list in Python?"}
    oldest = {"role": "user", "content": "OLDEST " + "tell me about France " * 40}
    long = [oldest, {"role": "assistant", "content": "Paris is the capital."}, latest]
    response = "Use sorted(xs) first. " + "The sea is grey. " * 60
    for tokenizer in (chat_tokenizer, encoder_tokenizer):
        for prompt in ([latest], long):  # a prompt kept whole, and one that lost its oldest turn
            ids, start = reward.encode_parts(tokenizer, prompt, response, 96)
            assert ids == reward.encode(tokenizer, prompt, response, 96)
            assert tokenizer.decode(ids[start:]).lstrip().lower().startswith("use sorted")  # not a prompt token
            assert "python?" in tokenizer.decode(ids[:start]).lower()  # the whole kept prompt before it
    ids, start = reward.encode_parts(chat_tokenizer, long, "", 96)
    assert chat_tokenizer.decode(ids[:start]).endswith("<|im_start|>assistant\n")  # an empty answer: its end marker
    # a latest turn too long on its own: its start was cut, and the response still starts after it
    long_question = {"role": "user", "content": "FIRST " + "please explain photosynthesis " * 40 + "in short words?"}
    ids, start = reward.encode_parts(chat_tokenizer, [long_question], response, 96)
    assert len(ids) == 96 and chat_tokenizer.decode(ids[start:]).startswith("Use sorted")
    assert chat_tokenizer.decode(ids[:start]).endswith("in short words?<|im_end|>\n<|im_start|>assistant\n")


class SlowView:
    """A fast tokenizer seen as a slow one (no offsets): transformers 5 loads MiniLM's as fast only."""
    is_fast, chat_template = False, None

    def __init__(self, fast):
        self.fast = fast

    def __call__(self, *args, **kwargs):
        assert "return_offsets_mapping" not in kwargs
        return self.fast(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.fast, name)


def test_a_tokenizer_without_offsets_cuts_by_its_own_tokens_and_keeps_the_latest_turn(workspace):
    from transformers import AutoTokenizer

    fast = AutoTokenizer.from_pretrained(reward.minilm_path())
    slow = SlowView(fast)
    for tokenizer in (slow, fast):
        assert reward._drop_first_tokens(tokenizer, "alpha beta gamma delta", 2).lower() == "gamma delta"
        assert reward._drop_first_tokens(tokenizer, "alpha beta", 5) == ""
        assert reward._first_tokens(tokenizer, "alpha beta gamma", 2).lower() == "alpha beta"
        assert reward._first_tokens(tokenizer, "alpha beta", 0) == ""
    prompt = [{"role": "user", "content": "old question " * 80}, {"role": "user", "content": "how do I pick a lock"}]
    response = "no, I cannot help with that. " + "more words " * 80
    ids, start = reward.encode_parts(slow, prompt, response, 64)
    assert len(ids) == 64 and fast.decode(ids[start:]).startswith("no, i cannot help with that.")
    assert fast.decode(ids[:start]).endswith("how do i pick a lock [SEP]")  # the latest turn kept, before the answer
    assert ids[:start] == reward.encode_parts(fast, prompt, response, 64)[0][:start]  # the same cut as with offsets


def test_reward_round_trains_scorer_and_saves_a_version(tiny, tmp_path, monkeypatch):
    import torch

    import_pairs(tmp_path, 12)
    snapshot = {}
    snapshot_trainable(monkeypatch, snapshot)
    summary = reward.run_round(RewardRoundConfig(backbone="policy", method="fine-tune", learning_rate=1e-2, batch_size=4),
                               jobs.Reporter(None), max_steps=4)

    model = snapshot.pop("__model__")
    after = dict(model.named_parameters())
    assert any("score" in n for n in snapshot) and any("lora_" in n for n in snapshot)
    assert [n for n, p in snapshot.items() if torch.equal(p, after[n].detach())] == []
    assert math.isfinite(summary["train_loss"]) and summary["steps"] == 4

    row = versions.get_version(summary["version"])
    assert (row.kind, row.method, row.parent_id) == ("reward", "reward", None)
    assert len(row.judgment_ids) == 12 and versions.latest_reward_id() == row.id
    assert json.loads((Path(row.path) / "reward.json").read_text())["backbone"] == "policy"
    assert versions.current_policy_id() is None  # a reward round never changes the policy

    # the stored version scores exactly as the trained model did
    prompts = [[{"role": "user", "content": "Tell me about tea (5)."}]] * 2
    responses = ["Sure, here is a short answer about tea.", "No."]
    live = reward.make_scorer(model, reward.load_backbone(RewardRoundConfig(backbone="policy", method="fine-tune"))[1],
                              256)(prompts, responses)
    stored = reward.load_scorer(row.id)(prompts, responses)
    assert stored.shape == (2,) and torch.allclose(live, stored, atol=1e-4)
    assert stored[0] > stored[1]  # it learned that the polite answer is chosen

    # batches group answers of like length: each score still lands on its own answer
    prompts = [[{"role": "user", "content": "Tell me about tea (5)."}]] * 5
    responses = ["No.", "Sure, here is a short answer about tea, with more words.", "Tea.", "Sure, tea.", "A longer no, then."]
    scorer = reward.load_scorer(row.id)
    one_at_a_time = torch.cat([scorer([p], [r]) for p, r in zip(prompts, responses)])
    assert torch.allclose(scorer(prompts, responses), one_at_a_time, atol=1e-4)


def test_minilm_fine_tuned_reward_round_trains_and_scores_from_its_version(workspace, tmp_path):
    import torch

    import_pairs(tmp_path, 12)
    summary = reward.run_round(RewardRoundConfig(backbone="minilm", method="fine-tune", learning_rate=1e-3, batch_size=4,
                                                 max_length=64), jobs.Reporter(None), max_steps=4)
    assert summary["backbone"] == "minilm" and summary["steps"] == 4 and math.isfinite(summary["train_loss"])
    row = versions.get_version(summary["version"])
    meta = json.loads((Path(row.path) / "reward.json").read_text())
    assert (meta["backbone"], meta["lora"], meta["max_length"]) == ("minilm", False, 64)
    # fully fine-tuned: every weight of the encoder moved away from the shipped MiniLM
    from safetensors.torch import load_file

    base = load_file(reward.minilm_path() / "model.safetensors")
    trained = load_file(Path(row.path) / "model.safetensors")
    shared = [k for k in trained if k.removeprefix("bert.") in base and "position_ids" not in k]
    assert len(shared) > 90
    assert all(not torch.equal(trained[k], base[k.removeprefix("bert.")]) for k in shared)
    prompts = [[{"role": "user", "content": "Tell me about tea (5)."}]] * 2
    responses = ["Sure, here is a short answer about tea.", "No."]
    stored = reward.load_scorer(row.id)(prompts, responses)
    assert stored.shape == (2,) and torch.isfinite(stored).all()
    assert stored[0] > stored[1]  # it learned that the polite answer is chosen


def test_heads_reward_round_keeps_the_backbone_frozen_and_scores_from_its_version(tiny, tmp_path, caplog):
    import torch

    from training import reward_heads

    import_pairs(tmp_path, 12)
    summary = reward.run_round(RewardRoundConfig(backbone="policy", method="heads", heads=4, max_length=64),
                               jobs.Reporter(None))
    assert (summary["heads"], summary["length"], summary["steps"]) == (4, "free", 0)
    assert summary["l2"] in reward_heads.L2_GRID and "heldout_pairs" in summary
    row = versions.get_version(summary["version"])
    folder = Path(row.path)
    meta = json.loads((folder / "reward.json").read_text())
    assert (meta["method"], meta["lora"], meta["features"]) == ("heads", False, reward_heads.FEATURES)
    assert (folder / reward_heads.HEADS_FILE).is_file() and not (folder / "model.safetensors").exists()

    model, _, _ = reward.load_model(row.id)
    prompts = [[{"role": "user", "content": "Tell me about tea (5)."}]] * 2
    responses = ["Sure, here is a short answer about tea.", "No."]
    every = model.rewards(prompts, responses)
    assert every.shape == (4, 2) and reward_heads.spread(every).min() > 0
    stored = reward.load_scorer(row.id)(prompts, responses)
    assert torch.allclose(stored, torch.as_tensor(every.mean(0), dtype=torch.float32))
    assert stored[0] > stored[1]  # it learned that the polite answer is chosen
    # a conservative scorer subtracts the heads' spread
    cautious = reward.load_scorer(row.id, penalty=1.0)(prompts, responses)
    expected = every.mean(0) - reward_heads.spread(every)
    assert torch.allclose(cautious, torch.as_tensor(expected, dtype=torch.float32)) and (cautious < stored).all()
    # a version fitted before the response's start was fixed still loads, with a warning to train it again
    (folder / "reward.json").write_text(json.dumps({k: v for k, v in meta.items() if k != "features"}))
    with caplog.at_level("WARNING", logger="training.reward"):
        reward.load_model(row.id)
    assert "train it again" in caplog.text


def test_the_reward_rounds_layers_setting_picks_the_hidden_states_its_heads_read(tiny, tmp_path, capsys):
    from training import reward_heads
    from training.config_fields import settings_problem

    import_pairs(tmp_path, 12)
    summary = reward.run_round(RewardRoundConfig(method="heads", heads=2, max_length=64, layers="hidden"),
                               jobs.Reporter(None))
    model, _, _ = reward.load_model(summary["version"])
    assert model.heads.layers == (0.5, 1.0) == reward_heads.LAYERS_BEFORE and summary["layers"] == [0.5, 1.0]
    assert model.heads.theta.shape[1] == 3 * model.backbone.config.hidden_size  # two layers' means and the last token
    assert settings_problem(RewardRoundConfig(method="fine-tune", layers="hidden")) == (
        "layers is read only with method heads; set it back to embeddings+hidden or set method to heads.")
    with pytest.raises(preferences.NotReady, match="layers is read only with method heads"):
        reward.run_round(RewardRoundConfig(method="fine-tune", layers="hidden"), jobs.Reporter(None))
    assert reward.main(["--layers", "middle"]) == 2
    assert "field 'layers' must be one of embeddings+hidden, hidden; got 'middle'." in capsys.readouterr().err


def test_reward_round_not_ready_and_missing_reward_model(tiny, tmp_path, capsys):
    import_pairs(tmp_path, 2)
    assert registry.get("reward").problem() == ("The reward round needs at least 8 labeled pairs; you have 2. "
                                                "Label more pairs or import labels.")
    assert reward.main([]) == 1
    assert "needs at least 8 labeled pairs; you have 2" in capsys.readouterr().err
    with pytest.raises(reward.RewardError, match="train one first"):
        reward.load_scorer()


@pytest.mark.slow
def test_reward_on_smollm2_with_real_pairs(workspace, shared_data, model_cache_home, monkeypatch, capsys):
    from labeling.store import import_file
    from training.model import convert_default_model

    monkeypatch.setenv("PREFLOOP_MODEL", str(convert_default_model(out=model_cache_home / "models" / "base")))
    import_file(shared_data / "hh-rlhf-harmless-base-test.jsonl.gz", fmt="hh")
    assert reward.main(["--backbone", "policy", "--method", "fine-tune", "--max-pairs", "16", "--max-steps", "3", "--batch-size", "4",
                        "--max-length", "256"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["steps"] == 3 and summary["backbone"] == "policy" and math.isfinite(summary["train_loss"]) and summary["heldout_pairs"] >= 1
    scores = reward.load_scorer(summary["version"])([[{"role": "user", "content": "Hi"}]], ["Hello! How can I help?"])
    assert scores.shape == (1,) and math.isfinite(float(scores[0]))
