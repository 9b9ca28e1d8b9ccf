"""Why a person chose: optional reason tags on a judgment ("more helpful", "more correct", ...),
stored as a JSON list on the judgment (Judgment.reasons), exported with the pairs and read back on
import. The five built-in tags plus any an admin adds (a workspace setting) are offered on the
Label page; a tag that came with an imported file is kept whether or not it is offered here.

labeling/stats.py `reason_counts` says which reasons drive each annotator's choices.
"""
from __future__ import annotations

import json
from typing import Any, Iterable

BUILTIN_REASONS = ("more helpful", "more correct", "safer", "more concise", "better format")
EXTRA_REASONS_KEY = "reason_tags"  # Meta key: the tags admins added, a JSON list
MAX_REASON_LENGTH = 60
MAX_REASONS = 20  # per judgment


class ReasonError(ValueError):
    """A reason tag prefloop cannot store; the message is one sentence for the user."""


def _clean_tags(tags: Iterable[Any] | None) -> list[str]:
    """Each tag with its spaces tidied, each once, in order; ReasonError naming the first bad one."""
    if isinstance(tags, str):
        raise ReasonError(f"Reason tags come as a list of texts, got the single text {tags[:40]!r}.")
    clean: list[str] = []
    for tag in tags or ():
        if not isinstance(tag, str):
            raise ReasonError(f"A reason tag must be text, got {str(tag)[:40]!r}.")
        tag = " ".join(tag.split())  # one space between words, none around: "more  helpful " is "more helpful"
        if len(tag) > MAX_REASON_LENGTH or any(ord(c) < 32 or ord(c) == 127 or 0xD800 <= ord(c) <= 0xDFFF for c in tag):
            raise ReasonError(f"The reason tag {tag[:40]!r} must be at most {MAX_REASON_LENGTH} characters "
                              f"of printable text.")
        if tag and tag not in clean:
            clean.append(tag)
    return clean


def check_reasons(tags: Iterable[Any] | None) -> list[str]:
    """One judgment's tags, tidied and each once, in the order given; ReasonError when one is not
    printable text of at most MAX_REASON_LENGTH characters or there are more than MAX_REASONS.

    check_reasons([" safer", "more correct", "safer"]) == ["safer", "more correct"]
    """
    clean = _clean_tags(tags)
    if len(clean) > MAX_REASONS:
        raise ReasonError(f"{len(clean)} reason tags on one judgment; give at most {MAX_REASONS}.")
    return clean


def extra_reasons() -> list[str]:
    """The tags admins added to this workspace (none at first)."""
    from labeling import db  # here, not above: the import reader process checks tags without a database
    from labeling.models import Meta

    with db.session() as s:
        row = s.get(Meta, EXTRA_REASONS_KEY)
        return json.loads(row.value) if row is not None else []


def reason_tags() -> list[str]:
    """Every tag the Label page offers: the built-in ones, then the admins' own."""
    return [*BUILTIN_REASONS, *(t for t in extra_reasons() if t not in BUILTIN_REASONS)]


def save_extra_reasons(tags: Iterable[str]) -> list[str]:
    """Replace the admins' tags (judgments that already carry a removed tag keep it); return them."""
    from labeling import db
    from labeling.models import Meta

    clean = [t for t in _clean_tags(tags) if t not in BUILTIN_REASONS]
    with db.session() as s:
        row = s.get(Meta, EXTRA_REASONS_KEY)
        if row is None:
            s.add(Meta(key=EXTRA_REASONS_KEY, value=json.dumps(clean)))
        else:
            row.value = json.dumps(clean)
    return clean
