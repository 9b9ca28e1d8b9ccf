"""`python -m training arena --version-a base --version-b v2-dpo --prompts 8`: both versions answer the
same held-out prompts; each answer is scored by the latest reward model and by its log-probability
under the base model, and each prompt's two answers are stored as an arena pair. The Compare page
shows them side by side, and its blind arena serves them (names hidden, sides shuffled per
annotator) to be voted like any other pair, so every vote is also a training pair.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from labeling.store import add_generated_pairs
from training import runner
from training.preferences import NotReady


@dataclass
class ArenaConfig:
    """Answers of two policy versions to the same held-out prompts, for side-by-side and blind votes."""

    version_a: str = field(default="", metadata={"help": "First version (default: the base model)."})
    version_b: str = field(default="", metadata={"help": "Second version (default: the current policy)."})
    prompts: int = field(default=8, metadata={"min": 1, "help": "Held-out prompts both versions answer."})
    max_new_tokens: int = field(default=128, metadata={"min": 1, "help": "Longest answer, in tokens."})
    temperature: float = field(default=0.7, metadata={"above": 0, "help": "Sampling temperature of both versions."})
    top_p: float = field(default=0.95, metadata={"above": 0, "max": 1, "help": "Nucleus sampling of both versions."})
    seed: int = field(default=0, metadata={"help": "Sampling seed, the same for both versions."})
    batch_size: int = field(default=8, metadata={"min": 1, "help": "Prompts answered per batch."})


class ArenaError(NotReady):
    """An arena run cannot start; one sentence for the user."""


def response_logprobs(model, tokenizer, prompts: list[list[dict]], texts: list[str],
                      ended: list[bool] | None = None, batch_size: int = 8) -> list[tuple[float, int]]:
    """(Σ log π(y_t | ·), token count) of each text as the answer to its prompt, EOS included where
    the answer `ended` (all of them by default; an answer cut at the token cap never chose to stop)."""
    from training.evaluate import response_logprob_sums

    ids, starts = [], []
    for prompt, text, stop in zip(prompts, texts, ended or [True] * len(texts)):
        p = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
        p_ids = tokenizer(p, add_special_tokens=False)["input_ids"]
        y_ids = tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id] * stop
        ids.append(p_ids + y_ids)
        starts.append(len(p_ids))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    sums = response_logprob_sums(model, ids, starts, pad, batch_size)
    return [(float(s), len(i) - start) for s, i, start in zip(sums, ids, starts)]


def answer(version_id: str, prompts: list[list[dict]], config: ArenaConfig) -> list[str]:
    from training.generate import sample_rows
    from training.model import load_policy

    model, tokenizer = load_policy(version_id)
    texts = [tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True) for p in prompts]
    answers = []
    for lo in range(0, len(texts), config.batch_size):
        rows = sample_rows(model, tokenizer, texts[lo:lo + config.batch_size], max_new_tokens=config.max_new_tokens,
                           temperature=config.temperature, top_p=config.top_p, seed=config.seed + lo)
        answers += [text for text, _, _ in rows]
    return answers


def run_arena(config: ArenaConfig, reporter) -> dict[str, Any]:
    """Answer, score and store; returns {"pairs": n, "version_a": a, "version_b": b, ...}."""
    from training import reward, versions
    from training.evaluate import heldout_prompts
    from training.model import load_policy

    base = versions.ensure_base_version()
    a, b = config.version_a or base, config.version_b or versions.current_policy_id()
    for v in (a, b):
        if versions.get_version(v) is None or versions.get_version(v).kind != "policy":
            raise ArenaError(f"There is no policy version {v!r}; see the versions table for the ids.")
    if a == b:
        raise ArenaError(f"Both sides are {a!r}; pick two different versions (train one first if there is only the base).")
    prompts = heldout_prompts(config.prompts)
    if not prompts:
        raise ArenaError("There are no prompts to compare on: import prompts or pairs first.")
    reward_id = versions.latest_reward_id()
    if reward_id:
        reward.reward_folder(reward_id)  # checked before the answers (a missing one stops at once), loaded after
    reporter.start(4)
    messages = [m for _, m in prompts]
    texts = {a: answer(a, messages, config)}
    reporter.step(1)
    texts[b] = answer(b, messages, config)
    reporter.step(2)
    scorer = reward.load_scorer(reward_id) if reward_id else None
    base_model, tokenizer = load_policy(base)
    settings = {"temperature": config.temperature, "top_p": config.top_p, "seed": config.seed,
                "max_new_tokens": config.max_new_tokens, "reward_version": reward_id}
    scores = {v: _scores(scorer, base_model, tokenizer, messages, texts[v], settings) for v in (a, b)}
    reporter.step(3)
    stored = add_generated_pairs([(prompt_id, texts[a][k], texts[b][k], (a, b), (scores[a][k], scores[b][k]))
                                  for k, (prompt_id, _) in enumerate(prompts)], kind="arena")
    reporter.step(4, {"pairs": stored})
    # skipped: an answer was empty, both were the same, or the pair was stored by an earlier run
    return {"pairs": stored, "skipped": len(prompts) - stored, "version_a": a, "version_b": b,
            "reward_version": reward_id}


def _scores(scorer, base_model, tokenizer, prompts, texts, settings: dict) -> list[dict]:
    """Per answer: the sampling settings, its reward score and its log-prob under the base model."""
    logps = response_logprobs(base_model, tokenizer, prompts, texts)
    rewards = scorer(prompts, texts).tolist() if scorer else [None] * len(texts)
    return [{**settings, "reward": r, "base_logprob": lp, "tokens": n}
            for r, (lp, n) in zip(rewards, logps)]


def main(argv: list[str]) -> int:
    """`python -m training arena [--version-a A] [--version-b B] [--prompts N] [--job-id N]`."""
    def run(config, reporter, **_):
        return run_arena(config, reporter)

    return runner.run_main(argv, ArenaConfig, run, "python -m training arena")
