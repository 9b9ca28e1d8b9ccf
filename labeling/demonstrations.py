"""Good answers people write: a rewrite when both answers of a pair were bad, or a TRL messages
dataset imported. They are the SFT round's data (`sft_rows`), and each rewrite is also two
preference pairs, rewrite ≻ answer a and rewrite ≻ answer b (`rewrite_rows`), marked "rewrite" in
the rows' origin and the version's lineage.

    import_messages("demos.jsonl")   # rows {"messages": [..., {"role": "assistant", ...}]}
    export_messages("out.jsonl")     # the same shape: TRL's SFTTrainer reads it as it is
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from sqlalchemy import select

from labeling import db, queue
from labeling.export import preference_row
from labeling.importers import _messages
from labeling.models import Demonstration, Pair, Prompt, Response
from labeling.readers import InputError, rows
from labeling.records import content_hash

MAX_CHARS = 20_000


class DemonstrationError(ValueError):
    """A rewrite or a demonstration file prefloop cannot store; one sentence for the user."""


def _clean(text: str) -> str:
    clean = re.sub("[\x00\ud800-\udfff]", "", text or "").strip()  # unstorable in PostgreSQL / UTF-8
    if not clean:
        raise DemonstrationError("The rewrite is empty; write the answer you would have wanted, or press Skip rewrite.")
    if len(clean) > MAX_CHARS:
        raise DemonstrationError(f"The rewrite has {len(clean):,} characters; keep it under {MAX_CHARS:,}.")
    return clean


def add_rewrite(annotator: str, pair_id: int, text: str) -> int:
    """Store (or replace) this annotator's rewrite for a pair; returns its id."""
    name = queue.check_annotator_name(annotator)
    clean = _clean(text)
    with db.session() as s:
        pair = s.get(Pair, pair_id)
        if pair is None:
            raise DemonstrationError(f"Pair {pair_id} does not exist; it may have been deleted.")
        if clean in (pair.response_a.text.strip(), pair.response_b.text.strip()):
            raise DemonstrationError("The rewrite is one of the two answers you called bad, unchanged; edit it into "
                                     "the answer you wanted, or press No rewrite.")
        person = queue.get_or_create_annotator(s, name)
        row = s.scalar(select(Demonstration).where(Demonstration.pair_id == pair_id,
                                                   Demonstration.annotator_id == person.id))
        if row is None:
            row = Demonstration(prompt_id=pair.prompt_id, pair_id=pair_id, annotator_id=person.id, source="human",
                                text=clean, content_hash=content_hash(clean))
            s.add(row)
        else:
            row.text, row.content_hash = clean, content_hash(clean)
        s.flush()
        return row.id


def count() -> int:
    from sqlalchemy import func

    with db.session() as s:
        return s.scalar(select(func.count(Demonstration.id))) or 0


def sft_rows() -> list[dict[str, Any]]:
    """Every demonstration as TRL's prompt-completion conversational row, oldest first:
    {"prompt": messages, "completion": [{"role": "assistant", "content": text}], "demonstration_id",
    "prompt_id", "split", "origin": "human" | "import"}."""
    with db.session() as s:
        found = s.execute(select(Demonstration.id, Demonstration.text, Demonstration.source, Prompt.id,
                                 Prompt.messages, Prompt.split).join(Prompt, Prompt.id == Demonstration.prompt_id)
                          .order_by(Demonstration.id)).all()
    return [{"prompt": list(messages), "completion": [{"role": "assistant", "content": text}], "demonstration_id": d,
             "prompt_id": prompt_id, "split": split, "origin": source}
            for d, text, source, prompt_id, messages, split in found]


def rewrite_rows() -> list[dict[str, Any]]:
    """Two preference rows per rewrite of a pair, rewrite ≻ a and rewrite ≻ b, in export rows'
    shape (labeling/export.py) with "origin": "rewrite" and the demonstration's id."""
    with db.session() as s:
        found = s.execute(select(Demonstration.id, Demonstration.text, Pair.id, Prompt.id, Prompt.messages,
                                 Prompt.split, Pair.response_a_id, Pair.response_b_id)
                          .join(Pair, Pair.id == Demonstration.pair_id).join(Prompt, Prompt.id == Pair.prompt_id)
                          .order_by(Demonstration.id)).all()
        texts = dict(s.execute(select(Response.id, Response.text).where(
            Response.id.in_([r for row in found for r in row[6:8]]))).all())
    out = []
    for d, text, pair_id, prompt_id, messages, split, a, b in found:
        for rejected in (texts[a], texts[b]):
            if rejected.strip() != text.strip():
                out.append(preference_row(list(messages), text, rejected, pair_id, prompt_id, split, "rewrite",
                                          demonstration_id=d))
    return out


def import_messages(path: str | Path, source: str | None = None) -> dict[str, Any]:
    """Demonstrations from a TRL messages dataset: each row's `messages` end with the assistant's
    answer, the messages before it are the prompt. One bad row stores nothing (InputError naming
    the line and field); a demonstration already stored for the same prompt is not added twice."""
    from labeling.store import add_prompts, check_source, default_source

    path = Path(path)
    name = check_source(source or default_source(path))
    records = []
    for where, row in rows(path):
        if not isinstance(row, dict) or "messages" not in row:
            raise InputError(f"{path}, {where}: no field 'messages'; each row needs the conversation ending with "
                             f"the assistant's answer.")
        messages = _messages(row["messages"], path, where, "messages")
        if len(messages) < 2 or messages[-1]["role"] != "assistant" or messages[-2]["role"] != "user" \
                or not all(m["content"].strip() for m in messages[:-1]):
            raise InputError(f"{path}, {where}, field 'messages': the conversation must end with a (non-empty) user "
                             f"turn and then the assistant's answer.")
        try:
            text = _clean(messages[-1]["content"])
        except DemonstrationError:
            raise InputError(f"{path}, {where}, field 'messages': the assistant's answer is empty or over "
                             f"{MAX_CHARS:,} characters.") from None
        records.append((messages[:-1], text))
    if not records:
        raise InputError(f"{path}: the file holds no rows; give a file with at least one conversation.")
    new_prompts = add_prompts([prompt for prompt, _ in records], name)
    added = 0
    with db.session() as s:
        ids = dict(s.execute(select(Prompt.content_hash, Prompt.id).where(
            Prompt.content_hash.in_({content_hash(p) for p, _ in records}))).all())
        for prompt, text in records:
            prompt_id, h = ids[content_hash(prompt)], content_hash(text)
            if s.scalar(select(Demonstration.id).where(Demonstration.prompt_id == prompt_id,
                                                       Demonstration.content_hash == h)) is None:
                s.add(Demonstration(prompt_id=prompt_id, source="import", source_name=name, text=text, content_hash=h))
                s.flush()
                added += 1
    return {"demonstrations": added, "already_stored": len(records) - added, "new_prompts": new_prompts,
            "source": name}


def export_messages(path: str | Path) -> dict[str, Any]:
    """Every demonstration as {"messages": prompt + answer} JSON lines; returns how many."""
    path = Path(path)
    if not path.parent.is_dir():
        raise DemonstrationError(f"{path}: the folder {path.parent} does not exist; create it or pick another path.")
    found = sft_rows()
    if not found:
        raise DemonstrationError("There is no demonstration to export yet; write a rewrite after Both bad, or import some.")
    with open(path, "w", encoding="utf-8") as f:
        for r in found:
            f.write(json.dumps({"messages": r["prompt"] + r["completion"], "origin": r["origin"]}, ensure_ascii=False) + "\n")
    return {"exported": len(found), "path": str(path)}
