"""The package's one exception root.

Every error class usageledger defines derives from :class:`UsageLedgerError`, so an
application can catch everything the library raises on purpose with one ``except``. The
built-in bases callers already rely on stay (``ConfigError`` is still a ``ValueError``,
``KVUnavailableError`` still a ``ConnectionError``...), through multiple inheritance.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["UsageLedgerError", "MixedCurrencyError"]


class UsageLedgerError(Exception):
    """Base class of every error usageledger defines."""


class MixedCurrencyError(UsageLedgerError, ValueError):
    """A single-number cost was asked of totals in more than one currency: money is never
    added across currencies. ``currencies`` lists them; ask for one (``currency=...``) or
    read the per-currency costs."""

    def __init__(self, currencies: Iterable[str], what: str = "the total cost"):
        self.currencies = tuple(sorted(currencies))
        super().__init__(
            f"{what} spans {len(self.currencies)} currencies ({', '.join(self.currencies)}) "
            "and money is never added across currencies: pass currency=... for one of them "
            "or read the cost per currency"
        )
