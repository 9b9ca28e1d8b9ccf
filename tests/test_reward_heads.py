"""The frozen-backbone reward heads (training/reward_heads.py): Bradley-Terry fit, length
disentangling on a planted length signal, ensemble spread, source weights, save/load, and the
features of a tiny real model."""
from __future__ import annotations

import numpy as np
import pytest

from training import metrics, reward_heads


def planted(n: int, seed: int, preference: str):
    """Synthetic pairs: a content feature, three features that carry the length ℓ, four of noise.
    `preference` "length": the longer response is chosen; "content": the higher content wins and
    lengths are drawn independently of it. Returns chosen, rejected features, lengths, groups."""
    rng = np.random.default_rng(seed)

    def responses(k):
        content, ell = rng.normal(size=k), rng.normal(5, 1, size=k)
        x = np.column_stack([content, ell, 0.5 * ell + 0.1 * rng.normal(size=k), ell ** 2 / 10,
                             rng.normal(size=(k, 4))])
        return x, content, ell

    a, content_a, ell_a = responses(n)
    b, content_b, ell_b = responses(n)
    a_wins = (ell_a > ell_b) if preference == "length" else (content_a > content_b)
    chosen = np.where(a_wins[:, None], a, b)
    rejected = np.where(a_wins[:, None], b, a)
    return chosen, rejected, np.where(a_wins, ell_a, ell_b), np.where(a_wins, ell_b, ell_a), list(range(n))


def heldout_accuracy(heads, seed: int, preference: str) -> float:
    chosen, rejected, chosen_len, rejected_len, _ = planted(400, seed, preference)
    return metrics.preference_accuracy(heads.rewards(chosen, chosen_len).mean(0),
                                       heads.rewards(rejected, rejected_len).mean(0))


def test_bradley_terry_fit_learns_a_separable_preference():
    chosen, rejected, chosen_len, rejected_len, groups = planted(300, 0, "content")
    heads = reward_heads.fit(chosen, rejected, chosen_len, rejected_len, groups, heads=1, length="free")
    assert heldout_accuracy(heads, 1, "content") > 0.9
    assert np.argmax(np.abs(heads.theta[0])) == 0  # the content feature carries the weight


def test_a_margin_asks_a_pair_to_be_separated_by_more_and_none_is_the_plain_fit():
    rng = np.random.default_rng(0)
    difference = rng.normal(1.0, 1.0, size=(200, 3))
    weights = np.ones(200)
    plain = reward_heads.bt_fit(difference, weights, l2=1.0)
    np.testing.assert_allclose(reward_heads.bt_fit(difference, weights, l2=1.0, margins=np.zeros(200)), plain)
    margins = np.where(np.arange(200) < 100, 0.0, 3.0)  # the second half: a clearer preference
    wider = reward_heads.bt_fit(difference, weights, l2=1.0, margins=margins)
    assert (difference @ wider).mean() > (difference @ plain).mean() + 0.1  # the rewards spread further apart

    chosen, rejected, chosen_len, rejected_len, groups = planted(200, 0, "content")
    fitted = [reward_heads.fit(chosen, rejected, chosen_len, rejected_len, groups, heads=2, length="free", margins=m)
              for m in (None, np.full(200, 2.0))]
    assert (np.abs(fitted[1].theta).sum(1) > np.abs(fitted[0].theta).sum(1)).all()  # every head is fitted with them


def test_the_fit_with_margins_is_where_the_gradient_of_its_loss_vanishes():
    """At θ of bt_fit, Σ w σ(m − θ·d) d / Σ w = λ θ: the margin enters the loss as written."""
    rng = np.random.default_rng(1)
    difference, weights = rng.normal(0.3, 1.0, size=(120, 4)), rng.uniform(0.5, 2.0, size=120)
    margins = rng.choice([0.0, 0.5, 2.0], size=120)
    theta = reward_heads.bt_fit(difference, weights, l2=0.1, margins=margins)
    pull = 1 / (1 + np.exp(-(margins - difference @ theta)))  # σ(m − θ·d)
    np.testing.assert_allclose((weights * pull) @ difference / weights.sum(), 0.1 * theta, atol=1e-6)


def test_the_regularisation_is_chosen_on_the_held_out_loss_with_its_margins():
    """Noisy pairs: without margins a stronger λ holds out best; asked to separate every pair by
    3, the held-out loss (with the same margins) wants a larger θ, so a weaker λ."""
    rng = np.random.default_rng(0)
    difference = rng.normal(0.0, 1.0, size=(300, 5))
    difference[:, 0] += 0.3
    groups, weights = list(range(300)), np.ones(300)
    plain = reward_heads.choose_l2(difference, weights, groups)
    assert plain == reward_heads.choose_l2(difference, weights, groups, margins=[0.0] * 300) == 0.1
    assert reward_heads.choose_l2(difference, weights, groups, margins=[3.0] * 300) == 0.01


def test_length_disentangled_heads_drop_a_planted_length_preference_and_keep_content():
    chosen, rejected, chosen_len, rejected_len, groups = planted(300, 0, "length")
    free = reward_heads.fit(chosen, rejected, chosen_len, rejected_len, groups, heads=1, length="free")
    removed = reward_heads.fit(chosen, rejected, chosen_len, rejected_len, groups, heads=1, length="remove")
    assert heldout_accuracy(free, 1, "length") > 0.9  # length is in the features: a free head reads it
    assert abs(heldout_accuracy(removed, 1, "length") - 0.5) < 0.08
    assert removed.length_weight[0] > 1  # the length head absorbed the preference, and is dropped

    chosen, rejected, chosen_len, rejected_len, groups = planted(300, 2, "content")
    removed = reward_heads.fit(chosen, rejected, chosen_len, rejected_len, groups, heads=1, length="remove")
    assert heldout_accuracy(removed, 3, "content") > 0.9
    x, ell = np.concatenate([chosen, rejected]), np.concatenate([chosen_len, rejected_len])
    assert abs(metrics.pearson(removed.rewards(x, ell)[0], ell)) < 1e-6


def test_keep_learns_length_from_the_length_term():
    chosen, rejected, chosen_len, rejected_len, groups = planted(300, 0, "length")
    # only noise features: what the heads know of length comes from the kept length term
    noise = np.random.default_rng(5).normal(size=(300, 3))
    heads = reward_heads.fit(noise, noise[::-1], chosen_len, rejected_len, groups, heads=1, length="keep")
    assert heads.theta.shape == (1, 3) and heads.length_weight[0] > 1
    assert metrics.preference_accuracy(heads.rewards(noise, chosen_len)[0], heads.rewards(noise[::-1], rejected_len)[0]) > 0.95


def test_ensemble_spread_is_zero_for_identical_heads_and_positive_for_resampled_ones():
    chosen, rejected, chosen_len, rejected_len, groups = planted(120, 0, "content")
    heads = reward_heads.fit(chosen, rejected, chosen_len, rejected_len, groups, heads=4, length="free", l2=0.1)
    same = reward_heads.Heads(np.repeat(heads.theta[:1], 4, axis=0), heads.mean, heads.scale, heads.beta, heads.length,
                              heads.length_mean, heads.length_scale, heads.l2, np.zeros(4))
    assert np.all(reward_heads.spread(same.rewards(chosen, chosen_len)) == 0)
    assert reward_heads.spread(heads.rewards(chosen, chosen_len)).mean() > 0


def test_l2_is_chosen_by_held_out_loss_and_larger_with_fewer_pairs():
    chosen, rejected, chosen_len, rejected_len, groups = planted(400, 0, "content")
    many = reward_heads.fit(chosen, rejected, chosen_len, rejected_len, groups, heads=1, length="free")
    few = reward_heads.fit(chosen[:12], rejected[:12], chosen_len[:12], rejected_len[:12], groups[:12], heads=1,
                           length="free")
    assert many.l2 in reward_heads.L2_GRID and few.l2 in reward_heads.L2_GRID
    assert few.l2 >= many.l2
    # fewer conversations than folds: the strongest regularisation
    tiny = reward_heads.fit(chosen[:2], rejected[:2], chosen_len[:2], rejected_len[:2], ["a", "a"], heads=1)
    assert tiny.l2 == max(reward_heads.L2_GRID)


def test_source_weights_give_each_source_the_same_total():
    weights = reward_heads.source_weights(["hh"] * 6 + ["oasst"] * 2)
    assert weights.mean() == pytest.approx(1.0)
    assert weights[:6].sum() == pytest.approx(weights[6:].sum())


def test_heads_round_trip_through_a_folder(tmp_path):
    chosen, rejected, chosen_len, rejected_len, groups = planted(60, 0, "content")
    heads = reward_heads.fit(chosen, rejected, chosen_len, rejected_len, groups, heads=3, length="keep")
    heads.save(tmp_path)
    loaded = reward_heads.Heads.load(tmp_path)
    np.testing.assert_allclose(loaded.rewards(chosen, chosen_len), heads.rewards(chosen, chosen_len))
    assert loaded.length == "keep" and loaded.l2 == heads.l2 and loaded.layers == reward_heads.LAYERS
    np.testing.assert_array_equal(loaded.length_weight, heads.length_weight)


def test_heads_read_the_layers_they_were_fitted_on_also_when_saved_before_layers_were_kept(tmp_path):
    import dataclasses

    chosen, rejected, chosen_len, rejected_len, groups = planted(20, 0, "content")
    heads = dataclasses.replace(reward_heads.fit(chosen, rejected, chosen_len, rejected_len, groups, heads=1),
                                layers=(0.0, 0.25))
    (tmp_path / "now").mkdir()
    heads.save(tmp_path / "now")
    assert reward_heads.Heads.load(tmp_path / "now").layers == (0.0, 0.25)
    (tmp_path / "before").mkdir()
    saved = dict(np.load(tmp_path / "now" / reward_heads.HEADS_FILE))
    del saved["layers"]
    np.savez(tmp_path / "before" / reward_heads.HEADS_FILE, **saved)
    assert reward_heads.Heads.load(tmp_path / "before").layers == reward_heads.LAYERS_BEFORE == (0.5, 1.0)


def test_unknown_length_mode_is_refused():
    chosen, rejected, chosen_len, rejected_len, groups = planted(10, 0, "content")
    with pytest.raises(ValueError, match="length must be one of"):
        reward_heads.fit(chosen, rejected, chosen_len, rejected_len, groups, length="ignore")


@pytest.mark.parametrize("kind", ["policy", "bert"])
def test_features_pool_the_response_and_do_not_depend_on_the_batch(kind, tmp_path):
    from transformers import AutoModel, AutoTokenizer

    from tests import tiny_models

    folder = (tiny_models.make_tiny_policy if kind == "policy" else tiny_models.make_tiny_bert)(tmp_path / kind)
    model, tokenizer = AutoModel.from_pretrained(folder), AutoTokenizer.from_pretrained(folder)
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    tokenizer.padding_side = "right"
    prompt = [{"role": "user", "content": "What is the capital of France?"}]
    responses = ["Paris.", "The capital of France is Paris, a city on the Seine.", "Paris."]
    together = reward_heads.features(model, tokenizer, [prompt] * 3, responses, max_length=64, batch_size=3)
    alone = np.stack([reward_heads.features(model, tokenizer, [prompt], [r], max_length=64)[0] for r in responses])
    hidden = model.config.hidden_size
    assert together.shape == (3, (len(reward_heads.LAYERS) + 1) * hidden)
    np.testing.assert_allclose(together, alone, atol=1e-5)  # padding beside a longer answer changes nothing
    np.testing.assert_array_equal(together[0], together[2])
    assert not np.allclose(together[0], together[1])


@pytest.mark.parametrize("layers", [2, 5])  # an odd depth: its middle rounds up, as before
def test_features_are_the_middle_and_last_layer_means_and_the_last_token_and_pick_chooses_other_layers(layers, tmp_path):
    import torch
    from transformers import AutoModel, AutoTokenizer

    from tests import tiny_models
    from training.reward import encode

    folder = tiny_models.make_tiny_policy(tmp_path / "policy", layers=layers)
    model, tokenizer = AutoModel.from_pretrained(folder), AutoTokenizer.from_pretrained(folder)
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    prompt, answer = [{"role": "user", "content": "Name a colour."}], "Blue, like the sky."
    ids = encode(tokenizer, prompt, answer, 64)
    start = len(tokenizer.apply_chat_template(prompt, tokenize=True, add_generation_prompt=True, return_dict=False))
    with torch.no_grad():
        hidden = model(torch.tensor([ids]), output_hidden_states=True).hidden_states  # depth + 1 × (1, T, h)
    by_hand = torch.cat([hidden[len(hidden) // 2][0, start:].mean(0), hidden[-1][0, start:].mean(0),
                         hidden[-1][0, -1]]).numpy()  # the features before every layer was kept
    every = reward_heads.layer_means(model, tokenizer, [prompt], [answer], max_length=64)
    assert every.shape == (1, len(hidden) + 1, model.config.hidden_size)
    middle_and_last = (0.5, 1.0)
    np.testing.assert_allclose(reward_heads.features(model, tokenizer, [prompt], [answer], 64, layers=middle_and_last)[0],
                               by_hand, atol=1e-5)
    np.testing.assert_allclose(reward_heads.pick(every, middle_and_last)[0], by_hand, atol=1e-5)
    np.testing.assert_allclose(reward_heads.pick(every, (0.0,))[0],
                               torch.cat([hidden[0][0, start:].mean(0), hidden[-1][0, -1]]).numpy(), atol=1e-5)
    assert reward_heads.features(model, tokenizer, [], [], 64).shape == (0, 0)
    assert reward_heads.pick(reward_heads.layer_means(model, tokenizer, [], [], 64)).shape == (0, 0)


def test_a_heads_model_reads_the_layers_its_heads_were_fitted_on(tmp_path):
    """A reward version keeps scoring with the hidden states it was fitted on, whatever LAYERS says now."""
    import dataclasses

    from transformers import AutoModel, AutoTokenizer

    from tests import tiny_models

    folder = tiny_models.make_tiny_policy(tmp_path / "policy")
    model, tokenizer = AutoModel.from_pretrained(folder), AutoTokenizer.from_pretrained(folder)
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    tokenizer.padding_side = "right"
    prompts = [[{"role": "user", "content": f"Question {i}?"}] for i in range(4)]
    responses = ["Yes.", "No, not at all.", "Maybe so.", "It depends on the day."]
    layers = (0.0,) if reward_heads.LAYERS != (0.0,) else (1.0,)
    x = reward_heads.features(model, tokenizer, prompts, responses, 64, layers=layers)
    ell = reward_heads.response_length(responses)
    heads = dataclasses.replace(reward_heads.fit(x[::2], x[1::2], ell[::2], ell[1::2], ["a", "b"], heads=2, l2=1.0),
                                layers=layers)
    scored = reward_heads.HeadsModel(model, tokenizer, heads, 64).rewards(prompts, responses)
    np.testing.assert_allclose(scored, heads.rewards(x, ell), atol=1e-6)
