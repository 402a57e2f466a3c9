"""Budgets in the storage backend (the optional part of the storage contract that
:mod:`usageledger.budgets` uses): definitions by name, and alert claims.

An alert claim is a row keyed ``(budget, window_start, threshold)``: the first process to
insert it owns the alert, in the same database every collector replica shares, so an alert
is sent once however many replicas see the crossing. A claim is marked ``queued`` once the
alert is committed to the sender's journal; a claim left unqueued (its claimer died in
between) is taken over by :meth:`reclaim_alerts` after a delay.

Two implementations: dicts for the memory backend, and SQL for sqlite and postgres (one
text, the placeholder swapped). The tables are created on first use.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import msgspec

from ..schema.records import encode
from ._sql import SideSql

__all__ = ["MemoryBudgets", "SqlBudgets", "BUDGET_TABLES"]

_loads = msgspec.json.decode

BUDGET_TABLES = (
    "CREATE TABLE IF NOT EXISTS budgets (name TEXT PRIMARY KEY, definition TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS budget_alerts (budget TEXT NOT NULL, window_start TEXT NOT NULL, "
    "threshold TEXT NOT NULL, delivery TEXT NOT NULL, claimed_at DOUBLE PRECISION NOT NULL, "
    "queued INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (budget, window_start, threshold))",
)


class MemoryBudgets:
    """Budgets and claims in dicts (the memory backend: nothing survives the process)."""

    supports_budgets = True

    def _budget_state(self) -> tuple[threading.Lock, dict[str, Any], dict[tuple[str, str, str], list[Any]]]:
        state = self.__dict__.get("_budgets_state")
        if state is None:
            state = self.__dict__.setdefault("_budgets_state", (threading.Lock(), {}, {}))
        return state

    def put_budget(self, name: str, definition: dict[str, Any]) -> None:
        lock, defs, _ = self._budget_state()
        with lock:
            defs[name] = _loads(encode(definition))

    def list_budgets(self) -> dict[str, dict[str, Any]]:
        lock, defs, _ = self._budget_state()
        with lock:
            return {k: _loads(encode(defs[k])) for k in sorted(defs)}

    def delete_budget(self, name: str) -> bool:
        lock, defs, claims = self._budget_state()
        with lock:
            for key in [k for k in claims if k[0] == name]:
                del claims[key]
            return defs.pop(name, None) is not None

    def claim_alert(self, budget: str, window_start: str, threshold: str, delivery: dict[str, Any]) -> bool:
        lock, _, claims = self._budget_state()
        with lock:
            key = (budget, window_start, threshold)
            if key in claims:
                return False
            claims[key] = [encode(delivery), time.time(), False]
            return True

    def alert_queued(self, budget: str, window_start: str, threshold: str) -> None:
        lock, _, claims = self._budget_state()
        with lock:
            claim = claims.get((budget, window_start, threshold))
            if claim is not None:
                claim[2] = True

    def reclaim_alerts(self, older_than_s: float) -> list[dict[str, Any]]:
        lock, _, claims = self._budget_state()
        now = time.time()
        out = []
        with lock:
            for claim in claims.values():
                if not claim[2] and claim[1] < now - older_than_s:
                    claim[1] = now
                    out.append(_loads(claim[0]))
        return out


class SqlBudgets(SideSql):
    """Budgets and claims in two tables. A backend supplies ``_side_sql(sql, params)``:
    run one statement (written with ``?`` placeholders) in its own transaction and return
    its rows (none for a statement without result). The same hook serves prices
    (:class:`~usageledger.storage._prices.SqlPrices`); ``_budget_sql`` is its older name."""

    supports_budgets = True
    def _budget_sql(self, sql: str, params: list[Any]) -> list[tuple[Any, ...]]:
        return self._side_sql(sql, params)

    def _create_budget_tables(self) -> None:
        for ddl in BUDGET_TABLES:
            self._side_sql(ddl, [])

    def _bq(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        if not self.__dict__.get("_budget_tables"):
            self._create_budget_tables()
            self.__dict__["_budget_tables"] = True
        return self._side(sql, params)

    def put_budget(self, name: str, definition: dict[str, Any]) -> None:
        self._bq("INSERT INTO budgets (name, definition) VALUES (?, ?) ON CONFLICT (name) "
                 "DO UPDATE SET definition = excluded.definition", name, encode(definition).decode())

    def list_budgets(self) -> dict[str, dict[str, Any]]:
        rows = self._bq("SELECT name, definition FROM budgets ORDER BY name")
        return {name: _loads(definition) for name, definition in rows}

    def delete_budget(self, name: str) -> bool:
        self._bq("DELETE FROM budget_alerts WHERE budget = ?", name)
        return bool(self._bq("DELETE FROM budgets WHERE name = ? RETURNING name", name))

    def claim_alert(self, budget: str, window_start: str, threshold: str, delivery: dict[str, Any]) -> bool:
        # the primary key decides, in the database every replica shares
        rows = self._bq(
            "INSERT INTO budget_alerts (budget, window_start, threshold, delivery, claimed_at, queued) "
            "VALUES (?, ?, ?, ?, ?, 0) ON CONFLICT (budget, window_start, threshold) DO NOTHING "
            "RETURNING budget", budget, window_start, threshold, encode(delivery).decode(), time.time())
        return bool(rows)

    def alert_queued(self, budget: str, window_start: str, threshold: str) -> None:
        self._bq("UPDATE budget_alerts SET queued = 1 WHERE budget = ? AND window_start = ? "
                 "AND threshold = ?", budget, window_start, threshold)

    def reclaim_alerts(self, older_than_s: float) -> list[dict[str, Any]]:
        now = time.time()
        rows = self._bq("UPDATE budget_alerts SET claimed_at = ? WHERE queued = 0 AND claimed_at < ? "
                        "RETURNING delivery", now, now - older_than_s)
        return [_loads(r[0]) for r in rows]
