"""Backup and restore of the whole workspace database: a full round trip gives the same bytes and
the same rows, and a wrong file or a non-empty database is one sentence with nothing written.
tests/test_postgres.py runs the same round trip through a PostgreSQL server."""
import datetime as dt
import gzip
import json

import pytest
from sqlalchemy import func, select

from labeling import backup, db, demonstrations, queue, ratings, store, suggestions
from labeling.__main__ import main as labeling_main
from labeling.models import SCHEMA_VERSION, EvalPoint, Job, JobMetric, Meta, ModelVersion, Pair
from tests.conftest import FIXTURES

T0 = dt.datetime(2026, 11, 24, 5, 25, 0, 123456)


def fill_workspace() -> None:
    """One or more rows in every table: imported and human judgments, an arena vote, versions
    whose id sorts before its parent's ("v10-dpo" < "v9-base"), a job with metrics, an evaluation
    point, a lease, JSON with nesting, unicode and floats, and NULLs."""
    store.import_file(FIXTURES / "pairs.jsonl")  # labeled: judgments with source "import"
    store.import_file(FIXTURES / "unlabeled.jsonl", source="names")
    store.add_prompts(["Écris un haïku ✓", [{"role": "user", "content": "NUL-free \u202e RTL"}]], "builtin")
    with db.session() as s:
        prompt_id = s.scalar(select(func.min(Pair.prompt_id)))
        arena = store.add_generated_pair(s, prompt_id, "from v9", "from v10", ("v9-base", "v10-dpo"),
                                         ({"seed": 1, "temperature": 0.7}, None), kind="arena")
        s.add(ModelVersion(id="v9-base", kind="policy", method="base", parent_id=None, path="/m/base",
                           config=None, judgment_ids=None, metrics=None, is_current=False, created_at=T0))
        s.add(ModelVersion(id="v10-dpo", kind="policy", method="dpo", parent_id="v9-base", path="/v/v10",
                           config={"beta": 0.1, "lr": 5e-06, "nested": {"z": [1, 2.5, None]}},
                           judgment_ids=[3, 1, 2], metrics={"loss": 0.6931471805599453}, is_current=True,
                           created_at=T0 + dt.timedelta(hours=1)))
        s.flush()
        job = Job(kind="dpo", status="finished", config={"max_steps": 3}, step=3, total_steps=3, pid=None,
                  heartbeat_at=T0, result={"version": "v10-dpo"}, log_path="/jobs/1/log.txt", created_at=T0,
                  started_at=T0, finished_at=T0 + dt.timedelta(seconds=61.5))
        s.add(job)
        s.flush()
        s.add_all([JobMetric(job_id=job.id, step=k, values={"loss": 0.7 - k / 10, "kl": 1e-3 * k}) for k in (1, 2)])
        s.add(EvalPoint(version_id="v10-dpo", reward_version_id=None, reward=-0.0146, reward_se=0.0075, kl=0.269,
                        kl_se=None, kl_per_token=0.01, details={"prompts": [1, 2], "seeds": [0]}))
        s.add(Meta(key="labeling_guidelines", value="Prefer the **shorter** answer.\n"))
        arena_id = arena.id
    pair = queue.next_pair("ana")
    queue.submit_judgment("ana", pair.pair_id, "b", pair.left, seconds=2.5, comment="clearer ✓",
                          reasons=["more correct", "safer ✓"])
    queue.submit_judgment("ben", pair.pair_id, "skip", "a")
    queue.submit_judgment("ana", arena_id, "a", "b")
    queue.next_pair("cleo")  # leaves a lease
    suggestions.store(pair.pair_id, "ai", "local:judge ✓", "tie", 0.5, "The verdict changed with the sides.",
                      rubric_version=2)
    demonstrations.add_rewrite("ana", pair.pair_id, "A better answer ✓\nin two lines.")
    ratings.rate("ana", ratings.next_answer("ana").response_id, "up", seconds=1.25)


def backup_bytes(path) -> bytes:
    backup.backup(path)
    return path.read_bytes()


def every_row() -> dict[str, list[tuple]]:
    with db.session() as s:
        conn = s.connection()
        return {t.name: sorted(map(tuple, conn.execute(select(t))), key=repr) for t in backup.tables()}


def test_sqlite_round_trip_gives_the_same_bytes_and_rows(tmp_path, monkeypatch):
    monkeypatch.delenv("PREFLOOP_DB", raising=False)
    monkeypatch.setenv("PREFLOOP_HOME", str(tmp_path / "first"))
    fill_workspace()
    first = backup_bytes(tmp_path / "first.jsonl.gz")
    rows = every_row()
    assert all(rows[t.name] for t in backup.tables()), "every table holds a row"
    assert backup_bytes(tmp_path / "again.jsonl.gz") == first  # nothing depends on the time of writing

    monkeypatch.setenv("PREFLOOP_HOME", str(tmp_path / "second"))
    summary = backup.restore(tmp_path / "first.jsonl.gz")
    assert summary["rows"] == {t: len(r) for t, r in rows.items()}
    assert every_row() == rows  # judgment counts included: the triggers did not count twice
    assert backup_bytes(tmp_path / "second.jsonl.gz") == first
    # the restored workspace goes on: triggers count, new rows get new ids
    (waiting,) = [r for r in rows["pairs"] if r[-2] == 0 and r[6] == "label"]  # (..., kind, count, created)
    judgment_id = queue.submit_judgment("dana", waiting[0], "a", "a")
    with db.session() as s:
        assert judgment_id > max(r[0] for r in rows["judgments"])
        assert s.get(Pair, waiting[0]).judgment_count == 1


def test_the_file_is_json_lines_in_a_fixed_order(workspace, tmp_path):
    fill_workspace()
    backup.backup(tmp_path / "b.gz")
    lines = [json.loads(line) for line in gzip.open(tmp_path / "b.gz", "rt", encoding="ascii")]
    assert lines[0] == {"format": "prefloop backup", "schema_version": SCHEMA_VERSION}
    heads = {line["table"]: k for k, line in enumerate(lines) if isinstance(line, dict) and "table" in line}
    assert list(heads) == [t.name for t in backup.tables()]
    assert heads["prompts"] < heads["responses"] < heads["pairs"] < heads["judgments"]  # parents first
    assert lines[heads["pairs"]]["columns"] == [c.name for c in Pair.__table__.columns]
    versions = lines[heads["model_versions"] + 1:heads["model_versions"] + 3]
    assert [v[0] for v in versions] == ["v10-dpo", "v9-base"]  # by key: here the child before its parent
    assert versions[1][-1] == "2026-11-24T05:25:00.123456"  # datetimes as ISO 8601
    assert versions[0][5] == {"beta": 0.1, "lr": 5e-06, "nested": {"z": [1, 2.5, None]}}  # JSON as JSON
    judgments = lines[heads["judgments"] + 1:heads["judgments"] + 1 + lines[heads["judgments"]]["rows"]]
    assert [row[0] for row in judgments] == sorted(row[0] for row in judgments)
    assert [row[3:5] for row in judgments[:3]] == [["import", "pairs"]] * 3


def cli(*args: str, capsys) -> tuple[int, str, str]:
    code = labeling_main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_backup_and_restore_print_one_json_line(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("PREFLOOP_DB", raising=False)
    monkeypatch.setenv("PREFLOOP_HOME", str(tmp_path / "a"))
    fill_workspace()
    code, out, _ = cli("backup", str(tmp_path / "w.jsonl.gz"), capsys=capsys)
    summary = json.loads(out.strip().splitlines()[-1])
    assert code == 0 and summary["schema_version"] == SCHEMA_VERSION and summary["rows"]["pairs"] == 6
    monkeypatch.setenv("PREFLOOP_HOME", str(tmp_path / "b"))
    code, out, _ = cli("restore", str(tmp_path / "w.jsonl.gz"), capsys=capsys)
    restored = json.loads(out.strip().splitlines()[-1])
    assert code == 0 and restored["rows"] == summary["rows"] and restored["database"].startswith("sqlite:///")
    # into a database that now holds data: refused, one sentence, exit 2
    code, out, err = cli("restore", str(tmp_path / "w.jsonl.gz"), capsys=capsys)
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1
    assert "is not empty" in err and "6 pairs" in err


def damaged(lines: list, damage: str) -> bytes:
    """The gzip'd bytes of a backup's `lines` (header; annotators head; ana; ben; ...), damaged."""
    if damage == "header":
        lines[0] = {"format": "something else"}
    elif damage == "schema":
        lines[0]["schema_version"] = SCHEMA_VERSION - 1
    elif damage == "cut":
        lines = lines[:3]
    elif damage == "row":
        lines[3] = lines[3][:2]
    elif damage == "time":
        lines[3][-1] = "yesterday"
    elif damage == "table":
        lines[1]["table"] = "annotator"
    elif damage == "extra":
        lines.append([1])
    body = [backup._line(line) for line in lines]
    if damage == "json":
        body[3] = b'[2,"ben"\n'
    return gzip.compress(b"".join(body))


@pytest.mark.parametrize("damage, phrase", [
    ("plain", "is not a prefloop backup (not a gzip file)"),
    ("truncated", "is damaged after line"),
    ("header", ": line 1 is not a prefloop backup header"),
    ("schema", f"holds schema version {SCHEMA_VERSION - 1} and this prefloop restores version {SCHEMA_VERSION}"),
    ("cut", "ends inside table annotators"),
    ("json", ": line 4 is not JSON"),
    ("row", ": line 4 is not a row of table annotators"),
    ("time", ": line 4 holds a time that is not ISO 8601 in table annotators"),
    ("table", ": line 2 should start a table"),
    ("extra", "follows the last table"),
])
def test_a_wrong_file_is_one_sentence_and_restores_nothing(tmp_path, monkeypatch, damage, phrase):
    monkeypatch.delenv("PREFLOOP_DB", raising=False)
    monkeypatch.setenv("PREFLOOP_HOME", str(tmp_path / "source"))
    store.import_file(FIXTURES / "unlabeled.jsonl")
    queue.submit_judgment("ana", 1, "a", "a")
    queue.submit_judgment("ben", 1, "b", "a")
    good = tmp_path / "good.gz"
    backup.backup(good)
    lines = [json.loads(line) for line in gzip.open(good, "rt", encoding="ascii")]
    assert lines[1]["table"] == "annotators" and [row[1] for row in lines[2:4]] == ["ana", "ben"]
    bad = tmp_path / "bad.jsonl.gz"
    if damage == "plain":
        bad.write_text('{"format": "prefloop backup"}\n')
    elif damage == "truncated":
        bad.write_bytes(good.read_bytes()[:-30])
    else:
        bad.write_bytes(damaged(lines, damage))
    monkeypatch.setenv("PREFLOOP_HOME", str(tmp_path / "empty"))
    with pytest.raises(backup.BackupError) as error:
        backup.restore(bad)
    message = str(error.value)
    assert phrase in message and message.startswith(str(bad)) and "\n" not in message
    rows = every_row()
    assert rows["meta"] == [("schema_version", str(SCHEMA_VERSION))]
    assert not any(rows[name] for name in rows if name != "meta")


def test_backup_to_a_missing_folder_is_one_sentence(workspace, tmp_path):
    with pytest.raises(backup.BackupError, match="does not exist; create it"):
        backup.backup(tmp_path / "no" / "such.gz")
    assert not (tmp_path / "no").exists()
