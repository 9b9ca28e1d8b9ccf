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
