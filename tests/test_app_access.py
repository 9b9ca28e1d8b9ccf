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


def test_a_session_expires_after_the_configured_hours(users, monkeypatch):
    import time

    monkeypatch.setenv("PREFLOOP_SESSION_HOURS", "2")
    at = sign_in(open_app(name=None), "ann", "pw-ann")
    assert at.metric
    at.session_state["signed-in-at"] = time.time() - 1.9 * 3600
    at.run()
    assert at.metric  # still within its two hours
    at.session_state["signed-in-at"] = time.time() - 2.1 * 3600
    at.run()
    assert not at.metric and "user" not in at.session_state and "annotator" not in at.session_state
    assert "Your session has expired; sign in again." in [i.value for i in at.info]
    sign_in(at, "ann", "pw-ann")
    assert at.metric


def test_repeated_wrong_passwords_are_refused_for_a_while(users, monkeypatch):
    from labeling import throttle

    clock = type("Clock", (), {"now": 0.0, "__call__": lambda self: self.now})()  # stands still unless moved
    monkeypatch.setattr(access, "THROTTLE", throttle.Throttle(clock))
    at = open_app(name=None)
    for _ in range(3):
        sign_in(at, "admin1", "guess")
        assert [e.value for e in at.error] == ["Wrong name or password."]
    sign_in(at, "admin1", "pw-admin")  # the right password, too soon after three wrong ones
    assert "Too many failed sign-ins" in at.error[0].value and not at.metric
    clock.now += 1
    assert sign_in(at, "admin1", "pw-admin").metric
