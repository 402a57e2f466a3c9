"""The Sink contract: speak one wire, report a result per record. No loops, no sleeps.

The Dispatcher owns batching, backoff, attempts and dead-lettering; a sink only turns a
batch into one request (or one write) and says, for every item id, one of:

- ``OK``: stored (a duplicate counts as stored: exactly once in effect);
- ``Retry(after, reason)``: a transient failure; ``after`` is a server's Retry-After in
  seconds, or None to let the dispatcher choose the backoff;
- ``Reject(reason, whole_batch=False)``: refused for good. ``whole_batch=True`` means the
  destination refused the batch without saying which record was at fault, so the
  dispatcher splits the batch to isolate it.

A sink may raise for an unexpected failure; the dispatcher treats that as a Retry of
the whole batch and logs it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

import msgspec

if TYPE_CHECKING:
    from .journal.base import JournalItem

__all__ = ["Sink", "describe_url", "Ok", "OK", "Retry", "Reject", "Result", "all_results", "decode_batch"]

T = TypeVar("T")


class Ok:
    __slots__ = ()

    def __repr__(self) -> str:
        return "OK"


OK = Ok()


@dataclass(frozen=True, slots=True)
class Retry:
    after: float | None = None
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Reject:
    reason: str
    whole_batch: bool = False


Result = Ok | Retry | Reject


class Sink:
    """Base contract for destinations."""

    #: a short name for logs and stats
    name: str = "sink"
    #: True when ``send`` may run in several dispatcher threads at once; the dispatcher
    #: then keeps up to ``max_in_flight`` batches in flight (the destination works on one
    #: while the next is claimed and encoded)
    concurrent_sends: bool = False

    @property
    def destination(self) -> str | None:
        """Where this sink delivers, as one line without secrets (``collector URL``,
        ``storage sqlite /path``...): a journal records the destination of the first
        pipeline that opens it and refuses pipelines of another one. None: not checked."""
        return None

    def send(self, batch: list[JournalItem]) -> dict[str, Result]:
        """Deliver ``batch``; return a result for every item id."""
        raise NotImplementedError

    def close(self) -> None:
        """Release connections (called from the dispatcher thread at stop)."""


def all_results(batch: list[JournalItem], result: Result) -> dict[str, Result]:
    """The same result for every item of a batch."""
    return {item.id: result for item in batch}


def decode_batch(
    batch: list[JournalItem], kind: str, decode: Callable[[bytes], T], *, taker: str, noun: str
) -> tuple[list[tuple[str, T]], dict[str, Result]]:
    """Decode the items of ``kind``: ``(decoded, rejects)``, where ``decoded`` holds
    ``(item id, value)`` in batch order and every other item is rejected alone, with a
    reason naming ``taker`` (the destination) and ``noun`` (what it takes)."""
    decoded: list[tuple[str, T]] = []
    rejects: dict[str, Result] = {}
    for item in batch:
        if item.kind != kind:
            rejects[item.id] = Reject(f"{taker} takes {noun}s, not {item.kind!r}")
            continue
        try:
            decoded.append((item.id, decode(item.data)))
        except msgspec.DecodeError as exc:  # ValidationError is a DecodeError too
            rejects[item.id] = Reject(f"not a {noun}: {exc}")
    return decoded, rejects


def describe_url(url: str) -> str:
    """``url`` without its password (for identities and messages)."""
    from urllib.parse import urlsplit, urlunsplit

    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    user = f"{parts.username}@" if parts.username else ""
    return urlunsplit(parts._replace(netloc=user + host))
