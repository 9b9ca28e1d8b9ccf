"""Built-in tastes of the scripted annotator in bench/learning.py: each is a function text -> float,
higher = preferred. Any other `package.module:function` of that shape can be named with --taste.

They are of different kinds on purpose: `concise` is about length (which DPO learns almost for
free), `plain` and `structured` are not (a long answer in short words, or in a list, wins as
easily as a short one).

When both answers of a pair are bad the annotator writes the answer it wanted (`rewrite`): a taste
may carry its own `rewrite(text) -> str` attribute; any other is served by `edit_toward`, which
edits the better answer as a person with a keyboard would (delete a sentence, cut an unfinished
ending, put the sentences into a list) and keeps an edit only when the taste scores it higher.
"""
from __future__ import annotations

import importlib
import re
from typing import Callable

Taste = Callable[[str], float]
WORD = re.compile(r"[A-Za-z]+(?:'[a-z]+)?")
LIST_LINE = re.compile(r"^\s*(?:[-*•]|\d+[.)]|#+)\s+\S")


def concise(text: str) -> float:
    """Fewer words is better (a length taste)."""
    return -float(len(text.split()))


def plain(text: str) -> float:
    """Plain language: the share of words of at most six letters (not a length taste: the share
    does not grow with the number of words). An answer with no words scores 0."""
    words = WORD.findall(text)
    return sum(len(w) <= 6 for w in words) / len(words) if words else 0.0


def structured(text: str) -> float:
    """Structure: the share of non-empty lines that are list items or headings, plus 0.1 per
    paragraph break (at most 0.3), so prose with paragraphs beats one block of text."""
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        return 0.0
    listed = sum(bool(LIST_LINE.match(line)) for line in lines) / len(lines)
    return listed + min(0.3, 0.1 * text.count("\n\n"))


END = re.compile(r"[.!?]+[\"')\]]*(?=\s|$)")  # a sentence's end: not "2.5", not "e.g.x"
MARKER = re.compile(r"[ \t]*(?:[-*•]|\d+[.)]|#+)[ \t]+")  # a list item's or heading's start: "1. " ends nothing
FINISHED = re.compile(END.pattern + r"\s*$")  # the text ends a sentence


def units(text: str) -> list[str]:
    """`text` as sentences and line breaks, so that "".join(units(text)) == text: a line is never
    joined to the next, each line's sentences end at . ! or ? before a space or the line's end (a
    number like 2.5 and a list marker like "1. " end none), and each sentence keeps the spaces after it."""
    out = []
    for line in text.splitlines(keepends=True):
        body = line.rstrip("\r\n")
        marker = MARKER.match(body)
        begin = 0
        for end in END.finditer(body, marker.end() if marker else 0):
            stop = end.end() + len(body[end.end():]) - len(body[end.end():].lstrip(" \t"))
            if stop > begin:
                out.append(body[begin:stop])
                begin = stop
        if begin < len(body):
            out.append(body[begin:])
        if len(line) > len(body):
            out.append(line[len(body):])
    return out


def _tidy(text: str) -> str:
    return re.sub(r"\n{3,}", "\n\n", re.sub(r"[ \t]+\n", "\n", text)).strip()


def without(parts: list[str], i: int) -> str:
    """The text of `parts` less sentence i, and less its line break when it was the whole line."""
    whole_line = (i == 0 or parts[i - 1].endswith("\n")) and (i + 1 == len(parts) or parts[i + 1].endswith("\n"))
    drop = {i, i + 1} if whole_line and i + 1 < len(parts) else {i}
    return _tidy("".join(u for k, u in enumerate(parts) if k not in drop))


def edit_toward(taste: Taste, text: str, edits: int = 8) -> str | None:
    """The answer a person who holds `taste` would make of `text` by editing it. First an
    unfinished last sentence (an answer cut at the token cap: no . ! or ? at its end) goes, when
    something is left: nobody writes half a sentence. Then, up to `edits` times, every single edit
    is tried (delete one sentence; put the sentences into a list, one per line) and the one the
    taste scores highest is kept, while it scores higher than what was there. None when nothing
    changed; the result may score lower than `text` (`rewrite` refuses that)."""
    parts = units(text.strip())
    sentences = [i for i, u in enumerate(parts) if u.strip()]
    if len(sentences) > 1 and not FINISHED.search(MARKER.sub("", parts[sentences[-1]], count=1)):
        parts = parts[:sentences[-1]]
    best = _tidy("".join(parts))
    best_score = taste(best)
    for _ in range(edits):
        parts = units(best)
        sentences = [i for i, u in enumerate(parts) if u.strip()]
        if len(sentences) < 2:
            break
        candidates = [without(parts, i) for i in sentences]
        candidates.append("\n".join("- " + MARKER.sub("", parts[i], count=1).strip() for i in sentences))
        scored = [(taste(c), c) for c in candidates if c and c != best]
        if not scored or max(score for score, _ in scored) <= best_score:
            break
        best_score, best = max(scored, key=lambda sc: sc[0])
    return best if best != text.strip() else None


def rewrite(taste: Taste, text: str) -> str | None:
    """The taste's own rewrite of `text` when it has one, else `edit_toward`; None when neither
    makes an answer the taste prefers."""
    own = getattr(taste, "rewrite", None)
    better = own(text) if own else edit_toward(taste, text)
    return better if better and better.strip() != text.strip() and taste(better) > taste(text) else None


BUILTIN: dict[str, Taste] = {"concise": concise, "plain": plain, "structured": structured}


def load_taste(name: str) -> Taste:
    """A built-in taste by name, or any `package.module:function` (text -> float)."""
    if name in BUILTIN:
        return BUILTIN[name]
    module, sep, attr = name.partition(":")
    if not sep:
        raise ValueError(f"Unknown taste {name!r}: use one of {', '.join(BUILTIN)} or package.module:function.")
    taste = getattr(importlib.import_module(module), attr, None)
    if not callable(taste):
        raise ValueError(f"Taste {name!r}: {module} has no function {attr!r}.")
    return taste
