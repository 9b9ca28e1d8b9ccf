"""Workspace settings in the Meta table: overlap saved by an admin, PREFLOOP_OVERLAP as the fallback."""
import pytest

from labeling import queue, settings
from tests.test_queue import seed_pairs


def test_overlap_falls_back_to_the_environment_then_to_one(workspace, monkeypatch):
    monkeypatch.delenv("PREFLOOP_OVERLAP", raising=False)
    assert settings.overlap() == 1
    monkeypatch.setenv("PREFLOOP_OVERLAP", "2")
    assert settings.overlap() == 2
    assert settings.set_overlap(3) == 3
    assert settings.overlap() == 3  # saved in the workspace, it wins over the environment
    settings.set_overlap(1)
    assert settings.overlap() == 1


@pytest.mark.parametrize("bad", [0, -1, 21, "2.5", "two", ""])
def test_a_bad_overlap_is_refused_in_one_sentence(workspace, bad):
    with pytest.raises(settings.SettingError, match="Overlap must be a whole number from 1 to 20"):
        settings.set_overlap(bad)
    assert settings.overlap() == 1  # nothing was stored


def test_the_saved_overlap_lets_that_many_people_judge_a_pair(workspace):
    ids = seed_pairs(2)
    settings.set_overlap(2)
    queue.submit_judgment("ana", ids[0], "a", "a")
    assert queue.next_pair("ben", settings.overlap()).pair_id == ids[0]
