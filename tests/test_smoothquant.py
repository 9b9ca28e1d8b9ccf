"""SmoothQuant before int8: the fp32 model computes the same function, an outlier input channel
stops ruining the int8 copy's precision, and an architecture it does not know is left alone."""
from __future__ import annotations

import pytest
import torch

from tests.tiny_models import make_tiny_gpt2, make_tiny_policy, make_tiny_qwen2
from training import smoothquant

SEQUENCES = [[3, 7, 11, 5, 9, 2], [4, 4, 8, 15, 16, 23, 12], [1, 2, 3]]


def llama_with_biases(folder):
    """The tiny Llama with attention and MLP biases (LlamaConfig's attention_bias, mlp_bias)."""
    from transformers import AutoConfig, LlamaForCausalLM

    make_tiny_policy(folder)
    config = AutoConfig.from_pretrained(folder)
    config.attention_bias = config.mlp_bias = True
    LlamaForCausalLM(config).save_pretrained(folder, safe_serialization=True)
    return folder


ARCHITECTURES = {"llama": make_tiny_policy, "llama with biases": llama_with_biases, "qwen2": make_tiny_qwen2}


def tiny_model(tmp_path, make=make_tiny_policy, outlier: float = 1.0):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(make(tmp_path / "tiny")).eval()
    torch.manual_seed(1)
    with torch.no_grad():
        for name, tensor in model.named_parameters():
            if name.endswith(".bias"):  # transformers starts biases at zero, where dividing one changes nothing
                tensor.normal_(0, 0.5)
        for layer in model.model.layers:  # one input channel of q/k/v and gate/up far larger than the rest, as in LLMs
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


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_a_smoothed_model_computes_what_it_did_in_fp32(tmp_path, architecture):
    model = tiny_model(tmp_path, ARCHITECTURES[architecture], outlier=30)
    before, weight = logits(model), model.model.layers[1].mlp.down_proj.weight.clone()
    assert smoothquant.smooth(model, SEQUENCES)
    assert not torch.equal(weight, model.model.layers[1].mlp.down_proj.weight)  # it did change the weights
    for a, b in zip(before, logits(model)):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_an_outlier_channel_costs_int8_far_less_precision_once_smoothed(tmp_path):
    model = tiny_model(tmp_path, outlier=30)
    plain = q_proj_int8_error(model)
    smoothquant.smooth(model, SEQUENCES)
    smoothed = q_proj_int8_error(model)
    assert smoothed < plain / 2, (plain, smoothed)


def test_an_architecture_it_does_not_know_is_left_as_it_was(tmp_path):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(make_tiny_gpt2(tmp_path / "gpt2"))  # LayerNorm with a bias, Conv1D
    state = {k: v.clone() for k, v in model.state_dict().items()}
    assert not smoothquant.smooth(model, SEQUENCES)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())


def test_the_calibration_prompts_are_read_through_the_chat_template_ready_for_the_answer(tmp_path):
    from transformers import AutoTokenizer

    from training.generate import chat_texts

    tokenizer = AutoTokenizer.from_pretrained(make_tiny_policy(tmp_path / "tiny"))
    ids = smoothquant.calibration_sequences(tokenizer, ["Name a colour.", "Say hi."])
    texts = chat_texts(tokenizer, [[{"role": "user", "content": "Name a colour."}], [{"role": "user", "content": "Say hi."}]])
    assert ids == [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]  # as the generator reads them


def test_only_the_layers_smooth_scales_are_watched_and_each_has_its_channels(tmp_path):
    model = tiny_model(tmp_path)
    maxima = smoothquant.input_maxima(model, SEQUENCES, smoothquant.SCALED_INPUTS)
    layers = len(model.model.layers)
    assert sorted(maxima) == sorted(f"model.layers.{i}.{r}" for i in range(layers) for r in smoothquant.SCALED_INPUTS)
    every = smoothquant.input_maxima(model, SEQUENCES)  # no suffixes: every linear layer, the LM head too
    assert len(every) == 7 * layers + 1
    for name, x in maxima.items():
        assert torch.equal(x, every[name])
    down = maxima["model.layers.0.mlp.down_proj"]
    assert down.shape == (model.config.intermediate_size,)
