"""How well does an AI judge agree with people's labels, before anyone trusts it?

    python bench/judge.py [--pairs 120] [--model FOLDER] [--source hh|oasst|both] [--threads N]

The local judge of training/judge.py (default: the base model, SmolLM2-135M-Instruct) judges
labeled pairs of `../shared/data` (hh-rlhf harmless-base and OpenAssistant, whose labels people
gave), each twice with the sides swapped, exactly as `python -m training judge` does. Reported:
accuracy against the people's label (a tie counts half), Cohen's κ over the three classes with a
95 % interval from a bootstrap over conversations (labeling/agreement.py), the share of verdicts
that changed with the side (stored as ties), how often the judge picked the answer shown first,
and "longer wins" on the same pairs. The gate (issue 17) opens at κ ≥ 0.6 by default.
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

from bench import reward as reward_bench  # noqa: E402  (the same pairs)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pairs", type=int, default=120, help="pairs judged per source")
    p.add_argument("--source", default="both", choices=("hh", "oasst", "both"))
    p.add_argument("--model", default="", help="judge model folder (default: the base model)")
    p.add_argument("--home", default=str(ROOT / "bench-workspace" / "judge"))
    p.add_argument("--threads", type=int)
    args = p.parse_args(argv)
    from labeling import agreement, suggestions
    from training import jobs
    from training.judge import FLIPPED, JudgeConfig, JudgeError, both_ways, make_judge

    jobs.set_threads(args.threads)
    home = Path(args.home)
    rows = []
    for name, path in (("hh", reward_bench.HH), ("oasst", reward_bench.OASST)):
        if args.source in (name, "both"):
            found = reward_bench.rows_of(path, name, home / name)
            picked = np.random.default_rng(0).permutation(len(found))[: args.pairs]
            rows += [found[i] for i in sorted(picked)]
    judge = Recording(make_judge(JudgeConfig(model=args.model)))
    rubric = suggestions.rubric()[1]
    started = time.perf_counter()
    items, errors = [], 0
    for r in rows:
        a, b = r["chosen"][-1]["content"], r["rejected"][-1]["content"]  # people chose a
        try:
            outcome, _, reason = both_ways(judge, rubric, r["prompt"], a, b)
        except JudgeError:
            errors += 1
            continue
        items.append({"conversation": r["conversation"], "outcome": outcome, "longer_a": len(a) > len(b),
                      "flipped": reason == FLIPPED})
    keys = {c: i for i, c in enumerate(sorted({it["conversation"] for it in items}))}
    m = agreement.measure([(keys[it["conversation"]], it["outcome"], "a") for it in items])
    print(json.dumps({
        "judge": judge.name, "pairs": len(items), "errors": errors, "source": args.source,
        "accuracy_ties_half": round(float(np.mean([{"a": 1.0, "tie": 0.5, "b": 0.0}[it["outcome"]] for it in items])), 3),
        "kappa": round(m["kappa"], 3), "kappa_ci": [round(v, 3) for v in m["kappa_ci"]],
        "flipped_with_side": round(float(np.mean([it["flipped"] for it in items])), 3),
        "first_shown_won": round(judge.first / max(judge.calls, 1), 3),
        "longer_wins_accuracy": round(float(np.mean([it["longer_a"] for it in items])), 3),
        "gate_default_threshold": suggestions.DEFAULT_THRESHOLD, "seconds": round(time.perf_counter() - started)}))
    return 0


class Recording:
    """A judge that counts how often the answer shown first won."""

    def __init__(self, judge):
        self.judge, self.name, self.calls, self.first = judge, judge.name, 0, 0

    def verdict(self, *args):
        v = self.judge.verdict(*args)
        self.calls += 1
        self.first += v.winner == "first"
        return v


if __name__ == "__main__":
    sys.exit(main())
