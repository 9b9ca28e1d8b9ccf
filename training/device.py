"""Where models run and in which precision: the one place that decides (as accelerate's
`PartialState().device` does). Every model load and every batch asks this module; no other module
names a device or a precision.

`PREFLOOP_DEVICE`: auto (default), cpu, cuda or mps. auto takes a CUDA card when torch sees one,
else Apple's MPS, else the CPU. A named device that is not there is refused with one sentence. To
pick one card out of several, set CUDA_VISIBLE_DEVICES: TRL's trainers also take the first card
they see, so a "cuda:N" here could disagree with them.

`PREFLOOP_DTYPE`: auto (default), fp32, bf16 or fp16. auto is bf16 on a CUDA card that supports it,
fp16 on an older card, fp32 on the CPU and on MPS. Explicit values:
- fp32 works everywhere;
- bf16 on a CUDA card with bf16 (Ampere and newer), on MPS where torch supports it, and on the CPU:
  torch computes bf16 on any CPU (natively only with AVX512-BF16 or AMX, slower than fp32 elsewhere;
  on 2 AVX512-BF16 cores a DPO round took about as long as in fp32 and PPO a fifth less, README),
  so it is allowed there to halve the memory of a model, never chosen by auto;
- fp16 on CUDA and MPS; refused on the CPU, where the trainers have no fp16 path worth taking.

How the precision is used. Frozen weights (the base under a LoRA adapter, the reference, the
reward scorer, the policy being sampled) are held in that dtype. Weights that train are kept in
fp32 (the LoRA adapters, PPO's value head, a reward encoder trained in full): forward passes run in
the dtype under autocast (TRL's trainers get `bf16`/`fp16` from `trainer_precision`, PPO's own loop
from `autocast` and `grad_scaler`, which scales the loss in fp16 so small gradients do not vanish).

`PREFLOOP_QUANT`: none (default), 4bit or 8bit. QLoRA (Dettmers et al. 2023): the frozen weights
under a round's LoRA adapter, and its reference, are loaded in 4-bit NF4 (double-quantized,
computing in `dtype()`) or 8-bit by bitsandbytes, which quarters or halves their memory; the adapters
stay as above. Only on a CUDA card with bitsandbytes installed; refused with one sentence elsewhere.
Sampling pairs, evaluation, the arena and export read full-precision weights whatever it says.
"""
from __future__ import annotations

import importlib.util
import os
from contextlib import AbstractContextManager
from typing import Any

import torch

DEVICE_VAR, DTYPE_VAR = "PREFLOOP_DEVICE", "PREFLOOP_DTYPE"
DEVICES = ("auto", "cpu", "cuda", "mps")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}
QUANT_VAR = "PREFLOOP_QUANT"
QUANTS = ("none", "4bit", "8bit")


class DeviceError(RuntimeError):
    """PREFLOOP_DEVICE or PREFLOOP_DTYPE asks for what this machine does not have; one sentence."""


# ---------------------------------------------------------------- what is there


def _mps_available() -> bool:
    return bool(getattr(torch.backends, "mps", None)) and torch.backends.mps.is_available()


def _bf16_supported(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "mps":
        try:  # torch has no query for MPS; a bf16 tensor fails to build where it is unsupported
            torch.ones(1, dtype=torch.bfloat16, device=device)
        except (RuntimeError, TypeError):
            return False
    return True


# ---------------------------------------------------------------- the decisions


def device() -> torch.device:
    """The device every model and batch goes to (DeviceError when PREFLOOP_DEVICE cannot be honoured)."""
    chosen = os.environ.get(DEVICE_VAR, "").strip().lower() or "auto"
    if chosen not in DEVICES:
        raise DeviceError(f"{DEVICE_VAR}={chosen} is not one of {', '.join(DEVICES)}; to pick one of several "
                          f"CUDA cards set CUDA_VISIBLE_DEVICES and {DEVICE_VAR}=cuda.")
    if chosen == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "mps" if _mps_available() else "cpu")
    if chosen == "cuda" and not torch.cuda.is_available():
        build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
        raise DeviceError(f"{DEVICE_VAR}=cuda but torch {torch.__version__} ({build}) sees no CUDA device; "
                          f"unset {DEVICE_VAR} or set it to cpu.")
    if chosen == "mps" and not _mps_available():
        raise DeviceError(f"{DEVICE_VAR}=mps but torch sees no Apple MPS device; unset {DEVICE_VAR} or set it to cpu.")
    return torch.device(chosen)


def dtype(on: torch.device | None = None) -> torch.dtype:
    """The precision of frozen weights and forward passes on `on` (default: `device()`)."""
    on = on or device()
    chosen = os.environ.get(DTYPE_VAR, "").strip().lower() or "auto"
    if chosen == "auto":
        if on.type != "cuda":
            return torch.float32
        return torch.bfloat16 if _bf16_supported(on) else torch.float16
    if chosen not in DTYPES:
        raise DeviceError(f"{DTYPE_VAR}={chosen} is not one of auto, {', '.join(DTYPES)}; unset it for the "
                          f"device's default.")
    if chosen == "bf16" and not _bf16_supported(on):
        raise DeviceError(f"{DTYPE_VAR}=bf16 is not supported on this {on.type} device (CUDA needs an Ampere or "
                          f"newer card); set {DTYPE_VAR}=fp16 or fp32, or unset it.")
    if chosen == "fp16" and on.type == "cpu":
        raise DeviceError(f"{DTYPE_VAR}=fp16 needs a GPU (CUDA or MPS), and the device is the CPU; set "
                          f"{DTYPE_VAR}=bf16 or fp32, or unset it.")
    return DTYPES[chosen]


def quantization() -> str | None:
    """"4bit" or "8bit" when LoRA rounds load their frozen weights quantized (PREFLOOP_QUANT), else
    None; DeviceError where that cannot be honoured (no CUDA card, no bitsandbytes)."""
    chosen = os.environ.get(QUANT_VAR, "").strip().lower() or "none"
    if chosen not in QUANTS:
        raise DeviceError(f"{QUANT_VAR}={chosen} is not one of {', '.join(QUANTS)}; unset it to train in full "
                          f"precision.")
    if chosen == "none":
        return None
    on = device()
    if on.type != "cuda":
        raise DeviceError(f"{QUANT_VAR}={chosen} (QLoRA) needs a CUDA GPU, and the device is the {on.type}; "
                          f"unset {QUANT_VAR}.")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise DeviceError(f"{QUANT_VAR}={chosen} needs bitsandbytes, which is not installed (pip install "
                          f"bitsandbytes); or unset {QUANT_VAR}.")
    return chosen


def quantization_kwargs() -> dict[str, Any] | None:
    """The arguments of transformers' BitsAndBytesConfig for `quantization()`, or None: 4-bit NF4
    with double quantization computing in `dtype()` (the QLoRA paper's recipe), or LLM.int8()."""
    chosen = quantization()
    if chosen is None:
        return None
    if chosen == "8bit":
        return {"load_in_8bit": True}
    return {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": True,
            "bnb_4bit_compute_dtype": dtype()}


def weights_dtype(trained_in_full: bool = False) -> torch.dtype:
    """The dtype to load a model's weights in: fp32 when every weight is to be trained (the
    optimizer needs fp32 master weights; autocast computes in the half dtype), else `dtype()`."""
    return torch.float32 if trained_in_full else dtype()


# ---------------------------------------------------------------- putting things there


def place(thing: Any, as_dtype: torch.dtype | None = None) -> Any:
    """`thing` on `device()`: a model (cast to `as_dtype` when given), a tensor, a tokenizer's
    BatchEncoding, or a dict, list or tuple of those. Integer tensors keep their dtype."""
    target = device()
    if isinstance(thing, torch.nn.Module):
        return thing.to(target, as_dtype) if as_dtype is not None else thing.to(target)
    if isinstance(thing, torch.Tensor):
        return thing.to(target)
    if isinstance(thing, dict):
        return {k: place(v) for k, v in thing.items()}
    if isinstance(thing, (list, tuple)):
        return type(thing)(place(v) for v in thing)
    if hasattr(thing, "to"):  # transformers' BatchEncoding (a UserDict)
        return thing.to(target)
    return thing


def length_batches(sequences: list, batch_size: int) -> list[list[int]]:
    """The indices of `sequences`, shortest first, in batches of `batch_size`: a padded batch of
    like lengths wastes little compute. The caller scatters each batch's results back by index."""
    order = sorted(range(len(sequences)), key=lambda k: len(sequences[k]))
    return [order[first:first + batch_size] for first in range(0, len(order), batch_size)]


def to_host(tensor: torch.Tensor) -> torch.Tensor:
    """A tensor back in CPU memory (for numpy, saving, or scores leaving a scorer)."""
    return tensor.detach().to("cpu")


def autocast() -> AbstractContextManager:
    """Forward passes in `dtype()` where weights of two precisions meet (a fp32 head or adapter on
    a half-precision base); a no-op in fp32."""
    on = device()
    half = dtype(on)
    return torch.autocast(on.type, dtype=half, enabled=half != torch.float32)


def grad_scaler() -> "torch.amp.GradScaler":
    """Loss scaling for a hand-written training loop: on in fp16 (whose small gradients underflow
    to zero without it), a pass-through otherwise."""
    on = device()
    return torch.amp.GradScaler(on.type, enabled=dtype(on) == torch.float16)


def keep_trainable_fp32(model: torch.nn.Module) -> torch.nn.Module:
    """Trainable parameters in fp32 on a half-precision model (adapters, a new scalar head): the
    optimizer's updates are far below bf16's resolution."""
    for parameter in model.parameters():
        if parameter.requires_grad and parameter.dtype != torch.float32:
            parameter.data = parameter.data.float()
    return model


def trainer_precision() -> dict[str, bool]:
    """The precision flags of a TRL/transformers TrainingArguments: autocast to `dtype()`, and the
    Trainer told to stay on the CPU when that is the device (it would take a GPU it sees otherwise)."""
    on = device()
    half = dtype(on)
    return {"bf16": half == torch.bfloat16, "fp16": half == torch.float16, "use_cpu": on.type == "cpu"}


def describe() -> dict[str, Any]:
    """Device, dtype, quantization of LoRA rounds' frozen weights, torch version and free/total
    memory of the device, in bytes."""
    on = device()
    free, total = memory(on)
    return {"device": str(on), "dtype": DTYPE_NAMES[dtype(on)], "quantization": quantization(),
            "torch": torch.__version__, "free_bytes": free, "total_bytes": total}


def memory(on: torch.device) -> tuple[int | None, int | None]:
    """(free, total) bytes: the card's on CUDA, the machine's elsewhere (MPS shares system memory)."""
    if on.type == "cuda":
        return torch.cuda.mem_get_info(on)
    try:
        import psutil  # optional: accelerate installs it; without it we ask /proc/meminfo
    except ImportError:
        return _meminfo()
    stats = psutil.virtual_memory()
    return stats.available, stats.total


def _meminfo() -> tuple[int | None, int | None]:
    """(MemAvailable, MemTotal) from /proc/meminfo, or (None, None) where there is none."""
    try:
        fields = dict(line.split(":", 1) for line in open("/proc/meminfo").read().splitlines() if ":" in line)
    except OSError:
        return None, None

    def kib(name: str) -> int | None:
        return int(fields[name].split()[0]) * 1024 if name in fields else None

    return kib("MemAvailable"), kib("MemTotal")
