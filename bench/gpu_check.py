"""A GPU check that can be run as is: the loop's stages on one CUDA device, each timed with its peak
GPU memory, and the two that have a rate (generation, DPO) with tokens/s and MFU.

    python bench/gpu_check.py [--model FOLDER | --random-weights] [--prompts 64] [--peak-tflops T]

Stages, in a fresh workspace, through the same entry points as the app: the generator samples
pairs from the base (transformers: on a GPU the reference engine is the fast one), a scripted
annotator (bench/tastes.py `plain`) labels them through the queue, then a reward round, a DPO round,
a PPO round and an evaluation of the DPO version against the base, with each round's defaults in
the precision the device seam picks (bf16 where the card has it). MFU is the model FLOPs a stage
did over the card's dense bf16 peak: 2·N per generated token; 6·N per DPO training token (forward,
backward through the frozen weights to the adapter, and the reference's forward at every step:
the check turns the reference cache off), N the
parameters. The peak comes from the card's name (`PEAK_TFLOPS`) or `--peak-tflops`. Where
bitsandbytes or vllm is installed beside the card, two more stages: a DPO round from the base on
4-bit weights (`PREFLOOP_QUANT=4bit`) and pairs sampled with vLLM; otherwise "skipped" says why.

Where there is no CUDA device it prints {"skipped": "no CUDA"} and exits 0. `--allow-cpu` runs the
same stages on the CPU, without MFU (the test suite does, on a tiny model, so the script keeps
working between GPU runs). `--random-weights` builds the base model from SmolLM2's config with random
weights (for a machine the 98 MB model does not reach: speed and memory only; the taste figures
then mean nothing). Last line printed: JSON, with the CPU figures the README measured beside.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# Dense bf16 TFLOPS by the card's name (vendor sheets, without sparsity); the first match wins.
PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "L4": 121.0, "A10": 125.0,
               "RTX 4090": 165.0, "RTX 3090": 71.0, "V100": 125.0, "T4": 65.0}
# The CPU figures the README gives for SmolLM2 on this project's 2-core machine, for the GPU's to be
# read beside (other pairs, so an order of magnitude, not a ratio to quote): bench/generation.py's
# batched transformers, 4,021 tokens in 41.6 s; bench/dpo.py's prefloop round, 256 hh-rlhf pairs
# once in 985.6 s of training.
CPU_FIGURES = {"generation_tokens_per_s": 96.6, "dpo_pairs_per_s": round(256 / 985.6, 2)}
# SmolLM2-135M-Instruct's architecture, for --random-weights (its config.json, less the weights).
SMOLLM2_CONFIG = dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                      num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192,
                      rope_theta=100000.0, rms_norm_eps=1e-5, tie_word_embeddings=True,
                      bos_token_id=1, eos_token_id=2, pad_token_id=2)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", help="base model folder (default: PREFLOOP_MODEL, else the converted SmolLM2)")
    p.add_argument("--random-weights", action="store_true", help="SmolLM2's architecture with random weights")
    p.add_argument("--prompts", type=int, default=64, help="training prompts the generator answers (pairs)")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--ppo-steps", type=int, default=4, help="PPO optimizer steps (the round's default is longer)")
    p.add_argument("--peak-tflops", type=float, help="the card's dense bf16 TFLOPS (default: from its name)")
    p.add_argument("--allow-cpu", action="store_true", help="run on the CPU where there is no CUDA (no MFU)")
    p.add_argument("--home", help="workspace folder (default: a temporary one)")
    return p.parse_args(argv)


def random_smollm2(folder: Path, tokenizer_from: Path | None) -> Path:
    """SmolLM2-135M's architecture with random weights, saved in bf16, with a tokenizer (SmolLM2's
    when a folder has one, else the tests' tiny one, whose ids fit in the vocabulary)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**SMOLLM2_CONFIG)).to(torch.bfloat16)
    model.save_pretrained(folder, safe_serialization=True)
    if tokenizer_from is not None:
        AutoTokenizer.from_pretrained(tokenizer_from).save_pretrained(folder)
    else:
        from tests.tiny_models import make_tokenizer

        make_tokenizer(folder)
    return folder


class Stage:
    """Times a stage and records the GPU's peak memory during it (reset at its start)."""

    def __init__(self, on_cuda: bool):
        self.on_cuda, self.rows = on_cuda, {}

    def __call__(self, name: str, work, **extra):
        import torch

        if self.on_cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        started = time.perf_counter()
        result = work()
        if self.on_cuda:
            torch.cuda.synchronize()
        row = {"seconds": round(time.perf_counter() - started, 2),
               "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if self.on_cuda else None, **extra}
        self.rows[name] = row
        print(json.dumps({"stage": name, **row}), flush=True)
        return result, row


def mfu(flops: float, seconds: float, peak_tflops: float | None) -> float | None:
    return round(flops / seconds / (peak_tflops * 1e12), 4) if peak_tflops and seconds > 0 else None


def card_peak(args) -> tuple[str | None, float | None]:
    import torch

    if not torch.cuda.is_available():
        return None, None
    name = torch.cuda.get_device_name(0)
    peak = args.peak_tflops or next((v for k, v in PEAK_TFLOPS.items() if k in name), None)
    return name, peak


def run(args, root: Path) -> dict:
    import torch

    from bench.learning_arms import label_waiting, round_config, use_workspace
    from bench.tastes import plain
    from training import device, dpo, evaluate, generate, jobs, ppo, reward, versions
    from training.env import parameter_count

    card, peak = card_peak(args)
    on_cuda = card is not None
    stage = Stage(on_cuda)
    use_workspace(root, "workspace")  # the folder main() pointed PREFLOOP_HOME at
    parameters = parameter_count(Path(os.environ["PREFLOOP_MODEL"]))
    quiet = jobs.Reporter(None)
    args.set = []

    result, row = stage("generate", lambda: generate.run(generate.GenerateConfig(
        prompts=args.prompts, max_new_tokens=args.max_new_tokens, seed=0, engine="transformers")))
    tokens = result["tokens_per_s"] * row["seconds"]
    row.update(pairs=result["pairs"], tokens_per_s=result["tokens_per_s"], mfu=mfu(2 * parameters * tokens,
               row["seconds"], peak))
    labels, _ = stage("label", lambda: label_waiting(plain))
    rm, _ = stage("reward", lambda: reward.run_round(round_config("reward", args), quiet))
    # the reference's forward at every step (no cache), so 6·N per token holds
    summary, row = stage("dpo", lambda: dpo.run_round(round_config("dpo", args, precompute_ref_log_probs="no"), quiet))
    row.update(pairs=summary["pairs"], epochs=summary["epochs"], steps=summary["steps"], tokens=summary.get("tokens"),
               pairs_per_s=round(summary["pairs_per_second"], 3),
               mfu=mfu(6 * parameters * summary["tokens"], summary["train_seconds"], peak) if summary.get("tokens") else None)
    dpo_version = summary["version"]
    versions.set_current("v1-base")
    stage("ppo", lambda: ppo.run_round(round_config("ppo", args, reward_version=rm["version"], steps=args.ppo_steps),
                                       quiet))
    stage("evaluate", lambda: evaluate.evaluate(evaluate.EvaluateConfig(versions=dpo_version, prompts=8, samples=2),
                                                quiet))
    skipped = optional_stages(args, stage, on_cuda)
    return {"device": str(device.device()), "dtype": device.describe()["dtype"], "card": card, "peak_tflops": peak,
            "torch": torch.__version__, "parameters": parameters, "random_weights": args.random_weights,
            "labels": labels, "stages": stage.rows,
            "gpu_over_cpu": {"generation": round(stage.rows["generate"]["tokens_per_s"]
                                                 / CPU_FIGURES["generation_tokens_per_s"], 1),
                             "dpo": round(stage.rows["dpo"]["pairs_per_s"] / CPU_FIGURES["dpo_pairs_per_s"], 1)},
            "cpu_figures": CPU_FIGURES, "skipped": skipped}


def optional_stages(args, stage: Stage, on_cuda: bool) -> dict[str, str]:
    """Where their packages are installed on a CUDA card: a DPO round from the base on 4-bit weights
    (PREFLOOP_QUANT, against the "dpo" stage's peak memory) and pairs sampled with vLLM (against the
    "generate" stage's tokens/s). Returns the stages skipped, with why."""
    from bench.learning_arms import round_config
    from training import dpo, generate, jobs, versions

    skipped = {}
    if on_cuda and importlib.util.find_spec("bitsandbytes"):
        versions.set_current("v1-base")
        os.environ["PREFLOOP_QUANT"] = "4bit"
        try:
            summary, row = stage("dpo qlora 4bit", lambda: dpo.run_round(
                round_config("dpo", args, precompute_ref_log_probs="no"), jobs.Reporter(None)))
            row.update(pairs_per_s=round(summary["pairs_per_second"], 3))
        finally:
            os.environ.pop("PREFLOOP_QUANT")
    else:
        skipped["dpo qlora 4bit"] = "needs a CUDA card and bitsandbytes"
    if on_cuda and importlib.util.find_spec("vllm"):
        result, row = stage("generate vllm", lambda: generate.run(generate.GenerateConfig(
            prompts=args.prompts, max_new_tokens=args.max_new_tokens, seed=0, engine="vllm")))
        row.update(pairs=result["pairs"], tokens_per_s=result["tokens_per_s"])
    else:
        skipped["generate vllm"] = "needs a CUDA card and vllm"
    return skipped


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    if not torch.cuda.is_available() and not args.allow_cpu:
        print(json.dumps({"skipped": "no CUDA"}))
        return 0
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="prefloop-gpu-check-") as tmp:
        root = Path(args.home or tmp)
        os.environ["PREFLOOP_HOME"] = str(root / "workspace")
        os.environ.pop("PREFLOOP_DB", None)
        if args.random_weights:
            known = args.model or os.environ.get("PREFLOOP_MODEL")
            args.model = str(random_smollm2(root / "random-smollm2", Path(known) if known else None))
        if not args.model and not os.environ.get("PREFLOOP_MODEL"):
            from training.model import convert_default_model

            args.model = str(convert_default_model())
        if args.model:
            os.environ["PREFLOOP_MODEL"] = args.model
        out = run(args, root)
    out["total_s"] = round(time.perf_counter() - started, 1)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
