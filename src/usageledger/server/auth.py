"""Who is calling the collector, and what they may do (docs/collector.md, "Security").

Two kinds of bearer keys:

- **global keys** (``serve --api-key``, ``--api-key-file``, ``USAGELEDGER_SERVER_API_KEYS``):
  admin of every project; reads may narrow to one with ``?project=``; writes go to the
  project named by ``?project=`` (or to no project). Compared in constant time with every
  configured key.
- **project keys** (``POST /api/v1/keys``, ``usageledger keys create``): a ``project`` and a
  ``role``. The token is ``ulk_<id>_<secret>``; the storage keeps the id, a random per-key
  salt and HMAC-SHA256(salt, secret), never the secret, which is shown once. The row is read
  from storage on every request (no cache: measured in docs/benchmarks.md), so a revocation
  or expiry holds at once on every replica sharing the store.

Roles: ``ingest`` writes usage and runs (``POST /track``, ``POST/PATCH /runs``,
``POST /runs/batch``); ``read`` only reads (GET); ``admin`` does both, and manages its
project's keys and budgets. Prices and repricing are shared by every project: only global
keys change them.

A project key sees only its project: its records are tagged with :data:`PROJECT_TAG` from
the key (whatever the body says), and every read is narrowed to that tag.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from fastapi import HTTPException, Request

from ..storage._keys import PROJECT_TAG

__all__ = ["ROLES", "PROJECT_TAG", "TOKEN_PREFIX", "Principal", "Authenticator", "new_key",
           "public_key", "check_project", "GLOBAL_ADMIN"]

ROLES = ("ingest", "read", "admin")
TOKEN_PREFIX = "ulk_"
_ID_HEX = 12
MAX_PROJECT_CHARS = 64

_WRITE_PATHS = ("/api/v1/track", "/api/v1/runs", "/api/v1/runs/batch")


@dataclass(frozen=True, slots=True)
class Principal:
    """The caller: ``project`` None means every project (a global key or the loopback open
    mode); ``session`` marks a dashboard login cookie (reads only)."""

    role: str
    project: str | None = None
    key_id: str | None = None
    session: bool = False

    def may(self, method: str, path: str) -> bool:
        """Whether the role allows ``method`` on ``path`` (its project is checked apart)."""
        reading = method in ("GET", "HEAD")
        if self.role == "read" or self.session:
            return reading
        if self.role == "ingest":
            return (method == "POST" and path in _WRITE_PATHS) or (
                method == "PATCH" and path.startswith("/api/v1/runs/"))
        if self.project is not None and not reading and path.startswith(("/api/v1/prices", "/api/v1/reprice")):
            return False  # prices are shared by every project
        return self.role == "admin"

    def scope(self, requested: str | None) -> str | None:
        """The project a request acts on: a project key's own (asking for another one is
        403), or what a global key asked for (None: every project)."""
        if self.project is None:
            return requested or None
        if requested and requested != self.project:
            raise HTTPException(403, f"this key belongs to project {self.project!r}, "
                                     f"not {requested!r}")
        return self.project


GLOBAL_ADMIN = Principal("admin")


def check_project(project: Any, where: str = "project") -> str:
    if (not isinstance(project, str) or not project or len(project) > MAX_PROJECT_CHARS
            or not all(c.isalnum() or c in "-_." for c in project)):
        raise ValueError(f"{where} must be 1 to {MAX_PROJECT_CHARS} letters, digits, '-', '_' or "
                         f"'.', got {str(project)[:80]!r}")
    return project


def _digest(salt: str, secret: str) -> str:
    return hmac.new(bytes.fromhex(salt), secret.encode(), hashlib.sha256).hexdigest()


def _iso(when: datetime) -> str:
    return when.astimezone(UTC).isoformat().replace("+00:00", "Z")


def new_key(project: str, role: str, name: str | None = None, expires: datetime | str | None = None,
            now: datetime | None = None) -> tuple[dict[str, Any], str]:
    """A new key row (to store) and its token (to show once). ValueError names the field."""
    check_project(project)
    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}, got {str(role)[:40]!r}")
    if name is not None and (not isinstance(name, str) or len(name) > 200):
        raise ValueError(f"name must be a string of at most 200 characters, got {str(name)[:40]!r}")
    now = now or datetime.now(UTC)
    expires_at = None
    if expires is not None:
        if isinstance(expires, str):
            try:
                expires = datetime.fromisoformat(expires.replace("Z", "+00:00"))
            except ValueError:
                raise ValueError(f"expires must be an ISO 8601 time, got {expires[:40]!r}") from None
        if not isinstance(expires, datetime):
            raise ValueError(f"expires must be an ISO 8601 time, got {expires!r}")
        if expires.tzinfo is None:
            expires = expires.replace(tzinfo=UTC)
        expires_at = _iso(expires)
    key_id = secrets.token_hex(_ID_HEX // 2)
    secret = secrets.token_urlsafe(32)  # 256 random bits: a fast keyed hash is enough
    salt = secrets.token_hex(16)
    row = {"id": key_id, "project": project, "role": role, "name": name, "salt": salt,
           "hash": _digest(salt, secret), "created_at": _iso(now), "expires_at": expires_at,
           "revoked_at": None}
    return row, f"{TOKEN_PREFIX}{key_id}_{secret}"


def public_key(row: dict[str, Any]) -> dict[str, Any]:
    """A key row as listings show it: no salt, no hash."""
    return {k: row[k] for k in ("id", "project", "role", "name", "created_at", "expires_at", "revoked_at")}


def _unauthorized(message: str) -> HTTPException:
    return HTTPException(401, message, headers={"WWW-Authenticate": "Bearer"})


class Authenticator:
    """The principal of a request, from its bearer key (global or stored) or dashboard
    cookie. ``loopback(request)`` says whether the open mode applies (no global key
    configured and a loopback client)."""

    def __init__(self, store: Any, global_keys: Sequence[bytes], session_ok: Callable[[Request], Principal | None],
                 loopback: Callable[[Request], bool]):
        self.store = store
        self.global_keys = list(global_keys)
        self.session_ok = session_ok
        self.loopback = loopback

    def stored(self, token: str, now: datetime | None = None) -> Principal:
        """The principal of a project key token; 401 when unknown, wrong, revoked or expired
        (the message never repeats the token)."""
        body = token[len(TOKEN_PREFIX):]
        key_id, sep, secret = body[:_ID_HEX], body[_ID_HEX:_ID_HEX + 1], body[_ID_HEX + 1:]
        if sep != "_" or not secret or not getattr(self.store, "supports_keys", False):
            raise _unauthorized("invalid API key")
        row = self.store.get_key(key_id)
        if row is None:
            _digest("00" * 16, secret)  # the same work as a known id
            raise _unauthorized("invalid API key")
        if not hmac.compare_digest(_digest(row["salt"], secret), row["hash"]):
            raise _unauthorized("invalid API key")
        if row["revoked_at"] is not None:
            raise _unauthorized(f"API key {key_id} was revoked at {row['revoked_at']}")
        if row["expires_at"] is not None and row["expires_at"] <= _iso(now or datetime.now(UTC)):
            raise _unauthorized(f"API key {key_id} expired at {row['expires_at']}")
        return Principal(row["role"], row["project"], key_id)

    def principal(self, request: Request) -> Principal:
        """Who sent ``request`` (blocking: a stored key is read from storage). 401 for a
        missing or bad key, 403 for the open mode's non-loopback clients."""
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        token = token.strip() if scheme.lower() == "bearer" else ""
        if token.startswith(TOKEN_PREFIX):
            return self.stored(token)
        if token and self.global_keys:
            given = token.encode()
            ok = False
            for k in self.global_keys:  # every key compared: timing says nothing about which
                ok |= hmac.compare_digest(given, k)
            if ok:
                return GLOBAL_ADMIN
            raise _unauthorized("invalid API key")
        if request.method in ("GET", "HEAD"):
            session = self.session_ok(request)
            if session is not None:
                return session
        if not self.global_keys:
            if self.loopback(request):
                return GLOBAL_ADMIN
            raise HTTPException(
                403, "no global API key is configured on this collector, so without a project "
                     "key it serves only loopback clients: start it with --api-key-file to accept others")
        raise _unauthorized("missing or invalid API key: send Authorization: Bearer <key>")

    def authorize(self, request: Request) -> Principal:
        """The principal, checked against the request's method and path (403 when the role
        does not allow it); kept in ``request.state.principal``."""
        p = self.principal(request)
        if not p.may(request.method, request.url.path):
            what = "reads only" if p.role == "read" or p.session else (
                "writes usage and runs only" if p.role == "ingest" else "cannot change shared prices")
            raise HTTPException(403, f"this {p.role} key ({what}) may not {request.method} "
                                     f"{request.url.path}")
        request.state.principal = p
        return p


def principal_of(request: Request) -> Principal:
    """The principal ``Authenticator.authorize`` left on the request (global admin for the
    routes that do not authenticate)."""
    return getattr(request.state, "principal", GLOBAL_ADMIN)


class KeySessions:
    """Dashboard sessions of project keys: the cookie ``k.<id>.<expires>.<mac>`` is signed
    with the key's stored hash, and the key row is read on every page, so revoking or
    expiring the key ends its sessions at once (on every replica). A session only reads."""

    PREFIX = "k."

    def __init__(self, store: Any, ttl_s: int):
        self.store = store
        self.ttl_s = ttl_s

    @staticmethod
    def _mac(row: dict[str, Any], expires: int) -> str:
        return hmac.new(bytes.fromhex(row["hash"]), f"session.{row['id']}.{expires}".encode(),
                        hashlib.sha256).hexdigest()

    def issue(self, row: dict[str, Any], now: float | None = None) -> str:
        import time

        expires = int((time.time() if now is None else now) + self.ttl_s)
        return f"{self.PREFIX}{row['id']}.{expires}.{self._mac(row, expires)}"

    def principal(self, cookie: str | None, now: float | None = None) -> Principal | None:
        import time

        if not cookie or not cookie.startswith(self.PREFIX) or not getattr(self.store, "supports_keys", False):
            return None
        parts = cookie[len(self.PREFIX):].split(".")
        if len(parts) != 3 or not parts[1].isdigit():
            return None
        key_id, expires, mac = parts
        if int(expires) < (time.time() if now is None else now):
            return None
        row = self.store.get_key(key_id)
        if row is None or row["revoked_at"] is not None or not hmac.compare_digest(mac, self._mac(row, int(expires))):
            return None
        if row["expires_at"] is not None and row["expires_at"] <= _iso(datetime.now(UTC)):
            return None
        return Principal(row["role"], row["project"], key_id, session=True)
