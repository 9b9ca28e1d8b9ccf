"""`python -m training env`: what prefloop would run on here, before a round starts: the device and
precision (training/device.py), the torch version, free memory, and a rough estimate of a DPO
round's peak memory for the current base model. Prints a few lines, then one JSON line.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from labeling.command import run_command

# Peak memory of a DPO round ≈ parameters × bytes per parameter × DPO_MEMORY_FACTOR. The factor is
# measured, not derived: bench/dpo.py's prefloop arm on SmolLM2-135M in fp32 (0.54 GB of weights)
# peaked at 4.0 GB of RSS with 16 pairs at the default batch size and lengths, gradient
# checkpointing and 1,024-position log-prob chunks: 7.4× the weights, rounded up to 8 for the
# reference copy a round from a later version holds (reference = base). Activations and the
# full-vocabulary logits grow with batch × length × vocabulary, not with parameters, so for a model
# much larger than SmolLM2 the weights dominate and this overestimates (towards 2-3×); it is a
# warning level, not a promise.
DPO_MEMORY_FACTOR = 8
GB = 1024**3
ROOT = Path(__file__).resolve().parent.parent


def parameter_count(folder: Path) -> int:
    """Parameters of the model in `folder`, read from its safetensors headers (no weights loaded)."""
    from safetensors import safe_open

    total = 0
    for path in sorted(Path(folder).glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as weights:
            for name in weights.keys():
                shape = weights.get_slice(name).get_shape()
                count = 1
                for size in shape:
                    count *= size
                total += count
    return total


QUANT_BYTES = {"4bit": 0.5, "8bit": 1.0}  # bytes a frozen weight takes under PREFLOOP_QUANT


def dpo_peak_bytes(parameters: int, bytes_per_parameter: float) -> int:
    """The rough peak memory of a DPO round (see DPO_MEMORY_FACTOR)."""
    return int(parameters * bytes_per_parameter * DPO_MEMORY_FACTOR)


def report() -> dict[str, Any]:
    """Device, dtype, torch, memory and the DPO estimate; `base_model_error` says why the estimate
    is missing when the base model cannot be found."""
    import torch

    from training import device
    from training.model import ModelPathError, base_model_path, default_model_converted

    from training.versions import trained_on

    out = {**device.describe(), "trained_on": trained_on()}  # what a round started now records
    bytes_per = QUANT_BYTES.get(out["quantization"]) or torch.empty(0, dtype=device.dtype()).element_size()
    if not os.environ.get("PREFLOOP_MODEL", "").strip() and not default_model_converted():
        return {**out, "base_model": None, "parameters": None, "dpo_peak_bytes": None,  # asking must not convert it
                "base_model_error": "The default model is converted on first use (make run does it at start); "
                                    "the memory estimate follows."}
    try:
        folder = base_model_path()
    except ModelPathError as exc:
        return {**out, "base_model": None, "parameters": None, "dpo_peak_bytes": None, "base_model_error": str(exc)}
    parameters = parameter_count(folder)
    return {**out, "base_model": str(folder), "parameters": parameters,
            "dpo_peak_bytes": dpo_peak_bytes(parameters, bytes_per)}


def _gb(n: int | None) -> str:
    return "unknown" if n is None else f"{n / GB:.1f} GB"


def report_in_child(timeout: float = 120) -> dict[str, Any]:
    """`report()` from a child process (`python -m training env`), so the Train page learns the device
    and memory without importing torch itself; {"error": sentence} when the child fails."""
    try:
        done = subprocess.run([sys.executable, "-m", "training", "env"], capture_output=True, text=True, cwd=ROOT,
                              timeout=timeout, env=dict(os.environ, PREFLOOP_THREADS="1"))
        lines = done.stdout.strip().splitlines()
        if done.returncode or not lines:
            return {"error": (done.stderr.strip().splitlines() or ["`python -m training env` failed."])[-1]}
        return json.loads(lines[-1])
    except subprocess.TimeoutExpired:
        return {"error": f"`python -m training env` did not answer within {timeout:.0f} s."}
    except (OSError, ValueError) as exc:  # no interpreter to start, or a last line that is not JSON
        return {"error": f"`python -m training env` could not be read ({exc})."}


def sentence(info: dict[str, Any]) -> str:
    """What the Train page says before a round starts: where it runs, the memory free, and a DPO
    round's rough peak on this base model."""
    if "error" in info:
        return f"Device and memory unknown: {info['error']}"
    quantized = f", LoRA rounds on {info['quantization']} weights" if info.get("quantization") else ""
    said = (f"Runs on {info['device']} in {info['dtype']}{quantized} (torch {info['torch']}); "
            f"{_gb(info['free_bytes'])} free of {_gb(info['total_bytes'])}")
    if info.get("parameters") is None:
        return f"{said}. {info.get('base_model_error', '')}".strip()
    return (f"{said}; a DPO round on this {info['parameters'] / 1e6:.0f} M-parameter base peaks near "
            f"{_gb(info['dpo_peak_bytes'])} (rough).")


def may_not_fit(info: dict[str, Any]) -> bool:
    """True when a DPO round's rough peak is above the memory free now."""
    peak, free = info.get("dpo_peak_bytes"), info.get("free_bytes")
    return peak is not None and free is not None and peak > free


def main(argv: list[str]) -> int:
    """`python -m training env`."""
    from training.device import DeviceError

    if argv:
        print("usage: python -m training env", file=sys.stderr)
        return 2

    def work() -> dict:
        info = report()
        quantized = f", LoRA rounds on {info['quantization']} weights (QLoRA)" if info["quantization"] else ""
        print(f"device: {info['device']} ({info['dtype']}{quantized}), torch {info['torch']}")
        print(f"free memory: {_gb(info['free_bytes'])} of {_gb(info['total_bytes'])}")
        if info["parameters"] is None:
            print(f"base model: {info['base_model_error']}")
        else:
            print(f"base model: {info['base_model']}, {info['parameters'] / 1e6:.1f} M parameters; a DPO round "
                  f"peaks near {_gb(info['dpo_peak_bytes'])} (rough)")
        return info

    return run_command(work, {DeviceError: 2})
