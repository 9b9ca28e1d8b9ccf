"""Aggregate tokens/s of prefloop's pair generator against naive one-prompt-at-a-time generation.

Both sides do the same work on the real default model (SmolLM2-135M-Instruct, fp32): two sampled
responses (temperature 0.8, top-p 0.95, at most 64 new tokens) for each of 32 built-in prompts.
prefloop batches them (`training.generate.generate_pairs`: prompts sorted by length, both sides of
a prompt as two rows of one left-padded batch, KV cache, rows stopping at EOS); the baseline calls
`model.generate` once per response. Only real new tokens count, for both: each response's tokens
up to and including its EOS, never the padding a finished row keeps receiving in a batch.

    python bench/generation.py [--prompts 32] [--max-new-tokens 64] [--batch-size 32] [--threads N]

The two take turns, one batch of prompts at a time, so that other load on the machine weighs on
both alike.

The model comes from the workspace (PREFLOOP_HOME, converted from the GGUF on first use) or
PREFLOOP_MODEL. Last line printed: JSON {"speedup": x, "tokens_per_s": y, "baseline_tokens_per_s": z}
(target: speedup >= 4).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from labeling.store import builtin_prompts  # noqa: E402
from training import jobs  # noqa: E402
from training import model as models  # noqa: E402
from training.generate import GenerateConfig, generate_pairs, new_token_counts  # noqa: E402

SAMPLING = {"temperature": 0.8, "top_p": 0.95}


def prefloop_run(model, tokenizer, prompts, max_new_tokens: int, batch_size: int) -> tuple[int, float, int]:
    """(real new tokens, seconds, pairs kept) of the batched generator."""
    start = time.perf_counter()
    pairs = generate_pairs(model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size,
                           seed=0, **SAMPLING)
    seconds = time.perf_counter() - start
    return sum(s["tokens_a"] + s["tokens_b"] for _, _, s in pairs), seconds, len(pairs)


@torch.inference_mode()
def baseline_run(model, tokenizer, prompts, max_new_tokens: int) -> tuple[int, float]:
    """(real new tokens, seconds) of plain `model.generate`, one response at a time, two per prompt."""
    eos = model.generation_config.eos_token_id
    eos_ids = eos if isinstance(eos, list) else [eos]
    tokens, start = 0, time.perf_counter()
    torch.manual_seed(0)
    for messages in prompts:
        enc = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                            return_dict=True)
        for _side in range(2):
            out = model.generate(**enc, do_sample=True, top_k=0, max_new_tokens=max_new_tokens,
                                 pad_token_id=tokenizer.pad_token_id, **SAMPLING)
            tokens += new_token_counts(out[:, enc["input_ids"].shape[1]:], eos_ids)[0]
    return tokens, time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=GenerateConfig.batch_size, help="Sequences per batch of prefloop's generator.")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: PREFLOOP_THREADS or all cores).")
    args = parser.parse_args()

    threads = jobs.set_threads(args.threads)
    model, tokenizer = models.load_policy("base")
    prompts = [[{"role": "user", "content": text}] for text in builtin_prompts()[:args.prompts]]
    baseline_run(model, tokenizer, prompts[:1], 4)  # warm-up: first-call costs count for neither side

    # The two take turns on groups of one batch of prompts each, so load from other processes on
    # the machine falls on both alike rather than on whichever happened to run second.
    tokens = seconds = kept = base_tokens = base_seconds = 0
    group = max(1, args.batch_size // 2)
    for start in range(0, len(prompts), group):
        chunk = prompts[start:start + group]
        n, s, k = prefloop_run(model, tokenizer, chunk, args.max_new_tokens, args.batch_size)
        tokens, seconds, kept = tokens + n, seconds + s, kept + k
        n, s = baseline_run(model, tokenizer, chunk, args.max_new_tokens)
        base_tokens, base_seconds = base_tokens + n, base_seconds + s
        print(f"prompts {start + len(chunk)}/{len(prompts)}: prefloop {tokens / seconds:.1f} tokens/s, "
              f"baseline {base_tokens / base_seconds:.1f} tokens/s so far", file=sys.stderr)
    print(f"prefloop: {tokens} tokens in {seconds:.1f} s ({kept} pairs kept of {len(prompts)}, "
          f"batch {args.batch_size}, {threads} threads)", file=sys.stderr)
    print(f"baseline: {base_tokens} tokens in {base_seconds:.1f} s (one response at a time)", file=sys.stderr)

    rate, base_rate = tokens / seconds, base_tokens / base_seconds
    print(json.dumps({"speedup": round(rate / base_rate, 2), "tokens_per_s": round(rate, 1),
                      "baseline_tokens_per_s": round(base_rate, 1)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
