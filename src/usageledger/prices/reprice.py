"""Recompute the cost of stored records from the current prices (:mod:`usageledger.pricebook`).

Records are read in ``(timestamp, id)`` pages; each page's changed costs are written by the
backend's ``replace_costs`` in one transaction with its rollups, so totals follow exactly
and a run stopped at any point (even killed) leaves every page either done or untouched.
Running it again computes the same costs and changes nothing more: it is idempotent.
Records keep their cost when the new price is unknown. ``only_unknown`` touches records
without a cost only; otherwise every matching record is priced again (a provider-reported
cost too: narrow with ``provider``/``model``/``since``/``until``).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

import msgspec

from ..schema.records import UsageRecord
from .pricebook import PriceBook

__all__ = ["reprice", "supports_reprice"]


def supports_reprice(store: Any) -> bool:
    return callable(getattr(store, "replace_costs", None))


def reprice(
    store: Any,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    provider: str | None = None,
    model: str | None = None,
    only_unknown: bool = False,
    batch_size: int = 1000,
    book: PriceBook | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, int]:
    """Reprice the matching records; ``progress(seen, changed)`` after each batch. Returns
    ``{"seen", "changed"}``."""
    if not supports_reprice(store):
        raise ValueError(f"the storage {type(store).__name__} cannot reprice stored records: "
                         "use sqlite, postgresql or memory")
    if batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    book = book or PriceBook(store)
    book.refresh()
    filters = {k: v for k, v in (("since", since), ("until", until), ("provider", provider),
                                 ("model", model)) if v is not None}
    seen = changed = 0
    pending: list[UsageRecord] = []

    def flush() -> None:
        nonlocal changed
        if pending:
            changed += store.replace_costs(pending)
            pending.clear()

    for n, rec in enumerate(store.iter_records(batch_size=batch_size, **filters), 1):
        seen = n
        if only_unknown and rec.cost is not None:
            continue
        got = book.cost(rec)
        if got is not None and (got[0] != rec.cost or str(got[0]) != str(rec.cost) or got[1] != rec.currency):
            pending.append(msgspec.structs.replace(rec, cost=got[0], currency=got[1]))
        if n % batch_size == 0:
            flush()
            if progress is not None:
                progress(seen, changed)
    flush()
    if progress is not None:
        progress(seen, changed)
    return {"seen": seen, "changed": changed}
