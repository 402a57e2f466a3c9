"""The async key-value contract every store implements, its errors, and the shared codec.

In the manner of huey's ``BaseStorage``: one documented base class, flat backends
(``memory``, ``sqlite``, ``redis``) that each implement the same small set of methods, and
helpers (:mod:`usageledger.kv.managers`) that use only this contract.

Semantics shared by every backend (the contract suite in ``tests/kv`` checks them all):

- Keys are ``str``. Each store prepends its ``key_prefix`` to every key it writes and strips
  it from every key it returns, so two stores with different prefixes never see each other.
  A prefix ends with ``prefix_separator`` (``":"``; added when missing), so that the keys
  of prefix ``app`` (``app:...``) are never listed or cleared by a store of prefix ``app2``.
- ``ttl`` is seconds (``int``/``float`` > 0) or a ``timedelta``; ``ttl=None`` means the
  store's ``default_ttl`` (itself ``None`` = never expires). An expired key behaves exactly
  like a missing one.
- Values go through the store's serialiser (json by default, msgpack, or pickle only with
  ``allow_pickle=True``). Plain ``int`` values are stored as decimal ASCII whatever the
  serialiser, so that ``incr`` and ``get`` agree on every backend.
- ``incr`` is atomic (one statement or command), never read-then-write.
- ``keys(prefix)`` returns only keys that start with ``prefix``: the scan stops at the end
  of the prefix range.
- A key holds either a value or a set (``sadd`` & co.); using one kind of operation on the
  other kind raises :class:`KVTypeError`.
"""

from __future__ import annotations

import math
import pickle
import warnings
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from datetime import timedelta
from typing import Any, Protocol

import msgspec

from ..core.config import ConfigError
from ..errors import UsageLedgerError

__all__ = [
    "KVStore", "KVError", "KVUnavailableError", "KVTypeError", "KVSerializationError",
    "PickleNotAllowedError", "KVConfigError", "PickleWarning", "MISSING", "TTL",
    "Serializer", "Codec", "ttl_seconds", "prefix_upper_bound",
]

TTL = int | float | timedelta | None


class KVError(UsageLedgerError):
    """Base of every error a KV store raises."""


class KVUnavailableError(KVError, ConnectionError):
    """The store's server cannot be reached (at start or mid-run). The message names the
    address. Nothing was half-written: a failed call either happened whole or not at all
    (multi-key writes are single transactions), so retrying the call is safe."""


class KVTypeError(KVError, TypeError):
    """An operation met the wrong kind of value (``incr`` on a non-integer, a set operation
    on a plain value, ``get`` on a set)."""


class KVSerializationError(KVError, ValueError):
    """A value cannot be encoded by, or stored bytes cannot be decoded by, the serialiser."""


class PickleNotAllowedError(KVSerializationError):
    """The store holds pickle data but this store was not created with
    ``allow_pickle=True``; loading pickle runs arbitrary code, so it is refused."""


class KVConfigError(KVError, ConfigError):
    """A store setting (argument or ``USAGELEDGER_KV_*`` variable) is invalid; the message
    names the setting, the value and where it came from."""


class PickleWarning(UserWarning):
    """Emitted when a store is created with the pickle serialiser."""


class _Missing:
    __slots__ = ()

    def __repr__(self) -> str:
        return "MISSING"


#: Sentinel for "no such key": ``get(key, MISSING)`` tells a stored ``None`` from an absent
#: key, and ``compare_and_set(key, MISSING, new)`` succeeds only if the key is absent.
MISSING: Any = _Missing()


def ttl_seconds(ttl: TTL, name: str = "ttl") -> float | None:
    """Normalise a TTL to seconds; ``None`` stays ``None``."""
    if ttl is None:
        return None
    if isinstance(ttl, timedelta):
        seconds = ttl.total_seconds()
    elif isinstance(ttl, int | float) and not isinstance(ttl, bool):
        seconds = float(ttl)
    else:
        raise TypeError(f"{name}={ttl!r} must be seconds (int or float) or a timedelta")
    if not seconds > 0 or math.isinf(seconds):
        raise ValueError(f"{name}={ttl!r} must be a positive, finite duration")
    return seconds


def prefix_upper_bound(prefix: str) -> str | None:
    """The smallest string greater than every string that starts with ``prefix``, so that
    ``prefix <= key < bound`` is exactly ``key.startswith(prefix)``; ``None`` for no bound.
    UTF-8 byte order equals code point order, so this also holds for SQLite's BINARY
    collation."""
    chars = list(prefix)
    while chars:
        last = ord(chars.pop())
        if last < 0x10FFFF:
            nxt = last + 1
            if 0xD800 <= nxt <= 0xDFFF:  # surrogates cannot be stored; skip over them
                nxt = 0xE000
            return "".join(chars) + chr(nxt)
    return None


# -- serialisers --------------------------------------------------------------------------


class Serializer(Protocol):
    name: str

    def dumps(self, value: Any) -> bytes: ...

    def loads(self, data: bytes) -> Any: ...


class JsonSerializer:
    name = "json"

    def __init__(self) -> None:
        self._enc = msgspec.json.Encoder()
        self._dec = msgspec.json.Decoder()

    def dumps(self, value: Any) -> bytes:
        return self._enc.encode(value)

    def loads(self, data: bytes) -> Any:
        return self._dec.decode(data)


class MsgpackSerializer:
    name = "msgpack"

    def __init__(self) -> None:
        self._enc = msgspec.msgpack.Encoder()
        self._dec = msgspec.msgpack.Decoder()

    def dumps(self, value: Any) -> bytes:
        return self._enc.encode(value)

    def loads(self, data: bytes) -> Any:
        return self._dec.decode(data)


# Pickled values carry this marker so that a store without allow_pickle recognises them and
# refuses with a clear message. No json or msgpack document starts with a NUL byte followed
# by more data, and ints are stored as ASCII digits, so the marker cannot be mistaken.
PICKLE_MAGIC = b"\x00ULPKL"


class PickleSerializer:
    name = "pickle"

    def dumps(self, value: Any) -> bytes:
        return PICKLE_MAGIC + pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)

    def loads(self, data: bytes) -> Any:
        if not data.startswith(PICKLE_MAGIC):
            raise ValueError("not pickle data written by a usageledger store")
        return pickle.loads(data[len(PICKLE_MAGIC):])  # noqa: S301 - only with allow_pickle


SERIALIZERS = ("json", "msgpack", "pickle")
_INT64 = (-(2**63), 2**63 - 1)


class Codec:
    """Value <-> bytes for one store: ints as ASCII digits, everything else through the
    serialiser; pickle data is refused unless the store allows it."""

    def __init__(self, serializer: str | Serializer = "json", allow_pickle: bool = False):
        if isinstance(serializer, str):
            if serializer == "json":
                serializer = JsonSerializer()
            elif serializer == "msgpack":
                serializer = MsgpackSerializer()
            elif serializer == "pickle":
                if not allow_pickle:
                    raise KVConfigError(
                        "serializer='pickle' requires allow_pickle=True: loading pickle data "
                        "runs arbitrary code, so only use it with a store you fully trust"
                    )
                serializer = PickleSerializer()
            else:
                raise KVConfigError(f"serializer={serializer!r} must be one of {', '.join(SERIALIZERS)}")
        if getattr(serializer, "name", None) == "pickle":
            warnings.warn(
                "KV store uses the pickle serialiser: anyone who can write to the store can run "
                "code in this process when it reads a value",
                PickleWarning,
                stacklevel=3,
            )
        self.serializer = serializer
        self.name: str = serializer.name
        self.allow_pickle = allow_pickle or serializer.name == "pickle"

    def encode(self, value: Any, key: str = "?") -> bytes:
        if type(value) is int:
            return str(value).encode()
        try:
            return self.serializer.dumps(value)
        except (TypeError, ValueError, OverflowError, msgspec.EncodeError, pickle.PicklingError) as exc:
            raise KVSerializationError(
                f"value for key {key!r} of type {type(value).__name__} cannot be serialised "
                f"with {self.name}: {exc}"
            ) from None

    def encode_native(self, value: Any, key: str = "?") -> bytes | int:
        """For stores with a native integer type (memory, SQLite): int64 stays an int."""
        if type(value) is int and _INT64[0] <= value <= _INT64[1]:
            return value
        return self.encode(value, key)

    def decode(self, data: bytes | int, key: str = "?") -> Any:
        if type(data) is int:
            return data
        if data.isdigit() or (data[:1] == b"-" and data[1:].isdigit()):
            return int(data)
        if data.startswith(PICKLE_MAGIC) and not self.allow_pickle:
            raise PickleNotAllowedError(
                f"key {key!r} holds pickle data; loading it would run arbitrary code, so it is "
                "refused (create the store with serializer='pickle', allow_pickle=True only if "
                "you trust everyone who can write to it)"
            )
        try:
            return self.serializer.loads(data)
        except Exception as exc:  # every serialiser has its own error types
            raise KVSerializationError(
                f"key {key!r} holds {len(data)} bytes that {self.name} cannot decode: {exc}"
            ) from None


def check_key(key: Any) -> str:
    if not isinstance(key, str):
        raise TypeError(f"key={key!r} must be a str, not {type(key).__name__}")
    return key


def check_members(members: Iterable[Any]) -> list[str]:
    out = list(members)
    for m in out:
        if not isinstance(m, str):
            raise TypeError(f"set member {m!r} must be a str, not {type(m).__name__}")
    return out


class KVStore(ABC):
    """Async key-value store. Subclasses implement the abstract methods on full (prefixed)
    keys via ``_k``; the base holds the prefix, default TTL and codec.

    Use as ``async with store:`` or call :meth:`close` when done.
    """

    #: short backend name: "memory", "sqlite", "redis"
    kind: str = "?"

    def __init__(
        self,
        *,
        key_prefix: str = "",
        default_ttl: TTL = None,
        serializer: str | Serializer = "json",
        allow_pickle: bool = False,
        prefix_separator: str = ":",
    ):
        if not isinstance(key_prefix, str):
            raise KVConfigError(f"key_prefix={key_prefix!r} must be a str")
        if not isinstance(prefix_separator, str):
            raise KVConfigError(f"prefix_separator={prefix_separator!r} must be a str")
        # "app" + "2:x" is "app2:x": without a separator one prefix's range holds another's
        # keys. prefix_separator="" keeps the bare prefix (keys written that way before).
        if key_prefix and prefix_separator and not key_prefix.endswith(prefix_separator):
            key_prefix += prefix_separator
        self.key_prefix = key_prefix
        self.default_ttl = ttl_seconds(default_ttl, "default_ttl")
        self.codec = Codec(serializer, allow_pickle)

    # -- helpers for backends -------------------------------------------------------------
    def _k(self, key: str) -> str:
        return self.key_prefix + check_key(key)

    def _strip(self, full_key: str) -> str:
        return full_key[len(self.key_prefix):]

    def _ttl(self, ttl: TTL) -> float | None:
        """Explicit ttl, else the store default."""
        return self.default_ttl if ttl is None else ttl_seconds(ttl)

    # -- the contract ---------------------------------------------------------------------
    @abstractmethod
    async def get(self, key: str, default: Any = None) -> Any:
        """The value at ``key``, or ``default`` if it is missing or expired."""

    @abstractmethod
    async def set(self, key: str, value: Any, ttl: TTL = None) -> None:
        """Store ``value``, replacing any value or set at ``key`` and its expiry."""

    @abstractmethod
    async def delete(self, *keys: str) -> int:
        """Delete keys (values or sets); returns how many existed."""

    @abstractmethod
    async def exists(self, key: str) -> bool:
        """Whether ``key`` holds a live value or set."""

    @abstractmethod
    async def incr(self, key: str, amount: int = 1, ttl: TTL = None) -> int:
        """Atomically add ``amount`` (may be negative) to the integer at ``key`` (missing =
        0) and return the new value. ``ttl`` (or the store default) applies only when this
        call creates the key, so a counter window is not extended by later increments.
        Raises :class:`KVTypeError` if the key holds a non-integer."""

    @abstractmethod
    async def keys(self, prefix: str = "") -> list[str]:
        """Sorted live keys starting with ``prefix`` (without the store's key prefix)."""

    @abstractmethod
    async def mget(self, keys: Iterable[str]) -> dict[str, Any]:
        """``{key: value}`` for those of ``keys`` that exist (one round trip)."""

    @abstractmethod
    async def mset(self, mapping: Mapping[str, Any], ttl: TTL = None) -> None:
        """Set many values in one atomic write (all or none)."""

    @abstractmethod
    async def expire(self, key: str, ttl: TTL) -> bool:
        """Set a new expiry on an existing key; ``False`` if the key does not exist."""

    @abstractmethod
    async def ttl(self, key: str) -> float | None:
        """Seconds until ``key`` expires; ``None`` if it has no expiry or does not exist."""

    @abstractmethod
    async def compare_and_set(self, key: str, expected: Any, new: Any, ttl: TTL = None) -> bool:
        """Atomically set ``key`` to ``new`` only if it currently holds ``expected`` (compared
        in serialised form, so pass a value read with :meth:`get`); ``expected=MISSING``
        means "only if absent". Returns whether the value was written."""

    @abstractmethod
    async def sadd(self, key: str, *members: str, ttl: TTL = None) -> int:
        """Add ``str`` members to the set at ``key``; returns how many were new. When a TTL is
        in effect (``ttl`` or the store default) the whole set's expiry is reset to it."""

    @abstractmethod
    async def srem(self, key: str, *members: str) -> int:
        """Remove members; returns how many were present. An emptied set is deleted."""

    @abstractmethod
    async def smembers(self, key: str) -> set[str]:
        """All members (empty set if the key is missing)."""

    @abstractmethod
    async def scard(self, key: str) -> int:
        """Number of members (0 if missing)."""

    @abstractmethod
    async def sismember(self, key: str, member: str) -> bool:
        """Whether ``member`` is in the set at ``key``."""

    @abstractmethod
    async def clear(self) -> int:
        """Delete every key under this store's key prefix; returns how many."""

    async def ping(self) -> None:
        """Raise :class:`KVUnavailableError` if the store cannot be reached."""
        return None

    async def close(self) -> None:
        """Release connections and threads; the store cannot be used afterwards."""
        return None

    async def __aenter__(self) -> KVStore:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} prefix={self.key_prefix!r} serializer={self.codec.name}>"
