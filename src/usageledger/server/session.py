"""Browser sessions for the collector's dashboard.

Browsers never send ``Authorization: Bearer``, so a login form takes an API key once and
answers a cookie. The cookie names the key only by a fingerprint and is signed with the
key itself (HMAC-SHA256), so:

- the key never travels again and is never stored in the browser;
- every replica that knows the key accepts the cookie (no shared session store);
- revoking the key (restarting without it) invalidates every session made with it, since
  no key with that fingerprint is left to check the signature;
- the cookie expires (``ttl_s``) whatever the browser does with it.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Sequence

__all__ = ["COOKIE_NAME", "SessionSigner"]

COOKIE_NAME = "usageledger_session"
DEFAULT_TTL_S = 12 * 3600


def _fingerprint(key: bytes) -> str:
    return hashlib.sha256(b"usageledger-session-id\x00" + key).hexdigest()[:24]


class SessionSigner:
    """Issues and checks session cookies for a set of API keys (bytes)."""

    def __init__(self, keys: Sequence[bytes], ttl_s: int = DEFAULT_TTL_S):
        if ttl_s < 1:
            raise ValueError(f"session ttl_s must be at least 1 second, got {ttl_s!r}")
        self.ttl_s = ttl_s
        self._by_fingerprint = {_fingerprint(k): k for k in keys}

    @property
    def has_keys(self) -> bool:
        return bool(self._by_fingerprint)

    def key_for(self, given: bytes) -> bytes | None:
        """The configured key equal to ``given`` (constant-time over every key), or None."""
        found = None
        for k in self._by_fingerprint.values():
            if hmac.compare_digest(given, k):
                found = k
        return found

    def issue(self, key: bytes, now: float | None = None) -> str:
        expires = int((time.time() if now is None else now) + self.ttl_s)
        fp = _fingerprint(key)
        return f"{fp}.{expires}.{self._mac(key, fp, expires)}"

    def verify(self, cookie: str | None, now: float | None = None) -> bool:
        if not cookie:
            return False
        parts = cookie.split(".")
        if len(parts) != 3 or not parts[1].isdigit():
            return False
        fp, expires_s, mac = parts
        key = self._by_fingerprint.get(fp)
        if key is None:  # unknown or revoked key
            return False
        expires = int(expires_s)
        if expires < (time.time() if now is None else now):
            return False
        return hmac.compare_digest(mac, self._mac(key, fp, expires))

    @staticmethod
    def _mac(key: bytes, fp: str, expires: int) -> str:
        return hmac.new(key, f"{fp}.{expires}".encode(), hashlib.sha256).hexdigest()
