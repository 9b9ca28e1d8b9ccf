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
def workspace(tmp_path, monkeypatch):
    """An empty PREFLOOP_HOME with its own SQLite database."""
    home = tmp_path / "workspace"
    monkeypatch.setenv("PREFLOOP_HOME", str(home))
    monkeypatch.delenv("PREFLOOP_DB", raising=False)
    return home


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
