"""The reward card: how far to trust a reward model, measured on pairs it never trained on.

Per set of labeled pairs (each data source of a round's held-out pairs, and each file a user
brings): preference accuracy (ties count half) with a 95 % bootstrap interval clustered by
conversation, beside three baselines on the same pairs — the untrained backbone (the same backbone
with a freshly initialised head, same seed), "longer wins" and "shorter wins" (by characters) —
the reward–length correlation (Pearson, score vs characters, over every scored response) and
calibration (ECE of σ(r_chosen − r_rejected), with the reliability-plot data). One sentence, the
verdict, says when the model does not beat "longer wins".

The reward round builds a report at its end (held-out pairs only) and
`python -m training reward-eval` (training/reward_eval.py) on demand; both store it as
`reward_eval.json` in the version's folder, where `card` reads it for the Train page.
No torch here: scorers come in as functions, and the page imports `card`.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np

from labeling import atomic
from training import metrics, versions

REPORT_FILE = "reward_eval.json"
SYSTEMS = {"model": "reward model", "untrained": "untrained backbone", "longer": "longer wins",
           "shorter": "shorter wins"}
Scorer = Callable[[list[list[dict]], list[str]], Any]  # (prompts, responses) -> rewards, Shape: (batch,)
Scores = tuple[np.ndarray, np.ndarray]  # rewards of (chosen, rejected), Shape: (pairs,) each


@dataclass
class EvalSet:
    """Labeled pairs scored together: one data source of a round's held-out pairs, or one file."""

    name: str  # what the card calls it: "<source> (held-out)" or the file's name
    prompts: list[list[dict]]
    chosen: list[str]
    rejected: list[str]

    @property
    def conversations(self) -> list[str]:
        """Each pair's conversation (its first message), the unit the interval resamples: pairs of
        one prompt, or of one OpenAssistant tree, are not independent draws."""
        return [json.dumps(p[:1], sort_keys=True, ensure_ascii=False) for p in self.prompts]


def pair_sources() -> dict[int, str]:
    """{pair id: data source} for every pair in the workspace."""
    from labeling import pairs

    return pairs.pair_sources()


def heldout_sets(rows: list[dict]) -> list[EvalSet]:
    """Held-out export rows (`labeling.export.preference_rows`), one set per data source."""
    sources = pair_sources()
    groups: dict[str, list[dict]] = {}
    for row in rows:
        groups.setdefault(sources.get(row["pair_id"], "unknown"), []).append(row)
    return [EvalSet(f"{source} (held-out)", [r["prompt"] for r in group],
                    [r["chosen"][-1]["content"] for r in group], [r["rejected"][-1]["content"] for r in group])
            for source, group in sorted(groups.items())]


def score(scorer: Scorer, sets: list[EvalSet]) -> list[Scores]:
    """Each set's rewards of its chosen and of its rejected responses under `scorer`."""
    return [(np.asarray(scorer(s.prompts, s.chosen), dtype=float),
             np.asarray(scorer(s.prompts, s.rejected), dtype=float)) for s in sets]


def summarise(pairs: EvalSet, model: Scores, untrained: Scores) -> dict[str, Any]:
    """One row of the card: accuracy with its interval per system, ECE, reliability, length r."""
    outcomes = {"model": metrics.pair_outcomes(*model), "untrained": metrics.pair_outcomes(*untrained),
                "longer": metrics.longer_wins(pairs.chosen, pairs.rejected),
                "shorter": metrics.shorter_wins(pairs.chosen, pairs.rejected)}
    conversations = pairs.conversations
    accuracy = {}
    for system, won in outcomes.items():  # one seed: every system is resampled on the same conversations
        low, high = metrics.cluster_bootstrap_ci(won, conversations)
        accuracy[system] = {"accuracy": float(won.mean()), "low": low, "high": high}
    ece, reliability = metrics.calibration(metrics.preference_probability(*model))
    return {"name": pairs.name, "pairs": len(pairs.chosen), "conversations": len(set(conversations)),
            "accuracy": accuracy, "ece": ece, "reliability": reliability,
            "length_correlation": metrics.length_correlation(np.concatenate(model), pairs.chosen + pairs.rejected)}


def _merged(sets: list[EvalSet], scores: list[Scores]) -> tuple[EvalSet, Scores]:
    merged = EvalSet("all pairs", [p for s in sets for p in s.prompts], [c for s in sets for c in s.chosen],
                     [r for s in sets for r in s.rejected])
    return merged, (np.concatenate([c for c, _ in scores]), np.concatenate([r for _, r in scores]))


def beats_longer_wins(summaries: list[dict[str, Any]]) -> bool:
    """Whether the model's accuracy is above "longer wins" on every set."""
    return all(s["accuracy"]["model"]["accuracy"] > s["accuracy"]["longer"]["accuracy"] for s in summaries)


def verdict(summaries: list[dict[str, Any]]) -> str:
    """One sentence: where the model's accuracy is not above "longer wins", or that it is above
    everywhere."""
    def figures(s: dict) -> str:
        return f'{s["name"]} ({s["accuracy"]["model"]["accuracy"]:.2f} vs {s["accuracy"]["longer"]["accuracy"]:.2f})'

    behind = [s for s in summaries if not s["accuracy"]["model"]["accuracy"] > s["accuracy"]["longer"]["accuracy"]]
    if behind:
        return (f'The reward model does not beat "longer wins" on {_join([figures(s) for s in behind])}: there it '
                f'ranks answers no better than their length does, so it should not steer training on such data.')
    return f'The reward model beats "longer wins" on {_join([figures(s) for s in summaries])}.'


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def build_report(sets: list[EvalSet], model: list[Scores], untrained: list[Scores]) -> dict[str, Any]:
    """The whole card: one summary per set, one over all pairs, and the verdict; JSON-ready (nan
    becomes None)."""
    summaries = [summarise(s, m, u) for s, m, u in zip(sets, model, untrained)]
    merged, merged_model = _merged(sets, model)
    _, merged_untrained = _merged(sets, untrained)
    report = {"evaluated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"), "sets": summaries,
              "all": summarise(merged, merged_model, merged_untrained), "verdict": verdict(summaries),
              "beats_longer_wins": beats_longer_wins(summaries)}
    return _json_safe(report)


def evaluate(sets: list[EvalSet], scorer: Scorer, untrained: Scorer) -> dict[str, Any]:
    """Score `sets` with the trained model and the untrained backbone and build the report."""
    return build_report(sets, score(scorer, sets), score(untrained, sets))


def summary_metrics(report: dict[str, Any]) -> dict[str, Any]:
    """The figures a reward round records with its version and job result."""
    everything = report["all"]["accuracy"]
    return {"heldout_pairs": report["all"]["pairs"], "heldout_accuracy": everything["model"]["accuracy"],
            "heldout_accuracy_ci": [everything["model"]["low"], everything["model"]["high"]],
            "heldout_longer_wins": everything["longer"]["accuracy"], "verdict": report["verdict"]}


def _json_safe(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


# ---------------------------------------------------------------- storage and display


def write_report(folder: Path, report: dict[str, Any]) -> Path:
    """Store `report` in a version's folder, replacing the previous one whole."""
    path = Path(folder) / REPORT_FILE
    with atomic.write(path) as tmp:
        tmp.write_text(json.dumps(report, indent=1, ensure_ascii=False))
    return path


def _interval(a: dict[str, Any]) -> str:
    if a["low"] is None:
        return f'{a["accuracy"]:.2f} (1 conversation: no CI)'
    return f'{a["accuracy"]:.2f} [{a["low"]:.2f}, {a["high"]:.2f}]'


def _number(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2f}"


def card_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The card's table: one row per set (and one over all pairs when there are several)."""
    summaries = report["sets"] + ([report["all"]] if len(report["sets"]) > 1 else [])
    return [{"set": s["name"], "pairs": s["pairs"], "conversations": s["conversations"],
             **{label: _interval(s["accuracy"][system]) for system, label in SYSTEMS.items()},
             "ECE": _number(s["ece"]), "length r": _number(s["length_correlation"])} for s in summaries]


def format_table(report: dict[str, Any]) -> str:
    """The card as aligned plain text, the verdict below it."""
    rows = card_rows(report)
    columns = list(rows[0])
    widths = [max(len(c), *(len(str(r[c])) for r in rows)) for c in columns]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths))]
    lines += ["  ".join(str(r[c]).ljust(w) for c, w in zip(columns, widths)) for r in rows]
    return "\n".join(lines + ["accuracy [95% interval, resampling conversations]; ECE of σ(r_chosen − r_rejected), "
                              "10 bins; length r: Pearson of reward vs characters", report["verdict"]])


def card(version_id: str | None = None) -> dict[str, Any] | None:
    """The reward card of a reward version (the latest when None) for the Train page: {"version",
    "rows", "verdict", "beats_longer_wins", "evaluated_at", "reliability"}, or {"version", "missing": sentence} when
    it was never evaluated; None when there is no reward version."""
    version_id = version_id or versions.latest_reward_id()
    row = versions.get_version(version_id) if version_id else None
    if row is None:
        return None
    path = Path(row.path) / REPORT_FILE
    if not path.is_file():
        return {"version": version_id, "missing": f"{version_id} has no evaluation yet (it held out no pairs, or "
                f"it predates the reward card); run `python -m training reward-eval {version_id} [FILE...]`."}
    report = json.loads(path.read_text())
    return {"version": version_id, "rows": card_rows(report), "verdict": report["verdict"],
            "beats_longer_wins": report["beats_longer_wins"], "evaluated_at": report["evaluated_at"],
            "reliability": report["all"]["reliability"]}
