"""Prices in the storage backend (the optional part of the storage contract that
:mod:`usageledger.pricebook` uses): effective-dated price entries per (provider, model),
and aliases (provider, name) -> model.

An entry is a dict of decimal strings (see :func:`usageledger.pricebook.parse_price`) keyed
by ``(provider, model, effective_from)``; ``effective_from`` is ``YYYY-MM-DD`` or ``""``
(from the beginning), so entries of one model sort by date as text. Putting an entry at an
existing date replaces it.

Three implementations: dicts for the memory backend (which the JSONL backend persists as
appended change lines), SQL for sqlite and postgres through the backend's ``_side_sql`` hook
(one text, the placeholder swapped; the tables are created on first use), and two hashes
for the Redis backend.
"""

from __future__ import annotations

import threading
from typing import Any

import msgspec

from ..schema.records import encode
from ._sql import SideSql

__all__ = ["MemoryPrices", "SqlPrices", "RedisPrices", "PRICE_TABLES"]

_loads = msgspec.json.decode

PRICE_TABLES = (
    "CREATE TABLE IF NOT EXISTS prices (provider TEXT NOT NULL, model TEXT NOT NULL, "
    "effective_from TEXT NOT NULL, entry TEXT NOT NULL, PRIMARY KEY (provider, model, effective_from))",
    "CREATE TABLE IF NOT EXISTS price_aliases (provider TEXT NOT NULL, name TEXT NOT NULL, "
    "model TEXT NOT NULL, PRIMARY KEY (provider, name))",
)


def _entry(provider: str, model: str, effective_from: str, entry: Any) -> dict[str, Any]:
    return {"provider": provider, "model": model, "effective_from": effective_from or None,
            **(_loads(entry) if isinstance(entry, str | bytes) else entry)}


class MemoryPrices:
    """Prices and aliases in dicts (the memory backend: nothing survives the process)."""

    supports_prices = True

    def _price_state(self) -> tuple[threading.Lock, dict[tuple[str, str, str], dict], dict[tuple[str, str], str]]:
        state = self.__dict__.get("_prices_state")
        if state is None:
            state = self.__dict__.setdefault("_prices_state", (threading.Lock(), {}, {}))
        return state

    def put_price(self, provider: str, model: str, effective_from: str, entry: dict[str, Any]) -> None:
        lock, prices, _ = self._price_state()
        with lock:
            prices[(provider, model, effective_from)] = _loads(encode(entry))

    def list_prices(self) -> list[dict[str, Any]]:
        """Every entry, ordered by provider, model and date."""
        lock, prices, _ = self._price_state()
        with lock:
            return [_entry(*k, dict(prices[k])) for k in sorted(prices)]

    def delete_price(self, provider: str, model: str, effective_from: str) -> bool:
        lock, prices, _ = self._price_state()
        with lock:
            return prices.pop((provider, model, effective_from), None) is not None

    def put_alias(self, provider: str, name: str, model: str) -> None:
        lock, _, aliases = self._price_state()
        with lock:
            aliases[(provider, name)] = model

    def list_aliases(self) -> list[dict[str, str]]:
        lock, _, aliases = self._price_state()
        with lock:
            return [{"provider": p, "name": n, "model": aliases[(p, n)]} for p, n in sorted(aliases)]

    def delete_alias(self, provider: str, name: str) -> bool:
        lock, _, aliases = self._price_state()
        with lock:
            return aliases.pop((provider, name), None) is not None


class SqlPrices(SideSql):
    """Prices and aliases in two tables, through the backend's ``_side_sql(sql, params)``
    (one statement in its own transaction, its rows returned; the hook budgets use too)."""

    supports_prices = True
    def _create_price_tables(self) -> None:
        for ddl in PRICE_TABLES:
            self._side_sql(ddl, [])

    def _pq(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        if not self.__dict__.get("_price_tables"):
            self._create_price_tables()
            self.__dict__["_price_tables"] = True
        return self._side(sql, params)

    def put_price(self, provider: str, model: str, effective_from: str, entry: dict[str, Any]) -> None:
        self._pq("INSERT INTO prices (provider, model, effective_from, entry) VALUES (?, ?, ?, ?) "
                 "ON CONFLICT (provider, model, effective_from) DO UPDATE SET entry = excluded.entry",
                 provider, model, effective_from, encode(entry).decode())

    def list_prices(self) -> list[dict[str, Any]]:
        rows = self._pq("SELECT provider, model, effective_from, entry FROM prices "
                        "ORDER BY provider, model, effective_from")
        return [_entry(*row) for row in rows]

    def delete_price(self, provider: str, model: str, effective_from: str) -> bool:
        return bool(self._pq("DELETE FROM prices WHERE provider = ? AND model = ? AND effective_from = ? "
                             "RETURNING model", provider, model, effective_from))

    def put_alias(self, provider: str, name: str, model: str) -> None:
        self._pq("INSERT INTO price_aliases (provider, name, model) VALUES (?, ?, ?) "
                 "ON CONFLICT (provider, name) DO UPDATE SET model = excluded.model", provider, name, model)

    def list_aliases(self) -> list[dict[str, str]]:
        rows = self._pq("SELECT provider, name, model FROM price_aliases ORDER BY provider, name")
        return [{"provider": p, "name": n, "model": m} for p, n, m in rows]

    def delete_alias(self, provider: str, name: str) -> bool:
        return bool(self._pq("DELETE FROM price_aliases WHERE provider = ? AND name = ? RETURNING name",
                             provider, name))


class RedisPrices:
    """Prices and aliases in two hashes under the backend's prefix: ``prices`` (field: the
    JSON ``[provider, model, effective_from]``, value: the entry's JSON) and
    ``price_aliases`` (field: ``[provider, name]``, value: the model). Each change is one
    command, atomic on the server; every replica reads the same hashes."""

    supports_prices = True
    prefix: str
    _r: Any

    def put_price(self, provider: str, model: str, effective_from: str, entry: dict[str, Any]) -> None:
        self._r.hset(f"{self.prefix}prices", encode([provider, model, effective_from]), encode(entry))

    def list_prices(self) -> list[dict[str, Any]]:
        rows = sorted((tuple(_loads(k)), v) for k, v in self._r.hgetall(f"{self.prefix}prices").items())
        return [_entry(*key, v) for key, v in rows]

    def delete_price(self, provider: str, model: str, effective_from: str) -> bool:
        return bool(self._r.hdel(f"{self.prefix}prices", encode([provider, model, effective_from])))

    def put_alias(self, provider: str, name: str, model: str) -> None:
        self._r.hset(f"{self.prefix}price_aliases", encode([provider, name]), model)

    def list_aliases(self) -> list[dict[str, str]]:
        rows = sorted((tuple(_loads(k)), v.decode()) for k, v in
                      self._r.hgetall(f"{self.prefix}price_aliases").items())
        return [{"provider": p, "name": n, "model": m} for (p, n), m in rows]

    def delete_alias(self, provider: str, name: str) -> bool:
        return bool(self._r.hdel(f"{self.prefix}price_aliases", encode([provider, name])))
