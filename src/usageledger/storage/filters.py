"""Query filters and keys of the storage contract, written once for every backend: the
filter names and their checks (tags included), the group keys ``aggregate`` accepts, page
arguments, and UTC microsecond timestamps with their day and hour names."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any

from ..schema.records import UsageRecord, to_utc

__all__ = [
    "FILTER_KEYS", "EQUALITY_KEYS", "GROUP_KEYS", "Filters", "make_filters", "check_group_by",
    "check_page", "record_matches", "ts_us", "from_us", "day_key", "hour_key",
]

#: group keys accepted by ``aggregate``, plus ``tag:<key>``
GROUP_KEYS = ("day", "hour", "provider", "model", "user_id", "session_id", "customer_key", "currency")
FILTER_KEYS = ("provider", "model", "user_id", "session_id", "customer_key", "since", "until", "tags")
EQUALITY_KEYS = ("provider", "model", "user_id", "session_id", "customer_key")

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US_PER_HOUR = 3_600_000_000
_US_PER_DAY = 86_400_000_000


def check_group_by(group_by: Sequence[str] | str) -> tuple[str, ...]:
    if isinstance(group_by, str):
        keys = tuple(k.strip() for k in group_by.split(",") if k.strip())  # "" means no grouping
    else:
        keys = tuple(group_by)
    for k in keys:
        if k not in GROUP_KEYS and not (k.startswith("tag:") and len(k) > 4):
            raise ValueError(f"group_by key {k!r} is not one of {GROUP_KEYS} or 'tag:<key>'")
    return keys


def ts_us(value: datetime) -> int:
    """Microseconds since the epoch, UTC (naive datetimes are taken as UTC)."""
    if value.__class__ is not datetime and not isinstance(value, datetime):
        raise TypeError(f"expected a datetime, got {value!r}")
    if value.tzinfo is not UTC:
        value = to_utc(value)
    d = value - _EPOCH  # integer arithmetic on the parts: exact, and cheaper than // timedelta
    return (d.days * 86_400 + d.seconds) * 1_000_000 + d.microseconds


def from_us(us: int) -> datetime:
    return _EPOCH + timedelta(microseconds=us)


def day_key(us: int) -> str:
    """``YYYY-MM-DD`` of a UTC microsecond timestamp."""
    return _day_name(us // _US_PER_DAY)


def hour_key(us: int) -> str:
    """``YYYY-MM-DDTHH:00Z`` of a UTC microsecond timestamp."""
    return _hour_name(us // _US_PER_HOUR)


# aggregates name the same few thousand days and hours over and over: format each once
@lru_cache(maxsize=1 << 16)
def _day_name(day: int) -> str:
    return (_EPOCH + timedelta(days=day)).strftime("%Y-%m-%d")


@lru_cache(maxsize=1 << 16)
def month_start(day: int) -> int:
    """The day number (days since 1970-01-01) of the first day of the UTC month holding
    day number ``day``."""
    return day + 1 - (_EPOCH + timedelta(days=day)).day


@lru_cache(maxsize=1 << 16)
def next_month_start(day: int) -> int:
    """The day number of the first day of the UTC month after the one holding ``day``."""
    return month_start(month_start(day) + 31)


@lru_cache(maxsize=1 << 18)
def _hour_name(hour: int) -> str:
    return (_EPOCH + timedelta(hours=hour)).strftime("%Y-%m-%dT%H:00Z")


@dataclass(frozen=True, slots=True)
class Filters:
    """Validated query filters; ``since``/``until`` in UTC microseconds."""

    provider: str | None = None
    model: str | None = None
    user_id: str | None = None
    session_id: str | None = None
    customer_key: str | None = None
    since: int | None = None
    until: int | None = None
    tags: tuple[tuple[str, str], ...] = ()

    def equalities(self) -> list[tuple[str, str]]:
        return [(k, getattr(self, k)) for k in EQUALITY_KEYS if getattr(self, k) is not None]


def make_filters(**filters: Any) -> Filters:
    """Check filter names and types (TypeError/ValueError naming the filter)."""
    unknown = set(filters) - set(FILTER_KEYS)
    if unknown:
        raise TypeError(f"unknown filter(s) {sorted(unknown)}; valid filters: {FILTER_KEYS}")
    values: dict[str, Any] = {}
    for k in EQUALITY_KEYS:
        v = filters.get(k)
        if v is not None and not isinstance(v, str):
            raise TypeError(f"filter {k} must be a string, got {v!r}")
        values[k] = v
    for k in ("since", "until"):
        v = filters.get(k)
        if v is not None:
            if not isinstance(v, datetime):
                raise TypeError(f"filter {k} must be a datetime, got {v!r}")
            values[k] = ts_us(v)
    tags = filters.get("tags")
    if tags:
        if not isinstance(tags, dict):
            raise TypeError(f"filter tags must be a dict of str to str, got {tags!r}")
        for k, v in tags.items():
            if not isinstance(k, str) or not isinstance(v, str):
                raise TypeError(f"filter tags must map str to str, got {k!r}: {v!r}")
        values["tags"] = tuple(sorted(tags.items()))
    return Filters(**values)


def check_page(limit: int | None, offset: int) -> None:
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
        raise ValueError(f"limit must be a non-negative integer or None, got {limit!r}")
    if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
        raise ValueError(f"offset must be a non-negative integer, got {offset!r}")


def record_matches(rec: UsageRecord, f: Filters, us: int) -> bool:
    """Whether ``rec`` (whose timestamp is ``us``) passes every filter."""
    if f.provider is not None and rec.provider != f.provider:
        return False
    if f.model is not None and rec.model != f.model:
        return False
    if f.user_id is not None and rec.user_id != f.user_id:
        return False
    if f.session_id is not None and rec.session_id != f.session_id:
        return False
    if f.customer_key is not None and rec.customer_key != f.customer_key:
        return False
    if f.since is not None and us < f.since:
        return False
    if f.until is not None and us >= f.until:
        return False
    if f.tags:
        tags = rec.tags
        for k, v in f.tags:
            if tags.get(k) != v:
                return False
    return True
