"""SmoothQuant (Xiao et al., 2023) before a model is quantized to int8 weights and activations.

CTranslate2's int8 on a CPU quantizes each linear layer's input per row as well as its weights, and a
few input channels of a transformer carry values far larger than the rest, so those rows lose most
of their precision. SmoothQuant moves that range from the activations into the weights: each input
channel j of a linear layer is divided by s_j = max|X_j|^α / max|W_j|^(1−α) where the activation is
made (the RMSNorm's weight before q/k/v and gate/up; up_proj's output rows before down_proj) and
the weights reading it are multiplied by s_j. In fp32 the model computes the same function; only
the int8 copy changes. On SmolLM2-135M (α 0.5; maxima from 32 built-in prompts through the chat
template) the mean per-token KL of CTranslate2 int8's next-token distribution from the fp32 model's,
on 16 sampled answers to other prompts, fell from 0.068 to 0.023 nats (0.029 calibrated on
prompt + answer; o_proj and the LM head smoothed too: 0.027, so they are left). bench/generation.py
measures the sampled answers' log-prob under the fp32 model.

Only decoders built like Llama (RMSNorm with a plain weight, SwiGLU MLP) are smoothed; for any other
architecture `smooth` changes nothing and says so (Gemma's norm scales by 1 + weight, for one).
"""
from __future__ import annotations

ALPHA = 0.5
ARCHITECTURES = ("llama", "mistral", "qwen2")  # RMSNorm(x)·weight, then q/k/v; SwiGLU: down(act(gate)·up)
CALIBRATION_PROMPTS = 32


def supported(model) -> bool:
    """Whether `smooth` knows `model`'s architecture."""
    return getattr(model.config, "model_type", None) in ARCHITECTURES


# the layers whose input maxima `smooth` reads: one per activation it scales (q/k/v share theirs, as gate/up do)
ATTENTION_INPUT, MLP_INPUT, DOWN_INPUT = "self_attn.q_proj", "mlp.gate_proj", "mlp.down_proj"
SCALED_INPUTS = (ATTENTION_INPUT, MLP_INPUT, DOWN_INPUT)


def input_maxima(model, sequences: list[list[int]], suffixes: tuple[str, ...] | None = None) -> dict:
    """Per linear layer (by name; only those whose name ends with one of `suffixes`, when given),
    the largest |input| of each input channel over `sequences`.

    Shape: -> {name: (in_features,)}
    """
    import torch

    maxima, hooks = {}, []

    def record(name):
        def hook(module, inputs, output):
            x = inputs[0].detach().abs().reshape(-1, inputs[0].shape[-1]).amax(0).float()
            maxima[name] = torch.maximum(maxima[name], x) if name in maxima else x
        return hook

    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and (suffixes is None or name.endswith(suffixes)):
            hooks.append(module.register_forward_hook(record(name)))
    try:
        with torch.no_grad():
            for ids in sequences:
                model(torch.tensor([ids], device=model.device))
    finally:
        for hook in hooks:
            hook.remove()
    return maxima


def channel_scales(x_max, weights: list, alpha: float):
    """s_j = max|X_j|^α / max|W_j|^(1−α) (Xiao et al., 2023, eq. 4), W_j over every weight that reads
    channel j.

    Shape: x_max (in,), weights [(out_k, in)] -> (in,)
    """
    import torch

    w_max = torch.cat([w.detach().abs().float() for w in weights], 0).amax(0)
    return (x_max.clamp(min=1e-5) ** alpha / w_max.clamp(min=1e-5) ** (1 - alpha)).clamp(min=1e-5)


def smooth(model, sequences: list[list[int]], alpha: float = ALPHA) -> bool:
    """Smooth `model` in place on the activations of `sequences` (token ids); False, unchanged, for an
    architecture it does not know."""
    import torch

    if not supported(model):
        return False
    maxima = input_maxima(model, sequences, SCALED_INPUTS)
    with torch.no_grad():
        for i, layer in enumerate(model.model.layers):
            attn, mlp, name = layer.self_attn, layer.mlp, f"model.layers.{i}."
            for norm, linears, reads in ((layer.input_layernorm, (attn.q_proj, attn.k_proj, attn.v_proj), ATTENTION_INPUT),
                                         (layer.post_attention_layernorm, (mlp.gate_proj, mlp.up_proj), MLP_INPUT)):
                s = channel_scales(maxima[name + reads], [lin.weight for lin in linears], alpha)
                norm.weight.div_(s.to(norm.weight.dtype))
                for lin in linears:
                    lin.weight.mul_(s.to(lin.weight.dtype))
            s = channel_scales(maxima[name + DOWN_INPUT], [mlp.down_proj.weight], alpha)
            mlp.up_proj.weight.div_(s.to(mlp.up_proj.weight.dtype)[:, None])  # down's input is act(gate)·up
            if mlp.up_proj.bias is not None:  # Llama's mlp_bias
                mlp.up_proj.bias.div_(s.to(mlp.up_proj.bias.dtype))
            mlp.down_proj.weight.mul_(s.to(mlp.down_proj.weight.dtype))
    return True


def calibration_sequences(tokenizer, prompts: list[str]) -> list[list[int]]:
    """The prompts as the generator reads them: the chat template, ready for the answer."""
    return [tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=True, add_generation_prompt=True,
                                          return_dict=False) for p in prompts]
