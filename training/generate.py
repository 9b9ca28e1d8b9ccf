"""Pairs to label: two sampled responses per prompt from the current policy, with its chat template.

Batched the way a CPU likes it: prompts sorted by length (little padding), left padding, the KV
cache, each row stopping at EOS. Both sides of a prompt sit in the same batch as two rows, so
they share the padding. Sampling uses torch's one global generator, seeded per batch: rows of a
batch draw different random numbers, so the two sides of a prompt are independent samples (two
different "seeds" in effect), and the batch seed stored with each response reproduces the batch (on transformers; not on
CTranslate2, see training/engine.py).
A pair whose sides came out identical is sampled once more, then dropped.

`python -m training generate --prompts 32` runs it from the shell; the app calls
`ensure_pairs_waiting()`, which starts that same command as a background job when the labeling
queue runs low. This module imports torch only inside the functions that generate, so the app
can import it.
"""
from __future__ import annotations

import datetime as dt
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

from training import engine, jobs, runner
from training.engine import ENGINES, SAMPLERS

RESAMPLE_SEED_OFFSET = 1_000_003  # seeds of the second try, far from any first-try batch seed
RETRY_AFTER_FAILURE = dt.timedelta(minutes=5)  # a broken model path must not spawn a job per page view
RETRY_AT_MOST = dt.timedelta(hours=2)  # each failure in a row doubles the wait, up to this
RETRY_STREAK = math.ceil(math.log2(RETRY_AT_MOST / RETRY_AFTER_FAILURE)) + 1  # failures in a row that reach the cap
LENGTH_TRIES = 3  # resamples of a pair whose answers differ too much in length (length_ratio)
LENGTH_SEED_OFFSET = 2_000_003  # seeds of those resamples: apart from the batch seeds and the identical retry
FIRST_CHUNK_PROMPTS = 2  # prompts in the first chunk: a labeler on an empty queue sees pairs early
LOW_WATER = 20  # pairs: below this many waiting, the app generates more, whatever the labeling rate
SCORE_PER_CHUNK = 64  # waiting pairs the reward model scores after each chunk, oldest unscored first
LEAD_MINUTES = 3.0  # the app keeps this many minutes of labeling (at the recent rate) waiting


@dataclass
class GenerateConfig:
    """Defaults give short, varied answers from SmolLM2 at a few seconds per pair on a CPU."""

    prompts: int = field(default=32, metadata={"min": 1,
        "help": "Prompts to answer (training split, those with the fewest pairs first)."})
    version: str | None = field(default=None, metadata={"help": "Policy version to sample from (default: the current one)."})
    max_new_tokens: int = field(default=128, metadata={"min": 1, "help": "Longest response, in tokens."})
    temperature: float = field(default=0.8, metadata={"above": 0, "help": "Sampling temperature."})
    top_p: float = field(default=0.95, metadata={"above": 0, "max": 1,
        "help": "Nucleus sampling: keep the smallest token set with this much probability."})
    # SmolLM2 on a shared 2-core CPU: 32 rows gave clearly more tokens/s than 16, and 64 no clear
    # gain over 32 for twice the KV-cache memory on long prompts (bench/generation.py)
    batch_size: int = field(default=32, metadata={"min": 1, "help": "Sequences per batch (two per prompt)."})
    seed: int | None = field(default=None, metadata={"help": "Seed of the sampling (default: a new one each run, stored with every response)."})
    engine: str = field(default="auto", metadata={"choices": ENGINES,
        "help": "auto: CTranslate2 (int8, 3-5x faster) on a CPU when it converts the model, else transformers; "
                "vllm: vLLM on a CUDA card, when installed."})
    until_waiting: int = field(default=0, metadata={"min": 0,
        "help": "Stop early once this many pairs wait to be labeled (0: answer every prompt)."})
    length_ratio: float = field(default=0.0, metadata={"min": 0, "help": (
        "Resample a pair (up to 3 more times, keeping the closest) while its longer answer has more than this many "
        "times the shorter's tokens, so people judge content, not length; 0: off (the Data page's setting).")})

    def problem(self) -> str | None:
        from labeling.settings import length_ratio_problem

        return length_ratio_problem(self.length_ratio, "length_ratio")


# ---------------------------------------------------------------- sampling


def new_token_counts(new_tokens, eos_ids: list[int]) -> list[int]:
    """Real new tokens per row: up to and including the first EOS, or all of them when none.

    Shape: new_tokens (B, T) generated ids after the prompt (padded after EOS); returns B ints.
    """
    import torch

    is_eos = torch.isin(new_tokens, torch.tensor(eos_ids, device=new_tokens.device))  # (B, T)
    first = torch.where(is_eos.any(-1), is_eos.int().argmax(-1) + 1, new_tokens.shape[1])  # (B,)
    return first.tolist()


def sample_rows(model, tokenizer, texts: list[str], *, max_new_tokens: int, temperature: float, top_p: float,
                seed: int) -> list[tuple[str, int, bool]]:
    """One sampled continuation per text, all in one batch: (response, new tokens, stopped at EOS)."""
    from training import device, sampling

    tokenizer.padding_side = "left"
    enc = device.place(tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False))
    new, mask = sampling.sample(model, tokenizer, enc["input_ids"], enc["attention_mask"], max_new_tokens=max_new_tokens,
                                temperature=temperature, top_p=top_p, seed=seed)  # (B, T_new) each
    stopped = sampling.ended(new, mask, sampling.stop_ids(model, tokenizer)).tolist()
    return list(zip(sampling.decode(tokenizer, new, mask), mask.sum(-1).tolist(), stopped))


def chat_texts(tokenizer, prompts: list[list[dict]]) -> list[str]:
    """Each conversation through the chat template, ending where the assistant answers."""
    return [tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True) for p in prompts]


def length_order(tokenizer, texts: list[str]) -> list[int]:
    """Indices of `texts`, shortest in tokens first."""
    if not texts:
        return []
    lengths = [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
    return sorted(range(len(texts)), key=lambda i: lengths[i])


def _batches(order: list[int], per_batch: int) -> list[list[int]]:
    return [order[i:i + per_batch] for i in range(0, len(order), per_batch)]


def ramp(order: list[int], largest: int, first: int = FIRST_CHUNK_PROMPTS) -> list[list[int]]:
    """`order` cut into chunks of `first`, twice that, four times... up to `largest` prompts: each
    chunk is stored as soon as it is sampled, and each is ready before a labeler working through
    the ones before it runs out (bigger batches give more tokens/s, small ones come back sooner)."""
    chunks, size, start = [], max(1, min(first, largest)), 0
    while start < len(order):
        chunks.append(order[start:start + size])
        start, size = start + size, min(size * 2, max(1, largest))
    return chunks


def generate_pairs(model, tokenizer, prompts: list[list[dict]], *, max_new_tokens: int = 128,
                   temperature: float = 0.8, top_p: float = 0.95, batch_size: int = 32, seed: int = 0,
                   on_batch: Callable[[int, int], None] | None = None,
                   length_ratio: float = 0.0) -> list[tuple[str, str, dict]]:
    """Two sampled responses per prompt (a conversation of {role, content} messages).

    Returns (response_a, response_b, settings) per kept pair, in prompt order; settings holds
    temperature, top_p, max_new_tokens, the batch seed, the new token counts of each side
    (`tokens_a`, `tokens_b`, EOS included) and `prompt_index`, the prompt's place in `prompts`.
    A pair whose sides are identical is re-sampled once and dropped if still identical, so
    fewer pairs than prompts may come back. With `length_ratio` r > 0, a pair whose longer side has
    more than r times the shorter's new tokens is sampled again, whole, up to LENGTH_TRIES times,
    and the pair closest in length is kept (its settings say which seed made it, and
    `length_tries`). `on_batch(done, total)` is called after each batch.
    """
    texts = chat_texts(tokenizer, prompts)
    order = length_order(tokenizer, texts)  # similar lengths share a batch: little padding
    batches = _batches(order, max(1, batch_size // 2))
    settings = {"temperature": temperature, "top_p": top_p, "max_new_tokens": max_new_tokens}
    results: dict[int, tuple[str, str, dict]] = {}
    for b, batch in enumerate(batches):
        results.update(_sample_pairs(model, tokenizer, texts, batch, settings, seed + b))
        if on_batch:
            on_batch(b + 1, len(batches))
    identical = [i for i in order if results[i][0] == results[i][1]]
    results.update(_resample(model, tokenizer, texts, identical, settings, seed + RESAMPLE_SEED_OFFSET,
                             max(1, batch_size // 2)))
    if length_ratio:
        match_lengths(model, tokenizer, texts, results, settings, length_ratio, seed, max(1, batch_size // 2))
    return [results[i] for i in range(len(prompts)) if results[i][0] != results[i][1]]


def length_ratio_of(settings: dict) -> float:
    """The longer side's new tokens over the shorter's (at least one token each)."""
    a, b = max(settings["tokens_a"], 1), max(settings["tokens_b"], 1)
    return max(a, b) / min(a, b)


def match_lengths(model, tokenizer, texts: list[str], results: dict[int, tuple], settings: dict, ratio: float,
                  seed: int, per_batch: int) -> None:
    """Resample, whole, the pairs of `results` whose sides differ in length by more than `ratio`,
    up to LENGTH_TRIES times, keeping for each prompt the distinct pair closest in length."""
    for i in results:
        results[i][2].update(length_ratio=ratio, length_tries=0)
    for attempt in range(1, LENGTH_TRIES + 1):
        far = [i for i, (a, b, s) in sorted(results.items()) if length_ratio_of(s) > ratio or a == b]
        retry = _resample(model, tokenizer, texts, far, settings, seed + LENGTH_SEED_OFFSET * attempt, per_batch)
        for i, (a2, b2, s2) in retry.items():
            kept = results[i]
            s2.update(length_ratio=ratio, length_tries=attempt)
            if a2 != b2 and (kept[0] == kept[1] or length_ratio_of(s2) < length_ratio_of(kept[2])):
                results[i] = (a2, b2, s2)
            else:
                kept[2]["length_tries"] = attempt


def _resample(model, tokenizer, texts, indices: list[int], settings: dict, seed: int, per_batch: int) -> dict[int, tuple]:
    """The pairs of the prompts `indices` sampled again, `per_batch` prompts at a time, batch b with seed + b."""
    out: dict[int, tuple] = {}
    for b, batch in enumerate(_batches(indices, per_batch)):
        out.update(_sample_pairs(model, tokenizer, texts, batch, settings, seed + b))
    return out


def _sample_pairs(model, tokenizer, texts, batch: list[int], settings: dict, seed: int) -> dict[int, tuple]:
    """Both sides of each prompt in `batch` as rows 2k (side a) and 2k+1 (side b) of one batch."""
    texts = [texts[i] for i in batch for _ in (0, 1)]
    rows = (model(texts, seed=seed, **settings) if isinstance(model, SAMPLERS)
            else sample_rows(model, tokenizer, texts, seed=seed, **settings))
    out = {}
    for k, i in enumerate(batch):
        (a, n_a, eos_a), (b, n_b, eos_b) = rows[2 * k], rows[2 * k + 1]
        out[i] = (a, b, {**settings, "seed": seed, "tokens_a": n_a, "tokens_b": n_b, "eos_a": eos_a,
                         "eos_b": eos_b, "prompt_index": i})
    return out


# ---------------------------------------------------------------- the command


def pick_prompts(n: int) -> list[tuple[int, list[dict]]]:
    """(id, messages) of `n` training prompts, those with the fewest labeling pairs first."""
    from labeling import prompts

    return prompts.least_paired_prompts(n)


def side_settings(settings: dict, sampler: dict | None = None) -> tuple[dict, dict]:
    """The generation record stored with each response of a pair; `sampler`: which engine sampled
    it and how (`engine.sampler_record`)."""
    kept = ("temperature", "top_p", "max_new_tokens", "seed", "length_ratio", "length_tries")
    shared = {**{k: settings[k] for k in kept if k in settings}, **(sampler or {})}
    return ({**shared, "side": "a", "new_tokens": settings["tokens_a"], "eos": settings["eos_a"]},
            {**shared, "side": "b", "new_tokens": settings["tokens_b"], "eos": settings["eos_b"]})


def run(config: GenerateConfig, reporter: jobs.Reporter | None = None) -> dict[str, Any]:
    """Generate and store pairs for `config.prompts` prompts; return {"pairs", "tokens_per_s", ...}."""
    from labeling import store
    from training import suggest, versions

    reporter = reporter or jobs.Reporter(None)
    reporter.start(None)  # a job cancelled while it was queued stops here, before loading a model
    store.ensure_builtin_prompts()
    chosen = pick_prompts(config.prompts)
    seed = config.seed if config.seed is not None else time.time_ns() % 2**31
    version = config.version or versions.current_policy_id() or "base"  # one id for the model and its pairs
    model, tokenizer, used = engine.load_generator(version, config.engine, jobs.threads_for_job())
    sampler = engine.sampler_record(model)
    # chunks stored as soon as they are sampled, growing from a small first one, so a labeler
    # waiting on an empty queue sees pairs early; shortest prompts together, as within a batch
    order = length_order(tokenizer, chat_texts(tokenizer, [messages for _, messages in chosen]))
    chunks = ramp(order, config.batch_size // 2)
    reporter.start(len(chunks))
    stored, tokens, seconds, scoring = 0, 0, 0.0, None
    for step, chunk in enumerate(chunks, 1):
        t0 = time.perf_counter()
        pairs = generate_pairs(model, tokenizer, [chosen[i][1] for i in chunk], max_new_tokens=config.max_new_tokens,
                               temperature=config.temperature, top_p=config.top_p, batch_size=config.batch_size,
                               seed=seed + step * 1000, length_ratio=config.length_ratio)
        seconds += time.perf_counter() - t0
        tokens += sum(p[2]["tokens_a"] + p[2]["tokens_b"] for p in pairs)
        stored += store.add_generated_pairs([(chosen[chunk[settings["prompt_index"]]][0], a, b, version,
                                              side_settings(settings, sampler)) for a, b, settings in pairs])
        if scoring is None:
            scoring = reward_scorer()
        if scoring:  # the uncertainty-first queue needs each new pair's reward-model probability
            suggest.score_waiting(*scoring, limit=SCORE_PER_CHUNK)
        reporter.step(step, {"pairs": stored, "tokens_per_s": tokens / max(seconds, 1e-9)})
        if config.until_waiting and _waiting() >= config.until_waiting:
            break  # the labelers have enough ahead of them; the app asks again when they run low
    return {"pairs": stored, "tokens_per_s": round(tokens / max(seconds, 1e-9), 2), "prompts": len(chosen),
            "version": version, "seed": seed, "engine": used}


def reward_scorer() -> tuple[str, object] | tuple[()]:
    """(reward id, scorer) of the latest reward model while the queue order is "uncertain", else ()
    (also when that model cannot be loaded: the pairs matter more than their order)."""
    from labeling import settings
    from training import reward, versions

    reward_id = versions.latest_reward_id() if settings.queue_order() == "uncertain" else None
    if not reward_id:
        return ()
    try:
        return reward_id, reward.load_scorer(reward_id)
    except Exception as exc:  # noqa: BLE001  a broken reward model must not stop the queue from filling
        print(f"not scoring new pairs: reward model {reward_id} did not load ({exc})", file=sys.stderr)
        return ()


def main(argv: list[str]) -> int:
    """`python -m training generate [--prompts N] [--version V] [--job-id ID] [--config FILE.yaml]`."""
    def work(config: GenerateConfig, reporter, **_) -> dict:
        return run(config, reporter)

    return runner.run_main(argv, GenerateConfig, work, "python -m training generate", user_errors=(engine.EngineError,))


# ---------------------------------------------------------------- for the app (no torch here)


def _waiting() -> int:
    """Labeling pairs still short of the workspace's overlap in judgments."""
    from labeling import queue, settings

    return queue.pairs_waiting(settings.overlap())


def buffer_target(pairs_per_minute: float) -> int:
    """Pairs to keep waiting: LEAD_MINUTES of labeling at the recent rate (more labelers, a bigger
    buffer), and never fewer than LOW_WATER."""
    return max(LOW_WATER, math.ceil(pairs_per_minute * LEAD_MINUTES))


def start_generation(prompts: int = 32, version: str | None = None, until_waiting: int = 0) -> int:
    """Start `python -m training generate` as a background job of this server (it stops when the
    server stops, and gives way to any round started meanwhile); return its id (JobError when
    another heavy job is running). Pairs are matched in length as the Data page's setting says."""
    from labeling import settings

    config = GenerateConfig(prompts=prompts, version=version, until_waiting=until_waiting,
                            length_ratio=settings.pair_length_ratio())
    return jobs.start_job("generate", asdict(config), stop_with_server=True)


def ensure_pairs_waiting(min_waiting: int | None = None, waiting: int | None = None) -> int | None:
    """Start a generation job when fewer than `min_waiting` labeling pairs wait (default:
    `buffer_target` of the recent labeling rate; `waiting`: those waiting for one annotator, e.g.
    without the ones they skipped; default: pairs short of judgments) and no heavy job is running.
    The job adds pairs until twice the target would wait, then stops. Returns its id, or None."""
    from labeling import queue, settings

    overlap = settings.overlap()
    if min_waiting is None:
        min_waiting = buffer_target(queue.judgments_per_minute() / overlap)
    everyone = queue.pairs_waiting(overlap)
    waiting = everyone if waiting is None else waiting
    if waiting >= min_waiting or jobs.active_jobs() or recent_failure():
        return None
    more = 2 * min_waiting - waiting
    try:  # the job counts what waits for everyone (it cannot tell whose): `more` on top of that
        return start_generation(prompts=max(GenerateConfig.prompts, more), until_waiting=everyone + more)
    except jobs.JobError:  # another page started one a moment ago
        return None


def retry_wait(recent: list | None = None) -> dt.timedelta:
    """How long after the last generation job's failure the next one may start by itself:
    RETRY_AFTER_FAILURE, doubled for each failure in a row before it, at most RETRY_AT_MOST (an
    open Label page on a model that stays broken tries a few times an hour, then every 2 hours).
    `recent`: the newest generation jobs, newest first, when the caller has them."""
    from labeling import runs

    failures = 0
    for job in runs.last_jobs("generate", RETRY_STREAK) if recent is None else recent[:RETRY_STREAK]:
        if job.status != "failed":
            break
        failures += 1
    return min(RETRY_AFTER_FAILURE * 2 ** max(failures - 1, 0), RETRY_AT_MOST)


def recent_failure() -> str | None:
    """The error of the last generation job when it failed less than `retry_wait()` ago (no new
    one starts by itself until then), else None."""
    from labeling import runs

    recent = runs.last_jobs("generate", RETRY_STREAK)
    last = recent[0] if recent else None
    if last and last.status == "failed" and last.finished_at and runs.utcnow() - last.finished_at < retry_wait(recent):
        return last.error or f"Job #{last.id} failed; its log is jobs/{last.id}/log.txt in the workspace."
    return None
