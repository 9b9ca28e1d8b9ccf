"""Hostile input for every importer: random bytes, JSON of any shape, odd OpenAssistant trees, CSV
cells, HH transcripts, huge fields, deep nesting, control characters, right-to-left text, NUL,
invalid UTF-8. The rule: `store.import_file` either imports (and stores the text exactly as given)
or raises InputError with one sentence naming the file, and then no table has changed.

Hypothesis runs a fixed number of examples with a fixed seed (derandomize), so CI sees the same
cases every run and the whole file stays well under a minute.
"""
import csv
import gzip
import io
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis.control import currently_in_test_context, event
from hypothesis import strategies as st
from sqlalchemy import func, select

from labeling import db, store
from labeling.importers import FORMATS, InputError
from labeling.models import Annotator, Judgment, Pair, Prompt, Response

FIELDS = ("prompt", "chosen", "rejected", "response_a", "response_b", "role", "content", "text", "replies",
          "rank", "deleted", "message_tree_id")
LABELED_FORMATS = ("pairs", "hh", "oasst")
SETTINGS = dict(deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                       HealthCheck.data_too_large, HealthCheck.large_base_example])

# Any Unicode a UTF-8 file can hold: controls, NUL, right-to-left marks and overrides, combining marks.
ANY_TEXT = st.text(st.characters(codec="utf-8"), max_size=40)
ODD_TEXT = st.text(st.one_of(st.characters(codec="utf-8", exclude_characters="\x00"),
                             st.sampled_from("\u202e\u202d\u200f\u200e\u2066\u2069\u05d0\u0628\ufeff\t\r\x1b\x7f\x85")),
                   min_size=1, max_size=60)
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | ANY_TEXT,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.sampled_from(FIELDS) | ANY_TEXT, children,
                                                                     max_size=4),
    max_leaves=12)
RECORD = st.dictionaries(st.sampled_from(FIELDS), JSON, max_size=6)
# Records close to a real format, so that many examples get past the first checks.
SOME_TEXT = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1, max_size=30)
MESSAGE = st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant", "system", "bot"]),
                                 "content": SOME_TEXT | JSON})
CONVERSATION = SOME_TEXT | st.lists(MESSAGE, max_size=3) | ANY_TEXT
NEAR_RECORD = st.fixed_dictionaries({}, optional={field: CONVERSATION for field in FIELDS[:5]})


def counts() -> dict[str, int]:
    with db.session() as s:
        return {m.__tablename__: s.scalar(select(func.count()).select_from(m))
                for m in (Prompt, Response, Pair, Judgment, Annotator)}


def import_or_refuse(path, fmt: str = "auto"):
    """Import; on InputError check the message is one short sentence naming the file and that
    nothing was written. Returns the summary, or None when refused."""
    before = counts()
    try:
        summary = store.import_file(path, fmt)
    except InputError as e:
        message = str(e)
        assert str(path) in message and message.endswith(".") and "\n" not in message, message
        assert len(message) < 600 + len(str(path)), message[:300]
        assert counts() == before
        note("refused")
        return None
    note(f"imported as {summary['format']}")
    after = counts()
    if summary["format"] == "prompts":
        assert after["prompts"] - before["prompts"] == summary["imported"]
        assert after["pairs"] == before["pairs"]
    else:
        assert after["pairs"] - before["pairs"] == summary["imported"]
        labeled = summary["format"] in LABELED_FORMATS
        assert after["judgments"] - before["judgments"] == (summary["imported"] if labeled else 0)
    return summary


def note(what: str) -> None:
    """Count outcomes for `pytest --hypothesis-show-statistics` (outside a property test: nothing)."""
    if currently_in_test_context():
        event(what)


def write(path, data: bytes, gz: bool = False):
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


# ---------------------------------------------------------------- property-based


@settings(max_examples=60, **SETTINGS)
@given(data=st.binary(max_size=3000), name=st.sampled_from(
    ["x.jsonl", "x.csv", "x.txt", "x.parquet", "x.json", "x.jsonl.gz", "x.csv.gz"]),
    fmt=st.sampled_from(FORMATS), compress=st.booleans())
def test_random_bytes(workspace, tmp_path, data, name, fmt, compress):
    import_or_refuse(write(tmp_path / name, data, gz=compress and name.endswith(".gz")), fmt)


@settings(max_examples=80, **SETTINGS)
@given(lines=st.lists(RECORD | JSON, min_size=1, max_size=5), fmt=st.sampled_from(FORMATS),
       ascii_only=st.booleans())
def test_json_lines_of_any_shape(workspace, tmp_path, lines, fmt, ascii_only):
    text = "".join(json.dumps(line, ensure_ascii=ascii_only) + "\n" for line in lines)
    import_or_refuse(write(tmp_path / "x.jsonl", text.encode("utf-8")), fmt)


OASST_NODE = st.recursive(
    st.fixed_dictionaries({"text": ANY_TEXT, "role": st.sampled_from(["prompter", "assistant", "other"])},
                          optional={"rank": st.integers(-1, 3) | st.none() | ANY_TEXT, "deleted": st.booleans()}),
    lambda children: st.fixed_dictionaries(
        {"text": ANY_TEXT | st.none() | st.integers(), "role": st.sampled_from(["prompter", "assistant"]),
         "replies": st.lists(children, max_size=4) | JSON},
        optional={"rank": st.integers(0, 3), "deleted": st.booleans()}),
    max_leaves=10)


@settings(max_examples=60, **SETTINGS)
@given(lines=st.lists(NEAR_RECORD, min_size=1, max_size=3), fmt=st.sampled_from(FORMATS))
def test_records_close_to_a_real_format(workspace, tmp_path, lines, fmt):
    text = "".join(json.dumps(line) + "\n" for line in lines)
    import_or_refuse(write(tmp_path / "x.jsonl", text.encode("utf-8")), fmt)


@settings(max_examples=50, **SETTINGS)
@given(trees=st.lists(OASST_NODE, min_size=1, max_size=3), fmt=st.sampled_from(["auto", "oasst"]))
def test_oasst_trees_of_any_shape(workspace, tmp_path, trees, fmt):
    text = "".join(json.dumps({"message_tree_id": str(i), "prompt": tree}) + "\n" for i, tree in enumerate(trees))
    import_or_refuse(write(tmp_path / "x.jsonl", text.encode("utf-8")), fmt)


CELL = ANY_TEXT | st.sampled_from(['[{"role": "user", "content": "hi"}]', '[{"role": 1}]', "[{", '"', ",", "\n"])


@settings(max_examples=50, **SETTINGS)
@given(header=st.lists(st.sampled_from(FIELDS) | ANY_TEXT, min_size=1, max_size=4),
       rows=st.lists(st.lists(CELL, max_size=5), max_size=4), fmt=st.sampled_from(FORMATS))
def test_csv_cells_of_any_kind(workspace, tmp_path, header, rows, fmt):
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(header)
    writer.writerows(rows)
    import_or_refuse(write(tmp_path / "x.csv", out.getvalue().encode("utf-8")), fmt)


TURN = st.sampled_from(["\n\nHuman:", "\n\nAssistant:", "\n\nHuman: hi", "\n\nAssistant: hello", " "]) | ANY_TEXT


@settings(max_examples=50, **SETTINGS)
@given(shared=st.lists(TURN, max_size=4), chosen=st.lists(TURN, max_size=3), rejected=st.lists(TURN, max_size=3),
       fmt=st.sampled_from(["auto", "hh", "pairs"]))
def test_hh_transcripts_of_any_shape(workspace, tmp_path, shared, chosen, rejected, fmt):
    row = {"chosen": "".join(shared + chosen), "rejected": "".join(shared + rejected)}
    import_or_refuse(write(tmp_path / "x.jsonl", (json.dumps(row) + "\n").encode("utf-8")), fmt)


@settings(max_examples=40, **SETTINGS)
@given(prompt=ODD_TEXT, chosen=ODD_TEXT, rejected=ODD_TEXT, ascii_only=st.booleans())
def test_odd_text_is_stored_exactly_as_given(workspace, tmp_path, prompt, chosen, rejected, ascii_only):
    """Controls, right-to-left overrides, BOMs inside text: what is imported is what is stored."""
    row = {"prompt": prompt, "chosen": chosen, "rejected": rejected}
    summary = import_or_refuse(write(tmp_path / "x.jsonl", (json.dumps(row, ensure_ascii=ascii_only) + "\n").encode()))
    assert summary is not None
    if summary["imported"]:  # 0 when empty after stripping, identical, or imported by an earlier example
        with db.session() as s:
            pair = s.scalars(select(Pair).order_by(Pair.id.desc())).first()
            stored = (pair.prompt.messages[0]["content"], pair.response_a.text, pair.response_b.text)
        assert stored == (prompt, chosen, rejected)


# ---------------------------------------------------------------- named cases


def stored_texts() -> list[tuple[str, str, str]]:
    with db.session() as s:
        return [(p.prompt.messages[-1]["content"], p.response_a.text, p.response_b.text)
                for p in s.scalars(select(Pair).order_by(Pair.id))]


@pytest.mark.parametrize("name", ["big.jsonl", "big.csv"])
def test_a_10_mb_response_and_a_1_mb_prompt_are_stored_whole(workspace, tmp_path, name):
    prompt, chosen = "Why? " + "p" * 1_000_000, "Because " + "ر" * 5_000_000  # 2 bytes each: 10 MB
    row = {"prompt": prompt, "chosen": chosen, "rejected": "No."}
    if name.endswith(".jsonl"):
        data = (json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8")
    else:
        out = io.StringIO()
        csv.DictWriter(out, fieldnames=list(row)).writeheader()
        csv.DictWriter(out, fieldnames=list(row)).writerow(row)
        data = out.getvalue().encode("utf-8")
    assert len(data) > 11_000_000
    assert import_or_refuse(write(tmp_path / name, data))["imported"] == 1
    assert stored_texts() == [(prompt, chosen, "No.")]


CONTROLS = "".join(map(chr, range(1, 32))) + "\x7f" + "".join(map(chr, range(0x80, 0xa0)))
RTL = "\u202eabc\u202c \u05e9\u05dc\u05d5\u05dd \u0645\u0631\u062d\u0628\u0627 \u2067x\u2069 \u200f!"


@pytest.mark.parametrize("name", ["odd.jsonl", "odd.csv"])
def test_control_characters_and_right_to_left_text_round_trip(workspace, tmp_path, name):
    row = {"prompt": "Q " + RTL, "chosen": "ok " + CONTROLS, "rejected": RTL + " no"}
    if name.endswith(".jsonl"):
        data = (json.dumps(row) + "\n").encode("utf-8")
    else:
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=list(row))
        writer.writeheader()
        writer.writerow(row)
        data = out.getvalue().encode("utf-8")
    assert import_or_refuse(write(tmp_path / name, data))["imported"] == 1
    assert stored_texts() == [(row["prompt"], row["chosen"], row["rejected"])]


HOSTILE = [
    ("deep.jsonl", b"[" * 200_000 + b"]" * 200_000 + b"\n", "nested too deeply"),
    ("deep_field.jsonl", b'{"prompt": ' + b"[" * 50_000 + b"]" * 50_000 + b', "chosen": "a", "rejected": "b"}\n',
     "nested too deeply"),
    ("array.jsonl", b'["prompt", "chosen", "rejected"]\n', "expected a JSON object"),
    ("nul.jsonl", b'{"prompt": "a\\u0000b", "chosen": "x", "rejected": "y"}\n', "NUL character"),
    ("nul.csv", b"prompt,chosen,rejected\nq,x\x00,y\n", "field 'chosen'"),
    ("nul.txt", b"fine\nnot\x00fine\n", "line 2"),
    ("surrogate.jsonl", b'{"prompt": "q", "chosen": "\\udc80", "rejected": "y"}\n', "surrogate"),
    ("latin1.jsonl", b'{"prompt": "caf\xe9", "chosen": "x", "rejected": "y"}\n', "not valid UTF-8"),
    ("latin1.csv", b"prompt,chosen,rejected\ncaf\xe9,x,y\n", "not valid UTF-8"),
    ("latin1.txt", b"caf\xe9\n", "not valid UTF-8"),
    ("digits.jsonl", b'{"prompt": ' + b"7" * 10_000 + b', "chosen": "x", "rejected": "y"}\n', "cannot be read"),
    ("corrupt.jsonl.gz", b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03" + bytes(range(256)) * 4, "cannot read"),
    ("replies.jsonl", b'{"prompt": {"text": "hi", "role": "prompter", "replies": 7}}\n', "field 'replies'"),
    ("wide_key.jsonl", json.dumps({"k" * 1_000_000: 1}).encode() + b"\n", "cannot tell the format"),
    ("late_bad.jsonl", b'{"prompt": "q", "chosen": "x", "rejected": "y"}\n' * 1000 + b'{"prompt": 5}\n',
     "line 1001"),
]


@pytest.mark.parametrize("name, data, phrase", HOSTILE, ids=[h[0] for h in HOSTILE])
def test_hostile_files_are_refused_with_one_sentence_and_nothing_written(workspace, tmp_path, name, data, phrase):
    import_or_refuse(write(tmp_path / "seed.jsonl", b'{"prompt": "seed", "chosen": "a", "rejected": "b"}\n'))
    before = counts()
    with pytest.raises(InputError) as refused:
        store.import_file(write(tmp_path / name, data))
    message = str(refused.value)
    assert phrase in message and name in message and "\n" not in message and len(message) < 800, message[:300]
    assert counts() == before
