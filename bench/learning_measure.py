"""How bench/learning.py measures a version against a taste: every version answers the same
held-out prompts with the same seeds (`Measure`), and `summarise` reports the taste's mean, its
paired win rate with a 95 % interval over prompts, the exact KL to the base, length, the share of
answers cut at the token cap, fluency and degenerate answers; `reward_accuracy_against_taste`
checks a reward model against the taste, `implicit_reward_accuracy` a DPO version's implicit reward."""
from __future__ import annotations

import itertools
import json


def heldout_prompts(n: int) -> list[list[dict]]:
    from training.evaluate import heldout_prompts as first_heldout

    return [messages for _, messages in first_heldout(n)]


class Measure:
    """Every version answers the same held-out prompts with the same seeds; the base is measured once."""

    def __init__(self, args, taste):
        from training import model as models

        self.args, self.taste = args, taste
        self.prompts = heldout_prompts(args.heldout)
        self.base, self.tokenizer = models.load_policy("v1-base")
        self.base.eval()
        self.rows: dict[str, dict] = {}

    def __call__(self, key: str, version_id: str) -> dict:
        from training import model as models
        from training.evaluate import sample_and_score

        policy = self.base if version_id == "v1-base" else models.load_policy(version_id)[0].eval()
        rows = sample_and_score(policy, self.base, self.tokenizer, self.prompts, self.args.samples,
                                self.args.max_new_tokens, self.args.seed + 7, batch_size=8)
        rows["taste"] = [self.taste(t) for t in rows["texts"]]
        self.rows[key] = rows
        return rows


def report(arm: str, figures: dict) -> dict:
    """Print one arm's figures at once (a later crash keeps them), and return them."""
    print(json.dumps({"arm": arm, **figures}), flush=True)
    return figures


def summarise(rows: dict, base: dict, previous: dict | None) -> dict:
    from labeling.paired import clustered_mean_se

    taste, taste_se = clustered_mean_se(rows["taste"], rows["prompt"])
    kl, kl_se = clustered_mean_se(rows["kl"], rows["prompt"])
    texts = rows["texts"]
    out = {"taste": round(taste, 4), "taste_se": round(taste_se, 4), "kl": round(kl, 3), "kl_se": round(kl_se, 3),
           "mean_words": round(sum(len(t.split()) for t in texts) / len(texts), 1),
           "base_logp_per_token": round(sum(rows["base_logp"]) / max(sum(rows["tokens"]), 1), 3),
           "empty_or_looping": round(sum(not t or looping(t) for t in texts) / len(texts), 3)}
    if "ended" in rows:  # answers cut at the token cap never ended: no length option can act on them
        out["cut_at_cap"] = round(sum(not e for e in rows["ended"]) / len(rows["ended"]), 3)
    for name, other in (("vs_base", base), ("vs_previous", previous)):
        if other is not None and other is not rows:
            out[name] = paired(rows, other)
    return out


def paired(rows: dict, other: dict) -> dict:
    """The taste's win rate of `rows` against `other`'s answers to the same prompts and seeds, with its interval."""
    from labeling.paired import win_rate

    w = win_rate(rows["taste"], other["taste"], rows["prompt"])
    return {"win_rate": round(w.rate, 3), "low": round(w.low, 3), "high": round(w.high, 3)}


def looping(text: str) -> bool:
    """A degenerate answer: one word-trigram makes up over a third of its trigrams."""
    words = text.split()
    grams = list(zip(words, words[1:], words[2:]))
    return len(grams) >= 6 and max(grams.count(g) for g in set(grams)) > len(grams) / 3


def reward_accuracy_against_taste(reward_id: str, measure: Measure) -> dict:
    """How often the reward model prefers the answer the taste prefers, over every two base answers
    to the same held-out prompt that the taste tells apart (ties of the model count half), with a
    95% interval from a bootstrap over prompts."""
    return accuracy_against_taste(reward_scores(reward_id, measure), measure.rows["base"])


def reward_scores(reward_id: str, measure: Measure) -> list[float]:
    """The reward model's score of each base answer to the held-out prompts."""
    from training import reward

    rows = measure.rows["base"]
    return reward.load_scorer(reward_id)([measure.prompts[i] for i in rows["prompt"]], rows["texts"]).float().tolist()


def agreement_difference(scores: list[float], other_scores: list[float], rows: dict) -> dict:
    """How much more often one scorer (`scores`, one per base answer in `rows`) agrees with the taste
    than another on the same pairs (`accuracy_against_taste`'s), paired pair by pair, 95 % interval
    over prompts."""
    from labeling.paired import cluster_bootstrap_ci

    agree, clusters = taste_agreement(scores, rows)
    other, _ = taste_agreement(other_scores, rows)
    if not clusters:
        return {"difference": None, "pairs": 0}
    low, high = cluster_bootstrap_ci(agree - other, clusters)
    return {"difference": round(float((agree - other).mean()), 3), "low": round(low, 3), "high": round(high, 3),
            "pairs": len(clusters)}


def implicit_reward_accuracy(version_id: str, beta: float, measure: Measure) -> dict:
    """DPO's implicit reward as a reward model (issue 20): `implicit_rewards` of the base answers to
    the held-out prompts, summed over each answer's tokens and per token, checked against the taste
    as `reward_accuracy_against_taste` checks a reward model."""
    rows = measure.rows["base"]
    reward, tokens = implicit_rewards(version_id, beta, measure)
    return {"sum": accuracy_against_taste(reward, rows),
            "per_token": accuracy_against_taste([r / n for r, n in zip(reward, tokens)], rows)}


def implicit_rewards(version_id: str, beta: float, measure: Measure) -> tuple[list[float], list[int]]:
    """β·log π/π_base of each base answer to a held-out prompt under the DPO version `version_id`, and
    its token count. The EOS of an answer counts where it ended (`sample_and_score`'s "ended"), even
    on the cap's last token."""
    from training import model as models
    from training.arena_answers import response_logprobs

    rows = measure.rows["base"]
    prompts = [measure.prompts[i] for i in rows["prompt"]]
    ended = rows["ended"]  # an answer cut at the cap has no EOS to score
    policy = models.load_policy(version_id)[0].eval()
    tuned = response_logprobs(policy, measure.tokenizer, prompts, rows["texts"], ended)
    base = response_logprobs(measure.base, measure.tokenizer, prompts, rows["texts"], ended)
    return [beta * (t - b) for (t, _), (b, _) in zip(tuned, base)], [n for _, n in base]


def accuracy_against_taste(scores: list[float], rows: dict) -> dict:
    """Agreement of `scores` (one per base answer in `rows`) with the taste over every two answers to
    the same prompt that the taste tells apart: ties of the scores count half, 95 % interval over prompts."""
    from labeling.paired import cluster_bootstrap_ci

    agree, clusters = taste_agreement(scores, rows)
    if not clusters:
        return {"accuracy_vs_taste": None, "pairs": 0}
    low, high = cluster_bootstrap_ci(agree, clusters)
    return {"accuracy_vs_taste": round(float(agree.mean()), 3), "low": round(low, 3), "high": round(high, 3),
            "pairs": len(clusters)}


def taste_agreement(scores: list[float], rows: dict) -> tuple:
    """(1, ½ or 0 per pair: the scores agree with the taste, tie or not; the pair's prompt) over every two
    answers to the same prompt that the taste tells apart, in a fixed order."""
    import numpy as np

    from training.metrics import pair_outcomes

    chosen, rejected, clusters = [], [], []
    for i, j in itertools.combinations(range(len(scores)), 2):
        if rows["prompt"][i] == rows["prompt"][j] and rows["taste"][i] != rows["taste"][j]:
            c, r = (i, j) if rows["taste"][i] > rows["taste"][j] else (j, i)
            chosen.append(scores[c])
            rejected.append(scores[r])
            clusters.append(rows["prompt"][i])
    if not chosen:
        return np.zeros(0), []
    return pair_outcomes(chosen, rejected), clusters  # the one preference accuracy: ties count half
