"""Judgments out as TRL-ready preference rows, in conversational form with an explicit prompt:

    {"prompt": [{"role": "user", "content": ...}, ...],
     "chosen": [{"role": "assistant", "content": ...}],
     "rejected": [{"role": "assistant", "content": ...}],
     "pair_id": 12, "prompt_id": 5, "split": "train", "reasons": ["more correct"], "origin": "human"}

which `trl.DPOTrainer` and `trl.RewardTrainer` (1.16) take as they are: both join prompt + chosen
and prompt + rejected through the tokenizer's chat template. Each pair is decided by the majority
of its non-skip judgments; ties, both-bad verdicts, skip-only pairs and pairs whose annotators
disagree with no majority are left out and counted. `reasons` are the reason tags the deciding
judgments gave (labeling/reasons.py), each once; an import reads them back. `origin` is "human"
(a person's or an imported label) or "ai" (an AI judge's verdict on a pair nobody judged, only when
asked for: rounds do while the agreement gate is open, labeling/agreement.py). Training uses
`preference_rows` directly.
"""
from __future__ import annotations

import json
import shutil
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import Text, select, type_coerce
from sqlalchemy.orm import aliased

from labeling import db
from labeling.models import Judgment, Pair, Prompt, Response

EXPORT_FORMATS = ("jsonl", "parquet", "hf")
EXCLUDED_KINDS = ("tie", "both_bad", "skip", "unresolved")
AUDIT_CHECKS = ("only_longer", "near_identical", "disagreement", "skewed_annotator")  # labeling/audit.py CHECKS


class ExportError(ValueError):
    """An export prefloop cannot write; the message is one sentence for the user."""


@dataclass
class ExportResult:
    rows: list[dict[str, Any]] = field(default_factory=list)
    excluded: dict[str, int] = field(default_factory=lambda: dict.fromkeys(EXCLUDED_KINDS, 0))
    judgment_ids: list[int] = field(default_factory=list)  # the votes that decided the rows
    ai_label_ids: list[int] = field(default_factory=list)  # the AI verdicts (Suggestion ids) that decided rows
    ai: dict[str, Any] | None = None  # the AI judge whose verdicts were asked for (training.preferences.training_rows)


def preference_row(messages: list[dict], chosen: str, rejected: str, pair_id: int, prompt_id: int, split: str,
                   origin: str, reasons: list[str] | None = None, **lineage: Any) -> dict[str, Any]:
    """One row in the module docstring's shape; `lineage` adds what decided it (a suggestion's or a
    demonstration's id) for rows no person decided."""
    return {"prompt": messages, "chosen": [{"role": "assistant", "content": chosen}],
            "rejected": [{"role": "assistant", "content": rejected}], "pair_id": pair_id, "prompt_id": prompt_id,
            "split": split, "reasons": reasons or [], "origin": origin, **lineage}


def majority(outcomes: list[str]) -> str | None:
    """The outcome with strictly more votes than any other among the non-skip ones; "skip" when
    there are only skips; None when the top outcomes are level (unresolved).

    majority(["a", "a", "b"]) == "a"; majority(["a", "b"]) is None; majority(["a", "tie", "a"]) == "a".
    """
    votes = Counter(o for o in outcomes if o != "skip")
    if not votes:
        return "skip" if outcomes else None
    (top, n), *rest = votes.most_common(2)
    return None if rest and rest[0][1] == n else top


def decide(judgments: list[tuple[int, int, str]]) -> tuple[dict[int, str], dict[int, list[int]], dict[str, int]]:
    """Judgments (id, pair_id, outcome) -> ({pair_id: "a" | "b"}, {pair_id: deciding judgment ids},
    counts of the pairs left out by reason)."""
    by_pair: dict[int, list[tuple[int, str]]] = defaultdict(list)
    for judgment_id, pair_id, outcome in judgments:
        by_pair[pair_id].append((judgment_id, outcome))
    winners, deciders, excluded = {}, {}, dict.fromkeys(EXCLUDED_KINDS, 0)
    for pair_id, votes in by_pair.items():
        # one vote decides alone (most imported pairs); the vote count only when there are more
        verdict = votes[0][1] if len(votes) == 1 else majority([o for _, o in votes])
        if verdict in ("a", "b"):
            winners[pair_id] = verdict
            deciders[pair_id] = [j for j, o in votes if o == verdict]
        else:
            excluded[verdict or "unresolved"] += 1
    return winners, deciders, excluded


def _parse_all(values: list[Any]) -> list[Any]:
    """JSON texts -> values with one json.loads call for all of them (per-call overhead dominated
    100,000 small loads); values a driver has already parsed pass through."""
    if not all(isinstance(v, str) for v in values):
        return [json.loads(v) if isinstance(v, str) else v for v in values]
    return json.loads("[" + ",".join(values) + "]") if values else []


def decided_judgments(kinds: tuple[str, ...] = ("label", "arena")) -> dict[int, list[int]]:
    """{pair_id: the judgment ids that decide it} of every pair `preference_rows` would export, read
    without the texts: cheap enough for the home page to ask on every visit."""
    with db.session() as session:
        judged = session.connection().execute(select(Judgment.id, Judgment.pair_id, Judgment.outcome)
                                              .join(Pair, Pair.id == Judgment.pair_id)
                                              .where(Pair.kind.in_(kinds))).all()
    return decide(judged)[1]


def preference_rows(kinds: tuple[str, ...] = ("label", "arena"), source: str | None = None,
                    exclude: tuple[str, ...] = (), ai: dict[str, Any] | None = None) -> ExportResult:
    """Every decided pair of the given kinds (and of one source: an import's name or a model
    version, when given) as a preference row, ordered by pair id. `exclude` names pair-audit
    checks (labeling/audit.py CHECKS, e.g. ("near_identical", "only_longer")) whose flagged pairs
    are left out too, each counted in `excluded` under the first check that flags it.

    `ai` ({"judge", "rubric"}, as `agreement.ai_labels_in_use` gives it) adds the judge's verdicts
    on labeling pairs nobody judged, with "origin": "ai" (people's and imports' rows say "human")."""
    if unknown := [c for c in exclude if c not in AUDIT_CHECKS]:
        raise ExportError(f"Unknown pair-audit check '{unknown[0]}'; leave out any of {', '.join(AUDIT_CHECKS)}.")
    ra, rb = aliased(Response), aliased(Response)
    wanted = [Pair.kind.in_(kinds)] + ([Pair.source == source] if source is not None else [])
    machine = {}
    if ai is not None and source is None and "label" in kinds:
        from labeling import suggestions

        machine = suggestions.ai_labels(ai["judge"], ai["rubric"])  # only pairs with no judgment at all
    with db.session() as session:
        s = session.connection()  # Core rows: no ORM bookkeeping for 100,000 of them
        judged = s.execute(select(Judgment.id, Judgment.pair_id, Judgment.outcome)
                           .join(Pair, Pair.id == Judgment.pair_id).where(*wanted)).all()
        winners, deciders, excluded = decide(judged)
        # a pair someone judged after `machine` was read is theirs: an AI label never replaces a vote
        machine = {pair_id: v for pair_id, v in machine.items() if pair_id not in {j[1] for j in judged}}
        winners.update({pair_id: outcome for pair_id, (_, outcome) in machine.items()})
        deciders.update({pair_id: [] for pair_id in machine})
        # every tagged judgment (few, and no join needed): only the deciders' are looked up below
        tagged = dict(s.execute(select(Judgment.id, Judgment.reasons).where(Judgment.reasons.is_not(None))).all())
        content = [row for row in s.execute(
            select(Pair.id, Pair.prompt_id, type_coerce(Prompt.messages, Text), Prompt.split, ra.text, rb.text)
            .join(Prompt, Prompt.id == Pair.prompt_id)
            .join(ra, ra.id == Pair.response_a_id).join(rb, rb.id == Pair.response_b_id)
            .where(*wanted).order_by(Pair.id)).all() if row[0] in winners]
    result = ExportResult(excluded=excluded)
    prompts = _parse_all([row[2] for row in content])
    for (pair_id, prompt_id, _, split, text_a, text_b), messages in zip(content, prompts):
        chosen, rejected = (text_a, text_b) if winners[pair_id] == "a" else (text_b, text_a)
        reasons = list(dict.fromkeys(tag for j in deciders[pair_id] for tag in tagged.get(j) or ()))
        result.rows.append(preference_row(messages, chosen, rejected, pair_id, prompt_id, split,
                                          "ai" if pair_id in machine else "human", reasons))
        result.judgment_ids.extend(deciders[pair_id])
        if pair_id in machine:
            result.ai_label_ids.append(machine[pair_id][0])
    result.judgment_ids.sort()
    return _leave_out(result, deciders, exclude, kinds, source) if exclude else result


def pair_audit(kinds: tuple[str, ...] = ("label", "arena"), source: str | None = None):
    """The pair audit (labeling/audit.py) of the rows `preference_rows` gives for these kinds and source."""
    return _audit(preference_rows(kinds, source).rows, kinds, source)


def _audit(rows: list[dict[str, Any]], kinds: tuple[str, ...], source: str | None):
    from labeling import audit, stats  # pandas: only for an audit

    frame = stats.judgments_frame(source=source, include_unjudged=False, kinds=kinds)
    return audit.audit(rows, frame)


def _leave_out(result: ExportResult, deciders: dict[int, list[int]], exclude: tuple[str, ...],
               kinds: tuple[str, ...], source: str | None) -> ExportResult:
    """`result` without the pairs the audit flags under `exclude`, and without their judgments."""
    flags = _audit(result.rows, kinds, source).flags
    first = flags[flags["check"].isin(exclude)].drop_duplicates("pair_id")  # in audit.CHECKS order
    dropped = set(first["pair_id"].astype(int))
    kept = [row for row in result.rows if row["pair_id"] not in dropped]
    counts = first["check"].value_counts()
    excluded = {**result.excluded, **{check: int(counts.get(check, 0)) for check in exclude}}
    kept_ids = {row["pair_id"] for row in kept}
    ai_ids = [i for row, i in zip([r for r in result.rows if r["origin"] == "ai"], result.ai_label_ids)
              if row["pair_id"] in kept_ids]
    return ExportResult(kept, excluded, sorted(j for row in kept for j in deciders[row["pair_id"]]), ai_ids)


def unpaired_rows(rows: list[dict[str, Any]], thumbs: list[dict[str, Any]] = ()) -> list[dict[str, Any]]:
    """Preference rows -> TRL's unpaired preference rows {"prompt", "completion", "label"} (KTO):
    chosen True, rejected False; then `thumbs`, rows already in that shape (labeling/ratings.py).
    Each answer comes once per prompt and label (a rewrite preferred to both answers of a pair is
    one desirable example)."""
    sides = ({"prompt": r["prompt"], "completion": r[side], "label": label}
             for r in rows for side, label in (("chosen", True), ("rejected", False)))
    seen, out = set(), []
    for example in [*sides, *thumbs]:
        key = (json.dumps(example["prompt"], sort_keys=True), example["completion"][-1]["content"], example["label"])
        if key not in seen:
            seen.add(key)
            out.append({k: example[k] for k in ("prompt", "completion", "label")})
    return out


def _arrow_table(rows: list[dict[str, Any]]):
    import pyarrow as pa

    message = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))
    schema = pa.schema([("prompt", message), ("chosen", message), ("rejected", message),
                        ("pair_id", pa.int64()), ("prompt_id", pa.int64()), ("split", pa.string()),
                        ("reasons", pa.list_(pa.string())), ("origin", pa.string())])
    return pa.Table.from_pylist(rows, schema=schema)


def _write_jsonl(rows: list[dict[str, Any]], path: Path) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def _write_parquet(rows: list[dict[str, Any]], path: Path) -> None:
    import pyarrow.parquet as pq

    pq.write_table(_arrow_table(rows), path)


def _write_hf(rows: list[dict[str, Any]], path: Path) -> None:
    import datasets

    if path.is_dir() and any(path.iterdir()) and not (path / "dataset_info.json").exists():
        raise ExportError(f"{path}: the folder exists and is not a dataset written by prefloop; "
                          f"give a new or empty folder.")
    if path.is_dir():
        shutil.rmtree(path)
    datasets.Dataset(_arrow_table(rows)).save_to_disk(str(path))


WRITERS = {"jsonl": _write_jsonl, "parquet": _write_parquet, "hf": _write_hf}


def export(path: str | Path, fmt: str = "jsonl", kinds: tuple[str, ...] = ("label", "arena"),
           source: str | None = None, exclude: tuple[str, ...] = (), unpaired: bool = False) -> dict[str, Any]:
    """Write the preference rows (of one source, when given: an import as one unit; without the
    pairs the audit flags under `exclude`) to `path` as JSONL, Parquet or a `datasets` folder
    ("hf"); `unpaired`: as TRL's unpaired rows (`unpaired_rows`, JSONL only). Returns
    {"exported": n, "excluded": {...}}."""
    path = Path(path)
    if fmt not in WRITERS:
        raise ExportError(f"{path}: unknown export format '{fmt}'; use one of {', '.join(EXPORT_FORMATS)}.")
    if unpaired and fmt != "jsonl":
        raise ExportError(f"{path}: the unpaired (KTO) export is written as jsonl; pass --format jsonl.")
    if not path.parent.is_dir():
        raise ExportError(f"{path}: the folder {path.parent} does not exist; create it or pick another path.")
    if fmt != "hf" and path.is_dir():
        raise ExportError(f"{path}: is a folder; give a file name for the {fmt} export.")
    result = preference_rows(kinds, source, exclude)
    rows = result.rows
    if unpaired:
        from labeling import ratings

        rows = unpaired_rows(result.rows, ratings.rating_rows() if source is None else [])  # pairs' sides, then thumbs
    if not rows:
        pairs = "no pair" if source is None else f"no pair from source '{source}'"
        raise ExportError(f"{path}: nothing to export, {pairs} has a majority for one response yet "
                          f"(left out: {json.dumps(result.excluded)}); label or import some pairs first.")
    WRITERS[fmt](rows, path)
    return {"exported": len(rows), "excluded": result.excluded}
