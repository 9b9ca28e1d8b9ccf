"""LoRA adapters on any transformers model: the layers to adapt are read from the architecture,
never assumed from one model's names (SmolLM2's q_proj/v_proj are GPT-2's c_attn, Falcon's
query_key_value).

Every linear layer of the network is adapted, as peft's "all-linear" and the QLoRA paper do
(Dettmers et al. 2023, §4: all layers are needed to match full fine-tuning), except the heads: the
LM head (`get_output_embeddings`, often tied to the input embeddings) and a classification head
(`score`, `classifier`), which a SEQ_CLS task trains in full instead. GPT-2 and its kin build their
layers from transformers' Conv1D, whose weight is stored transposed; peft needs `fan_in_fan_out`
for them.
"""
from __future__ import annotations

import torch

HEAD_NAMES = ("score", "classifier", "qa_outputs")  # classification heads, as peft's SEQ_CLS_HEAD_NAMES


def _linear_classes() -> tuple[type, ...]:
    from transformers.pytorch_utils import Conv1D

    return torch.nn.Linear, Conv1D


def heads(model) -> list[torch.nn.Module]:
    """The output layers of `model` that are never adapted: its LM head and a classification head."""
    found = [getattr(model, name, None) for name in HEAD_NAMES]
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return [m for m in [output, *found] if isinstance(m, torch.nn.Module)]


def target_modules(model) -> list[str]:
    """The linear (and Conv1D) layers of `model` to put LoRA on, heads left out: their short names
    (q_proj, c_attn, ...) when these name no head, else the full module paths."""
    skip = {id(m) for m in heads(model)}
    linear = _linear_classes()
    targets, head_names = [], set()
    for name, module in model.named_modules():
        if id(module) in skip:
            head_names.add(name.rsplit(".", 1)[-1])
        elif isinstance(module, linear):
            targets.append(name)
    if not targets:
        raise ValueError(f"{type(model).__name__} has no linear layer to put a LoRA adapter on.")
    short = {name.rsplit(".", 1)[-1] for name in targets}
    return sorted(short) if not short & head_names else sorted(targets)


def uses_conv1d(model, targets: list[str]) -> bool:
    """Whether the targeted layers are transformers' Conv1D (weights stored as (in, out))."""
    from transformers.pytorch_utils import Conv1D

    chosen = set(targets)
    return any(isinstance(m, Conv1D) and (name in chosen or name.rsplit(".", 1)[-1] in chosen)
               for name, m in model.named_modules())


def lora_config(model, r: int, alpha: int, task_type: str = "CAUSAL_LM", dropout: float = 0.0):
    """A peft LoraConfig for `model`'s architecture: every linear layer but the heads."""
    from peft import LoraConfig

    targets = target_modules(model)
    return LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets,
                      fan_in_fan_out=uses_conv1d(model, targets), task_type=task_type)
