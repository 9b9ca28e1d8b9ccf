"""Every import format on small fixtures, idempotency, bad input leaving the database untouched,
and the real data in ../shared/data."""
import gzip
import json
import shutil

import pytest
from sqlalchemy import func, select

from tests.conftest import FIXTURES
from labeling import db, importers, planning, queue, store
from labeling.importers import InputError
from labeling.models import Annotator, Judgment, Meta, Pair, Prompt, Response
from labeling.records import as_messages, content_hash, pair_hash


def counts() -> dict[str, int]:
    with db.session() as s:
        return {m.__tablename__: s.scalar(select(func.count()).select_from(m))
                for m in (Prompt, Response, Pair, Judgment, Annotator)}


def stored_pairs() -> list[dict]:
    """Each stored pair as {prompt, a, b, judged_a}: judged_a = the import's label says a won."""
    with db.session() as s:
        rows = []
        for pair in s.scalars(select(Pair).order_by(Pair.id)):
            outcomes = s.scalars(select(Judgment.outcome).where(Judgment.pair_id == pair.id)).all()
            rows.append({"prompt": pair.prompt.messages, "a": pair.response_a.text, "b": pair.response_b.text,
                         "outcomes": outcomes, "source": pair.source, "kind": pair.kind})
        return rows


def test_labeled_jsonl_drops_and_counts(workspace):
    summary = store.import_file(FIXTURES / "pairs.jsonl")
    assert summary == {"imported": 3, "duplicates": 0, "format": "pairs", "source": "pairs",
                       "dropped": {"empty": 2, "identical": 1, "duplicate_in_file": 2}}
    pairs = stored_pairs()
    assert [p["a"] for p in pairs] == ["The capital of France is Paris.", "Red is a primary colour.", "2 + 2 = 4."]
    assert [p["b"] for p in pairs] == ["France has no capital.", "Green, always green.", "2 + 2 = 5."]
    assert all(p["outcomes"] == ["a"] and p["kind"] == "label" for p in pairs)
    assert pairs[0]["prompt"] == [{"role": "user", "content": "What is the capital of France?"}]
    assert counts() == {"prompts": 3, "responses": 6, "pairs": 3, "judgments": 3, "annotators": 0}
    with db.session() as s:  # a dataset's labels are no annotator's: they carry the import's name
        assert set(s.scalars(select(Response.model_version))) == {"imported:pairs"}
        judgment = s.scalars(select(Judgment)).first()
        assert judgment.left is None and judgment.outcome == "a"
        assert (judgment.source, judgment.source_name, judgment.annotator_id) == ("import", "pairs", None)
        # the judgment-count trigger and the bulk path agree
        assert s.scalars(select(Pair.judgment_count)).all() == [1, 1, 1]


def test_reimport_adds_nothing(workspace):
    first = store.import_file(FIXTURES / "pairs.jsonl")
    before = counts()
    again = store.import_file(FIXTURES / "pairs.jsonl")
    assert again["imported"] == 0 and again["duplicates"] == first["imported"]
    assert counts() == before


def test_conversational_explicit_and_implicit_prompt(workspace):
    assert store.import_file(FIXTURES / "pairs_conversational.jsonl")["imported"] == 2
    first, second = stored_pairs()
    assert first["prompt"] == [{"role": "system", "content": "You are terse."},
                               {"role": "user", "content": "Largest planet?"}]
    assert (first["a"], first["b"]) == ("Jupiter.", "The Sun.")
    assert second["prompt"] == [{"role": "user", "content": "Boiling point of water at sea level?"}]
    assert (second["a"], second["b"]) == ("100 degrees Celsius.", "About 50 degrees.")


def test_csv_with_quotes_newlines_and_message_cells(workspace):
    assert store.import_file(FIXTURES / "pairs.csv")["imported"] == 3
    pairs = stored_pairs()
    assert pairs[0]["prompt"][0]["content"] == 'Give a synonym for "big".'
    assert pairs[1]["prompt"][0]["content"] == "Write a haiku\nabout rain."
    assert pairs[2]["prompt"] == [{"role": "user", "content": "Hi there"}]


def _rows(path):
    return [json.loads(line) for line in open(path, encoding="utf-8") if line.strip()]


def test_parquet_and_datasets_folder_match_jsonl(workspace, tmp_path):
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = _rows(FIXTURES / "pairs_conversational.jsonl")[:1] + _rows(FIXTURES / "pairs.jsonl")[:3]
    rows = [{**r, "prompt": as_messages(r["prompt"])} for r in rows]
    rows = [{**r, "chosen": [{"role": "assistant", "content": r["chosen"]}] if isinstance(r["chosen"], str) else r["chosen"],
             "rejected": [{"role": "assistant", "content": r["rejected"]}] if isinstance(r["rejected"], str) else r["rejected"]}
            for r in rows]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "p.parquet")
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "folder"))
    assert store.import_file(tmp_path / "p.parquet", source="pq")["imported"] == 4
    parquet_pairs = stored_pairs()
    # the same content from a datasets folder is the same four pairs: nothing new
    again = store.import_file(tmp_path / "folder", source="pq")
    assert (again["imported"], again["duplicates"], again["format"]) == (0, 4, "pairs")
    assert parquet_pairs[1]["a"] == "The capital of France is Paris."
    assert parquet_pairs[0]["prompt"][0]["role"] == "system"


def test_unlabeled_pairs_wait_for_labels(workspace):
    summary = store.import_file(FIXTURES / "unlabeled.jsonl", source="names")
    assert summary["imported"] == 2 and summary["format"] == "unlabeled"
    pairs = stored_pairs()
    assert [(p["a"], p["b"]) for p in pairs] == [("Whiskers.", "Captain Fluff."), ("Rex.", "Biscuit.")]
    assert all(p["outcomes"] == [] for p in pairs)
    assert counts()["annotators"] == 0


@pytest.mark.parametrize("name, expected", [("prompts.txt", 3), ("prompts.jsonl", 2)])
def test_prompts_only(workspace, name, expected):
    summary = store.import_file(FIXTURES / name)
    assert summary["imported"] == expected and summary["format"] == "prompts"
    assert counts()["prompts"] == expected and counts()["pairs"] == 0
    if name == "prompts.txt":
        assert summary["dropped"] == {"empty": 1, "identical": 0, "duplicate_in_file": 1}
    assert store.import_file(FIXTURES / name)["imported"] == 0


def test_hh_transcripts_plain_and_gzipped(workspace, tmp_path):
    with open(FIXTURES / "hh.jsonl", "rb") as src, gzip.open(tmp_path / "hh.jsonl.gz", "wb") as dst:
        shutil.copyfileobj(src, dst)
    summary = store.import_file(tmp_path / "hh.jsonl.gz")
    assert summary["format"] == "hh" and summary["imported"] == 2 and summary["dropped"]["empty"] == 1
    bread = stored_pairs()[0]
    assert bread["prompt"] == [
        {"role": "user", "content": "How do I bake bread?"},
        {"role": "assistant", "content": "Mix flour, water, yeast and salt."},
        {"role": "user", "content": "Then what?"},
    ]
    assert (bread["a"], bread["b"]) == ("Knead it, let it rise, and bake it at 220 C.", "Eat the dough raw.")
    assert store.import_file(FIXTURES / "hh.jsonl", source="hh")["imported"] == 0  # same pairs, plain file


def test_hh_reply_holding_another_turn_stays_whole():
    prompt, a, b = importers.split_transcripts(
        "\n\nHuman: Hi\n\nAssistant: Hello.\n\nAssistant: Anything else?", "\n\nHuman: Hi\n\nAssistant: Go away.")
    assert prompt == [{"role": "user", "content": "Hi"}]
    assert (a, b) == ("Hello.\n\nAssistant: Anything else?", "Go away.")


def test_oasst_tree_ranked_siblings(workspace):
    assert store.import_file(FIXTURES / "oasst.jsonl")["imported"] == 4
    pairs = {(p["a"], p["b"]): p["prompt"] for p in stored_pairs()}
    egg = [{"role": "user", "content": "How do I boil an egg?"}]
    assert pairs[("Put it in boiling water for eight minutes.", "Boil it.")] == egg
    assert pairs[("Put it in boiling water for eight minutes.", "Microwave it whole.")] == egg
    assert pairs[("Boil it.", "Microwave it whole.")] == egg
    assert pairs[("About six minutes.", "Twenty minutes.")] == egg + [
        {"role": "assistant", "content": "Put it in boiling water for eight minutes."},
        {"role": "user", "content": "And for a soft yolk?"}]


def test_split_is_deterministic_and_about_one_in_ten(workspace):
    prompts = [f"Question number {i}?" for i in range(2000)]
    assert store.add_prompts(prompts, "many") == 2000
    with db.session() as s:
        splits = dict(s.execute(select(Prompt.content_hash, Prompt.split)).all())
    heldout = sum(v == "heldout" for v in splits.values())
    assert 140 <= heldout <= 260
    assert all(v == planning.split_for(h) for h, v in splits.items())


def test_add_prompts_and_builtin_prompts_once(workspace):
    assert store.add_prompts(["Why is the sea salty?", [{"role": "user", "content": "Hi"}]], "mine") == 2
    assert store.add_prompts(["Why is the sea salty?", "New one?"], "mine") == 1
    builtin = store.builtin_prompts()
    assert len(builtin) >= 150 and len(set(builtin)) == len(builtin)
    assert all(0 < len(p) <= 200 for p in builtin)
    assert store.ensure_builtin_prompts() == len(builtin)
    assert store.ensure_builtin_prompts() == 0
    with db.session() as s:
        assert s.scalar(select(func.count()).where(Prompt.source == "builtin")) == len(builtin)
        assert s.get(Meta, "builtin_prompts").value == str(len(builtin))


def test_pair_hash_is_the_canonical_json_hash_either_way_round():
    p, a, b = content_hash("prompt"), content_hash("a"), content_hash("b")
    assert pair_hash(p, a, b) == pair_hash(p, b, a) == content_hash([p, min(a, b), max(a, b)])


def test_add_generated_pair(workspace):
    store.add_prompts(["Name a fruit."], "mine")
    with db.session() as s:
        prompt_id = s.scalar(select(Prompt.id))
        pair = store.add_generated_pair(s, prompt_id, "Apple.", "Banana.", "v1", {"temperature": 0.7, "seed": 1})
        assert pair is not None and pair.kind == "label" and pair.judgment_count == 0
        assert pair.response_a.generation == {"temperature": 0.7, "seed": 1}
        expected = pair_hash(content_hash(as_messages("Name a fruit.")), content_hash("Apple."), content_hash("Banana."))
        assert pair.pair_hash == expected
        assert store.add_generated_pair(s, prompt_id, "Banana.", "Apple.", "v1", None) is None  # same pair
        assert store.add_generated_pair(s, prompt_id, "Pear.", "Pear.", "v1", None) is None
        assert store.add_generated_pair(s, prompt_id, " ", "Pear.", "v1", None) is None
        arena = store.add_generated_pair(s, prompt_id, "Apple.", "Cherry.", ("v1", "v2"), None, kind="arena")
        assert arena.response_a_id == pair.response_a_id  # the v1 "Apple." response is reused
        assert arena.response_b.model_version == "v2" and arena.kind == "arena"
        annotator = queue.get_or_create_annotator(s, "ana")
        assert queue.get_or_create_annotator(s, "ana").id == annotator.id
    assert counts()["responses"] == 3


BAD_INPUTS = [
    ("bad_json.jsonl", "auto", ["line 3", "malformed JSON"]),
    ("bad_missing.jsonl", "auto", ["line 2", "'rejected'"]),
    ("bad_missing.csv", "auto", ["line 2", "'rejected'"]),
    ("bad_types.jsonl", "auto", ["line 2", "'prompt'", "an int"]),
    ("bad_unknown.jsonl", "auto", ["cannot tell the format", "--format"]),
    ("bad_extension.tsv", "auto", ["unknown file type"]),
    ("pairs.jsonl", "xml", ["unknown format 'xml'"]),
    ("pairs.jsonl", "oasst", ["line 1", "'prompt'", "message tree"]),
    ("hh.jsonl", "unlabeled", ["line 1", "'prompt'"]),
    ("missing-file.jsonl", "auto", ["no such file"]),
]


@pytest.mark.parametrize("name, fmt, phrases", BAD_INPUTS)
def test_bad_input_names_the_problem_and_writes_nothing(workspace, name, fmt, phrases):
    store.import_file(FIXTURES / "unlabeled.jsonl")
    before = counts()
    with pytest.raises(InputError) as err:
        store.import_file(FIXTURES / name, fmt=fmt)
    message = str(err.value)
    assert name in message and all(p in message for p in phrases), message
    assert message.count(". ") == 0 and "\n" not in message  # one sentence
    assert counts() == before


def test_a_json_array_file_imports_like_json_lines(workspace, tmp_path):
    import json

    rows = [{"prompt": "Hi", "chosen": "Hello!", "rejected": "Go away."},
            {"prompt": "2+2?", "chosen": "4", "rejected": "5"}]
    (tmp_path / "pretty.json").write_text(json.dumps(rows, indent=2), encoding="utf-8")
    (tmp_path / "lines.json").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    assert store.import_file(tmp_path / "pretty.json")["imported"] == 2
    assert store.import_file(tmp_path / "lines.json")["imported"] == 0  # the same two pairs
    (tmp_path / "bad.json").write_text(json.dumps(rows + [7]), encoding="utf-8")
    with pytest.raises(InputError, match=r"bad.json, item 3: expected a JSON object"):
        store.import_file(tmp_path / "bad.json")


def test_a_record_spanning_lines_is_named_by_its_first_line(workspace, tmp_path):
    path = tmp_path / "multi.csv"
    path.write_text('prompt,chosen,rejected\nQ1,"one\ntwo\nthree",b\nQ2,"four\nfi\x00ve",c\n', encoding="utf-8")
    with pytest.raises(InputError, match=r"multi.csv, line 5, field 'chosen': the text holds a NUL"):  # record 2: line 5
        store.import_file(path)


def test_unicode_line_separators_stay_inside_a_prompt(workspace, tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("first\u2028still first\nsecond\u0085still second\n", encoding="utf-8")
    assert store.import_file(path)["imported"] == 2
    (tmp_path / "old-mac.txt").write_bytes(b"third\rfourth\r")  # lines ended by CR alone
    assert store.import_file(tmp_path / "old-mac.txt")["imported"] == 2


def test_non_utf8_and_truncated_gzip(workspace, tmp_path):
    (tmp_path / "latin1.jsonl").write_bytes(
        b'{"prompt": "ok", "chosen": "a", "rejected": "b"}\n{"prompt": "caf\xe9", "chosen": "a", "rejected": "b"}\n')
    (tmp_path / "latin1.txt").write_bytes(b"fine\nna\xefve\n")
    data = gzip.compress(open(FIXTURES / "pairs.jsonl", "rb").read())
    (tmp_path / "cut.jsonl.gz").write_bytes(data[: len(data) // 2])
    for name, phrase in (("latin1.jsonl", "line 2"), ("latin1.txt", "line 2"), ("cut.jsonl.gz", "truncated")):
        with pytest.raises(InputError, match=phrase):
            store.import_file(tmp_path / name)
    assert counts() == dict.fromkeys(("prompts", "responses", "pairs", "judgments", "annotators"), 0)


def test_error_on_a_late_line_rolls_back_everything(workspace, tmp_path):
    good = open(FIXTURES / "pairs.jsonl", encoding="utf-8").read()
    (tmp_path / "late.jsonl").write_text(good + '{"prompt": "x", "chosen": ["not a message"], "rejected": "y"}\n')
    with pytest.raises(InputError, match="line 9, field 'chosen'"):
        store.import_file(tmp_path / "late.jsonl")
    assert counts()["pairs"] == 0


def test_shared_data_integration(workspace, shared_data):
    hh = store.import_file(shared_data / "hh-rlhf-harmless-base-test.jsonl.gz")
    assert hh["format"] == "hh" and 2250 <= hh["imported"] <= 2312
    assert hh["imported"] + sum(hh["dropped"].values()) == 2312
    oasst = store.import_file(shared_data / "oasst-en-trees-70.jsonl")
    assert oasst["format"] == "oasst" and 450 <= oasst["imported"] <= 550
    before = counts()
    assert before["pairs"] == before["judgments"] == hh["imported"] + oasst["imported"]
    assert store.import_file(shared_data / "hh-rlhf-harmless-base-test.jsonl.gz")["imported"] == 0
    assert store.import_file(shared_data / "oasst-en-trees-70.jsonl")["imported"] == 0
    assert counts() == before


def test_new_pair_reuses_stored_prompt_and_response(workspace, tmp_path):
    first = tmp_path / "first.jsonl"
    first.write_text(json.dumps({"prompt": "Pick a colour.", "chosen": "Blue.", "rejected": "Grey."}) + "\n")
    second = tmp_path / "second.jsonl"
    second.write_text(json.dumps({"prompt": "Pick a colour.", "chosen": "Blue.", "rejected": "Mauve."}) + "\n"
                      + json.dumps({"prompt": "Pick a number.", "chosen": "Seven.", "rejected": "Blue."}) + "\n")
    store.import_file(first, source="colours")
    assert store.import_file(second, source="colours")["imported"] == 2
    assert counts() == {"prompts": 2, "responses": 5, "pairs": 3, "judgments": 3, "annotators": 0}
    with db.session() as s:
        pairs = s.scalars(select(Pair).order_by(Pair.id)).all()
        assert pairs[1].response_a_id == pairs[0].response_a_id  # the stored "Blue." for that prompt
        assert pairs[2].prompt_id != pairs[0].prompt_id and pairs[2].response_b.text == "Blue."
        assert [p.judgment_count for p in pairs] == [1, 1, 1]


def test_hub_name_offline_is_a_clear_error(workspace, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(InputError, match="cannot load it as a datasets folder or hub dataset"):
        store.import_file("someone/no-such-preference-set")
    assert counts()["prompts"] == 0
