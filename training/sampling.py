"""The one way prefloop samples from a policy: generation of pairs to label, PPO rollouts,
evaluation and the arena all call `sample`.

Sampling settings come from prefloop's own config alone. transformers fills every setting a
`GenerationConfig` leaves unset from the model's own `generation_config` (SmolLM2 on the hub ships
`repetition_penalty: 1.05`), so a rollout or an evaluation sample would silently follow a penalty
that the log-probs scoring them do not know about; PPO's ratio and the KL estimate would be wrong.
`sample` therefore generates with the model's defaults switched off for the call.

Rows are left-padded queries; responses are right-padded after their first stop token, which is
itself kept (masked in).
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch

from training import device


def stop_ids(model, tokenizer) -> list[int]:
    """Every token id that ends a response for this model (its generation config's and the tokenizer's EOS)."""
    return _stop_ids(model.generation_config.eos_token_id, tokenizer)


def _stop_ids(configured: int | list[int] | None, tokenizer) -> list[int]:
    ids = configured if isinstance(configured, list) else [configured]
    return sorted({i for i in ids + [tokenizer.eos_token_id] if i is not None})


def folder_stop_ids(folder, tokenizer) -> list[int]:
    """`stop_ids` of the model saved in `folder`, read from its config files without loading it."""
    from transformers import AutoConfig, GenerationConfig

    try:
        config = GenerationConfig.from_pretrained(folder)
    except OSError:  # no generation_config.json: transformers derives one from config.json
        config = GenerationConfig.from_model_config(AutoConfig.from_pretrained(folder))
    return _stop_ids(config.eos_token_id, tokenizer)


def response_mask(response_ids: torch.Tensor, stop: list[int]) -> torch.Tensor:
    """1 on every token up to and including the first stop token of each row, 0 after it.

    Shape: response_ids (B, R) -> (B, R).
    """
    is_stop = torch.isin(response_ids, torch.tensor(stop, device=response_ids.device)).long()
    stops_before = is_stop.cumsum(1) - is_stop  # stop tokens strictly before t
    return (stops_before == 0).long()


def ended(response_ids: torch.Tensor, kept: torch.Tensor, stop: list[int]) -> torch.Tensor:
    """Whether each row's kept tokens hold a stop token: it ended, even where its stop token was the
    last one allowed; a row without one was cut at the token cap. Shape: (B, R) -> (B,) bool."""
    is_stop = torch.isin(response_ids, torch.tensor(stop, device=response_ids.device))
    return (is_stop & kept.bool()).any(1)


@contextmanager
def own_settings_only(model) -> Iterator[None]:
    """Within the block, the model's own generation_config holds no sampling defaults."""
    from transformers import GenerationConfig

    inner = model.get_base_model() if hasattr(model, "get_base_model") else model  # a PeftModel's network
    saved = inner.generation_config
    inner.generation_config = GenerationConfig(eos_token_id=saved.eos_token_id, bos_token_id=saved.bos_token_id,
                                               pad_token_id=saved.pad_token_id)
    try:
        yield
    finally:
        inner.generation_config = saved


@torch.no_grad()
def sample(model, tokenizer, input_ids: torch.Tensor, attention_mask: torch.Tensor, *, max_new_tokens: int,
           temperature: float = 1.0, top_p: float = 1.0, seed: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One sampled response per row (top-k off; top_p 1.0 samples the full distribution, as PPO's
    ratio and the KL estimate assume). `seed` seeds torch's global generator first.

    Shape: input_ids, attention_mask (B, Q) left-padded -> response_ids (B, R), response_mask (B, R).
    """
    from transformers import GenerationConfig

    input_ids, attention_mask = device.place((input_ids, attention_mask))
    stop = stop_ids(model, tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop[0]
    config = GenerationConfig(do_sample=True, temperature=temperature, top_p=top_p, top_k=0,
                              max_new_tokens=max_new_tokens, eos_token_id=stop, pad_token_id=pad,
                              repetition_penalty=1.0, use_cache=True)
    if seed is not None:
        torch.manual_seed(seed)
    with own_settings_only(model):
        out = model.generate(input_ids=input_ids, attention_mask=attention_mask, generation_config=config)
    response_ids = out[:, input_ids.shape[1]:]
    return response_ids, response_mask(response_ids, stop)


def decode(tokenizer, response_ids: torch.Tensor, mask: torch.Tensor) -> list[str]:
    """Each response's text, special tokens (the stop token too) left out, outer whitespace stripped."""
    return [tokenizer.decode(ids[m.bool()], skip_special_tokens=True).strip() for ids, m in zip(response_ids, mask)]


def encode_chats(tokenizer, prompts: list[list[dict]], max_prompt_tokens: int | None = None):
    """Chat-template the conversations (assistant turn opened) and left-pad them; a prompt longer
    than `max_prompt_tokens` keeps its end (the latest turn and the opened assistant turn).

    Shape: -> input_ids (B, Q), attention_mask (B, Q), on the device (training/device.py).
    """
    texts = [tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True) for p in prompts]
    # truncation_side is a tokenizer attribute; as a call argument transformers ignores it and cuts the end
    side, tokenizer.truncation_side = tokenizer.truncation_side, "left"
    try:
        enc = tokenizer(texts, add_special_tokens=False, truncation=max_prompt_tokens is not None,
                        max_length=max_prompt_tokens, padding=True, padding_side="left", return_tensors="pt")
    finally:
        tokenizer.truncation_side = side
    return device.place((enc["input_ids"], enc["attention_mask"]))
