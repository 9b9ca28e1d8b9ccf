"""The first minute in real Chromium: a fresh workspace, the server started, a labeler opens the
Label page, and the first pair appears without anyone pressing Generate (the server starts
generating at its first page view and the page looks again every 5 s). A tiny model keeps it
quick; `bench/first_pair.py` times the same flow on SmolLM2."""
from __future__ import annotations

import pytest

from bench import first_pair
from tests.test_browser import require_chromium
from tests.tiny_models import make_tiny_policy

pytestmark = pytest.mark.browser


def test_the_first_pair_appears_on_its_own(tmp_path):
    require_chromium()
    model = make_tiny_policy(tmp_path / "tiny-policy")
    result = first_pair.one_run(tmp_path / "workspace", model, timeout=300)  # generous: it fails only when broken, and then says why
    assert result["pairs_stored_by_then"] >= 1  # (no pair on screen within the timeout raises, saying why)
