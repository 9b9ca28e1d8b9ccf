"""prefloop's DPO round vs a plain TRL DPOTrainer on the same hh-rlhf pairs and SmolLM2.

    python bench/dpo.py [--pairs 256] [--heldout 64] [--batch-size N] [--no-gradient-checkpointing]

prefloop: LoRA on the policy, reference = the same model with the adapter off, prompts trimmed.
Baseline: TRL `DPOTrainer` with its default settings (full fine-tune, a separate reference model,
gradient checkpointing, lr 1e-6, batch 8, max_length 1024), fp32 as ours. Each arm runs in its own
process, so peak RSS is that arm's own. Each makes its own default number of passes over the same
pairs (prefloop: as many as give about 96 optimizer steps, at most 4; TRL: 3), so the speedup
compares tokens trained per second; both are evaluated on the same held-out prompts
(implicit-reward accuracy, as TRL reports it).

Seconds are the trainer's training loop in both arms (`trainer.train()`): building the datasets,
loading the models and the held-out evaluation are left out of both.

MFU = model FLOPs / (seconds × this machine's measured fp32 matmul rate). Model FLOPs per token:
forward 2·N, backward 4·N with weight gradients (full fine-tune) or 2·N without (LoRA: only the
activations' gradients flow through the frozen weights), plus 2·N for the reference forward; a
recomputation by gradient checkpointing is not counted, as usual for MFU.

Last line: {"speedup": x, "rss_ratio": y, "acc": a, "baseline_acc": b, "mfu": m}. Targets: ≥ 2×
tokens/s, ≤ 0.6× peak RSS, accuracy no worse, MFU ≥ 35 %.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
HH = ROOT.parent / "shared" / "data" / "hh-rlhf-harmless-base-test.jsonl.gz"


def matmul_flops(seconds: float = 3.0, n: int = 1024) -> float:
    """This machine's fp32 matmul rate (FLOP/s) with the current torch thread count."""
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    count, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        torch.mm(a, b)
        count += 1
    return 2 * n ** 3 * count / (time.perf_counter() - started)


def bench_data(home: Path, pairs: int, heldout: int):
    """(train rows, held-out rows) from the hh file, split by prompt, in a bench workspace."""
    os.environ["PREFLOOP_HOME"] = str(home)
    from labeling.export import preference_rows
    from labeling.store import import_file
    from training import preferences

    import_file(HH, fmt="hh")
    rows = [dict(r, split="train") for r in preference_rows().rows][: pairs + heldout]
    train, held, _ = preferences.split_by_conversation(rows, heldout / (pairs + heldout), seed=0)
    return preferences.PreferenceData(train[:pairs], held[:heldout], [], True)


def run_prefloop(data, out: str, checkpointing: bool, batch_size: int | None) -> dict:
    from training import dpo, jobs
    from training.dpo_config import DPORoundConfig
    from training.model import load_policy

    model, tokenizer = load_policy("base")
    config = DPORoundConfig(gradient_checkpointing=checkpointing)
    config.batch_size = batch_size or config.batch_size
    peft_model, metrics = dpo.train(model, tokenizer, data, config, jobs.Reporter(None), out)
    return {"seconds": metrics["train_seconds"], "acc": metrics.get("heldout_accuracy"),
            "params": sum(p.numel() for p in peft_model.base_model.model.parameters()),
            "tokens": metrics["tokens"], "flops_per_param_token": 2 + 2 + 2}


def _tokens(state) -> int:
    logged = [h["num_tokens"] for h in state.log_history if "num_tokens" in h]
    return int(logged[-1]) if logged else 0


def run_baseline(data, out: str) -> dict:
    from trl import DPOConfig, DPOTrainer

    from training import device, dpo
    from training.model import load_policy

    model, tokenizer = load_policy("base", device.weights_dtype(trained_in_full=True))  # fp32 master weights
    ref_model, _ = load_policy("base")
    args = DPOConfig(output_dir=out, report_to=[], save_strategy="no", disable_tqdm=True,
                     **device.trainer_precision())
    trainer = DPOTrainer(model=model, ref_model=ref_model, args=args, processing_class=tokenizer,
                         train_dataset=dpo.to_dataset(data.train, tokenizer, 10 ** 6),
                         eval_dataset=dpo.to_dataset(data.heldout, tokenizer, 10 ** 6))
    started = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - started
    acc = trainer.evaluate()["eval_rewards/accuracies"]
    return {"seconds": seconds, "acc": acc, "params": sum(p.numel() for p in model.parameters()),
            "tokens": _tokens(trainer.state), "flops_per_param_token": 2 + 4 + 2}


def arm_main(arm: str, home: Path, pairs: int, heldout: int, checkpointing: bool, batch_size: int | None) -> None:
    from training import jobs

    threads = jobs.set_threads()
    data = bench_data(home, pairs, heldout)
    with tempfile.TemporaryDirectory() as out:
        result = run_prefloop(data, out, checkpointing, batch_size) if arm == "prefloop" else run_baseline(data, out)
    result.update(arm=arm, pairs=len(data.train), heldout=len(data.heldout), threads=threads,
                  peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  matmul_flops=matmul_flops())
    print(json.dumps(result), flush=True)


def mfu(result: dict) -> float:
    flops = result["flops_per_param_token"] * result["params"] * result["tokens"]
    return flops / result["seconds"] / result["matmul_flops"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", type=int, default=256)
    parser.add_argument("--heldout", type=int, default=64)
    parser.add_argument("--no-gradient-checkpointing", dest="gradient_checkpointing", action="store_false",
                        help="Run prefloop's round without gradient checkpointing (on by default, as in the baseline).")
    parser.add_argument("--batch-size", type=int, help="prefloop's pairs per step (default: the round's own).")
    parser.add_argument("--arm", choices=("prefloop", "baseline"), help="Run one arm only and print its JSON.")
    parser.add_argument("--home", default=str(ROOT / "bench-workspace"), help="Workspace for the bench data and model.")
    args = parser.parse_args()
    if not HH.is_file():
        sys.exit(f"{HH} is absent; the benchmark needs the shared hh-rlhf file beside the checkout.")
    home = Path(args.home)
    if args.arm:
        return arm_main(args.arm, home, args.pairs, args.heldout, args.gradient_checkpointing, args.batch_size)
    results = {}
    for arm in ("prefloop", "baseline"):
        cmd = [sys.executable, __file__, "--arm", arm, "--pairs", str(args.pairs), "--heldout", str(args.heldout),
               "--home", str(home)] + ["--no-gradient-checkpointing"] * (not args.gradient_checkpointing) \
              + ["--batch-size", str(args.batch_size)] * bool(args.batch_size)
        out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True,  # stderr: the arm's log, as is
                             env=dict(os.environ, TQDM_DISABLE="1"))
        results[arm] = json.loads(out.stdout.strip().splitlines()[-1])
        print(json.dumps(results[arm]), flush=True)
    ours, base = results["prefloop"], results["baseline"]
    print(json.dumps({
        # tokens trained per second: the arms make different numbers of passes (prefloop's round as
        # many as give about 96 steps, TRL's default 3), so pairs per second would not compare them
        "speedup": (ours["tokens"] / ours["seconds"]) / (base["tokens"] / base["seconds"]),
        "rss_ratio": ours["peak_rss_mb"] / base["peak_rss_mb"],
        "acc": ours["acc"], "baseline_acc": base["acc"], "mfu": mfu(ours), "baseline_mfu": mfu(base),
        "pairs": ours["pairs"], "heldout": ours["heldout"], "threads": ours["threads"],
    }))


if __name__ == "__main__":
    main()
