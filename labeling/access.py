"""Optional sign-in. Off by default (one person on their own machine). Two ways to turn it on:

- `PREFLOOP_PASSWORD`: one shared password; whoever knows it signs in under the name they type,
  as an admin (a small trusted team).
- `PREFLOOP_USERS`: a YAML file of users, each with a salted PBKDF2-SHA256 password hash and a role,
  `annotator` or `admin`; write entries with `python -m labeling add-user NAME --role admin`.

Admins start training rounds and change the current version; annotators label and vote.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

import yaml

ROLES = ("annotator", "admin")
ITERATIONS = 200_000


class AccessError(ValueError):
    """A users file or sign-in prefloop cannot use; one sentence for the user."""


@dataclass(frozen=True)
class User:
    name: str
    role: str

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


def hash_password(password: str, salt: bytes | None = None, iterations: int = ITERATIONS) -> str:
    """`pbkdf2_sha256$<iterations>$<salt b64>$<hash b64>` (PBKDF2, RFC 8018)."""
    salt = salt or secrets.token_bytes(16)
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
    users = read_users(path)
    users[name.strip()] = {"password": hash_password(password), "role": role}
    path.write_text(yaml.safe_dump(users, sort_keys=True), encoding="utf-8")
    path.chmod(0o600)


def sign_in(name: str, password: str) -> User | None:
    """The user when the name and password are right, else None. Without sign-in configured,
    everyone is an admin."""
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
    shared = os.environ.get("PREFLOOP_PASSWORD")
    if shared and hmac.compare_digest(password.encode("utf-8"), shared.encode("utf-8")):
        return User(name, "admin")
    path = users_file()
    entry = read_users(path).get(name) if path else None
    try:
        if entry and check_password(password, entry["password"]):
            return User(name, entry["role"])
    except ValueError:  # a hand-edited hash: bad base64 or iteration count
        raise AccessError(f"The stored password hash of this user is malformed; an admin can set it again with "
                          f"`python -m labeling add-user {name} --role {entry['role']}`.") from None
    return None
