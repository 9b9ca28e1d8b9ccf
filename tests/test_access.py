import time

import pytest

from labeling import access, throttle


def test_password_hash_round_trip_and_salt():
    stored = access.hash_password("s3cret")
    assert stored.startswith("pbkdf2_sha256$600000$")  # OWASP 2023's PBKDF2-HMAC-SHA256 figure
    assert access.check_password("s3cret", stored) and not access.check_password("S3cret", stored)
    assert access.hash_password("s3cret") != stored  # a new salt every time
    assert not access.check_password("s3cret", "md5$x")


def test_known_pbkdf2_vector():
    # RFC 7914 §11 PBKDF2-HMAC-SHA256 test vector: P="passwd", S="salt", c=1, dkLen=64 (first 32 bytes here)
    stored = access.hash_password("passwd", salt=b"salt", iterations=1)
    import base64

    assert base64.b64decode(stored.split("$")[3]).hex() == "55ac046e56e3089fec1691c22544b605f94185216dde0465e68b9d57c20dacbc"


def test_sign_in_is_open_without_configuration(monkeypatch):
    monkeypatch.delenv("PREFLOOP_PASSWORD", raising=False)
    monkeypatch.delenv("PREFLOOP_USERS", raising=False)
    assert not access.enabled()
    assert access.sign_in("ana", "") == access.User("ana", "admin")


def test_shared_password(monkeypatch):
    monkeypatch.setenv("PREFLOOP_PASSWORD", "team-pass")
    monkeypatch.delenv("PREFLOOP_USERS", raising=False)
    assert access.sign_in("ana", "team-pass").is_admin
    assert access.sign_in("ana", "wrong") is None
    assert access.sign_in("", "team-pass") is None


def test_users_file_roles(tmp_path, monkeypatch):
    path = tmp_path / "users.yaml"
    access.add_user(path, "ana", "pw-ana", "admin")
    access.add_user(path, "bo", "pw-bo")
    monkeypatch.setenv("PREFLOOP_USERS", str(path))
    monkeypatch.delenv("PREFLOOP_PASSWORD", raising=False)
    assert access.sign_in("ana", "pw-ana") == access.User("ana", "admin")
    assert access.sign_in("bo", "pw-bo") == access.User("bo", "annotator")
    assert access.sign_in("bo", "pw-ana") is None and access.sign_in("cy", "x") is None
    assert "pw-ana" not in path.read_text() and oct(path.stat().st_mode)[-3:] == "600"


def test_bad_users_file_is_one_sentence(tmp_path, monkeypatch):
    path = tmp_path / "users.yaml"
    path.write_text("ana: {password: x, role: boss}\n")
    monkeypatch.setenv("PREFLOOP_USERS", str(path))
    with pytest.raises(access.AccessError, match="user 'ana' needs a 'password' hash and a 'role'"):
        access.sign_in("ana", "x")


def test_odd_names_and_a_malformed_hash_are_one_sentence(tmp_path, monkeypatch):
    monkeypatch.setenv("PREFLOOP_PASSWORD", "team-pass")
    with pytest.raises(access.AccessError, match="reserved for imported labels"):
        access.sign_in("import:hh", "team-pass")
    with pytest.raises(access.AccessError, match="use at most"):
        access.sign_in("a" * 500, "team-pass")
    monkeypatch.delenv("PREFLOOP_PASSWORD")
    path = tmp_path / "users.yaml"
    path.write_text("ana: {password: 'pbkdf2_sha256$many$***$abc', role: admin}\n")
    monkeypatch.setenv("PREFLOOP_USERS", str(path))
    with pytest.raises(access.AccessError, match="password hash of this user is malformed.*add-user ana --role admin"):
        access.sign_in("ana", "x")


def test_add_user_cli_reads_the_password_from_stdin(tmp_path):
    import subprocess
    import sys

    path = tmp_path / "users.yaml"
    done = subprocess.run([sys.executable, "-m", "labeling", "add-user", "ana", "--role", "admin", "--users", str(path)],
                          input="pw-ana\n", capture_output=True, text=True, cwd=access.Path(__file__).parent.parent)
    assert done.returncode == 0, done.stderr
    assert access.read_users(path)["ana"]["role"] == "admin"
    assert access.check_password("pw-ana", access.read_users(path)["ana"]["password"])
    bad = subprocess.run([sys.executable, "-m", "labeling", "add-user", "bo"], input="x\n", capture_output=True,
                         text=True, cwd=access.Path(__file__).parent.parent, env={"PATH": "/usr/bin"})
    assert bad.returncode == 2 and "Name the users file" in bad.stderr


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def fail(t: throttle.Throttle, keys) -> float | None:
    """One wrong guess: None when it was let through (and counted), else the wait it was told."""
    try:
        t.begin(keys)
    except throttle.Throttled as refused:
        return refused.wait
    return None


def test_wait_doubles_after_three_failures():
    assert [throttle.wait_after(n) for n in range(1, 7)] == [0, 0, 1, 2, 4, 8]
    assert throttle.wait_after(40) == throttle.MAX_WAIT == 900


def test_throttle_slows_a_name_exponentially_and_a_right_password_clears_it():
    clock = FakeClock()
    t = throttle.Throttle(clock)
    name = [("name", "ana")]
    assert [fail(t, name) for _ in range(3)] == [None, None, None]  # three free mistakes
    assert fail(t, name) == 1.0  # refused without a look at the password, and not counted
    assert t.failures(("name", "ana")) == 3
    clock.now += 1.0
    assert fail(t, name) is None  # the 4th failure ...
    clock.now += 1.5
    assert fail(t, name) == pytest.approx(0.5)  # ... waits 2 s
    clock.now += 0.5
    assert fail(t, name) is None
    assert fail(t, name) == 4.0
    assert fail(t, [("name", "bo")]) is None  # other names are not slowed
    t.forgive(clear=name)
    assert fail(t, name) is None and t.failures(("name", "ana")) == 1


def test_throttle_slows_an_address_across_names_and_forgets_after_a_quiet_hour():
    clock = FakeClock()
    t = throttle.Throttle(clock)
    guesses = [[("name", f"user{i}"), ("address", "10.0.0.9")] for i in range(4)]
    assert [fail(t, keys) for keys in guesses[:3]] == [None, None, None]
    assert fail(t, guesses[3]) == 1.0  # a new name from the same address waits too
    assert fail(t, [("name", "user3"), ("address", "10.0.0.7")]) is None  # another address does not
    # a right password takes back the address's count for this attempt only
    t.begin([("name", "me"), ("address", "10.0.0.8")])
    t.forgive(clear=[("name", "me")], undo=[("address", "10.0.0.8")])
    assert t.failures(("address", "10.0.0.8")) == 0 and t.failures(("address", "10.0.0.9")) == 3
    clock.now += throttle.FORGET + 1
    assert fail(t, guesses[3]) is None and t.failures(("address", "10.0.0.9")) == 1


def test_throttle_holds_a_bounded_number_of_keys(monkeypatch):
    monkeypatch.setattr(throttle, "MAX_KEYS", 50)
    clock = FakeClock()
    t = throttle.Throttle(clock)
    for i in range(200):
        clock.now += 0.01
        fail(t, [("name", f"n{i}")])
    assert len(t._records) <= 50 and t.failures(("name", "n199")) == 1


def test_sign_in_is_slowed_per_name_and_per_address(tmp_path, monkeypatch):
    path = tmp_path / "users.yaml"
    access.add_user(path, "ana", "pw-ana", "admin")
    monkeypatch.setenv("PREFLOOP_USERS", str(path))
    monkeypatch.delenv("PREFLOOP_PASSWORD", raising=False)
    clock = FakeClock()
    monkeypatch.setattr(access, "THROTTLE", throttle.Throttle(clock))
    for _ in range(3):
        assert access.sign_in("ana", "guess", address="10.0.0.9") is None
    with pytest.raises(access.AccessError, match=r"Too many failed sign-ins .* try again in 1 s"):
        access.sign_in("ana", "pw-ana", address="10.0.0.1")  # even the right password, from anywhere
    with pytest.raises(access.AccessError, match="Too many failed sign-ins"):
        access.sign_in("bo", "guess", address="10.0.0.9")  # the guessing address, under another name
    clock.now += 1
    assert access.sign_in("ana", "pw-ana", address="10.0.0.1") == access.User("ana", "admin")
    assert access.THROTTLE.failures(("name", "ana")) == 0  # a right password clears the name


def test_an_old_hash_verifies_and_is_upgraded_at_the_next_sign_in(tmp_path, monkeypatch):
    path = tmp_path / "users.yaml"
    old = access.hash_password("pw-ana", iterations=200_000)  # what prefloop wrote before
    path.write_text(f"ana: {{password: '{old}', role: admin}}\nbo: {{password: '{old}', role: annotator}}\n")
    monkeypatch.setenv("PREFLOOP_USERS", str(path))
    monkeypatch.delenv("PREFLOOP_PASSWORD", raising=False)
    assert access.needs_upgrade(old) and not access.needs_upgrade(access.hash_password("x"))
    assert access.sign_in("ana", "wrong") is None
    assert access.read_users(path)["ana"]["password"] == old  # a wrong password changes nothing
    assert access.sign_in("ana", "pw-ana") == access.User("ana", "admin")
    users = access.read_users(path)
    assert users["ana"]["password"].startswith("pbkdf2_sha256$600000$") and users["ana"]["role"] == "admin"
    assert access.check_password("pw-ana", users["ana"]["password"])
    assert users["bo"] == {"password": old, "role": "annotator"}  # others are left as they were
    assert oct(path.stat().st_mode)[-3:] == "600"
    assert access.sign_in("ana", "pw-ana") == access.User("ana", "admin")  # the new hash verifies


def test_a_users_file_that_cannot_be_written_still_signs_in_with_an_old_hash(tmp_path, monkeypatch, caplog):
    path = tmp_path / "users.yaml"
    old = access.hash_password("pw", iterations=1000)
    path.write_text(f"ana: {{password: '{old}', role: annotator}}\n")
    monkeypatch.setenv("PREFLOOP_USERS", str(path))

    def read_only(*args, **kwargs):  # chmod cannot stop root, who runs the tests in CI
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(access, "_write_password", read_only)
    assert access.sign_in("ana", "pw") == access.User("ana", "annotator")
    assert "could not upgrade the password hash of ana" in caplog.text
    assert access.read_users(path)["ana"]["password"] == old


def test_sessions_expire_after_the_configured_hours(monkeypatch):
    monkeypatch.delenv("PREFLOOP_SESSION_HOURS", raising=False)
    now = time.time()
    assert access.session_hours() == 12
    assert not access.session_expired(now - 11.9 * 3600, now) and access.session_expired(now - 12.1 * 3600, now)
    assert access.session_expired(None, now)
    monkeypatch.setenv("PREFLOOP_SESSION_HOURS", "0.5")
    assert access.session_expired(now - 31 * 60, now) and not access.session_expired(now - 29 * 60, now)
    monkeypatch.setenv("PREFLOOP_SESSION_HOURS", "soon")
    with pytest.raises(access.AccessError, match="PREFLOOP_SESSION_HOURS must be a positive number"):
        access.session_expired(now, now)
