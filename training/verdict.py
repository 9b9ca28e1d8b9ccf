"""Did a round help? A policy version against its parent and the base on the held-out prompts,
from the points `python -m training evaluate` stored (no model is loaded here):

  * the reward model's win rate, sample by sample (same prompts, same seeds), ties half, with a
    95% interval from a bootstrap over prompts;
  * KL to the base and the change in answer length;
  * the length-controlled win rate: the reward model's win rate at equal length, from a logistic
    regression of each answer's outcome on the length difference (AlpacaEval 2's control);
  * people's win rate from the blind arena, when they voted between the two versions;
  * a Goodhart meter: one sentence when the reward model's gain is not shared by people's votes,
    or when answer length alone explains it.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from labeling.paired import length_controlled_win_rate, outcomes, win_rate
from training import points, versions

MIN_HUMAN_VOTES = 5  # fewer decisive arena votes than this say nothing either way
LENGTH_SHARE = 0.5  # length "explains" a gain when controlling for it leaves less than half of it


def comparable(new: dict, old: dict) -> bool:
    """Two points measured on the same prompts, samples and seed, with per-sample scores."""
    a, b = new["details"], old["details"]
    keys = ("samples", "seed", "max_new_tokens")
    return (a.get("prompt_ids") == b.get("prompt_ids") and "per_sample" in a and "per_sample" in b
            and all(a.get("config", {}).get(k) == b.get("config", {}).get(k) for k in keys))


def length_adjusted_gain(new: dict, old: dict) -> tuple[float, float]:
    """(raw gain, gain at equal length) of mean score: least squares of score on an intercept,
    the answer's token count and which version answered, pooled over both versions' samples."""
    s_new, s_old = new["details"]["per_sample"], old["details"]["per_sample"]
    scores = np.array(s_new["score"] + s_old["score"], dtype=float)
    tokens = np.array(s_new["tokens"] + s_old["tokens"], dtype=float)
    is_new = np.r_[np.ones(len(s_new["score"])), np.zeros(len(s_old["score"]))]
    design = np.c_[np.ones_like(tokens), tokens, is_new]
    coef = np.linalg.lstsq(design, scores, rcond=None)[0]
    return float(np.mean(s_new["score"]) - np.mean(s_old["score"])), float(coef[2])


def human_win_rate(version_id: str, other_id: str) -> dict | None:
    """People's blind-arena votes between the two versions: the version's win rate over decisive votes."""
    from labeling.arena import arena_votes, win_rates

    for row in win_rates(arena_votes()):
        if {row["model_a"], row["model_b"]} == {version_id, other_id} and row["win_rate_a"] is not None:
            mine = row["model_a"] == version_id
            wins, losses = (row["wins_a"], row["wins_b"]) if mine else (row["wins_b"], row["wins_a"])
            low, high = (row["low"], row["high"]) if mine else (1 - row["high"], 1 - row["low"])
            return {"win_rate": wins / (wins + losses), "low": low, "high": high, "votes": wins + losses}
    return None


def compare(version_id: str, new: dict, other_id: str) -> dict[str, Any] | None:
    """The version against one other version, or None when they were not measured alike."""
    old = points.newest_point(other_id, reward_version=new["reward_version"])
    if old is None or not comparable(new, old):
        return None
    s_new, s_old = new["details"]["per_sample"], old["details"]["per_sample"]
    w = win_rate(s_new["score"], s_old["score"], s_new["prompt"])
    length_diff = np.subtract(s_new["tokens"], s_old["tokens"])
    lc = length_controlled_win_rate(outcomes(s_new["score"], s_old["score"]), length_diff, s_new["prompt"])
    raw, adjusted = length_adjusted_gain(new, old)
    return {"version": other_id, "win_rate": w.rate, "low": w.low, "high": w.high, "prompts": w.prompts,
            "lc_win_rate": lc.rate, "lc_low": lc.low, "lc_high": lc.high,
            "reward_gain": raw, "gain_at_equal_length": adjusted,
            "length_change": np.mean(s_new["tokens"]) / max(np.mean(s_old["tokens"]), 1e-9) - 1,
            "human": human_win_rate(version_id, other_id)}


def goodhart(version_id: str, against: dict) -> list[str]:
    """The sentences that warn a reward-model gain may not be a real one."""
    warnings = []
    other = against["version"]
    if against["low"] > 0.5:  # the reward model is sure the version is better
        human = against["human"]
        if human and human["votes"] >= MIN_HUMAN_VOTES and human["win_rate"] <= 0.5:
            warnings.append(f"The reward model prefers {version_id} to {other} ({against['win_rate']:.0%} of answers), "
                            f"but people preferred it in only {human['win_rate']:.0%} of {human['votes']} blind votes: "
                            f"the gain may be the reward model's, not people's.")
        raw, adjusted = against["reward_gain"], against["gain_at_equal_length"]
        if raw > 0 and adjusted < LENGTH_SHARE * raw:
            warnings.append(f"{version_id}'s answers are {against['length_change']:+.0%} the length of {other}'s, and at "
                            f"equal length its reward gain shrinks from {raw:.3g} to {adjusted:.3g}: length alone may "
                            f"explain most of it.")
    return warnings


def round_report(version_id: str) -> dict[str, Any]:
    """The version against its parent and the base, with the Goodhart sentences; `missing` says
    what to measure when a comparison is not possible yet."""
    chain = versions.lineage(version_id)
    row, base_id = chain[-1], chain[0].id  # the base is where the lineage starts
    new = points.newest_point(version_id)
    report: dict[str, Any] = {"version": version_id, "method": row.method, "parent": row.parent_id,
                              "comparisons": {}, "warnings": []}
    if new is None:
        report["missing"] = f"{version_id} has not been measured yet: press Measure on the Evaluate page."
        return report
    report.update(kl=new["kl"], kl_se=new["kl_se"], mean_tokens=new["details"].get("mean_tokens"))
    for label, other in (("parent", report["parent"]), ("base", base_id)):
        if other and other != version_id and other not in [c["version"] for c in report["comparisons"].values()]:
            found = compare(version_id, new, other)
            if found is None:
                report["missing"] = (f"{other} was not measured with the same prompts, samples and reward model as "
                                     f"{version_id}: measure both again (Measure, all versions).")
                continue
            report["comparisons"][label] = found
            report["warnings"] += goodhart(version_id, found)
    return report
