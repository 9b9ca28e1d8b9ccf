"""Reward-model accuracy per backbone: held-out pairwise accuracy on an 80/20 prompt split of the
hh-rlhf file and on the OASST pairs (never trained on), with training time.

    python bench/reward.py [--backbones policy minilm] [--max-pairs N] [--max-length N] [--epochs N]
                           [--learning-rate LR] [--max-heldout N] [--max-oasst N]

Each backbone trains with prefloop's reward round (`training.reward.train`, TRL RewardTrainer,
Bradley-Terry loss) and its default settings, unless the flags change them. One JSON line per
backbone, then the last line for the better one on hh-rlhf: {"hh_acc": x, "oasst_acc": y, "train_s": t, "backbone": "..."}.
Target: ≥ 0.65 on hh-rlhf held out within 15 minutes of CPU.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
DATA = ROOT.parent / "shared" / "data"
HH, OASST = DATA / "hh-rlhf-harmless-base-test.jsonl.gz", DATA / "oasst-en-trees-70.jsonl"


def rows_of(path: Path, fmt: str, home: Path) -> list[dict]:
    """The file's labeled pairs as export rows, via a workspace of its own."""
    os.environ["PREFLOOP_HOME"] = str(home)
    from labeling.export import preference_rows
    from labeling.store import import_file

    import_file(path, fmt=fmt)
    return [dict(r, split="train") for r in preference_rows().rows]


def run_backbone(backbone: str, data, oasst: list[dict], args) -> dict:
    from training import jobs, reward
    from training.reward_config import RewardRoundConfig

    given = {"epochs": args.epochs, "max_length": args.max_length, "learning_rate": args.learning_rate}
    config = RewardRoundConfig(backbone=backbone, **{k: v for k, v in given.items() if v is not None})
    with tempfile.TemporaryDirectory() as out:
        started = time.perf_counter()
        model, tokenizer, _, metrics = reward.train(config, data, jobs.Reporter(None), out)
        train_s = time.perf_counter() - started
    scorer = reward.make_scorer(model, tokenizer, config.max_length, batch_size=16)
    return {"backbone": backbone, "hh_acc": reward.heldout_accuracy(scorer, data.heldout), "lr": config.lr, "epochs": config.epochs,
            "max_length": config.max_length,
            "oasst_acc": reward.heldout_accuracy(scorer, oasst), "train_s": train_s,
            "train_pairs": len(data.train), "hh_heldout_pairs": len(data.heldout), "oasst_pairs": len(oasst)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backbones", nargs="+", default=["policy", "minilm"], choices=["policy", "minilm"])
    parser.add_argument("--max-pairs", type=int, help="Train on at most this many hh pairs (a quicker run).")
    parser.add_argument("--max-length", type=int, help="Default: the round's own.")
    parser.add_argument("--epochs", type=float, help="Default: the round's own.")
    parser.add_argument("--learning-rate", type=float, help="AdamW learning rate; default: the backbone's own.")
    parser.add_argument("--max-heldout", type=int, help="Score only the first N held-out hh pairs (a quicker run).")
    parser.add_argument("--max-oasst", type=int, help="Score only the first N OASST pairs (a quicker run).")
    parser.add_argument("--home", default=str(ROOT / "bench-workspace"), help="Workspace for data and models.")
    args = parser.parse_args()
    if not (HH.is_file() and OASST.is_file()):
        sys.exit(f"{DATA} lacks the hh-rlhf or OASST file; the benchmark needs the shared data beside the checkout.")
    from training import jobs, rounds

    jobs.set_threads()
    home = Path(args.home)
    oasst = rows_of(OASST, "oasst", home / "oasst")[: args.max_oasst]
    hh = rows_of(HH, "hh", home / "hh")  # the last workspace set stays: the models live in it
    train, heldout, _ = rounds.split_by_prompt(hh, 0.2, seed=0)
    data = rounds.PreferenceData(train[: args.max_pairs], heldout[: args.max_heldout], [], True)
    results = []
    for backbone in args.backbones:
        results.append(run_backbone(backbone, data, oasst, args))
        print(json.dumps(results[-1]), flush=True)
    best = max(results, key=lambda r: r["hh_acc"])
    print(json.dumps({k: best[k] for k in ("hh_acc", "oasst_acc", "train_s", "backbone")}))


if __name__ == "__main__":
    main()
