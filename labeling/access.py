"""Optional sign-in. Off by default (one person on their own machine). Two ways to turn it on:

- `PREFLOOP_PASSWORD`: one shared password; whoever knows it signs in under the name they type,
  as an admin (a small trusted team).
- `PREFLOOP_USERS`: a YAML file of users, each with a salted PBKDF2-SHA256 password hash and a role,
  `annotator` or `admin`; write entries with `python -m labeling add-user NAME --role admin`.

Admins start training rounds and change the current version; annotators label and vote.

Against guessing: hashes use ITERATIONS rounds of PBKDF2-SHA256 (OWASP's 2023 figure; a hash with
fewer still verifies and is rewritten with ITERATIONS at its owner's next sign-in); failed sign-ins
are slowed down per name and per client address (`labeling.throttle`); a session lasts
`PREFLOOP_SESSION_HOURS` (12 by default).
"""
from __future__ import annotations

import base64
import hashlib
import functools
import hmac
import logging
import os
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from labeling import atomic
from labeling.throttle import Throttle, Throttled

ROLES = ("annotator", "admin")
ITERATIONS = 600_000  # OWASP Password Storage Cheat Sheet (2023), PBKDF2-HMAC-SHA256
SESSION_HOURS = 12.0
THROTTLE = Throttle()  # the one process's failed sign-ins (see labeling/throttle.py for why here)
_USERS_FILE_LOCK = threading.Lock()
log = logging.getLogger(__name__)


class AccessError(ValueError):
    """A users file or sign-in prefloop cannot use; one sentence for the user."""


@dataclass(frozen=True)
class User:
    name: str
    role: str

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


def hash_password(password: str, salt: bytes | None = None, iterations: int | None = None) -> str:
    """`pbkdf2_sha256$<iterations>$<salt b64>$<hash b64>` (PBKDF2, RFC 8018); ITERATIONS by default."""
    salt, iterations = salt or secrets.token_bytes(16), iterations or ITERATIONS
    digest = hashlib.pbkdf2_hmac("sha256", password.encode("utf-8"), salt, iterations)
    return f"pbkdf2_sha256${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def check_password(password: str, stored: str) -> bool:
    try:
        scheme, iterations, salt, digest = stored.split("$")
    except ValueError:
        return False
    if scheme != "pbkdf2_sha256":
        return False
    again = hash_password(password, base64.b64decode(salt), int(iterations)).split("$")[3]
    return hmac.compare_digest(again, digest)


def needs_upgrade(stored: str) -> bool:
    """True for a hash made with fewer than ITERATIONS rounds (an older prefloop's 200,000)."""
    scheme, iterations = (stored.split("$") + ["", ""])[:2]
    return scheme != "pbkdf2_sha256" or not iterations.isdigit() or int(iterations) < ITERATIONS


def session_hours() -> float:
    """How long a sign-in lasts: PREFLOOP_SESSION_HOURS, else SESSION_HOURS."""
    value = os.environ.get("PREFLOOP_SESSION_HOURS", "").strip()
    try:
        hours = float(value) if value else SESSION_HOURS
    except ValueError:
        hours = -1.0
    if not hours > 0:
        raise AccessError(f"PREFLOOP_SESSION_HOURS must be a positive number of hours, got {value!r}.")
    return hours


def session_expired(signed_in_at: float | None, now: float | None = None) -> bool:
    """Whether a sign-in made at `signed_in_at` (time.time()) is older than session_hours()."""
    if signed_in_at is None:
        return True
    return (time.time() if now is None else now) - signed_in_at > session_hours() * 3600


def enabled() -> bool:
    return bool(os.environ.get("PREFLOOP_PASSWORD") or os.environ.get("PREFLOOP_USERS"))


def users_file() -> Path | None:
    value = os.environ.get("PREFLOOP_USERS")
    return Path(value) if value else None


def read_users(path: Path) -> dict[str, dict]:
    """{name: {"password": hash, "role": role}} from the users file, checked entry by entry."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) if path.exists() else {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise AccessError(f"{path}: the users file cannot be read ({type(exc).__name__}); fix or recreate it.") from None
    data = data or {}
    if not isinstance(data, dict):
        raise AccessError(f"{path}: the users file must map each name to its password and role.")
    for name, entry in data.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("password"), str) or entry.get("role") not in ROLES:
            raise AccessError(f"{path}: user '{name}' needs a 'password' hash and a 'role' of {' or '.join(ROLES)}.")
    return data


def add_user(path: Path, name: str, password: str, role: str = "annotator") -> None:
    """Add or replace one user in the users file (created when missing)."""
    if role not in ROLES:
        raise AccessError(f"role must be {' or '.join(ROLES)}, got {role!r}.")
    if not name.strip() or not password:
        raise AccessError("A user needs a non-empty name and password.")
    _write_password(path, name.strip(), hash_password(password), role)


def _write_password(path: Path, name: str, stored: str, role: str | None = None) -> None:
    """Set one user's hash (and role) in the users file: read again, written whole, renamed into place,
    so a sign-in and an `add-user` at the same moment never leave half a file."""
    with _USERS_FILE_LOCK:
        users = read_users(path)
        users[name] = {"password": stored, "role": role or users[name]["role"]}
        with atomic.write(path) as tmp:
            tmp.write_text(yaml.safe_dump(users, sort_keys=True), encoding="utf-8")
            tmp.chmod(0o600)


def sign_in(name: str, password: str, address: str | None = None) -> User | None:
    """The user when the name and password are right, else None. Without sign-in configured,
    everyone is an admin. A name or client `address` that failed too often lately is refused
    with one sentence (AccessError) before its password is looked at."""
    from labeling.queue import QueueError, check_annotator_name

    name = (name or "").strip()
    if not enabled():
        return User(name, "admin")
    if not name:
        return None
    try:  # the name becomes the annotator name: the same rules as for a typed one
        check_annotator_name(name)
    except QueueError as error:
        raise AccessError(str(error)) from None
    keys = [("name", name)] + ([("address", address)] if address else [])
    try:
        THROTTLE.begin(keys)
    except Throttled as error:
        raise AccessError(str(error)) from None
    user = _check(name, password)
    if user is not None:
        THROTTLE.forgive(clear=keys[:1], undo=keys[1:])
    return user


def _check(name: str, password: str) -> User | None:
    shared = os.environ.get("PREFLOOP_PASSWORD")
    if shared and hmac.compare_digest(password.encode("utf-8"), shared.encode("utf-8")):
        return User(name, "admin")
    path = users_file()
    entry = read_users(path).get(name) if path else None
    if entry is None:
        if path:  # as slow as a known name, so the time taken does not tell which names exist
            check_password(password, _unknown_user_hash())
        return None
    try:
        right = check_password(password, entry["password"])
    except ValueError:  # a hand-edited hash: bad base64 or iteration count
        raise AccessError(f"The stored password hash of this user is malformed; an admin can set it again with "
                          f"`python -m labeling add-user {name} --role {entry['role']}`.") from None
    if not right:
        return None
    if needs_upgrade(entry["password"]):
        try:
            _write_password(path, name, hash_password(password))
        except (OSError, AccessError) as error:  # a read-only users file: the old hash still works
            log.warning("could not upgrade the password hash of %s in %s: %s", name, path, error)
    return User(name, entry["role"])


@functools.cache
def _unknown_user_hash() -> str:
    return hash_password(secrets.token_hex(16))
