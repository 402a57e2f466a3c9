"""Budgets: spend limits per scope (provider, model, user, customer, session, tags) over
calendar windows in UTC, exact from the stored records, with alerts sent exactly once per
threshold and window. One implementation, used by the collector, ``Meter.budgets`` and the
CLI; :class:`BudgetGuard` asks a collector before a call."""

from .engine import AlertLoop, Budgets, Spend, check_attributes
from .model import (
    PERIODS,
    SCOPE_KEYS,
    Budget,
    BudgetExceeded,
    BudgetInputError,
    BudgetUnavailable,
    parse_budget,
    window,
)

__all__ = [
    "AlertLoop", "Budget", "BudgetExceeded", "BudgetGuard", "BudgetInputError", "BudgetUnavailable",
    "Budgets", "PERIODS", "SCOPE_KEYS", "Spend", "check_attributes", "parse_budget", "window",
]


def __getattr__(name: str):  # BudgetGuard imports httpx: only when asked for
    if name == "BudgetGuard":
        from .guard import BudgetGuard

        return BudgetGuard
    raise AttributeError(f"module 'usageledger.budgets' has no attribute {name!r}")
