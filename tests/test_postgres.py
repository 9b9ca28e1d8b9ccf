"""The storage tests again, on a real PostgreSQL server: import idempotency and all-or-nothing
imports, export, the queue and the triggers that keep `Pair.judgment_count`, versions, jobs, and a
DPO round in a background worker process, plus what only PostgreSQL can get wrong (id sequences after bulk imports with given ids, text that
PostgreSQL refuses to store).

Each test gets a fresh schema on the server named by PREFLOOP_TEST_PG (tests/conftest.py
`postgres_url`); without it they skip, and CI (.ci/run) starts a server so they run there.
The shared tests are imported from their own modules and run here with `workspace` overridden.
"""
import json

import pytest
from sqlalchemy import func, select, text

from labeling import db, queue, store
from labeling.importers import InputError
from labeling.models import Judgment, Pair, Prompt, Response
from tests.conftest import FIXTURES
from tests.test_export import (  # noqa: F401  (fixtures and tests collected again in this module)
    judged, test_both_bad_is_left_out, test_export_errors,
    test_kinds_filter_arena_pairs, test_preference_rows_majority_and_exclusions)
from tests.test_import import (  # noqa: F401
    counts, test_add_generated_pair, test_add_prompts_and_builtin_prompts_once, test_bad_input_names_the_problem_and_writes_nothing,
    test_conversational_explicit_and_implicit_prompt, test_csv_with_quotes_newlines_and_message_cells,
    test_error_on_a_late_line_rolls_back_everything, test_labeled_jsonl_drops_and_counts,
    test_new_pair_reuses_stored_prompt_and_response, test_non_utf8_and_truncated_gzip, test_oasst_tree_ranked_siblings,
    test_prompts_only, test_reimport_adds_nothing, test_unlabeled_pairs_wait_for_labels)
from tests.test_queue import (  # noqa: F401
    seed_pairs, test_a_lease_runs_out_and_overlap_counts_leases_as_judgments,
    test_a_pair_on_one_screen_is_not_drawn_for_another, test_arena_pairs_are_not_in_the_label_queue, test_bad_input_raises_one_sentence_and_stores_nothing,
    test_judgment_count_follows_inserts_updates_and_deletes, test_oldest_first_and_not_twice_for_the_same_annotator,
    test_overlap_k_lets_k_annotators_judge_a_pair_and_no_more, test_progress_counts_today_total_and_waiting,
    test_skip_hides_the_pair_from_me_but_not_from_others, test_submit_twice_updates_one_row,
    test_undo_and_progress_on_the_label_page_leave_arena_votes_alone, test_undo_last_removes_only_my_latest_judgment,
    test_workspace_summary)
from tests.test_dpo import test_dpo_background_job_end_to_end  # noqa: F401  (a worker process on PostgreSQL)
from tests.test_jobs import (  # noqa: F401
    test_a_dead_worker_is_shown_as_failed, test_a_failing_round_is_recorded_with_its_reason,
    test_cancel_stops_the_round_at_its_next_step, test_clicks_at_the_same_moment_start_one_heavy_job,
    test_eta_follows_the_pace_of_the_steps_not_the_setup_before_them, test_reporter_persists_progress_and_metrics)
from tests.test_imports import (  # noqa: F401
    test_a_prompt_that_something_else_uses_stays, test_delete_import_takes_its_pairs_labels_and_unused_rows,
    test_list_imports_counts_what_each_brought_and_no_generated_pair,
    test_unknown_import_and_a_failure_midway_change_nothing)
from tests.test_suggestions import (  # noqa: F401  (random(), CASE and abs() in the uncertain queue)
    test_a_share_of_uncertain_draws_is_random_and_every_pair_is_served,
    test_reward_suggestions_are_stored_for_waiting_pairs_only,
    test_the_uncertain_queue_serves_the_least_sure_pair_first_with_random_draws)
from tests.test_judge import (  # noqa: F401
    test_ai_labels_decide_only_pairs_nobody_judged_and_never_touch_a_judgment,
    test_the_gate_opens_only_when_the_judge_agrees_with_people,
    test_verdicts_are_stored_as_suggestions_and_the_run_resumes)
from tests.test_demonstrations import (  # noqa: F401
    test_a_rewrite_is_stored_once_per_person_and_makes_two_preference_rows,
    test_messages_import_and_export_round_trip)
from tests.test_kto import test_thumbs_one_answer_at_a_time_feed_kto_and_the_unpaired_export  # noqa: F401
from tests.test_stats import (  # noqa: F401
    test_imported_labels_are_no_annotator_in_any_statistic, test_judgments_frame_reads_and_filters_the_workspace)
from tests.test_versions import (  # noqa: F401
    test_a_round_finishing_after_a_rollback_leaves_the_rollback_alone,
    test_create_version_renames_complete_folder_and_records_lineage, test_failed_write_leaves_no_folder_and_no_row)


@pytest.fixture
def workspace(tmp_path, monkeypatch, postgres_url):
    """Overrides conftest's `workspace` for this module: files in tmp_path, rows in PostgreSQL."""
    home = tmp_path / "workspace"
    monkeypatch.setenv("PREFLOOP_HOME", str(home))
    return home


def test_the_database_really_is_postgresql(workspace):
    assert db.engine().dialect.name == "postgresql"
    with db.session() as s:
        assert s.scalar(text("SELECT current_schema()")).startswith("test_")  # this test's own schema
        assert s.scalar(text("SELECT count(*) FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid "
                             "WHERE t.tgname = 'judgments_count' AND c.relname = 'judgments' "
                             "AND c.relnamespace = current_schema()::regnamespace")) == 1


def make_schema_2(s) -> None:
    """Put back by hand what a schema-2 workspace held: imported labels under annotators named
    import:<source>, judgments without a source."""
    s.execute(text("INSERT INTO annotators (name, role, created_at) SELECT DISTINCT 'import:' || source_name, "
                   "'annotator', now() FROM judgments WHERE source = 'import'"))
    s.execute(text("ALTER TABLE judgments DROP CONSTRAINT ck_judgments_annotator_iff_human"))
    s.execute(text("UPDATE judgments SET annotator_id = a.id FROM annotators a "
                   "WHERE a.name = 'import:' || judgments.source_name AND judgments.source = 'import'"))
    s.execute(text("ALTER TABLE judgments DROP COLUMN source, DROP COLUMN source_name, DROP COLUMN reasons"))
    s.execute(text("ALTER TABLE judgments ALTER COLUMN annotator_id SET NOT NULL"))
    s.execute(text("UPDATE meta SET value = '2' WHERE key = 'schema_version'"))


def reopen() -> None:
    """Forget the engine, so the next use opens the database afresh (and migrates it)."""
    db._engine_for(db.database_url()).dispose()
    db._engine_for.cache_clear()


def test_version_1_workspace_is_migrated_on_postgresql(workspace):
    from labeling.models import SCHEMA_VERSION

    store.import_file(FIXTURES / "pairs.jsonl")
    with db.session() as s:  # put back what a version-1 workspace had
        make_schema_2(s)
        s.execute(text("CREATE INDEX ix_responses_prompt_id ON responses (prompt_id)"))
        s.execute(text("CREATE INDEX ix_judgments_pair_id ON judgments (pair_id)"))
        s.execute(text("UPDATE meta SET value = '1' WHERE key = 'schema_version'"))
        pairs = s.scalar(select(func.count(Pair.id)))
    reopen()
    assert db.schema_version() == SCHEMA_VERSION == 5
    with db.session() as s:
        names = set(s.scalars(text("SELECT indexname FROM pg_indexes WHERE schemaname = current_schema()")))
        assert not names & {"ix_responses_prompt_id", "ix_judgments_pair_id"} and "ix_pairs_queue" in names
        assert s.scalar(select(func.count(Pair.id))) == pairs


def test_version_2_imported_labels_become_sources_on_postgresql(workspace):
    from labeling import export
    from labeling.models import SCHEMA_VERSION, Annotator

    store.import_file(FIXTURES / "pairs.jsonl")
    store.import_file(FIXTURES / "hh.jsonl", source="hh")
    queue.submit_judgment("ana", 1, "b", "a")
    rows_before = export.preference_rows()  # before: a schema-2 table has no reasons column to read
    with db.session() as s:
        make_schema_2(s)
        assert s.scalars(text("SELECT name FROM annotators ORDER BY name")).all() == ["ana", "import:hh", "import:pairs"]
        counts_before = s.execute(select(Pair.id, Pair.judgment_count).order_by(Pair.id)).all()
    reopen()
    assert db.schema_version() == SCHEMA_VERSION
    with db.session() as s:
        assert s.scalars(select(Annotator.name)).all() == ["ana"]
        sources = s.execute(select(Judgment.source, Judgment.source_name, func.count()).group_by(
            Judgment.source, Judgment.source_name).order_by(Judgment.source, Judgment.source_name)).all()
        assert sources == [("human", None, 1), ("import", "hh", 2), ("import", "pairs", 3)]
        assert s.execute(select(Pair.id, Pair.judgment_count).order_by(Pair.id)).all() == counts_before
    after = export.preference_rows()
    assert (after.rows, after.excluded, after.judgment_ids) == (rows_before.rows, rows_before.excluded,
                                                                rows_before.judgment_ids)
    with pytest.raises(Exception, match="ck_judgments_annotator_iff_human"), db.session() as s:
        s.execute(text("UPDATE judgments SET annotator_id = NULL WHERE source = 'human'"))


def test_backup_moves_a_sqlite_workspace_to_postgresql_byte_for_byte(workspace, tmp_path, monkeypatch, postgres_url):
    """SQLite -> file -> PostgreSQL -> file gives the same bytes; the restored ids' sequences continue."""
    from labeling import backup
    from labeling.models import Job
    from tests.test_backup import every_row, fill_workspace

    monkeypatch.delenv("PREFLOOP_DB")
    monkeypatch.setenv("PREFLOOP_HOME", str(tmp_path / "on-sqlite"))
    fill_workspace()
    backup.backup(tmp_path / "sqlite.jsonl.gz")
    rows = every_row()
    monkeypatch.setenv("PREFLOOP_DB", postgres_url)
    summary = backup.restore(tmp_path / "sqlite.jsonl.gz")
    assert db.engine().dialect.name == "postgresql" and summary["rows"]["pairs"] == len(rows["pairs"])
    backup.backup(tmp_path / "postgresql.jsonl.gz")
    assert (tmp_path / "postgresql.jsonl.gz").read_bytes() == (tmp_path / "sqlite.jsonl.gz").read_bytes()
    assert every_row() == rows
    (waiting,) = [r for r in rows["pairs"] if r[-2] == 0 and r[6] == "label"]
    assert queue.submit_judgment("dana", waiting[0], "a", "a") == max(r[0] for r in rows["judgments"]) + 1
    with db.session() as s:
        job = Job(kind="generate")
        s.add(job)
        s.flush()
        assert job.id == max(r[0] for r in rows["jobs"]) + 1
        assert s.get(Pair, waiting[0]).judgment_count == 1  # the count trigger is back on
    with pytest.raises(backup.BackupError, match="is not empty"):
        backup.restore(tmp_path / "sqlite.jsonl.gz")


def test_orm_inserts_after_a_bulk_import_get_fresh_ids(workspace):
    """The import gives ids itself; the sequences must be moved past them, or the next app insert collides."""
    store.import_file(FIXTURES / "pairs.jsonl")
    with db.session() as s:
        before = s.scalar(select(func.max(Judgment.id)))
    pair_id = seed_pairs(1)[0]  # ORM inserts of a prompt, two responses and a pair
    judgment_id = queue.submit_judgment("ana", pair_id, "a", "a")
    assert judgment_id == before + 1
    store.import_file(FIXTURES / "unlabeled.jsonl")  # and an import after ORM inserts continues after them
    with db.session() as s:
        assert s.scalar(select(func.count(Pair.id))) == s.scalar(select(func.count(func.distinct(Pair.id))))
        assert s.get(Pair, pair_id).judgment_count == 1


def test_nul_characters_are_refused_with_one_sentence_and_nothing_written(workspace, tmp_path):
    """PostgreSQL text cannot hold U+0000; the importer must say so instead of failing in the driver."""
    store.import_file(FIXTURES / "pairs.jsonl")
    before = counts()
    path = tmp_path / "nul.jsonl"
    rows = [{"prompt": "fine", "chosen": "good", "rejected": "bad"},
            {"prompt": "hi", "chosen": "a\u0000b", "rejected": "c"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(InputError, match=r"line 2, field 'chosen'.*NUL"):
        store.import_file(path)
    assert counts() == before


def test_judgment_count_is_right_after_an_import_with_labels(workspace):
    summary = store.import_file(FIXTURES / "pairs.jsonl")
    with db.session() as s:
        stored = s.execute(select(Pair.id, Pair.judgment_count)).all()
        per_pair = dict(s.execute(select(Judgment.pair_id, func.count()).group_by(Judgment.pair_id)).all())
        assert s.scalar(select(func.count(Prompt.id))) >= 1 and s.scalar(select(func.count(Response.id))) >= 2
    assert len(stored) == summary["imported"] and all(count == per_pair.get(pid, 0) for pid, count in stored)


def test_hostile_queue_input_is_refused_or_cleaned_before_postgresql_sees_it(workspace):
    (pair_id,) = seed_pairs(1)
    with pytest.raises(queue.QueueError, match="control character"):
        queue.submit_judgment("an\x00a", pair_id, "a", "a")
    judgment_id = queue.submit_judgment("ana", pair_id, "a", "a", comment="fine\x00 \ud800text \u202eok")
    with db.session() as s:
        assert s.get(Judgment, judgment_id).comment == "fine text \u202eok"
        assert s.get(Pair, pair_id).judgment_count == 1


def test_kill_9_mid_import_on_postgresql_writes_nothing(workspace, tmp_path):
    """The import holds its table locks while it reads and writes the file: kill the client then, and the server
    rolls the whole transaction back; the same file then imports to the end."""
    import os
    import signal
    import subprocess
    import sys

    from tests.conftest import ROOT
    from tests.test_crash import judgment_rows, table_counts, wait_for, write_big_pairs

    store.import_file(FIXTURES / "pairs.jsonl")
    queue.submit_judgment("ana", 1, "b", "a")
    before_counts, before_rows = table_counts(), judgment_rows()
    big = tmp_path / "big.jsonl"
    write_big_pairs(big, 20_000)
    proc = subprocess.Popen([sys.executable, "-m", "labeling", "import", str(big), "--source", "big"],
                            cwd=ROOT, env=dict(os.environ), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    writing = text("SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation "
                   "WHERE c.relname = 'judgments' AND l.mode = 'ShareRowExclusiveLock' AND l.granted")
    with db.engine().connect() as conn:
        wait_for(lambda: proc.poll() is not None or conn.execute(writing).scalar() > 0, 240,
                 "the import to lock the tables for writing", poll=0.01)
    assert proc.poll() is None, proc.stderr.read()[-2000:]
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)

    with db.engine().connect() as conn:  # the server notices the dead client and rolls back
        wait_for(lambda: conn.execute(writing).scalar() == 0, 60, "the server to release the locks")
    assert table_counts() == before_counts and judgment_rows() == before_rows
    assert store.import_file(big, source="big")["imported"] == 20_000
    assert table_counts()["judgments"] == before_counts["judgments"] + 20_000
    last_id = max(row.id for row in judgment_rows())
    assert queue.submit_judgment("ben", 2, "a", "a") == last_id + 1  # the sequence continues after the import


def test_an_import_waiting_for_a_judgment_writer_does_not_deadlock_it(workspace):
    """A submit holds the judgments table, then its count trigger updates pairs. An import that
    took pairs first and then waited for judgments would deadlock with it (PostgreSQL aborts one)."""
    import threading

    store.import_file(FIXTURES / "unlabeled.jsonl")
    queue.submit_judgment("ana", 1, "skip", "a")
    outcome: dict = {}

    def run_import():
        try:
            outcome["import"] = store.import_file(FIXTURES / "pairs.jsonl")
        except Exception as e:  # reported below
            outcome["import"] = e

    with db.engine().connect() as writer:
        writer.execute(text("UPDATE judgments SET comment = 'holding the table' WHERE pair_id = 1"))
        worker = threading.Thread(target=run_import)
        worker.start()
        with db.engine().connect() as watch:
            from tests.test_crash import wait_for

            wait_for(lambda: watch.execute(text("SELECT count(*) FROM pg_locks WHERE NOT granted")).scalar() > 0,
                     60, "the import to wait for the judgments table")
        writer.execute(text("UPDATE judgments SET outcome = 'a' WHERE pair_id = 1"))  # the trigger updates pairs
        writer.commit()
    worker.join(timeout=60)
    assert isinstance(outcome["import"], dict), outcome["import"]
    with db.session() as s:
        assert s.get(Pair, 1).judgment_count == 1
        assert s.scalar(select(func.count(Judgment.id))) == 1 + outcome["import"]["imported"]
