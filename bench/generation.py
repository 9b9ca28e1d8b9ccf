"""Aggregate tokens/s of prefloop's pair generator: transformers, CTranslate2, and naive generation.

All four do the same work on the real default model (SmolLM2-135M-Instruct): two sampled
responses (temperature 0.8, top-p 0.95, at most 64 new tokens) for each of 32 built-in prompts.
prefloop batches them (`training.generate.generate_pairs`: prompts sorted by length, both sides of
a prompt as two rows of one left-padded batch, KV cache, rows stopping at EOS), on the fp32
transformers model (the reference) and on the same model converted to CTranslate2 int8
(training/engine.py, what the app's generator uses on a CPU: smoothed first, training/smoothquant.py),
and on an int8 conversion without SmoothQuant (as the app converted before it); the baseline calls `model.generate`
once per response. Only real new tokens count: each response's tokens up to and including its
EOS, never the padding a finished row keeps receiving in a batch. Quality: the fp32 model's mean
log-prob per token of the answers of each engine (int8 weights must not make answers the model
itself finds less likely).

    python bench/generation.py [--prompts 32] [--max-new-tokens 64] [--batch-size 32] [--threads N]

The four take turns, one batch of prompts at a time, so that other load on the machine weighs on
all alike.

The model comes from the workspace (PREFLOOP_HOME, converted from the GGUF on first use) or
PREFLOOP_MODEL. Last line printed: JSON {"speedup": batched transformers over naive (target >= 4),
"ctranslate2_speedup": CTranslate2 over batched transformers (target >= 3), tokens/s of each,
"logprob_per_token" and "ctranslate2_logprob_per_token", and "logprob_difference": CTranslate2's
minus transformers' with its 95 % interval over prompts (target: the interval holds 0), and the
same three for int8 without SmoothQuant as "ctranslate2_plain_*"}.
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from labeling.store import builtin_prompts  # noqa: E402
from training import engine, jobs  # noqa: E402
from training.arena_answers import response_logprobs  # noqa: E402
from training import model as models  # noqa: E402
from training.generate import GenerateConfig, generate_pairs, new_token_counts  # noqa: E402

SAMPLING = {"temperature": 0.8, "top_p": 0.95}


def prefloop_run(model, tokenizer, prompts, max_new_tokens: int, batch_size: int) -> tuple[int, float, list]:
    """(real new tokens, seconds, [(prompt, response)] of the pairs kept) of the batched generator;
    `model` is a transformers model or a CTranslate2 `engine.Sampler`."""
    start = time.perf_counter()
    pairs = generate_pairs(model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size,
                           seed=0, **SAMPLING)
    seconds = time.perf_counter() - start
    answers = [(prompts[s["prompt_index"]], text) for a, b, s in pairs for text in (a, b)]
    return sum(s["tokens_a"] + s["tokens_b"] for _, _, s in pairs), seconds, answers


def logprob_sums(model, tokenizer, answers: list) -> dict[str, list[float]]:
    """Per prompt: [Σ log-prob, tokens] of its answers under the fp32 reference model (EOS included)."""
    scored = response_logprobs(model, tokenizer, [p for p, _ in answers], [t for _, t in answers])
    sums: dict[str, list[float]] = {}
    for (prompt, _), (lp, n) in zip(answers, scored):
        total = sums.setdefault(prompt[-1]["content"], [0.0, 0])
        total[0], total[1] = total[0] + lp, total[1] + n
    return sums


def per_token(sums: dict) -> float:
    return sum(v[0] for v in sums.values()) / sum(v[1] for v in sums.values())


def logprob_difference(ours: dict, reference: dict, resamples: int = 2000) -> tuple[float, float, float]:
    """Mean log-prob per token of `ours` minus `reference`, with a 95 % interval from resampling
    the prompts both answered (their answers differ by chance too: the interval says how much)."""
    shared = sorted(set(ours) & set(reference))

    def diff(keys):
        a = sum(ours[k][0] for k in keys) / sum(ours[k][1] for k in keys)
        b = sum(reference[k][0] for k in keys) / sum(reference[k][1] for k in keys)
        return a - b

    rng = random.Random(0)
    draws = sorted(diff([rng.choice(shared) for _ in shared]) for _ in range(resamples))
    return diff(shared), draws[int(0.025 * resamples)], draws[int(0.975 * resamples) - 1]


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
    fast, fast_tokenizer, _ = engine.load_generator("base", "ctranslate2", threads)  # converted once, untimed
    with tempfile.TemporaryDirectory(prefix="prefloop-int8-") as tmp:  # without SmoothQuant, as before it
        plain_folder = Path(tmp) / "model"
        engine.convert("base", plain_folder, smooth=False)
        plain = engine.Sampler(plain_folder, fast_tokenizer, fast.stop, threads)
        prompts = [[{"role": "user", "content": text}] for text in builtin_prompts()[:args.prompts]]
        baseline_run(model, tokenizer, prompts[:1], 4)  # warm-up: first-call costs count for no side
        prefloop_run(fast, fast_tokenizer, prompts[:1], 4, args.batch_size)
        prefloop_run(plain, fast_tokenizer, prompts[:1], 4, args.batch_size)

        # The four take turns on groups of one batch of prompts each, so load from other processes on
        # the machine falls on all alike rather than on whichever happened to run last.
        arms = {"transformers": [0, 0.0, []], "ctranslate2": [0, 0.0, []], "ctranslate2_plain": [0, 0.0, []],
                "baseline": [0, 0.0]}
        group = max(1, args.batch_size // 2)
        for start in range(0, len(prompts), group):
            chunk = prompts[start:start + group]
            for name, m, tok in (("transformers", model, tokenizer), ("ctranslate2", fast, fast_tokenizer),
                                 ("ctranslate2_plain", plain, fast_tokenizer)):
                n, s, answers = prefloop_run(m, tok, chunk, args.max_new_tokens, args.batch_size)
                arms[name][0] += n
                arms[name][1] += s
                arms[name][2] += answers
            n, s = baseline_run(model, tokenizer, chunk, args.max_new_tokens)
            arms["baseline"][0] += n
            arms["baseline"][1] += s
            print(f"prompts {start + len(chunk)}/{len(prompts)}: " + ", ".join(
                f"{name} {arm[0] / arm[1]:.1f}" for name, arm in arms.items()) + " tokens/s so far", file=sys.stderr)
        for name, arm in arms.items():
            print(f"{name}: {arm[0]} tokens in {arm[1]:.1f} s (batch {args.batch_size if name != 'baseline' else 1}, "
                  f"{threads} threads)", file=sys.stderr)

        reference = logprob_sums(model, tokenizer, arms["transformers"][2])
        fast_sums = logprob_sums(model, tokenizer, arms["ctranslate2"][2])
        plain_sums = logprob_sums(model, tokenizer, arms["ctranslate2_plain"][2])
    rate, fast_rate, plain_rate, base_rate = (arms[name][0] / arms[name][1]
                                              for name in ("transformers", "ctranslate2", "ctranslate2_plain", "baseline"))
    print(json.dumps({
        "speedup": round(rate / base_rate, 2), "tokens_per_s": round(rate, 1), "baseline_tokens_per_s": round(base_rate, 1),
        "ctranslate2_tokens_per_s": round(fast_rate, 1), "ctranslate2_speedup": round(fast_rate / rate, 2),
        # the same fp32 model scores both: CTranslate2's int8 weights must not make worse answers
        "logprob_per_token": round(per_token(reference), 3), "ctranslate2_logprob_per_token": round(per_token(fast_sums), 3),
        "logprob_difference": [round(x, 3) for x in logprob_difference(fast_sums, reference)],
        # int8 without SmoothQuant, as the app converted before it
        "ctranslate2_plain_tokens_per_s": round(plain_rate, 1), "ctranslate2_plain_speedup": round(plain_rate / rate, 2),
        "ctranslate2_plain_logprob_per_token": round(per_token(plain_sums), 3),
        "ctranslate2_plain_logprob_difference": [round(x, 3) for x in logprob_difference(plain_sums, reference)],
        "threads": threads}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
