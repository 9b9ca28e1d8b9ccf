"""Autopilot: on-policy iterative DPO with the reward model as the judge, and people as its audit.

    python -m training autopilot [--rounds 3] [--prompts 32] [--samples 4] [--audit-share 0.1] [--job-id N]

Each round: the current policy answers `prompts` training prompts `samples` times; the reward
model (the latest, or `reward_version`) scores them and the best answer against the worst of each
prompt becomes an automatic pair (labeling/auto_pairs.py: never in people's queue, except an
`audit_share` of them sent there as an audit); a DPO round whose reference stays the base model
trains on people's labels plus the automatic pairs nobody judged; the new version answers held-out
prompts and its reward-model win rate against the base is measured (same prompts and seeds every
round). It stops early when people's agreement with the audited automatic pairs falls under
`audit_threshold` (once `audit_min` of them are judged), or when the held-out win rate did not rise
over the round before. Every automatic pair stays marked: source "autopilot", and in each version's
lineage `pairs_automatic` and the verdicts' ids.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from training import jobs, preferences, runner, versions
from training.dpo_config import DPORoundConfig
from training.metrics import preferred_probability


@dataclass
class AutopilotConfig:
    """Rounds of on-policy DPO on best-against-worst pairs the reward model picks, audited by people."""

    rounds: int = field(default=3, metadata={"basic": True, "min": 1, "help": "DPO rounds at most."})
    prompts: int = field(default=32, metadata={"basic": True, "min": 2,
        "help": "Training prompts the policy answers each round (those with the fewest pairs first)."})
    samples: int = field(default=4, metadata={"basic": True, "min": 2,
        "help": "Answers per prompt; the reward model's best and worst of them make one pair."})
    max_new_tokens: int = field(default=64, metadata={"min": 1, "help": "Longest answer, in tokens."})
    audit_share: float = field(default=0.1, metadata={"min": 0, "max": 1,
        "help": "Share of each round's automatic pairs sent to people's queue as an audit."})
    audit_threshold: float = field(default=0.6, metadata={"min": 0, "max": 1,
        "help": "People's agreement with the audited automatic pairs under which the autopilot stops."})
    audit_min: int = field(default=8, metadata={"min": 1, "help": "Audit votes needed before their agreement counts."})
    heldout_prompts: int = field(default=8, metadata={"min": 1,
        "help": "Held-out prompts each new version answers (2 answers each) for its win rate against the base."})
    stop_when_flat: bool = field(default=True, metadata={
        "help": "Stop when the held-out win rate against the base did not rise over the round before."})
    reward_version: str | None = field(default=None, metadata={"help": "Reward model that judges (default: latest)."})
    learning_rate: float = field(default=5e-4, metadata={"above": 0, "help": "Each DPO round's learning rate."})
    dpo_max_steps: int | None = field(default=None, metadata={"min": 1,
        "help": "Cap on each DPO round's optimizer steps (empty = the DPO round's own choice)."})
    seed: int = field(default=0, metadata={"help": "Seed of the sampling and the audit draw."})


def best_and_worst(prompt_ids: list[int], texts: list[str], scores: list[float], samples: int) -> list[dict]:
    """Per prompt, its best and worst answer by score: {"prompt_id", "best", "worst", "margin"};
    prompts whose answers all read the same, or score the same, give none. Rows are prompt-major."""
    out = []
    for k, prompt_id in enumerate(prompt_ids):
        rows = sorted(zip(scores[k * samples:(k + 1) * samples], texts[k * samples:(k + 1) * samples]),
                      key=lambda r: r[0])
        (low, worst), (high, best) = rows[0], rows[-1]
        if high > low and best.strip() and worst.strip() and best.strip() != worst.strip():
            out.append({"prompt_id": prompt_id, "best": best, "worst": worst, "margin": high - low})
    return out


class Measure:
    """The reward model's win rate of a version against the base on the same held-out prompts and seeds."""

    def __init__(self, config: AutopilotConfig, scorer):
        from training.evaluate import heldout_prompts

        self.config, self.scorer = config, scorer
        self.prompts = [m for _, m in heldout_prompts(config.heldout_prompts)]
        self.base = self.scores(versions.ensure_base_version())

    def scores(self, version_id: str) -> list[float]:
        from training import evaluate
        from training.model import load_policy

        policy, tokenizer = load_policy(version_id)
        texts = evaluate.sample(policy, tokenizer, self.prompts, 2, self.config.max_new_tokens, self.config.seed + 99)[3]
        return self.scorer([p for p in self.prompts for _ in range(2)], texts).float().tolist()

    def win_rate(self, version_id: str) -> dict[str, float]:
        from labeling.paired import win_rate

        w = win_rate(self.scores(version_id), self.base, [i for i in range(len(self.prompts)) for _ in range(2)])
        return {"win_rate": round(w.rate, 3), "low": round(w.low, 3), "high": round(w.high, 3)}


def one_round(config: AutopilotConfig, r: int, reward_id: str, scorer) -> dict[str, Any]:
    """Sample, pick best against worst, store (with the audit share), run DPO; the round's summary."""
    import numpy as np

    from labeling import auto_pairs, prompts
    from training import dpo, evaluate
    from training.model import load_policy

    policy_id = versions.current_policy_id() or versions.ensure_base_version()
    chosen = prompts.least_paired_prompts(config.prompts, kinds=("label", "auto"))  # fresh prompts each round
    policy, tokenizer = load_policy(policy_id)
    messages = [m for _, m in chosen]
    texts = evaluate.sample(policy, tokenizer, messages, config.samples, config.max_new_tokens, config.seed + r)[3]
    del policy
    scores = scorer([m for m in messages for _ in range(config.samples)], texts).float().tolist()
    pairs = best_and_worst([i for i, _ in chosen], texts, scores, config.samples)
    audited = set(np.random.default_rng(config.seed + r).permutation(len(pairs))[:round(config.audit_share * len(pairs))])
    stored = auto_pairs.add_auto_pairs([
        {**p, "version": policy_id, "audit": k in audited, "probability": preferred_probability(p["margin"]),
         "generation": {"autopilot_round": r, "samples": config.samples, "seed": config.seed + r}}
        for k, p in enumerate(pairs)], reward_id)
    dpo_config = DPORoundConfig(reference="base", auto_pairs=True, learning_rate=config.learning_rate)
    summary = dpo.run_round(dpo_config, jobs.Reporter(None), max_steps=config.dpo_max_steps)
    return {"round": r, "from": policy_id, "version": summary["version"], "automatic_pairs": len(stored),
            "audited": len(audited), "pairs_trained": summary.get("pairs"), "steps": summary.get("steps")}


def run(config: AutopilotConfig, reporter: jobs.Reporter | None = None) -> dict[str, Any]:
    from labeling import auto_pairs
    from training import reward

    reporter = reporter or jobs.Reporter(None)
    reward_id = config.reward_version or versions.latest_reward_id()
    if reward_id is None:
        raise preferences.NotReady("The autopilot needs a reward model to judge the answers: train one first.")
    scorer = reward.load_scorer(reward_id)
    reporter.start(config.rounds)
    measure = Measure(config, scorer)
    history, stopped = [], None
    for r in range(1, config.rounds + 1):
        audit = auto_pairs.audit_agreement(reward_id)
        if audit["judged"] >= config.audit_min and audit["agreement"] < config.audit_threshold:
            stopped = (f"People agreed with {audit['agree']} of {audit['judged']} audited automatic pairs "
                       f"({audit['agreement']:.0%}), under the threshold {config.audit_threshold:.0%}.")
            break
        reporter.step(r - 1, {})  # a cancel from the page stops the autopilot between rounds
        summary = one_round(config, r, reward_id, scorer)
        summary.update(measure.win_rate(summary["version"]))
        history.append(summary)
        reporter.step(r, {"win_rate": summary["win_rate"], "automatic_pairs": summary["automatic_pairs"]})
        if config.stop_when_flat and len(history) > 1 and summary["win_rate"] <= history[-2]["win_rate"]:
            stopped = (f"The held-out win rate against the base did not rise ({history[-2]['win_rate']:.2f} → "
                       f"{summary['win_rate']:.2f}).")
            break
    return {"reward_version": reward_id, "rounds": history, "stopped": stopped,
            "versions": [h["version"] for h in history], "config": dataclasses.asdict(config)}


def main(argv: list[str]) -> int:
    """`python -m training autopilot [--rounds K] [--prompts N] [--samples S] [--job-id N] [--config FILE.yaml]`."""

    def work(config, reporter, **_):
        return run(config, reporter)

    return runner.run_main(argv, AutopilotConfig, work, "python -m training autopilot")
