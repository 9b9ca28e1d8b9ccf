"""The reward model's suggestions: P(response a is better) = σ(r(a) − r(b)) for each labeling pair
nobody judged yet, stored beside the pair (labeling/suggestions.py). The Label page shows them after
the vote; the uncertainty-first queue (labeling/settings.py `queue_order`) puts the pairs whose
probability is nearest 0.5 first.

Scored at the end of each reward round, and by the generator as it stores new pairs while the
queue order is "uncertain".

    python -m training suggest [--reward-version ID] [--limit N]
"""
from __future__ import annotations

import argparse
from typing import Any, Callable

from labeling import suggestions
from labeling.command import run_command
from training.metrics import preferred_probability

SCORE_AT_MOST = 512  # pairs a reward round scores at its end: enough for the queue ahead, in seconds


def score_waiting(reward_id: str, scorer: Callable | None = None, limit: int | None = SCORE_AT_MOST,
                  batch: int = 64) -> int:
    """Score the waiting pairs reward model `reward_id` has not scored (at most `limit`); returns how many."""
    from training import reward

    todo = suggestions.waiting_without_reward(reward_id, limit)
    if not todo:
        return 0
    scorer = scorer or reward.load_scorer(reward_id)
    for start in range(0, len(todo), batch):
        pairs = todo[start:start + batch]
        prompts = [p.messages for p in pairs]
        r_a = scorer(prompts, [p.a for p in pairs]).tolist()
        r_b = scorer(prompts, [p.b for p in pairs]).tolist()
        for pair, a, b in zip(pairs, r_a, r_b):
            p = preferred_probability(a - b)
            try:
                suggestions.store(pair.pair_id, "reward", reward_id, "a" if p >= 0.5 else "b", p)
            except suggestions.SuggestionError:  # the pair was deleted meanwhile: nothing to suggest on
                continue
    return len(todo)


def main(argv: list[str]) -> int:
    from training import jobs, versions
    from training.reward import RewardError

    parser = argparse.ArgumentParser(prog="python -m training suggest",
                                     description="Store the reward model's preference on every waiting pair.")
    parser.add_argument("--reward-version", default=None, help="reward version (default: the latest)")
    parser.add_argument("--limit", type=int, default=None, help="pairs to score at most (default: all)")
    args = parser.parse_args(argv)

    def work() -> dict[str, Any]:
        jobs.set_threads()
        reward_id = args.reward_version or versions.latest_reward_id()
        if reward_id is None:
            raise RewardError("There is no reward model to score pairs with; train one first (python -m training reward).")
        return {"reward_version": reward_id, "scored": score_waiting(reward_id, limit=args.limit)}

    return run_command(work, {RewardError: 1})
