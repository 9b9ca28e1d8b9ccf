import pytest

from labeling import access


def test_password_hash_round_trip_and_salt():
    stored = access.hash_password("s3cret")
    assert stored.startswith("pbkdf2_sha256$200000$")
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
