"""Built-in tastes of the scripted annotator in bench/learning.py: each is a function text -> float,
higher = preferred. Any other `package.module:function` of that shape can be named with --taste.

They are of different kinds on purpose: `concise` is about length (which DPO learns almost for
free), `plain` and `structured` are not (a long answer in short words, or in a list, wins as
easily as a short one).
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
