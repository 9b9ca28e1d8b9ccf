"""Is a DPO version's implicit reward a reward model? β·log π/π_base of the base model's answers to
the held-out prompts, for every DPO version of a workspace, checked against a taste as
bench/learning.py checks a reward model (pairs of answers to one prompt that the taste tells apart,
ties of the reward half, a 95 % interval over prompts), summed over each answer and per token.

    python bench/implicit_reward.py --home WORKSPACE [--taste plain] [--heldout 24] [--samples 4]
                                    [--max-new-tokens 64] [--seed 0]

The base answers are those bench/learning.py's versions are measured on with the same settings, so
a workspace a learning run left (`--home DIR/TASTE/dpo`) is scored on its own held-out answers.
One JSON line per version; the reference is the base (β·log π/π_ref is DPO's reward only there).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--home", required=True, help="the workspace (PREFLOOP_HOME) whose DPO versions are scored")
    p.add_argument("--taste", default="plain", help="a built-in taste or package.module:function")
    p.add_argument("--heldout", type=int, default=24, help="held-out prompts the base answers")
    p.add_argument("--samples", type=int, default=4, help="answers per held-out prompt")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    os.environ["PREFLOOP_HOME"] = args.home
    from bench.learning_measure import Measure, implicit_reward_accuracy
    from bench.tastes import load_taste
    from training import jobs, versions

    jobs.set_threads(None)
    measure = Measure(args, load_taste(args.taste))
    measure("base", "v1-base")
    scored = 0
    base_id = versions.ensure_base_version()
    for version in versions.list_versions(kind="policy"):
        config = version.config or {}
        if version.method != "dpo" or (config.get("reference", "base") != "base" and version.parent_id != base_id):
            continue
        print(json.dumps({"version": version.id, "beta": config["beta"], "lora_r": config.get("lora_r"),
                          "pairs": (version.metrics or {}).get("pairs"),
                          **implicit_reward_accuracy(version.id, config["beta"], measure)}), flush=True)
        scored += 1
    if not scored:
        print(f"{args.home} has no DPO version trained against the base.", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
