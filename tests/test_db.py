import json
import sqlite3

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.exc import IntegrityError

from labeling import db, export, queue, stats
from labeling.migrations import MIGRATIONS
from labeling.models import SCHEMA_VERSION, Annotator, Judgment, Pair
from tests.conftest import FIXTURES


def test_schema_created_and_versioned_on_first_use(workspace):
    assert db.schema_version() == SCHEMA_VERSION
    con = sqlite3.connect(workspace / "prefloop.db")
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"prompts", "responses", "pairs", "judgments", "annotators", "model_versions"} <= tables


def test_session_rolls_back_on_error(workspace):
    try:
        with db.session() as s:
            s.add(Annotator(name="ana"))
            s.flush()
            raise RuntimeError("boom")
    except RuntimeError:
        pass
    with db.session() as s:
        assert s.query(Annotator).count() == 0


def old_workspace(home, version: int = 2) -> sqlite3.Connection:
    """The workspace that prefloop 041c45d (schema 2) wrote in tests/fixtures/workspace_v2.sql:
    imports "pairs" and "hh" (labeled), "names" (unlabeled) and "prompts"; ana and Import:Bob
    judged some pairs, one of them an imported labeled pair. Version 1 puts back the indexes that
    schema 1 had besides; version 3 is that workspace taken to schema 3 by its own migration."""
    home.mkdir(parents=True, exist_ok=True)
    db._engine_for.cache_clear()
    con = sqlite3.connect(home / "prefloop.db")
    con.executescript((FIXTURES / "workspace_v2.sql").read_text(encoding="utf-8"))
    if version == 1:
        con.execute("CREATE INDEX ix_responses_prompt_id ON responses (prompt_id)")
        con.execute("CREATE INDEX ix_judgments_pair_id ON judgments (pair_id)")
        con.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
    if version == 3:
        for sql in MIGRATIONS[2]("sqlite"):
            con.execute(sql)
        con.execute("UPDATE meta SET value = '3' WHERE key = 'schema_version'")
    con.commit()
    return con


def test_version_1_workspace_is_migrated_and_keeps_its_rows(workspace):
    con = old_workspace(workspace, version=1)
    assert db.schema_version() == SCHEMA_VERSION == 5
    indexes = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert not indexes & {"ix_responses_prompt_id", "ix_judgments_pair_id"}
    assert {"ix_pairs_queue", "ix_judgments_annotator_created"} <= indexes
    with db.session() as s:
        assert s.scalars(select(Annotator.name).order_by(Annotator.name)).all() == ["Import:Bob", "ana"]
        assert s.scalar(select(func.count(Judgment.id))) == 10


def judgment_sources() -> list[tuple]:
    with db.session() as s:
        return s.execute(select(Judgment.id, Judgment.source, Judgment.source_name, Annotator.name)
                         .outerjoin(Annotator).order_by(Judgment.id)).all()


def test_version_2_imported_labels_become_sources_not_annotators(workspace):
    con = old_workspace(workspace)
    counts_before = con.execute("SELECT id, judgment_count FROM pairs ORDER BY id").fetchall()
    assert db.schema_version() == SCHEMA_VERSION
    assert judgment_sources() == [
        (1, "import", "pairs", None), (2, "import", "pairs", None), (3, "import", "pairs", None),
        (4, "import", "hh", None), (5, "import", "hh", None), (6, "human", None, "ana"), (7, "human", None, "ana"),
        (8, "human", None, "Import:Bob"), (9, "human", None, "ana"), (10, "human", None, "Import:Bob")]
    assert queue.annotator_names() == ["Import:Bob", "ana"]  # a person whose name merely looks like one
    summary = queue.workspace_summary()
    assert (summary.annotators, summary.judgments, summary.imported_labels) == (2, 4, 5)
    assert con.execute("SELECT id, judgment_count FROM pairs ORDER BY id").fetchall() == counts_before
    # the imported labels export as the same preference pairs as before the migration
    expected = json.loads((FIXTURES / "workspace_v2_export.json").read_text(encoding="utf-8"))
    result = export.preference_rows()
    assert (result.rows, result.excluded, result.judgment_ids) == (
        [dict(r, reasons=[], origin="human") for r in expected["rows"]], expected["excluded"], expected["judgment_ids"])
    # pairs 1 and 6 have one person's verdict beside the import's label: imports are not raters,
    # so only pair 4 (ana and Import:Bob) counts towards agreement
    assert stats.agreement(stats.judgments_frame())["pairs"] == 1


def test_the_migrated_table_keeps_its_triggers_and_rules(workspace):
    old_workspace(workspace)
    assert db.schema_version() == SCHEMA_VERSION
    pair = queue.next_pair("cleo")
    assert pair.pair_id == 5  # the only pair without a verdict (ana skipped it)
    queue.submit_judgment("cleo", pair.pair_id, "a", pair.left)
    with db.session() as s:
        assert s.get(Pair, pair.pair_id).judgment_count == 1
        with pytest.raises(IntegrityError):  # an imported label has no annotator, a person's has one
            s.execute(text("UPDATE judgments SET annotator_id = NULL WHERE id = 6"))
    queue.undo_last("cleo")
    with db.session() as s:
        assert s.get(Pair, pair.pair_id).judgment_count == 0


def test_version_3_judgments_gain_reason_tags_and_keep_everything_else(workspace):
    con = old_workspace(workspace, version=3)
    columns = [r[1] for r in con.execute("PRAGMA table_info(judgments)")]
    assert "reasons" not in columns and "source" in columns
    before = con.execute("SELECT id, pair_id, annotator_id, source, outcome, comment FROM judgments ORDER BY id").fetchall()
    assert db.schema_version() == SCHEMA_VERSION == 5
    assert con.execute("SELECT id, pair_id, annotator_id, source, outcome, comment FROM judgments ORDER BY id").fetchall() == before
    with db.session() as s:
        assert s.scalars(select(Judgment.reasons)).all() == [None] * 10  # nobody gave a reason before
    judgment_id = queue.submit_judgment("cleo", 5, "b", "a", reasons=["more correct", "safer"])
    with db.session() as s:
        assert s.get(Judgment, judgment_id).reasons == ["more correct", "safer"]
        assert s.get(Pair, 5).judgment_count == 1  # the count triggers survived the new column
    expected = json.loads((FIXTURES / "workspace_v2_export.json").read_text(encoding="utf-8"))
    old_rows = [dict(r, reasons=[], origin="human") for r in expected["rows"]]  # the same pairs, none with a reason
    assert [r for r in export.preference_rows().rows if r["pair_id"] != 5] == old_rows


def test_a_version_4_workspace_gains_the_new_tables_and_keeps_its_rows(workspace):
    con = old_workspace(workspace, version=3)  # then migrated to 4 by the step below, as prefloop 4 left it
    for sql in MIGRATIONS[3]("sqlite"):
        con.execute(sql)
    con.execute("UPDATE meta SET value = '4' WHERE key = 'schema_version'")
    con.commit()
    assert db.schema_version() == SCHEMA_VERSION == 5
    tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"suggestions", "demonstrations", "ratings"} <= tables
    with db.session() as s:
        assert s.scalar(select(func.count(Judgment.id))) == 10
