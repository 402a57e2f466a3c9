"""Attribution from context: ``with usageledger.attributes(user_id="u1", ...):``.

The attributes live in a :class:`contextvars.ContextVar`, so they follow the code that
runs inside the block: asyncio tasks created in it, threads started with
``contextvars.copy_context().run``, and LiteLLM's logging threads (which copy the context).
Nested blocks merge: an inner value wins, ``tags`` merge key by key (inner wins).

Values are checked when the block is entered (a bad value raises there, naming the field),
so the capture wrappers only read a ready-made dict.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from ..schema.records import check_tags

__all__ = ["attributes", "current_attributes", "ATTRIBUTE_NAMES"]

#: the record fields a context can set
ATTRIBUTE_NAMES = ("user_id", "customer_key", "session_id", "tags")

_EMPTY: Mapping[str, Any] = {}
_current: ContextVar[Mapping[str, Any]] = ContextVar("usageledger_attributes", default=_EMPTY)


def current_attributes() -> Mapping[str, Any]:
    """The attributes in effect here: only the ones set, as record keywords (``tags`` is a
    dict). Read-only: never mutate the result."""
    return _current.get()


@contextmanager
def attributes(
    *,
    user_id: str | None = None,
    customer_key: str | None = None,
    session_id: str | None = None,
    tags: Mapping[str, str] | None = None,
) -> Iterator[Mapping[str, Any]]:
    """Attribute every call captured inside the block (``usageledger.instrument``, the
    LiteLLM callback, the span processor) to these values; yields the merged attributes.
    ``None`` leaves the outer value in place."""
    outer = _current.get()
    merged = dict(outer)
    for name, value in (("user_id", user_id), ("customer_key", customer_key),
                        ("session_id", session_id)):
        if value is not None:
            if type(value) is not str or not value:
                raise TypeError(f"attributes({name}=...) must be a non-empty string, got {value!r}")
            merged[name] = value
    if tags is not None:
        if not isinstance(tags, Mapping):
            raise TypeError(f"attributes(tags=...) must be a dict of str to str, got {tags!r}")
        merged["tags"] = {**outer.get("tags", {}), **check_tags(dict(tags))}
    token = _current.set(merged)
    try:
        yield merged
    finally:
        _current.reset(token)
