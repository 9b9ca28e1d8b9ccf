"""Sign-in in AppTest: no page shows data without a session; annotators cannot train, change the
current version or see others' judgments; admins can."""
from __future__ import annotations

import pytest

from labeling import access, queue
from tests.test_app_label import open_app
from tests.test_queue import seed_pairs


@pytest.fixture
def users(workspace, tmp_path, monkeypatch):
    path = tmp_path / "users.yaml"
    access.add_user(path, "admin1", "pw-admin", "admin")
    access.add_user(path, "ann", "pw-ann", "annotator")
    monkeypatch.setenv("PREFLOOP_USERS", str(path))
    monkeypatch.setenv("PREFLOOP_AUTOGENERATE", "0")
    monkeypatch.delenv("PREFLOOP_PASSWORD", raising=False)
    return path


def sign_in(at, name, password):
    at.text_input(key="sign-in-name").set_value(name)
    at.text_input(key="sign-in-password").set_value(password)
    at.button(key="FormSubmitter:sign-in-Sign in").click().run()
    return at


def page_text(at) -> str:
    return " ".join(str(e.value) for kind in ("markdown", "caption", "title", "info", "warning", "error")
                    for e in getattr(at, kind))


def test_without_a_session_no_page_shows_data(users):
    seed_pairs(3)
    queue.submit_judgment("ann", 1, "a", "a")
    at = open_app(name="ann")  # a URL naming an annotator is not a session
    assert [t.value for t in at.title] == ["prefloop"]
    assert not at.metric and not at.dataframe
    assert "Pairs waiting" not in page_text(at)
    sign_in(at, "ann", "wrong")
    assert "Wrong name or password." in [e.value for e in at.error]
    assert not at.metric


def test_annotator_signs_in_labels_but_cannot_train_or_see_others(users):
    seed_pairs(3)
    queue.submit_judgment("someone-else", 1, "a", "a")
    at = sign_in(open_app(name=None), "ann", "pw-ann")
    assert at.metric and at.session_state["annotator"] == "ann"
    at.switch_page("views/train.py")
    at.run()
    assert "Only admins can start training rounds" in page_text(at)
    assert not [b for b in at.button if "Train" in b.label]
    at.switch_page("views/data.py")
    at.run()
    assert [t.label for t in at.tabs] == ["My judgments"]
    assert at.dataframe[0].value.empty  # someone-else's judgment is not shown
    at.switch_page("views/label.py")
    at.run()
    assert any("How to judge a pair" in m.value for m in at.expander[0].markdown)  # guidelines: read,
    assert not [t for t in at.toggle if t.key == "edit-guidelines"]  # not edited by an annotator


def test_admin_sees_the_train_form(users):
    at = sign_in(open_app(name=None), "admin1", "pw-admin")
    at.switch_page("views/train.py")
    at.run()
    assert "Only admins" not in page_text(at)
    assert [b for b in at.button if b.label == "Train"]
