import sqlite3

from labeling import db
from labeling.models import SCHEMA_VERSION, Annotator


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


def test_version_1_workspace_is_migrated_and_keeps_its_rows(workspace):
    from sqlalchemy import select

    with db.session() as s:
        s.add(Annotator(name="ana"))
    db._engine_for.cache_clear()
    con = sqlite3.connect(workspace / "prefloop.db")
    con.execute("CREATE INDEX ix_responses_prompt_id ON responses (prompt_id)")
    con.execute("CREATE INDEX ix_judgments_pair_id ON judgments (pair_id)")
    con.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
    con.commit()

    assert db.schema_version() == SCHEMA_VERSION == 2
    indexes = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert not indexes & {"ix_responses_prompt_id", "ix_judgments_pair_id"}
    assert "ix_pairs_queue" in indexes
    with db.session() as s:
        assert s.scalars(select(Annotator.name)).all() == ["ana"]
