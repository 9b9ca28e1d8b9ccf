"""One shape for every prompt: a conversation, a list of {"role", "content"} messages.

Content hashes make imports idempotent: the same prompt, response or pair always hashes the same.
"""
from __future__ import annotations

import hashlib
import json
from typing import Any

import orjson

ROLES = ("system", "user", "assistant")


def as_messages(prompt: str | list[dict[str, Any]]) -> list[dict[str, str]]:
    """A prompt given as plain text or as TRL-style messages, as a list of {role, content}."""
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    return [{"role": str(m["role"]), "content": str(m["content"])} for m in prompt]


# One encoder for every hash: json.dumps with options builds a new encoder per call, which
# dominated the cost of hashing a 100,000-pair import.
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def canonical_json(obj: Any) -> bytes:
    """`obj` as JSON with sorted keys, no whitespace and UTF-8 text unescaped.

    For what prefloop hashes (text, and lists and dicts of text) orjson writes exactly the bytes
    of the standard encoder (tests/test_records.py) at several times the speed; what it refuses
    (lone surrogates, integers past 64 bits) goes through the standard encoder. Floats differ
    (1e-07 vs 1e-7, NaN), so never hash them through here.
    """
    try:
        return orjson.dumps(obj, option=orjson.OPT_SORT_KEYS)
    except (TypeError, orjson.JSONEncodeError):
        return _CANONICAL.encode(obj).encode("utf-8", "surrogatepass")


def content_hash(obj: Any) -> str:
    """sha256 of the canonical JSON of `obj`."""
    return hashlib.sha256(canonical_json(obj)).hexdigest()


def pair_hash(prompt_hash: str, response_hash_a: str, response_hash_b: str) -> str:
    """Order-free: (x, y) and (y, x) for one prompt are the same pair."""
    lo, hi = sorted((response_hash_a, response_hash_b))
    # == content_hash([prompt_hash, lo, hi]): hex digests need no JSON escaping, and skipping the
    # encoder halves the cost of planning a large import.
    return hashlib.sha256(f'["{prompt_hash}","{lo}","{hi}"]'.encode("ascii")).hexdigest()


def last_user_text(messages: list[dict[str, str]]) -> str:
    users = [m["content"] for m in messages if m["role"] == "user"]
    return users[-1] if users else (messages[-1]["content"] if messages else "")
