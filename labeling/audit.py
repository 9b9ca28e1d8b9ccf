"""What a round is about to learn from: the decided pairs a round trains on, checked for four
things that teach a model the wrong lesson. Pure pandas and difflib; labeling/export.py loads the
inputs (`pair_audit`) and leaves flagged pairs out on request (`preference_rows(exclude=...)`).

  only_longer       the chosen answer is the rejected one made longer: at least 1.5× its words,
                    holding at least 80 % of the rejected answer's distinct words. What it teaches
                    is mostly "say more".
  near_identical    the two answers are nearly the same text: difflib's ratio over their words is
                    0.9 or more. The label rests on a detail, or on nothing.
  disagreement      the votes on the pair differ (people's, and an imported label's): the
                    majority decided it, but not everyone would have.
  skewed_annotator  a decisive vote by an annotator whose share of choosing the left answer, or
                    the longer one, has a 95 % Wilson interval that leaves out 0.5.

Lengths are in words (whitespace-separated), as labeling/stats.py counts them.
"""
from __future__ import annotations

import difflib
import re
from dataclasses import dataclass

import pandas as pd

from labeling import stats
from labeling.records import last_user_text

CHECKS = ("only_longer", "near_identical", "disagreement", "skewed_annotator")
LONGER_RATIO = 1.5  # chosen words / rejected words at which "only longer" starts
SHARED_WORDS = 0.8  # share of the rejected answer's distinct words the chosen one must hold
NEAR_IDENTICAL = 0.9  # difflib ratio over the words
FLAG_COLUMNS = ["pair_id", "check", "why", "prompt", "chosen", "rejected"]
SKEW_COLUMNS = ["annotator", "bias", "share", "ci_low", "ci_high", "decisive"]


@dataclass
class Audit:
    pairs: int  # decided pairs audited
    flags: pd.DataFrame  # one row per (pair, check that flags it): FLAG_COLUMNS
    skewed: pd.DataFrame  # the skewed annotators, one row per bias: SKEW_COLUMNS

    def counts(self) -> dict[str, int]:
        """Pairs flagged by each check (a pair may be flagged by several)."""
        return {check: int((self.flags["check"] == check).sum()) for check in CHECKS}

    def pair_ids(self, checks: tuple[str, ...] = CHECKS) -> set[int]:
        """The pairs flagged by any of `checks`."""
        return set(self.flags.loc[self.flags["check"].isin(checks), "pair_id"].astype(int))


def _word_set(text: str) -> set[str]:
    """Distinct words, case and punctuation ignored: "France." and "france," are one word."""
    return set(re.findall(r"\w+", text.lower()))


def only_longer(chosen: str, rejected: str) -> bool:
    """The chosen answer is at least LONGER_RATIO × the rejected one's words and holds at least
    SHARED_WORDS of the rejected one's distinct words (case and punctuation ignored)."""
    n_chosen, n_rejected = stats.words(chosen), stats.words(rejected)
    if n_rejected == 0 or n_chosen < LONGER_RATIO * n_rejected:
        return False
    rejected_words = _word_set(rejected)
    return len(rejected_words & _word_set(chosen)) >= SHARED_WORDS * len(rejected_words)


def similarity(a: str, b: str) -> float:
    """difflib's ratio 2M/T over the two texts' words (1.0: the same words in the same order).
    quick_ratio, an upper bound in linear time, answers first when it is already below
    NEAR_IDENTICAL, so long dissimilar answers cost no quadratic matching."""
    matcher = difflib.SequenceMatcher(None, a.split(), b.split(), autojunk=False)
    bound = matcher.quick_ratio()
    return bound if bound < NEAR_IDENTICAL else matcher.ratio()


def skewed_annotators(frame: pd.DataFrame) -> pd.DataFrame:
    """Annotators whose left-answer or longer-answer share (labeling/stats.py position_bias and
    length_bias) has a 95 % interval without 0.5. Shape: (rows, 6), SKEW_COLUMNS."""
    tables = [(stats.position_bias(frame), "left", "left_share"), (stats.length_bias(frame), "longer", "longer_share")]
    rows = [{"annotator": r["annotator"], "bias": bias, "share": r[share], "ci_low": r["ci_low"],
             "ci_high": r["ci_high"], "decisive": r["decisive"]}
            for table, bias, share in tables for _, r in table.iterrows() if r["ci_low"] > 0.5 or r["ci_high"] < 0.5]
    return pd.DataFrame(rows, columns=SKEW_COLUMNS)


def _vote_words(votes: pd.DataFrame, chosen: str) -> str:
    """The votes on one pair in words: "ana: chosen, ben: rejected, import hh: chosen"."""
    chosen_side = "a" if votes["response_a"].iloc[0] == chosen else "b"
    meaning = {chosen_side: "chosen", "b" if chosen_side == "a" else "a": "rejected", "tie": "tie",
               "both_bad": "both bad"}
    who = votes["annotator"].fillna("import " + votes["source"].astype(str))
    return ", ".join(f"{name}: {meaning[o]}" for name, o in zip(who, votes["outcome"]))


def _vote_flags(verdicts: pd.DataFrame, chosen: dict[int, str], skew: dict[str, str]) -> dict[int, list[tuple]]:
    """{pair_id: [(check, why), ...]} for the vote checks, disagreement and skewed_annotator, over
    the verdicts (skips left out) of the pairs in `chosen` ({pair_id: chosen text})."""
    verdicts = verdicts[verdicts["pair_id"].isin(chosen)]
    flags: dict[int, list[tuple]] = {}
    kinds = verdicts.groupby("pair_id")["outcome"].nunique()
    split = verdicts[verdicts["pair_id"].isin(kinds.index[kinds > 1])]
    for pair_id, votes in split.groupby("pair_id"):  # few pairs, usually: grouped one by one
        flags.setdefault(int(pair_id), []).append(("disagreement", _vote_words(votes, chosen[pair_id])))
    decisive = verdicts[verdicts["annotator"].isin(list(skew)) & verdicts["outcome"].isin(["a", "b"])]
    for pair_id, names in decisive.groupby("pair_id")["annotator"]:
        flags.setdefault(int(pair_id), []).append(("skewed_annotator", "; ".join(skew[n] for n in dict.fromkeys(names))))
    return flags


def _text_flags(chosen: str, rejected: str) -> list[tuple[str, str]]:
    """(check, why) for the text checks, only_longer and near_identical, of one decided pair."""
    flags = []
    if only_longer(chosen, rejected):
        flags.append(("only_longer", f"the chosen answer has {stats.words(chosen)} words, the rejected "
                                     f"{stats.words(rejected)}, and holds most of the rejected one's words"))
    if (ratio := similarity(chosen, rejected)) >= NEAR_IDENTICAL:
        flags.append(("near_identical", f"the answers' words are {ratio:.0%} alike"))
    return flags


def _skew_sentences(skewed: pd.DataFrame) -> dict[str, str]:
    """{annotator: "ana picks the longer answer in 90% [74%, 97%] of 20 decisive votes"}."""
    return {name: "; ".join(f"{name} picks the {bias} answer in {share:.0%} [{low:.0%}, {high:.0%}] of {n} "
                            f"decisive votes" for _, bias, share, low, high, n in group.itertuples(index=False))
            for name, group in skewed.groupby("annotator")}


def audit(rows: list[dict], frame: pd.DataFrame) -> Audit:
    """Check the decided pairs `rows` (labeling/export.py preference rows) against their votes in
    `frame` (labeling/stats.py judgments frame: pair_id, annotator, source, outcome, left,
    response_a, response_b), and every annotator's biases over all of their judgments in it."""
    skewed = skewed_annotators(frame)
    texts = {r["pair_id"]: (r["chosen"][-1]["content"], r["rejected"][-1]["content"]) for r in rows}
    verdicts = frame[frame["outcome"].notna() & (frame["outcome"] != "skip")]
    votes = _vote_flags(verdicts, {p: chosen for p, (chosen, _) in texts.items()}, _skew_sentences(skewed))
    flags = [(row["pair_id"], check, why, last_user_text(row["prompt"]), *texts[row["pair_id"]])
             for row in rows
             for check, why in _text_flags(*texts[row["pair_id"]]) + votes.get(row["pair_id"], [])]
    return Audit(len(rows), pd.DataFrame(flags, columns=FLAG_COLUMNS), skewed)
