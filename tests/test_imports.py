"""An import as one unit: listed with its counts, exported alone, deleted in one transaction with
its labels and what nothing else uses; the CLI commands print one JSON line, bad names exit 2."""
import json

import pytest
from sqlalchemy import func, select

from labeling import db, export, imports, queue, store
from labeling.__main__ import main as labeling_main
from labeling.models import ModelVersion, Pair, Prompt
from tests.conftest import FIXTURES
from tests.test_import import counts


def write_jsonl(path, rows: list[dict]):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def three_imports(tmp_path) -> None:
    """"pairs" (3 labeled pairs), "names" (2 unlabeled pairs), "prompts" (3 prompts, one of them
    also the prompt of a labeled pair of "shared" and of a generated pair)."""
    store.import_file(FIXTURES / "pairs.jsonl")
    store.import_file(FIXTURES / "unlabeled.jsonl", source="names")
    store.import_file(FIXTURES / "prompts.txt")
    store.import_file(write_jsonl(tmp_path / "shared.jsonl", [
        {"prompt": "Why is the sea salty?", "chosen": "Minerals washed in by rivers.", "rejected": "Fish tears."}]))
    with db.session() as s:
        prompt_id = s.scalar(select(Prompt.id).where(Prompt.source == "prompts").order_by(Prompt.id))
        store.add_generated_pair(s, prompt_id, "Salt.", "Rivers.", "v1-base", None)


def test_list_imports_counts_what_each_brought_and_no_generated_pair(workspace, tmp_path):
    three_imports(tmp_path)
    assert imports.list_imports() == [
        {"name": "names", "prompts": 2, "pairs": 2, "labels": 0},
        {"name": "pairs", "prompts": 3, "pairs": 3, "labels": 3},
        {"name": "prompts", "prompts": 3, "pairs": 0, "labels": 0},
        {"name": "shared", "prompts": 0, "pairs": 1, "labels": 1},  # its prompt was stored by "prompts"
    ]


def test_an_import_exports_alone(workspace, tmp_path):
    three_imports(tmp_path)
    result = export.export(tmp_path / "pairs.jsonl", source="pairs")
    assert result["exported"] == 3
    rows = [json.loads(line) for line in open(tmp_path / "pairs.jsonl", encoding="utf-8")]
    assert rows[0]["chosen"] == [{"role": "assistant", "content": "The capital of France is Paris."}]
    with pytest.raises(export.ExportError, match="no pair from source 'names' has a majority"):
        export.export(tmp_path / "names.jsonl", source="names")


def test_delete_import_takes_its_pairs_labels_and_unused_rows(workspace, tmp_path):
    three_imports(tmp_path)
    with db.session() as s:
        first, second = s.scalars(select(Pair.id).where(Pair.source == "pairs").order_by(Pair.id).limit(2))
        names = s.scalars(select(Pair.id).where(Pair.source == "names")).all()
        s.add(ModelVersion(id="v2-reward", kind="reward", method="reward", path="/r", judgment_ids=[1, 2]))
        s.add(ModelVersion(id="v3-dpo", kind="policy", method="dpo", path="/d", judgment_ids=[4]))
    queue.submit_judgment("ana", first, "b", "a")
    queue.submit_judgment("ana", names[0], "a", "a")
    queue.next_pair("ben", overlap=2)  # a lease on one of the pairs about to go
    before = counts()
    summary = imports.delete_import("pairs")
    assert summary == {"deleted": "pairs", "pairs": 3, "labels": 3, "people_judgments": 1, "responses": 6,
                       "prompts": 3, "prompts_kept": 0, "demonstrations": 0, "versions_trained_on_it": ["v2-reward"]}
    assert counts() == {"prompts": before["prompts"] - 3, "responses": before["responses"] - 6,
                        "pairs": before["pairs"] - 3, "judgments": before["judgments"] - 4, "annotators": 1}
    assert [i["name"] for i in imports.list_imports()] == ["names", "prompts", "shared"]
    with db.session() as s:
        assert s.get(Pair, second) is None
        assert s.get(Pair, names[0]).judgment_count == 1  # other imports' pairs keep their counts


def test_a_prompt_that_something_else_uses_stays(workspace, tmp_path):
    three_imports(tmp_path)
    summary = imports.delete_import("prompts")
    # "Why is the sea salty?" has a pair of "shared" and a generated pair; the other two go
    assert (summary["pairs"], summary["prompts"], summary["prompts_kept"]) == (0, 2, 1)
    summary = imports.delete_import("shared")
    assert (summary["pairs"], summary["labels"], summary["responses"], summary["prompts"]) == (1, 1, 2, 0)
    with db.session() as s:
        assert s.scalar(select(func.count()).where(Prompt.source == "prompts")) == 1  # the generated pair's


def test_unknown_import_and_a_failure_midway_change_nothing(workspace, tmp_path, monkeypatch):
    three_imports(tmp_path)
    before = counts()
    with pytest.raises(imports.UnknownImport, match=r"^There is no import named 'v1-base'; `python -m labeling "
                                                    r"imports` lists them\.$"):
        imports.delete_import("v1-base")  # generated pairs are no import

    def broken(conn, name):
        raise RuntimeError("disk full")

    monkeypatch.setattr(imports, "_delete_unused", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        imports.delete_import("pairs")
    assert counts() == before and len(imports.list_imports()) == 4


def test_cli_imports_and_delete_import(workspace, tmp_path, capsys):
    three_imports(tmp_path)
    assert labeling_main(["imports"]) == 0
    listed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert [i["name"] for i in listed["imports"]] == ["names", "pairs", "prompts", "shared"]
    assert labeling_main(["delete-import", "nope"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err == "There is no import named 'nope'; `python -m labeling imports` lists them.\n"
    assert labeling_main(["delete-import", "names"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["pairs"] == 2
    assert labeling_main(["export", str(tmp_path / "out.jsonl"), "--source", "shared"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["exported"] == 1
