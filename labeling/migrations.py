"""Schema migrations: `MIGRATIONS[v](dialect)` lists the SQL statements that take a version-v
workspace to version v + 1; labeling/db.py runs them, in one transaction, on first use.

Each step is written out as SQL of its own time rather than derived from labeling/models.py, so a
step stays right after the models move on.
"""
from __future__ import annotations

from typing import Callable

from labeling.models import _SQLITE_COUNT_TRIGGERS  # unchanged since schema 2

IMPORT_PREFIX = "import:"  # schema 2 kept imported labels under annotators named import:<source>
_IS_IMPORT = f"substr(a.name, 1, {len(IMPORT_PREFIX)}) = '{IMPORT_PREFIX}'"  # LIKE ignores case in SQLite


def _drop_unused_indexes(dialect: str) -> list[str]:
    # Indexes that repeat the first column of a unique constraint, or that no query uses: each
    # one slowed every import row.
    return [f"DROP INDEX IF EXISTS {name}" for name in (
        "ix_responses_prompt_id", "ix_responses_model_version", "ix_judgments_pair_id", "ix_prompts_source")]


def _judgment_sources(dialect: str) -> list[str]:
    """Imported labels stop being annotators: a judgment by `import:X` becomes one with source
    "import" and source_name X and no annotator, and the `import:X` annotators go."""
    start = len(IMPORT_PREFIX) + 1
    forget = f"DELETE FROM annotators WHERE substr(name, 1, {len(IMPORT_PREFIX)}) = '{IMPORT_PREFIX}'"
    if dialect == "postgresql":
        return [
            "ALTER TABLE judgments ADD COLUMN source VARCHAR(10) DEFAULT 'human' NOT NULL",
            "ALTER TABLE judgments ADD COLUMN source_name VARCHAR(200)",
            "ALTER TABLE judgments ALTER COLUMN annotator_id DROP NOT NULL",
            # the count trigger fires on outcome and pair_id changes only: counts stay as they are
            f"UPDATE judgments SET source = 'import', source_name = substr(a.name, {start}), annotator_id = NULL "
            f"FROM annotators a WHERE a.id = judgments.annotator_id AND {_IS_IMPORT}",
            "ALTER TABLE judgments ADD CONSTRAINT ck_judgments_annotator_iff_human "
            "CHECK ((annotator_id IS NOT NULL) = (source = 'human'))",
            forget,
        ]
    # SQLite cannot drop a NOT NULL: the table is built anew and copied (no trigger on the new
    # table yet, so the pairs' judgment counts are left as they are), then its index and triggers.
    return [
        """CREATE TABLE judgments_v3 (
            id INTEGER NOT NULL, pair_id INTEGER NOT NULL, annotator_id INTEGER,
            source VARCHAR(10) DEFAULT 'human' NOT NULL, source_name VARCHAR(200),
            outcome VARCHAR(10) NOT NULL, "left" VARCHAR(1), seconds DOUBLE, comment TEXT,
            created_at DATETIME NOT NULL, updated_at DATETIME NOT NULL,
            PRIMARY KEY (id), UNIQUE (pair_id, annotator_id),
            CONSTRAINT ck_judgments_annotator_iff_human CHECK ((annotator_id IS NOT NULL) = (source = 'human')),
            FOREIGN KEY(pair_id) REFERENCES pairs (id), FOREIGN KEY(annotator_id) REFERENCES annotators (id))""",
        f"""INSERT INTO judgments_v3 (id, pair_id, annotator_id, source, source_name, outcome, "left", seconds,
                                     comment, created_at, updated_at)
            SELECT j.id, j.pair_id,
                   CASE WHEN {_IS_IMPORT} THEN NULL ELSE j.annotator_id END,
                   CASE WHEN {_IS_IMPORT} THEN 'import' ELSE 'human' END,
                   CASE WHEN {_IS_IMPORT} THEN substr(a.name, {start}) END,
                   j.outcome, j."left", j.seconds, j.comment, j.created_at, j.updated_at
            FROM judgments j JOIN annotators a ON a.id = j.annotator_id""",
        "DROP TABLE judgments",  # its index and triggers go with it
        "ALTER TABLE judgments_v3 RENAME TO judgments",
        "CREATE INDEX ix_judgments_annotator_created ON judgments (annotator_id, created_at)",
        *_SQLITE_COUNT_TRIGGERS,
        forget,
    ]


def _judgment_reasons(dialect: str) -> list[str]:
    """Judgments gain optional reason tags, a JSON list (NULL for every judgment made before)."""
    return ["ALTER TABLE judgments ADD COLUMN reasons JSON"]


def _new_tables(dialect: str) -> list[str]:
    """Suggestions, demonstrations and ratings: new tables, which `Base.metadata.create_all` makes
    before any step runs; the version moves so that a backup says which tables it must hold."""
    return []


MIGRATIONS: dict[int, Callable[[str], list[str]]] = {
    1: _drop_unused_indexes,
    2: _judgment_sources,
    3: _judgment_reasons,
    4: _new_tables,
}
