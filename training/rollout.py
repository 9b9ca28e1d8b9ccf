"""Rollouts for PPO: sample responses from the policy, then score every response token with the
policy, the reference (adapters disabled) and the value head.

Queries are left-padded so all responses start at the same column Q; responses are right-padded
after their first end-of-sequence token, which is itself a real (masked-in) token.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Callable

import torch

from training import device, sampling
from training.losses import token_logprobs

RewardFn = Callable[[list[list[dict]], list[str]], torch.Tensor]


@dataclass
class Rollout:
    """One batch of sampled responses and everything PPO needs about them."""

    query_ids: torch.Tensor  # (B, Q) left-padded
    query_mask: torch.Tensor  # (B, Q)
    response_ids: torch.Tensor  # (B, R) right-padded
    response_mask: torch.Tensor  # (B, R) 1 up to and including the first EOS
    logprobs: torch.Tensor  # (B, R) log π_old(y_t)
    ref_logprobs: torch.Tensor  # (B, R) log π_ref(y_t)
    values: torch.Tensor  # (B, R) V_old(s_t)
    scores: torch.Tensor  # (B,) raw reward-model scores
    texts: list[str]

    def select(self, index: torch.Tensor) -> "Rollout":
        """The rows `index` of every tensor (a minibatch). Shape: index (b,)."""
        picked = {f.name: getattr(self, f.name)[index] for f in fields(self) if f.name != "texts"}
        return Rollout(**picked, texts=[self.texts[i] for i in index.tolist()])


class ValueHead(torch.nn.Module):
    """V(s_t): a linear map of the policy backbone's last hidden state to a scalar, zero at the start."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.linear = torch.nn.Linear(hidden_size, 1)
        torch.nn.init.zeros_(self.linear.weight)
        torch.nn.init.zeros_(self.linear.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """Shape: hidden (B, T, H) -> (B, T, 1)."""
        return self.linear(hidden.to(self.linear.weight.dtype))


VALUE_HEAD_FILE = "value_head.safetensors"  # saved beside a PPO version's adapter


def load_value_head(hidden_size: int, folder: str | None) -> ValueHead:
    """The value head a PPO round saved in `folder` (its version), else a fresh one: a round that
    starts from a PPO version goes on with the critic trained on that very policy."""
    from safetensors.torch import load_file

    head = ValueHead(hidden_size)
    path = Path(folder) / VALUE_HEAD_FILE if folder else None
    if path is not None and path.is_file():
        state = load_file(str(path))
        if state["linear.weight"].shape == head.linear.weight.shape:  # the same backbone width
            head.load_state_dict(state)
    return head


def save_value_head(head: ValueHead, folder: Path) -> None:
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in head.state_dict().items()}, str(Path(folder) / VALUE_HEAD_FILE))


def wrap_with_lora(model, r: int, alpha: int):
    """A fresh LoRA adapter on every linear layer of `model` but its LM head (training/lora.py);
    with it disabled, `model` is π_ref. No dropout, so π_old and π agree exactly before the first
    update. On weights quantized by PREFLOOP_QUANT the adapter goes on as it is (TRL's DPOTrainer
    does the same, without peft's k-bit preparation, which would upcast embeddings and head to fp32)."""
    from peft import get_peft_model

    from training import lora

    return get_peft_model(model, lora.lora_config(model, r, alpha))  # peft keeps the adapter in fp32


def position_ids(mask: torch.Tensor) -> torch.Tensor:
    """Positions that skip left padding, as generation uses them. Shape: mask (B, T) -> (B, T)."""
    return (mask.long().cumsum(1) - 1).clamp(min=0)


def score_tokens(model, value_head, query_ids, query_mask, response_ids, response_mask, temperature: float,
                 with_logits: bool = False):
    """Log π(y_t | x, y_<t) at temperature, V(s_t) from the last hidden state, and optionally the
    logits, for every response token. `value_head=None` skips the values (for the reference).

    Shape: query_* (B, Q), response_* (B, R) -> logprobs (B, R), values (B, R) | None, logits (B, R, V) | None.
    """
    Q, R = query_ids.shape[1], response_ids.shape[1]
    input_ids = torch.cat([query_ids, response_ids], 1)  # (B, Q + R)
    mask = torch.cat([query_mask, response_mask], 1)
    out = model(input_ids=input_ids, attention_mask=mask, position_ids=position_ids(mask),
                output_hidden_states=value_head is not None, logits_to_keep=R + 1, use_cache=False)
    logits = out.logits[:, :-1] / temperature  # (B, R, V): the state before each response token
    logprobs = token_logprobs(logits, response_ids) * response_mask
    values = None
    if value_head is not None:
        hidden = out.hidden_states[-1][:, Q - 1:-1]  # (B, R, H)
        values = value_head(hidden).squeeze(-1) * response_mask
    return logprobs, values, logits if with_logits else None


@torch.no_grad()
def collect_rollout(model, value_head, tokenizer, prompts: list[list[dict]], reward_fn: RewardFn,
                    max_new_tokens: int, temperature: float, max_prompt_tokens: int, reference=None,
                    sampler=None) -> Rollout:
    """Sample, decode and score one batch of prompts, dropout off. `model` is a PeftModel; the
    reference log-probs come from `reference` when given, else from `model` with its adapters
    switched off (no second copy of the model held). `sampler` (training/engine.py's `VllmSampler`)
    samples instead of `model` after taking its weights; the log-probs are `model`'s either way."""
    model.eval()
    query_ids, query_mask = sampling.encode_chats(tokenizer, prompts, max_prompt_tokens)
    if sampler is not None:
        sampler.sync(model)
        response_ids, response_mask = sampler.sample_ids(query_ids, query_mask, max_new_tokens=max_new_tokens,
                                                         temperature=temperature, pad=tokenizer.pad_token_id)
    else:
        response_ids, response_mask = sampling.sample(model, tokenizer, query_ids, query_mask,
                                                      max_new_tokens=max_new_tokens, temperature=temperature)
    args = (query_ids, query_mask, response_ids, response_mask, temperature)
    logprobs, values, _ = score_tokens(model, value_head, *args)
    if reference is not None:
        ref_logprobs, _, _ = score_tokens(reference, None, *args)
    else:
        with model.disable_adapter():
            ref_logprobs, _, _ = score_tokens(model, None, *args)
    texts = sampling.decode(tokenizer, response_ids, response_mask)
    scores = device.place(torch.as_tensor(reward_fn(prompts, texts), dtype=torch.float32).reshape(-1))
    if len(scores) != len(texts) or not torch.isfinite(scores).all():
        raise ValueError(f"The reward function must return one finite score per response ({len(texts)}); "
                         f"got {scores.tolist()}.")
    return Rollout(query_ids, query_mask, response_ids, response_mask, logprobs, ref_logprobs, values,
                   scores, texts)

