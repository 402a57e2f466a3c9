"""usageledger: record LLM usage without slowing the caller; deliver it exactly once in effect.

Public names are imported lazily so that ``import usageledger`` stays cheap and optional
extras (FastAPI, psycopg, redis) load only when used.
"""

from __future__ import annotations

import importlib
from typing import Any

from .errors import MixedCurrencyError, UsageLedgerError
from .records import UsageRecord, new_id

__version__ = "0.1.0"

_LAZY = {
    "PersistentDelivery": "usageledger.delivery",
    "PersistentQueueManager": "usageledger.delivery",
    "DeliveryConfig": "usageledger.config",
    "IniManager": "usageledger.config",
    "Meter": "usageledger.meter",
    "Pipeline": "usageledger.pipeline",
    "Settings": "usageledger.settings",
    "create_storage": "usageledger.storage",
    "StorageBackend": "usageledger.storage.base",
    "TelemetryClient": "usageledger.telemetry",
    "RunRecord": "usageledger.telemetry",
    "RunEvent": "usageledger.telemetry",
    "UsageTracker": "usageledger.tracker",
    "calculate_cost": "usageledger.pricing",
    "JournalError": "usageledger.journal",
    "JournalDestinationError": "usageledger.journal",
    "JournalUnavailableError": "usageledger.journal",
    "BudgetExceeded": "usageledger.budgets",
    "BudgetGuard": "usageledger.budgets.guard",
    "instrument": "usageledger.integrations.capture",
    "uninstrument": "usageledger.integrations.capture",
    "attributes": "usageledger.integrations.context",
    "Totals": "usageledger.totals",
}

__all__ = ["UsageRecord", "new_id", "UsageLedgerError", "MixedCurrencyError", "__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'usageledger' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
