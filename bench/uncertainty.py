"""Does the uncertainty-first queue buy the same reward model for fewer labels?

    python bench/uncertainty.py [--taste plain] [--taste concise] [--budget 256] [--batch 32] [--seeds 5]
                                [--plot docs/uncertainty.png] [--home DIR] [--threads N]

A scripted annotator (a taste of bench/tastes.py, or any package.module:function) labels pairs
of real conversations, `../shared/data`'s hh-rlhf harmless-base and OpenAssistant pairs, their two
answers taken as the two sides (the datasets' own labels are not used). The pairs are split by
conversation: 70 % are the pool the queue serves, 30 % measure the reward model. Every `--batch`
labels a reward model is fitted as the reward round fits it by default (the SmolLM2 backbone
frozen, 8 Bradley-Terry heads, length "free", λ by cross-validation; features read once and cached,
as bench/reward.py does), and the queue serves the next batch:

  * random: any waiting pair;
  * uncertain: as labeling/queue.py does with the order "uncertain": the pair whose reward-model
    probability σ(r(a) − r(b)) is nearest 0.5, except RANDOM_SHARE of the draws at random;
  * disagreement: the pair on whose margin r(a) − r(b) the ensemble's heads disagree most (query by
    committee, Seung et al. 1992), with the same share of random draws.

Both arms start from the same random first batch and the same split, per seed. Reported per
budget: the reward model's accuracy against the taste on the measuring pairs (ties of the taste
left out), mean over seeds with a 95 % interval over seeds (t); then the labels each arm needs to
reach the accuracy the random arm has at the full budget, interpolated on the mean curves, and the
share the uncertain arm saves. Target (issue 17): ≥ 30 % fewer labels.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import reward as reward_bench  # noqa: E402  (the same pairs and feature cache)
from bench.tastes import load_taste  # noqa: E402

ARMS = ("random", "uncertain", "disagreement")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--taste", action="append", help="built-in taste or package.module:function (repeatable; default plain)")
    p.add_argument("--budget", type=int, default=256, help="labels each arm may spend")
    p.add_argument("--batch", type=int, default=32, help="labels between two reward models (the first batch is random)")
    p.add_argument("--seeds", type=int, default=5, help="repeats with another split and first batch")
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--plot", help="write a PNG of accuracy against labels spent")
    p.add_argument("--home", default=str(ROOT / "bench-workspace" / "reward"), help="workspace and feature cache")
    p.add_argument("--threads", type=int)
    return p.parse_args(argv)


def load_pool(home: Path, max_length: int):
    """Rows and features of bench/reward.py's pairs (its defaults, so its feature cache serves)."""
    hh_rows = reward_bench.rows_of(reward_bench.HH, "hh", home / "hh")
    oasst_rows = reward_bench.rows_of(reward_bench.OASST, "oasst", home / "oasst")
    hh_fold = reward_bench.fold_of(hh_rows, 5)
    rows = ([r for r, f in zip(hh_rows, hh_fold) if f != 0][:400] + [r for r, f in zip(hh_rows, hh_fold) if f == 0][:230]
            + oasst_rows)
    chosen, rejected = reward_bench.cached_features("policy", rows, home, max_length)
    return rows, chosen, rejected


def fit_and_score(x_a, x_b, len_a, len_b, groups, labeled, winners, heads, seed):
    """Fit the heads on the labeled pairs (winner first) and return P(a better) for every pair."""
    from training import reward_heads

    idx = np.array(labeled)
    a_won = winners[idx] == 0
    chosen = np.where(a_won[:, None], x_a[idx], x_b[idx])
    rejected = np.where(a_won[:, None], x_b[idx], x_a[idx])
    c_len, r_len = np.where(a_won, len_a[idx], len_b[idx]), np.where(a_won, len_b[idx], len_a[idx])
    model = reward_heads.fit(chosen, rejected, c_len, r_len, [groups[i] for i in idx], heads=heads, length="free",
                             seed=seed)
    margins = model.rewards(x_a, len_a) - model.rewards(x_b, len_b)  # (heads, pairs)
    return 1 / (1 + np.exp(-np.clip(margins.mean(0), -60, 60))), margins.std(0)


def run_arm(arm: str, data: dict, pool: np.ndarray, test: np.ndarray, first: list[int], args, seed: int) -> list[float]:
    """Accuracy against the taste on `test` after each batch of labels, up to the budget."""
    from labeling.queue import RANDOM_SHARE

    rng = np.random.default_rng(1000 + seed)
    labeled = list(first)
    curve = []
    while True:
        usable = [i for i in labeled if data["winner"][i] >= 0]  # a taste's tie teaches nothing
        p, spread = fit_and_score(data["x_a"], data["x_b"], data["len_a"], data["len_b"], data["groups"], usable,
                                  data["winner"], args.heads, seed)
        decided = test[data["winner"][test] >= 0]
        curve.append(float(((p[decided] > 0.5) == (data["winner"][decided] == 0)).mean()))
        if len(labeled) >= args.budget:
            return curve
        waiting = np.setdiff1d(pool, labeled)
        picked: list[int] = []
        for _ in range(min(args.batch, len(waiting))):
            left = np.setdiff1d(waiting, picked)
            if arm == "random" or rng.random() < RANDOM_SHARE:
                picked.append(int(rng.choice(left)))
            elif arm == "uncertain":
                picked.append(int(left[np.argmin(np.abs(p[left] - 0.5))]))
            else:  # "disagreement": the heads' margins differ most (query by committee)
                picked.append(int(left[np.argmax(spread[left])]))
        labeled += picked


def labels_needed(budgets: list[int], curve: np.ndarray, target: float) -> float | None:
    """The first number of labels at which the mean curve reaches `target`, interpolated linearly."""
    for k, value in enumerate(curve):
        if value >= target - 1e-12:
            if k == 0:
                return float(budgets[0])
            b0, b1, v0 = budgets[k - 1], budgets[k], curve[k - 1]
            return float(b0 + (b1 - b0) * (target - v0) / (value - v0))
    return None


def run_taste(name: str, rows, x_chosen, x_rejected, args) -> dict:
    from training import reward_heads

    taste = load_taste(name)
    text_a = [r["chosen"][-1]["content"] for r in rows]
    text_b = [r["rejected"][-1]["content"] for r in rows]
    score_a, score_b = np.array([taste(t) for t in text_a]), np.array([taste(t) for t in text_b])
    data = {"x_a": x_chosen, "x_b": x_rejected, "len_a": reward_heads.response_length(text_a),
            "len_b": reward_heads.response_length(text_b), "groups": [r["conversation"] for r in rows],
            "winner": np.where(score_a > score_b, 0, np.where(score_b > score_a, 1, -1))}
    budgets = list(range(args.batch, args.budget + 1, args.batch))
    curves = {arm: [] for arm in ARMS}
    for seed in range(args.seeds):
        fold = reward_bench.fold_of(rows, 10, seed=seed)
        test, pool = np.flatnonzero(fold < 3), np.flatnonzero(fold >= 3)
        first = [int(i) for i in np.random.default_rng(seed).choice(pool, args.batch, replace=False)]
        for arm in curves:
            curves[arm].append(run_arm(arm, data, pool, test, first, args, seed))
        print(json.dumps({"taste": name, "seed": seed, **{arm: [round(v, 3) for v in c[-1]] for arm, c in curves.items()}}),
              flush=True)
    out = {"taste": name, "budgets": budgets, "ties_share": round(float((data["winner"] == -1).mean()), 3)}
    means = {}
    for arm, runs in curves.items():
        values = np.array(runs)  # (seeds, budgets)
        means[arm] = values.mean(0)
        half = 2.776 * values.std(0, ddof=1) / np.sqrt(len(values)) if len(values) > 1 else np.zeros(len(budgets))
        out[arm] = [{"labels": b, "accuracy": round(float(m), 3), "low": round(float(m - h), 3), "high": round(float(m + h), 3)}
                    for b, m, h in zip(budgets, means[arm], half)]
    target = float(means["random"][-1])
    need = {arm: labels_needed(budgets, means[arm], target) for arm in ARMS}
    out["target_accuracy"] = round(target, 3)
    out["labels_needed"] = need
    out["saving"] = {arm: None if need[arm] is None else round(1 - need[arm] / need["random"], 3) for arm in ARMS[1:]}
    return out


def plot(results: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(5 * len(results), 3.6), squeeze=False)
    for ax, result in zip(axes[0], results):
        for arm, style in zip(ARMS, ("o--", "s-", "^-")):
            points = result[arm]
            xs = [p["labels"] for p in points]
            ax.plot(xs, [p["accuracy"] for p in points], style, label=arm)
            ax.fill_between(xs, [p["low"] for p in points], [p["high"] for p in points], alpha=0.15)
        ax.set_title(f"taste {result['taste']}")
        ax.set_xlabel("labels spent")
        ax.set_ylabel("reward model accuracy vs taste")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None) -> int:
    args = parse_args(argv)
    if not (reward_bench.HH.is_file() and reward_bench.OASST.is_file()):
        sys.exit(f"{reward_bench.DATA} lacks the hh-rlhf or OASST file; the benchmark needs the shared data beside the checkout.")
    from training import jobs

    jobs.set_threads(args.threads)
    started = time.perf_counter()
    home = Path(args.home)
    home.mkdir(parents=True, exist_ok=True)
    rows, x_chosen, x_rejected = load_pool(home, args.max_length)
    results = []
    for name in args.taste or ["plain"]:
        results.append(run_taste(name, rows, x_chosen, x_rejected, args))
        print(json.dumps(results[-1]), flush=True)
    if args.plot:
        plot(results, args.plot)
    print(json.dumps({"summary": {r["taste"]: {"saving": r["saving"], "labels_needed": r["labels_needed"],
                                               "target_accuracy": r["target_accuracy"]} for r in results},
                      "seconds": round(time.perf_counter() - started)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
