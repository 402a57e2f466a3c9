"""Redaction for logged request and response bodies: secrets at any depth, never token
counts (``input_tokens`` is data, ``access_token`` is a secret)."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

__all__ = ["redact", "redact_headers", "redact_url", "is_sensitive", "REDACTED"]

REDACTED = "[REDACTED]"

# words that make a key secret wherever they appear in it
_SECRET_WORDS = ("password", "passwd", "secret", "authorization", "cookie", "private_key",
                 "privatekey", "credential", "api_key", "apikey", "api-key", "x-api-key", "session_key")
# "token" is secret as a word of its own (access_token, id-token, token) but not in
# counts such as input_tokens / max_tokens / cache_read_tokens
_TOKEN_KEY = re.compile(r"(^|[_\-.])token$|^token[_\-.]|(^|[_\-.])(access|refresh|id|auth|bearer|api|session|csrf)[_\-.]?token", re.I)
_BEARER = re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=\-]+")
_INLINE_KEY = re.compile(r"\b(sk|pk|rk)-[A-Za-z0-9_\-]{8,}")
# the user-info of a URL (``scheme://user:password@host``), anywhere in a text
_URL_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.\-]*://)[^/?#@\s]+@")


def is_sensitive(key: str) -> bool:
    k = key.lower()
    return any(w in k for w in _SECRET_WORDS) or bool(_TOKEN_KEY.search(k))


def redact_url(value: str) -> str:
    """``value`` with the credentials of every URL in it masked: ``http://user:KEY@host``
    becomes ``http://[REDACTED]@host`` (a user name alone may be the key)."""
    return _URL_USERINFO.sub(lambda m: f"{m.group(1)}{REDACTED}@", value)


def _text(value: str) -> str:
    value = redact_url(value)
    return _INLINE_KEY.sub(REDACTED, _BEARER.sub(lambda m: f"{m.group(1)} {REDACTED}", value))


def redact(obj: Any) -> Any:
    """A redacted deep copy of JSON-like data; JSON text inside str/bytes is parsed and
    redacted too, other text has bearer tokens and API-key-looking strings masked."""
    if isinstance(obj, Mapping):
        return {k: (REDACTED if isinstance(k, str) and is_sensitive(k) and v is not None else redact(v))
                for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [redact(v) for v in obj]
    if isinstance(obj, bytes | bytearray):
        try:
            obj = bytes(obj).decode("utf-8")
        except UnicodeDecodeError:
            return f"<{len(obj)} bytes>"
    if isinstance(obj, str):
        stripped = obj.lstrip()
        if stripped[:1] in ("{", "["):
            try:
                return json.dumps(redact(json.loads(obj)), separators=(",", ":"))
            except ValueError:
                pass
        return _text(obj)
    return obj


def redact_headers(headers: Mapping[str, str]) -> dict[str, str]:
    return {k: (REDACTED if is_sensitive(k) else _text(str(v))) for k, v in headers.items()}
