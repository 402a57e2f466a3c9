"""Budget definitions: the model, its validation and the calendar windows.

A budget is ``{"scope", "period", "limit", "currency", "alert_thresholds", "webhook_url"}``
under a name. Validation raises :class:`BudgetInputError` naming the field, the value and
where it came from; the collector answers it with 400.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from functools import cached_property
from typing import Any
from urllib.parse import urlsplit

from ..errors import UsageLedgerError
from ..schema.records import to_utc

__all__ = [
    "Budget",
    "BudgetExceeded",
    "BudgetInputError",
    "BudgetUnavailable",
    "PERIODS",
    "SCOPE_KEYS",
    "parse_budget",
    "window",
    "window_name",
]

#: calendar windows in UTC (a week starts on Monday), or the whole history
PERIODS = ("day", "week", "month", "total")
#: what a scope may hold; ``tags`` is a dict whose every pair must match
SCOPE_KEYS = ("provider", "model", "user_id", "customer_key", "session_id", "tags")
_FIELDS = ("scope", "period", "limit", "currency", "alert_thresholds", "webhook_url")
#: the largest alert threshold (a fraction of the limit: 10 is ten times the limit)
MAX_THRESHOLD = 10


class BudgetExceeded(UsageLedgerError):
    """A call was refused because a budget that covers it is spent. ``budgets`` names
    them; ``status`` is the check answer (``{"allowed", "exceeded", "budgets"}``)."""

    def __init__(self, budgets: list[str], status: dict[str, Any] | None = None, message: str | None = None):
        self.budgets = list(budgets)
        self.status = status or {}
        super().__init__(message or f"over budget: {', '.join(self.budgets)}")


class BudgetUnavailable(BudgetExceeded):
    """The budget check could not be made (collector unreachable or failing) and the guard
    was made with ``fail_open=False``: the call is refused like one over budget."""


class BudgetInputError(UsageLedgerError, ValueError):
    """A budget definition or check that is not valid; ``field`` names what is wrong."""

    def __init__(self, field: str, message: str):
        self.field = field
        super().__init__(f"{field}: {message}")


@dataclass(frozen=True)
class Budget:
    name: str
    limit: Decimal
    period: str = "month"
    currency: str = "USD"
    scope: dict[str, Any] = field(default_factory=dict)
    alert_thresholds: tuple[float, ...] = ()
    webhook_url: str | None = None

    @cached_property
    def fingerprint(self) -> str:
        """Tells two definitions apart (cache keys)."""
        return repr(self)

    def definition(self) -> dict[str, Any]:
        """The JSON form (as PUT takes it and storage keeps it); the limit as given."""
        return {
            "scope": {k: (dict(v) if k == "tags" else v) for k, v in self.scope.items()},
            "period": self.period,
            "limit": format(self.limit, "f"),
            "currency": self.currency,
            "alert_thresholds": list(self.alert_thresholds),
            "webhook_url": self.webhook_url,
        }

    def filters(self) -> dict[str, Any]:
        """The scope as storage filters."""
        return {k: (dict(v) if k == "tags" else v) for k, v in self.scope.items()}


def _where(source: str) -> str:
    return f" (from {source})" if source else ""


def parse_budget(name: str, body: Any, source: str = "") -> Budget:
    """A :class:`Budget` from its JSON form, every field checked; ``source`` says where the
    input came from, for the error message."""
    w = _where(source)
    if not isinstance(name, str) or not name.strip() or len(name) > 200 or "\x00" in name:
        raise BudgetInputError("name", f"must be a non-empty string of at most 200 characters, got {name!r}{w}")
    if not isinstance(body, dict):
        raise BudgetInputError("body", f"must be a JSON object, got {body!r}{w}")
    unknown = sorted(set(body) - set(_FIELDS))
    if unknown:
        raise BudgetInputError(unknown[0], f"is not a budget field; fields are {', '.join(_FIELDS)}{w}")
    if "limit" not in body:
        raise BudgetInputError("limit", f"is required (a decimal string such as \"5.00\"){w}")
    return Budget(
        name=name,
        limit=_limit(body["limit"], w),
        period=_period(body.get("period", "month"), w),
        currency=_currency(body.get("currency", "USD"), w),
        scope=_scope(body.get("scope") or {}, w),
        alert_thresholds=_thresholds(body.get("alert_thresholds") or [], w),
        webhook_url=_webhook(body.get("webhook_url"), w),
    )


def _limit(value: Any, w: str) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, str | int | float | Decimal):
        raise BudgetInputError("limit", f"must be a non-negative decimal such as \"5.00\", got {value!r}{w}")
    if isinstance(value, float):
        if not math.isfinite(value):
            raise BudgetInputError("limit", f"must be a finite non-negative decimal, got {value!r}{w}")
        value = repr(value)
    try:
        d = Decimal(value.strip() if isinstance(value, str) else value)
    except InvalidOperation:
        raise BudgetInputError("limit", f"must be a non-negative decimal such as \"5.00\", got {value!r}{w}") from None
    if not d.is_finite() or d < 0:
        raise BudgetInputError("limit", f"must be a finite non-negative decimal, got {value!r}{w}")
    return d


def _period(value: Any, w: str) -> str:
    if value not in PERIODS:
        raise BudgetInputError("period", f"must be one of {', '.join(PERIODS)}, got {value!r}{w}")
    return value


def _currency(value: Any, w: str) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > 16 or "\x00" in value:
        raise BudgetInputError("currency", f"must be a currency code such as \"USD\", got {value!r}{w}")
    return value.strip()


def _scope(value: Any, w: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise BudgetInputError("scope", f"must be an object with keys among {', '.join(SCOPE_KEYS)}, got {value!r}{w}")
    out: dict[str, Any] = {}
    for k, v in value.items():
        if k not in SCOPE_KEYS:
            raise BudgetInputError(f"scope.{k}", f"is not a scope key; scope keys are {', '.join(SCOPE_KEYS)}{w}")
        if k == "tags":
            if not isinstance(v, dict) or not all(isinstance(a, str) and isinstance(b, str) for a, b in v.items()):
                raise BudgetInputError("scope.tags", f"must be an object of string to string, got {v!r}{w}")
            if any("\x00" in a + b for a, b in v.items()):
                raise BudgetInputError("scope.tags", f"contains a NUL character{w}")
            if v:
                out[k] = dict(sorted(v.items()))
        elif v is not None:
            if not isinstance(v, str) or "\x00" in v:
                raise BudgetInputError(f"scope.{k}", f"must be a string, got {v!r}{w}")
            out[k] = v
    return out


def _thresholds(value: Any, w: str) -> tuple[float, ...]:
    if not isinstance(value, list | tuple):
        raise BudgetInputError("alert_thresholds", f"must be a list of numbers in (0, {MAX_THRESHOLD}], got {value!r}{w}")
    out = []
    for t in value:
        if isinstance(t, bool) or not isinstance(t, int | float) or not math.isfinite(t) or not 0 < t <= MAX_THRESHOLD:
            raise BudgetInputError(
                "alert_thresholds", f"each threshold must be a number in (0, {MAX_THRESHOLD}], got {t!r}{w}")
        out.append(float(t))
    return tuple(sorted(set(out)))


def _webhook(value: Any, w: str) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise BudgetInputError("webhook_url", f"must be an http(s) URL, got {value!r}{w}")
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise BudgetInputError("webhook_url", f"must be an http(s) URL, got {value!r}{w}")
    return value


# -- windows -------------------------------------------------------------------------------------

def window(period: str, at: datetime) -> tuple[datetime | None, datetime | None]:
    """The calendar window in UTC that holds ``at``: ``[start, end)``; ``(None, None)`` for
    ``total``. A week starts on Monday 00:00 UTC."""
    at = to_utc(at)
    day = at.replace(hour=0, minute=0, second=0, microsecond=0)
    if period == "day":
        return day, day + timedelta(days=1)
    if period == "week":
        start = day - timedelta(days=day.weekday())
        return start, start + timedelta(days=7)
    if period == "month":
        start = day.replace(day=1)
        end = start.replace(year=start.year + 1, month=1) if start.month == 12 else start.replace(month=start.month + 1)
        return start, end
    if period == "total":
        return None, None
    raise BudgetInputError("period", f"must be one of {', '.join(PERIODS)}, got {period!r}")


def previous_window(period: str, at: datetime) -> tuple[datetime | None, datetime | None] | None:
    """The window before the one holding ``at`` (None for ``total``)."""
    start, _ = window(period, at)
    return None if start is None else window(period, start - timedelta(microseconds=1))


def iso(when: datetime | None) -> str | None:
    """``2026-12-01T00:00:00Z`` (UTC), or None."""
    if when is None:
        return None
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S") + (
        f".{when.microsecond:06d}Z" if when.microsecond else "Z")


def window_name(start: datetime | None) -> str:
    """The window's part of an alert key: its start, or ``total``."""
    return iso(start) or "total"
