"""Which hidden states should the frozen reward heads read, for the tastes people label by?

The pairs of one or more learning-bench workspaces (SmolLM2's own answers to the bench's prompts,
each workspace's SQLite database) are labeled again, offline, by every taste: the built-in ones of
bench/tastes.py and seven more written for this check (commas, digits, "you", hedging words, long
words, exclamations and questions, "I"), or any `--taste package.module:function`. The backbone
reads every answer once (every layer's response mean, `reward_heads.layer_means`); then for each
choice of layers, one Bradley-Terry head (length `free`, λ by cross-validation, as the reward
round fits it) is scored on folds of whole prompts it never saw. Pairs the taste scores alike are
left out.

    python bench/taste_layers.py --db /tmp/lb-home/plain/dpo/prefloop.db [--db ...]
                                 [--layer-sets 0.5,1 0,0.5,1 0] [--taste NAME ...] [--folds 4]

The backbone is the reward round's default (the policy's base model: PREFLOOP_MODEL or the
converted SmolLM2). Last line printed: JSON {taste: {"decided": pairs, layer set: accuracy}}.
"""
from __future__ import annotations

import argparse
import json
import re
import sqlite3
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.reward import fold_of  # noqa: E402
from bench.tastes import load_taste  # noqa: E402
from training import jobs, reward, reward_heads  # noqa: E402
from training.reward_config import RewardRoundConfig  # noqa: E402


def _words(text: str) -> list[str]:
    return [w.strip(".,!?;:\"'()").lower() for w in text.split()]


def commas(text: str) -> float:
    """Commas a word."""
    return text.count(",") / (1 + len(text.split()))


def digits(text: str) -> float:
    """Digits a word: concrete figures."""
    return len(re.findall(r"\d", text)) / (1 + len(text.split()))


def you(text: str) -> float:
    """The share of words that address the reader."""
    words = _words(text)
    return sum(w in ("you", "your", "you're", "yours") for w in words) / (1 + len(words))


def hedging(text: str) -> float:
    """Fewer hedging words is better."""
    return -len(re.findall(r"\b(might|may|could|perhaps|possibly|generally|often|usually)\b", text.lower()))


def long_words(text: str) -> float:
    """The share of words of more than eight letters (the opposite of `plain`)."""
    words = re.findall(r"[A-Za-z]+", text)
    return sum(len(w) > 8 for w in words) / (1 + len(words))


def exclaim(text: str) -> float:
    """Exclamation and question marks."""
    return text.count("!") + text.count("?")


def first_person(text: str) -> float:
    """Less "I" is better."""
    words = _words(text)
    return -sum(w in ("i", "i'm", "my", "me") for w in words) / (1 + len(words))


CHECK_TASTES = {f.__name__: f for f in (commas, digits, you, hedging, long_words, exclaim, first_person)}
TASTES = ("plain", "structured", "concise", *CHECK_TASTES)


def read_pairs(paths: list[Path]) -> list[tuple[list[dict], str, str]]:
    """(prompt messages, answer A, answer B) of every pair in the workspaces' databases, each two
    answers to a prompt once (in either order)."""
    pairs, seen = [], set()
    for path in paths:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
            rows = db.execute("SELECT pr.messages, a.text, b.text FROM pairs p JOIN prompts pr ON pr.id = p.prompt_id "
                              "JOIN responses a ON a.id = p.response_a_id JOIN responses b ON b.id = p.response_b_id")
            for messages, a, b in rows:
                if (key := (messages, frozenset((a, b)))) not in seen:
                    seen.add(key)
                    pairs.append((json.loads(messages) if isinstance(messages, str) else messages, a, b))
    return pairs


def accuracy(features: np.ndarray, lengths: np.ndarray, scores: np.ndarray, groups: np.ndarray,
             folds: int) -> float | None:
    """Held-out agreement of one head with the taste's `scores`, folds of whole prompts (None when
    the taste tells no two answers apart).
    Shapes: features (pairs, 2, d), lengths and scores (pairs, 2), groups (pairs,)."""
    decided = scores[:, 0] != scores[:, 1]
    first = scores[:, 0] > scores[:, 1]
    chosen = np.where(first[:, None], features[:, 0], features[:, 1])
    rejected = np.where(first[:, None], features[:, 1], features[:, 0])
    chosen_len, rejected_len = np.where(first, lengths[:, 0], lengths[:, 1]), np.where(first, lengths[:, 1], lengths[:, 0])
    fold = fold_of([{"conversation": g} for g in groups], folds)
    right = []
    for f in range(folds):
        train, test = decided & (fold != f), decided & (fold == f)
        if not test.any() or not train.any():
            continue
        heads = reward_heads.fit(chosen[train], rejected[train], chosen_len[train], rejected_len[train], groups[train],
                                 heads=1, length="free")
        margin = heads.rewards(chosen[test], chosen_len[test])[0] - heads.rewards(rejected[test], rejected_len[test])[0]
        right += list((margin > 0) + 0.5 * (margin == 0))
    return round(float(np.mean(right)), 3) if right else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--db", action="append", required=True, help="a workspace's prefloop.db (repeatable)")
    parser.add_argument("--layer-sets", nargs="+", default=["0.5,1", "0,0.5,1", "0"],
                        help="comma-separated fractions of the depth (0 the embeddings, 1 the last layer)")
    parser.add_argument("--taste", action="append", help=f"a taste (default: {', '.join(TASTES)})")
    parser.add_argument("--folds", type=int, default=4)
    args = parser.parse_args(argv)
    if missing := [p for p in args.db if not Path(p).is_file()]:
        sys.exit(f"--db {missing[0]}: no such database.")
    layer_sets = {s: tuple(float(f) for f in s.split(",")) for s in args.layer_sets}
    try:
        tastes = {name: CHECK_TASTES.get(name) or load_taste(name) for name in args.taste or TASTES}
    except (ValueError, ImportError) as error:
        sys.exit(str(error))
    pairs = read_pairs([Path(p) for p in args.db])
    if not pairs:
        sys.exit(f"{', '.join(args.db)}: no pairs stored; run bench/learning.py with --home first.")
    jobs.set_threads()
    print(f"{len(pairs)} pairs on {len({json.dumps(p) for p, _, _ in pairs})} prompts", file=sys.stderr)
    config = RewardRoundConfig()
    model, tokenizer, _ = reward.load_backbone(config)
    texts = [t for _, a, b in pairs for t in (a, b)]
    means = reward_heads.layer_means(model, tokenizer, [p for p, _, _ in pairs for _ in range(2)], texts,
                                     config.max_length, config.batch_size)
    lengths = reward_heads.response_length(texts).reshape(-1, 2)
    groups = np.array([json.dumps(p) for p, _, _ in pairs])
    features = {label: reward_heads.pick(means, layers).reshape(len(pairs), 2, -1) for label, layers in layer_sets.items()}
    result = {}
    for name, taste in tastes.items():
        scores = np.array([taste(t) for t in texts], dtype=float).reshape(-1, 2)
        result[name] = {"decided": int((scores[:, 0] != scores[:, 1]).sum())}
        for label, picked in features.items():
            result[name][label] = accuracy(picked, lengths, scores, groups, args.folds)
        print(name, result[name], file=sys.stderr)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
