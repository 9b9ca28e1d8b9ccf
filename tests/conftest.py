"""Shared fixtures: every test gets its own empty workspace; real data is found beside the checkout."""
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = ROOT.parent / "shared" / "data"
FIXTURES = Path(__file__).resolve().parent / "fixtures"


@pytest.fixture
def tiny(workspace, tmp_path, monkeypatch) -> Path:
    """The folder of a 2-layer policy built in code, PREFLOOP_MODEL pointing at it, in the test's
    workspace; jobs and torch on one thread, and the device, dtype and quantization the defaults."""
    from tests.preference_fixtures import single_thread_tiny_policy

    return single_thread_tiny_policy(tmp_path, monkeypatch)


@pytest.fixture(autouse=True)
def fresh_sign_in_throttle(monkeypatch):
    """Failed sign-ins are counted process-wide: each test starts with none."""
    from labeling import access, throttle

    monkeypatch.setattr(access, "THROTTLE", throttle.Throttle())


@pytest.fixture
def workspace(tmp_path, monkeypatch):
    """An empty PREFLOOP_HOME with its own SQLite database."""
    home = tmp_path / "workspace"
    monkeypatch.setenv("PREFLOOP_HOME", str(home))
    monkeypatch.delenv("PREFLOOP_DB", raising=False)
    # no generation job starts by itself (app.py starts one at a server's first page view); the
    # tests of that behaviour turn it back on
    monkeypatch.setenv("PREFLOOP_AUTOGENERATE", "0")
    clear_app_caches()
    return home


def clear_app_caches() -> None:
    """Forget what the app cached for the last test's server (e.g. the Train page's device and free
    memory, kept five minutes): AppTest runs every test's app in this one process."""
    import sys

    if "streamlit" in sys.modules:  # nothing is cached before the first AppTest imports it
        sys.modules["streamlit"].cache_resource.clear()
        sys.modules["streamlit"].cache_data.clear()


@pytest.fixture
def shared_data():
    """The folder of real preference data; tests that need it skip when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder {SHARED_DATA} is absent (it sits beside the checkout in CI)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def model_cache_home(tmp_path_factory):
    """A workspace kept for the whole session, so the SmolLM2 conversion runs at most once."""
    return Path(os.environ.get("PREFLOOP_TEST_MODEL_HOME", tmp_path_factory.mktemp("model-home")))


@pytest.fixture
def postgres_url(monkeypatch):
    """PREFLOOP_DB pointing at a fresh, empty schema on the PostgreSQL server named by PREFLOOP_TEST_PG
    (a SQLAlchemy URL, set by .ci/run), dropped after the test; skips when unset unless
    PREFLOOP_REQUIRE_POSTGRES=1. A schema (search_path) rather than a database: milliseconds to make."""
    import uuid

    from sqlalchemy import create_engine, make_url, text

    base = os.environ.get("PREFLOOP_TEST_PG")
    if not base:
        if os.environ.get("PREFLOOP_REQUIRE_POSTGRES") == "1":
            pytest.fail("PREFLOOP_TEST_PG is not set but PREFLOOP_REQUIRE_POSTGRES=1; start a server (.ci/postgres start).")
        pytest.skip("PREFLOOP_TEST_PG is not set; .ci/postgres start prints a server URL to set it to")
    name = f"test_{uuid.uuid4().hex[:16]}"
    admin = create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE SCHEMA "{name}"'))
    url = make_url(base).update_query_dict({"options": f"-csearch_path={name}"})
    url = url.render_as_string(hide_password=False)
    monkeypatch.setenv("PREFLOOP_DB", url)
    yield url
    from labeling import db

    db._engine_for(url).dispose()  # cached per URL: close its pooled connections before the drop
    with admin.connect() as conn:
        conn.execute(text(f'DROP SCHEMA "{name}" CASCADE'))
    admin.dispose()


@pytest.fixture
def pg_workspace(workspace, postgres_url):
    """A workspace folder (versions, jobs) whose database is a fresh PostgreSQL database."""
    return workspace
