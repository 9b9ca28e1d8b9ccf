"""`python -m training reward-eval VERSION [FILE...]`: a reward version's card, on demand.

Scores the version on the held-out pairs of its round (the workspace's held-out prompts, or the
round's own split by conversation when it had to make one: `preferences.split_by_conversation`, never by pair) and
on each labeled file given, read with the importers (`prompt`/`chosen`/`rejected` as JSONL, CSV,
Parquet or a datasets folder, hh-rlhf transcripts, OpenAssistant trees), beside the untrained
backbone and the length baselines (training/reward_report.py). Prints the table, then the report
as a JSON line, and stores it in the version's folder for the Train page's reward card.

Every file is read and checked before any model is loaded: a bad file or row is one sentence
naming the file and line, exit code 2, and nothing is stored.
"""
from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

from labeling.command import run_command
from labeling.importers import InputError, PairRecord, stream
from training import preferences, reward, reward_report, versions
from training.reward_config import RewardRoundConfig
from training.reward_report import EvalSet


def read_file(path: str | Path) -> EvalSet:
    """The labeled pairs of a file as one set named after the file; a pair whose two responses are
    the same is left out (it prefers nothing). InputError names the file and line of a bad row."""
    path = Path(path)
    pairs = EvalSet(path.name, [], [], [])
    for fmt, record in stream(path):
        if not (isinstance(record, PairRecord) and record.labeled):
            raise InputError(f"{path}: its first row is {fmt} (no chosen and rejected response); reward-eval needs "
                             f"labeled pairs: prompt/chosen/rejected rows, hh-rlhf transcripts or OpenAssistant trees.")
        if record.response_a != record.response_b:
            pairs.prompts.append(record.prompt)
            pairs.chosen.append(record.response_a)
            pairs.rejected.append(record.response_b)
    if not pairs.chosen:
        raise InputError(f"{path}: no pair in it has two different responses; give pairs with a chosen and a "
                         f"different rejected response.")
    return pairs


def round_config(row) -> RewardRoundConfig:
    """The config a reward version was trained with (fields added since then keep their defaults,
    except `method`: a version from before it was fine-tuned)."""
    names = {f.name for f in dataclasses.fields(RewardRoundConfig)}
    return RewardRoundConfig(**{"method": "fine-tune", **{k: v for k, v in (row.config or {}).items() if k in names}})


def heldout_rows(row) -> list[dict[str, Any]]:
    """The held-out pairs of a reward version's round: the pairs it recorded as held out
    (`heldout_pair_ids`, rewrites' pairs included), as they are labeled now, even those the pair
    audit would leave out of a round today. A version from before that record splits its own
    labeled pairs again, which can differ from its round's split when rewrites or an AI judge's
    labels were among its rows. An AI judge's labels the round trained with stay, gated in now or not."""
    from labeling import pairs
    from labeling.export import preference_rows

    metrics = row.metrics or {}
    if (recorded := metrics.get("heldout_pair_ids")) is not None:
        wanted = set(recorded)
        recorded_ai = metrics.get("ai_judge") and metrics.get("ai_rubric") is not None
        ai = {"judge": metrics["ai_judge"], "rubric": metrics["ai_rubric"]} if recorded_ai else None
        return [r for r in preferences.training_rows(audit_exclusions=False, ai=ai).rows if r["pair_id"] in wanted]
    pair_ids = pairs.judged_pairs(set(row.judgment_ids or []))
    config = round_config(row)
    rows = [r for r in preference_rows().rows if r["pair_id"] in pair_ids]
    return preferences.split_by_conversation(rows, config.heldout_fraction, config.seed)[1] if rows else []


def evaluate(version_id: str, files: list[EvalSet], batch_size: int = 8) -> dict[str, Any]:
    """Score a reward version on its held-out pairs and on `files`, store the report in its folder
    and return it. RewardError when the version is missing or there is nothing to score."""
    folder = reward.reward_folder(version_id)
    row = versions.get_version(version_id)
    sets = reward_report.heldout_sets(heldout_rows(row)) + files
    if not sets:
        raise reward.RewardError(f"{version_id} has no held-out pairs in this workspace and no file was given; "
                                 f"pass a labeled file: python -m training reward-eval {version_id} FILE.")
    model, tokenizer, meta = reward.load_model(version_id)
    report = reward_report.evaluate(sets, reward.make_scorer(model, tokenizer, meta["max_length"], batch_size),
                                    reward.untrained_scorer(round_config(row), batch_size, trained=model))
    reward_report.write_report(folder, report)
    return report


def main(argv: list[str]) -> int:
    """`python -m training reward-eval VERSION [FILE...] [--batch-size N]`."""
    from training import jobs
    from training.device import DeviceError

    parser = argparse.ArgumentParser(prog="python -m training reward-eval", description=__doc__.split("\n")[0])
    parser.add_argument("version", help="A reward version, e.g. v3-reward "
                                            "(`python -m training versions --kind reward` lists them).")
    parser.add_argument("files", nargs="*", help="Labeled pair files to score as extra test sets.")
    parser.add_argument("--batch-size", type=int, default=8, help="Pairs scored at once.")
    args = parser.parse_args(argv)

    def work() -> dict:
        reward.reward_folder(args.version)
        files = [read_file(path) for path in args.files]  # every file checked before a model loads
        jobs.set_threads()
        report = evaluate(args.version, files, args.batch_size)
        print(f"Reward card of {args.version}")
        print(reward_report.format_table(report))
        return {"version": args.version, **report}

    return run_command(work, {InputError: 2, (reward.RewardError, DeviceError): 1}, ensure_ascii=False)
