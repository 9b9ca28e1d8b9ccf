"""SmoothQuant before int8: the fp32 model computes the same function, an outlier input channel
stops ruining the int8 copy's precision, and an architecture it does not know is left alone."""
from __future__ import annotations

import torch

from tests.tiny_models import make_tiny_policy
from training import smoothquant

SEQUENCES = [[3, 7, 11, 5, 9, 2], [4, 4, 8, 15, 16, 23, 12], [1, 2, 3]]


def tiny(tmp_path, outlier: float = 1.0):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(make_tiny_policy(tmp_path / "tiny")).eval()
    with torch.no_grad():  # one input channel of every q/k/v and gate/up far larger than the rest, as in real LLMs
        for layer in model.model.layers:
            layer.input_layernorm.weight[3] *= outlier
            layer.post_attention_layernorm.weight[5] *= outlier
    return model


def logits(model):
    with torch.no_grad():
        return [model(torch.tensor([ids])).logits for ids in SEQUENCES]


def w8a8(x, w):
    """x @ w.T with both int8-quantized per row (symmetric), as CTranslate2 does on a CPU."""
    def q(t):
        scale = t.abs().amax(-1, keepdim=True).clamp(min=1e-8) / 127
        return torch.round(t / scale) * scale
    return q(x) @ q(w).T


def q_proj_int8_error(model) -> float:
    """Relative error of layer 0's q_proj in int8 on the inputs it gets from SEQUENCES."""
    seen = []
    hook = model.model.layers[0].self_attn.q_proj.register_forward_hook(lambda m, i, o: seen.append(i[0][0]))
    logits(model)
    hook.remove()
    w = model.model.layers[0].self_attn.q_proj.weight.detach()
    x = torch.cat(seen)
    return float((w8a8(x, w) - x @ w.T).norm() / (x @ w.T).norm())


def test_a_smoothed_model_computes_what_it_did_in_fp32(tmp_path):
    model = tiny(tmp_path, outlier=30)
    before, weight = logits(model), model.model.layers[1].mlp.down_proj.weight.clone()
    assert smoothquant.smooth(model, SEQUENCES)
    assert not torch.equal(weight, model.model.layers[1].mlp.down_proj.weight)  # it did change the weights
    for a, b in zip(before, logits(model)):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_an_outlier_channel_costs_int8_far_less_precision_once_smoothed(tmp_path):
    model = tiny(tmp_path, outlier=30)
    plain = q_proj_int8_error(model)
    smoothquant.smooth(model, SEQUENCES)
    smoothed = q_proj_int8_error(model)
    assert smoothed < plain / 2, (plain, smoothed)


def test_an_architecture_it_does_not_know_is_left_as_it_was(tmp_path):
    model = tiny(tmp_path)
    model.config.model_type = "gemma"  # its norm scales by 1 + weight: dividing the weight would change the model
    state = {k: v.clone() for k, v in model.state_dict().items()}
    assert not smoothquant.smooth(model, SEQUENCES)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
