"""usageledger: record LLM usage without slowing the caller; deliver it exactly once in effect.

Public names are imported lazily so that ``import usageledger`` stays cheap and optional
extras (FastAPI, psycopg, redis) load only when used.
"""

from __future__ import annotations

import importlib
from typing import Any

from . import _moved
from .errors import MixedCurrencyError, UsageLedgerError
from .schema.records import UsageRecord, new_id

__version__ = "0.1.0"

_moved.install()  # the module paths from before the folders keep working

_LAZY = {
    "PersistentDelivery": "usageledger.facades.delivery",
    "PersistentQueueManager": "usageledger.facades.delivery",
    "DeliveryConfig": "usageledger.core.config",
    "IniManager": "usageledger.core.config",
    "Meter": "usageledger.facades.meter",
    "Pipeline": "usageledger.core.pipeline",
    "Settings": "usageledger.core.settings",
    "create_storage": "usageledger.storage",
    "StorageBackend": "usageledger.storage.base",
    "TelemetryClient": "usageledger.telemetry",
    "RunRecord": "usageledger.telemetry",
    "RunEvent": "usageledger.telemetry",
    "UsageTracker": "usageledger.facades.tracker",
    "calculate_cost": "usageledger.prices.pricing",
    "JournalError": "usageledger.core.journal",
    "JournalDestinationError": "usageledger.core.journal",
    "JournalUnavailableError": "usageledger.core.journal",
    "BudgetExceeded": "usageledger.budgets",
    "BudgetGuard": "usageledger.budgets.guard",
    "instrument": "usageledger.integrations.capture",
    "uninstrument": "usageledger.integrations.capture",
    "attributes": "usageledger.integrations.context",
    "Totals": "usageledger.schema.totals",
}

__all__ = ["UsageRecord", "new_id", "UsageLedgerError", "MixedCurrencyError", "__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'usageledger' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
