"""The one implementation of budgets, used by the collector's routes, ``Meter.budgets``
and the CLI: definitions, spend, status, checks, and alert claiming.

Spend is read from the stored records (``aggregate`` grouped by currency over the scope
filters and the window), so a record counts once by its id and in the window of its own
event time, whenever it arrived. Records in another currency than the budget's do not
count and are reported under ``other_currencies``.

Reads are cached for ``cache_s`` seconds (definitions and each budget's spend; a read
that took t seconds for at least ten times t), so a check costs a dictionary lookup most
of the time; a stale spend whose read was slow (over 0.25 s) is answered while one
background thread reads it again, so only the first check of such a budget and window
waits on its read. A hard stop may therefore
let through what is spent within that time. Alerts never use the cache:
:meth:`Budgets.evaluate` reads spend afresh.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from ..schema.records import UsageRecord
from ..storage.base import ts_us
from .model import (
    SCOPE_KEYS,
    Budget,
    BudgetInputError,
    iso,
    parse_budget,
    previous_window,
    window,
    window_name,
)

if TYPE_CHECKING:
    from ..storage.base import StorageBackend
    from .alerts import AlertSender

__all__ = ["Budgets", "AlertLoop", "Spend", "check_attributes"]

log = logging.getLogger("usageledger.budgets")

_DAY = timedelta(days=1)
_US_PER_DAY = 86_400_000_000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def plain(d: Decimal) -> str:
    """An exact decimal string without exponent ("0.00000075")."""
    return format(d, "f")


def canonical(d: Decimal) -> str:
    """A sum as the same string whatever backend summed it: no exponent, no trailing
    zeros (PostgreSQL's NUMERIC sum keeps the scale of its terms: 2.00, where SQLite says 2)."""
    return format(d.normalize(), "f") if d else "0"


@dataclass
class Spend:
    """What a budget's window holds: the exact cost in its currency, how many records
    counted (``unknown_cost`` of them had no cost), and the other currencies seen."""

    spent: Decimal = Decimal(0)
    records: int = 0
    unknown_cost: int = 0
    other: dict[str, dict[str, Any]] = field(default_factory=dict)


def check_attributes(attributes: dict[str, Any], source: str = "") -> dict[str, Any]:
    """The attributes of a call as a check takes them: scope keys only (None values are
    dropped), strings, and ``tags`` as a dict or ``k:v`` strings."""
    out: dict[str, Any] = {}
    where = f" (from {source})" if source else ""
    for k, v in attributes.items():
        if k not in SCOPE_KEYS:
            raise BudgetInputError(k, f"is not a budget attribute; attributes are {', '.join(SCOPE_KEYS)}{where}")
        if v is None:
            continue
        if k == "tags":
            out["tags"] = _tags(v, where)
        elif not isinstance(v, str):
            raise BudgetInputError(k, f"must be a string, got {v!r}{where}")
        else:
            out[k] = v
    return out


def _tags(value: Any, where: str) -> dict[str, str]:
    if isinstance(value, dict):
        if all(isinstance(a, str) and isinstance(b, str) for a, b in value.items()):
            return dict(value)
    elif isinstance(value, list | tuple | str):
        out = {}
        for t in [value] if isinstance(value, str) else value:
            key, sep, val = t.partition(":") if isinstance(t, str) else ("", "", "")
            if not sep or not key:
                raise BudgetInputError("tags", f"each tag must look like key:value, got {t!r}{where}")
            out[key] = val
        return out
    raise BudgetInputError("tags", f"must be a dict of string to string or key:value strings, got {value!r}{where}")


class Budgets:
    """Budgets over a storage backend.

    ``definitions``: where budgets and alert claims live (default: ``storage`` itself; a
    backend without them, such as JSONL or Redis, needs another, e.g. a MemoryStorage).
    ``alerts``: an :class:`~usageledger.budgets.alerts.AlertSender` (or a function making
    one on first use); without it :meth:`evaluate` sends nothing. ``before_read`` runs
    before every read of spend (a Meter flushes its pipeline there)."""

    def __init__(
        self,
        storage: StorageBackend,
        *,
        definitions: StorageBackend | None = None,
        cache_s: float = 1.0,
        alerts: AlertSender | Callable[[], AlertSender] | None = None,
        before_read: Callable[[], Any] | None = None,
        reclaim_after_s: float = 30.0,
    ):
        if isinstance(cache_s, bool) or not isinstance(cache_s, int | float) or cache_s < 0:
            raise ValueError(f"cache_s must be a non-negative number of seconds, got {cache_s!r}")
        self.storage = storage
        self.definitions = storage if definitions is None else definitions
        if not getattr(self.definitions, "supports_budgets", False):
            raise NotImplementedError(
                f"{type(self.definitions).__name__} does not store budgets (memory, sqlite and "
                "postgres do)")
        self.cache_s = float(cache_s)
        self.reclaim_after_s = reclaim_after_s
        self._alerts = alerts
        self._before_read = before_read
        self._lock = threading.Lock()
        self._defs: tuple[float, dict[str, Budget]] | None = None
        #: (budget, fingerprint, window) -> (read at, spend, seconds it stays fresh, read time)
        self._spend: dict[tuple[str, str, str], tuple[float, Spend, float, float]] = {}
        self._refreshing: set[tuple[str, str, str]] = set()
        #: spend last read per (budget, fingerprint, window) plus what this process stored
        #: since: a lower bound that spares reads while no threshold can be reached
        self._known: dict[tuple[str, str, str], Decimal] = {}
        #: alert keys known to be claimed (by any process): no need to read their spend
        self._claimed: set[tuple[str, str, str]] = set()

    # -- definitions ----------------------------------------------------------------------------
    def set(self, name: str, *, limit: Any, period: str = "month", currency: str = "USD",
            scope: dict[str, Any] | None = None, alert_thresholds: Iterable[float] = (),
            webhook_url: str | None = None, **scope_keys: Any) -> dict[str, Any]:
        """Create or replace a budget; scope keys may be given directly
        (``user_id="u1"``, ``tags={"team": "a"}``) or as ``scope={...}``. Returns its
        definition."""
        merged = {**(scope or {}), **scope_keys}
        return self.put(name, {"scope": merged, "period": period, "limit": limit, "currency": currency,
                               "alert_thresholds": list(alert_thresholds), "webhook_url": webhook_url})

    def put(self, name: str, body: dict[str, Any], source: str = "") -> dict[str, Any]:
        """Create or replace a budget from its JSON form (validated: BudgetInputError)."""
        budget = parse_budget(name, body, source)
        self.definitions.put_budget(name, budget.definition())
        self._forget()
        return {"name": name, **budget.definition()}

    def remove(self, name: str) -> bool:
        """Delete a budget (and its alert claims); False when there was none."""
        done = self.definitions.delete_budget(name)
        self._forget()
        with self._lock:
            self._claimed = {k for k in self._claimed if k[0] != name}
        return done

    def _forget(self) -> None:
        with self._lock:
            self._defs = None
            self._spend.clear()

    def budgets(self, *, fresh: bool = False) -> dict[str, Budget]:
        """The budgets by name (cached for ``cache_s``)."""
        now = time.monotonic()
        with self._lock:
            cached = self._defs
        if cached is not None and not fresh and now - cached[0] < self.cache_s:
            return cached[1]
        out = {}
        for name, definition in self.definitions.list_budgets().items():
            try:
                out[name] = parse_budget(name, definition, "storage")
            except BudgetInputError as exc:  # written by something else: skip, say so
                log.warning("budget %r in storage is not valid and is ignored: %s", name, exc)
        with self._lock:
            self._defs = (now, out)
        return out

    # -- spend and status -----------------------------------------------------------------------
    def spend(self, budget: Budget, start: datetime | None, end: datetime | None) -> Spend:
        """The exact spend of ``budget`` in ``[start, end)`` (None: unbounded), uncached."""
        rows = self.storage.aggregate(("currency",), since=start, until=end, **budget.filters())
        out = Spend()
        for r in rows:
            currency = r.get("currency") or "USD"
            if currency == budget.currency:
                out.spent += r["cost"]
                out.records += r["count"]
                out.unknown_cost += r["unknown_cost"]
            else:
                o = out.other.setdefault(currency, {"cost": Decimal(0), "records": 0})
                o["cost"] += r["cost"]
                o["records"] += r["count"]
        return out

    #: a read that took t seconds is kept at least SLOW_READ_FACTOR * t: a budget whose
    #: read scans much (one over all usage, at 10^6 records in its window: 0.3 to 7 s
    #: measured) then costs at most a tenth of the time, however often it is checked
    SLOW_READ_FACTOR = 10
    #: reads slower than this are refreshed in the background while the stale answer serves
    #: (at 0.05 s, 100 per-user budgets read in 60 ms each on a loaded box kept refresh
    #: threads busy all the time and a cached check took 31 ms instead of microseconds)
    SLOW_READ_S = 0.25

    def _cached_spend(self, budget: Budget, start: datetime | None, end: datetime | None) -> Spend:
        """The cached spend while fresh. A stale one whose read was slow (``SLOW_READ_S``, 0.25 s)
        is still answered while one thread reads it again in the background, so checks
        never wait on a long read but the first; a cheap one is read again at once."""
        key = (budget.name, budget.fingerprint, window_name(start))
        now = time.monotonic()
        with self._lock:
            hit = self._spend.get(key)
            if hit is not None and now - hit[0] >= hit[2]:
                if hit[3] < self.SLOW_READ_S:
                    hit = None
                elif key not in self._refreshing:
                    self._refreshing.add(key)
                    threading.Thread(target=self._refresh, args=(key, budget, start, end),
                                     name="usageledger-budget-refresh", daemon=True).start()
        if hit is not None:
            return hit[1]
        sp = self.spend(budget, start, end)
        self._remember(key, now, sp, time.monotonic() - now)
        return sp

    def _refresh(self, key: tuple[str, str, str], budget: Budget, start: datetime | None, end: datetime | None) -> None:
        try:
            t0 = time.monotonic()
            self._remember(key, t0, self.spend(budget, start, end), time.monotonic() - t0)
        except Exception as exc:  # the stale answer stays; the next check tries again
            log.warning("refreshing the spend of budget %r failed: %r", budget.name, exc)
        finally:
            with self._lock:
                self._refreshing.discard(key)

    def _remember(self, key: tuple[str, str, str], when: float, sp: Spend, took: float) -> None:
        ttl = 0.0 if self.cache_s == 0 else max(self.cache_s, self.SLOW_READ_FACTOR * took)
        with self._lock:
            if len(self._spend) > 10_000:
                self._spend.clear()  # windows move on: old keys are never read again
            self._spend[key] = (when, sp, ttl, took)

    def status_of(self, budget: Budget, at: datetime | None = None, *, cached: bool = True) -> dict[str, Any]:
        """The definition plus ``spent``, ``remaining``, ``fraction``, ``exceeded``,
        ``window_start``, ``window_end``, ``records``, ``unknown_cost`` and
        ``other_currencies`` for the window holding ``at`` (default: now)."""
        start, end = window(budget.period, at or datetime.now(UTC))
        if cached:
            sp = self._cached_spend(budget, start, end)
        else:
            now = time.monotonic()
            sp = self.spend(budget, start, end)
            self._remember((budget.name, budget.fingerprint, window_name(start)), now, sp, time.monotonic() - now)
        return status_dict(budget, sp, start, end)

    def status(self, name: str, at: datetime | None = None) -> dict[str, Any] | None:
        """One budget's status, read afresh (not from the cache), or None when there is
        no such budget."""
        self._read()
        budget = self.budgets(fresh=True).get(name)
        return None if budget is None else self.status_of(budget, at, cached=False)

    def list(self, at: datetime | None = None) -> list[dict[str, Any]]:
        """Every budget's status (read afresh), by name."""
        self._read()
        return [self.status_of(b, at, cached=False) for b in self.budgets(fresh=True).values()]

    def check(self, *, at: datetime | None = None, **attributes: Any) -> dict[str, Any]:
        """Whether a call with these attributes (provider, model, user_id, customer_key,
        session_id, tags) may go ahead: ``{"allowed", "exceeded": [names], "budgets":
        [status of every budget whose scope covers the call]}``."""
        attrs = check_attributes(attributes)
        self._read()
        statuses = [self.status_of(b, at) for b in self._index(self.budgets()).covering(attrs)]
        exceeded = [s["name"] for s in statuses if s["exceeded"]]
        return {"allowed": not exceeded, "exceeded": exceeded, "budgets": statuses}

    def _index(self, budgets: dict[str, Budget]) -> ScopeIndex:
        """The scope index of these definitions (kept while they are the cached ones)."""
        idx = self.__dict__.get("_scope_index")
        if idx is None or idx.source is not budgets:
            idx = self.__dict__["_scope_index"] = ScopeIndex(budgets)
        return idx

    def _read(self) -> None:
        if self._before_read is not None:
            self._before_read()

    # -- alerts ---------------------------------------------------------------------------------
    @property
    def alerts(self) -> AlertSender | None:
        a = self._alerts
        if a is not None and not hasattr(a, "send"):
            with self._lock:
                if not hasattr(self._alerts, "send"):
                    self._alerts = self._alerts()  # type: ignore[misc,operator]
                a = self._alerts
        return a  # type: ignore[return-value]

    def evaluate(self, records: Iterable[UsageRecord] | None = None, *, previous: bool = False) -> list[dict[str, Any]]:
        """Claim and send the alerts due: for the windows the given (newly stored) records
        fall in, or with ``records=None`` every budget's current window (and the one
        before with ``previous=True``). Returns the alerts this call claimed. Spend is
        read afresh; a threshold is reached when ``spent >= threshold * limit`` (and
        something was spent)."""
        index = self._index(self.budgets())
        watched = index.watched
        if not watched or self._alerts is None:
            return []
        # (budget, window) -> [budget, start, end, cost of the given records in its currency]
        targets: dict[tuple[str, str], list[Any]] = {}

        def add(b: Budget, win: tuple[datetime | None, datetime | None] | None, cost: Decimal | None) -> None:
            if win is not None:
                t = targets.setdefault((b.name, window_name(win[0])), [b, *win, cost])
                if cost is not None and t[3] is not None:
                    t[3] += cost

        if records is None:
            now = datetime.now(UTC)
            for b in watched:
                add(b, window(b.period, now), None)
                if previous:
                    add(b, previous_window(b.period, now), None)
        else:
            # cost per distinct (attributes, day, currency) of the batch: windows are whole days
            groups: dict[tuple[Any, ...], Decimal] = {}
            for r in records:
                key = (r.provider, r.model, r.user_id, r.customer_key, r.session_id,
                       tuple(sorted(r.tags.items())) if r.tags else (), ts_us(r.timestamp) // _US_PER_DAY,
                       r.currency)
                groups[key] = groups.get(key, Decimal(0)) + (r.cost or 0)
            for (provider, model, user, customer, session, tags, day, currency), cost in groups.items():
                attrs = {"provider": provider, "model": model, "user_id": user, "customer_key": customer,
                         "session_id": session, "tags": dict(tags)}
                for b in index.covering(attrs, watched_only=True):
                    add(b, window(b.period, _EPOCH + day * _DAY), cost if currency == b.currency else Decimal(0))
        claimed = []
        for b, start, end, added in targets.values():
            claimed += self._evaluate_window(b, start, end, added)
        return claimed

    def _evaluate_window(self, b: Budget, start: datetime | None, end: datetime | None,
                         added: Decimal | None = None) -> list[dict[str, Any]]:
        """Claim the thresholds reached in one window. ``added``: the cost of records this
        process stored since it last read the window's spend; while the spend read then
        plus ``added`` stays below the lowest threshold not yet claimed, nothing is read
        (100 budgets re-read on every batch halved /track throughput). Records stored by
        other replicas are not in ``added``: the periodic pass (``added=None``) reads
        afresh."""
        wname = window_name(start)
        with self._lock:
            pending = [t for t in b.alert_thresholds if (b.name, wname, _tkey(t)) not in self._claimed]
        if not pending:
            return []
        key = (b.name, b.fingerprint, wname)
        if added is not None:
            with self._lock:
                known = self._known.get(key)
                if known is not None:
                    known += added
                    self._known[key] = known
            if known is not None and known < b.limit * Decimal(repr(min(pending))):
                return []
        now = time.monotonic()
        sp = self.spend(b, start, end)
        self._remember(key, now, sp, time.monotonic() - now)
        with self._lock:
            if len(self._known) > 10_000:
                self._known.clear()
            self._known[key] = sp.spent
        out = []
        for t in pending:
            if sp.spent <= 0 or sp.spent < b.limit * Decimal(repr(t)):
                continue
            body = {"budget": b.name, "threshold": t, "spent": canonical(sp.spent), "limit": plain(b.limit),
                    "currency": b.currency, "window_start": iso(start), "window_end": iso(end),
                    "scope": b.definition()["scope"]}
            key = f"{b.name}|{wname}|{_tkey(t)}"
            delivery = {"url": b.webhook_url, "key": key, "body": body,
                        "budget": b.name, "window_start": wname, "threshold": _tkey(t)}
            if self.definitions.claim_alert(b.name, wname, _tkey(t), delivery):
                self._queue(delivery)
                out.append(body)
            with self._lock:
                self._claimed.add((b.name, wname, _tkey(t)))
        return out

    def _queue(self, delivery: dict[str, Any]) -> None:
        sender = self.alerts
        if sender is None:
            return
        sender.send(delivery["url"], delivery["key"], delivery["body"])
        # once committed to the journal the alert cannot be lost; until then a crash
        # leaves the claim unqueued and reclaim_alerts() sends it after reclaim_after_s
        self.definitions.alert_queued(delivery["budget"], delivery["window_start"], delivery["threshold"])

    def reclaim(self) -> int:
        """Queue the alerts whose claimer died between claim and queue; how many."""
        if self._alerts is None:
            return 0
        found = self.definitions.reclaim_alerts(self.reclaim_after_s)
        for delivery in found:
            log.warning("queueing alert %s left unqueued by a process that stopped", delivery.get("key"))
            self._queue(delivery)
        return len(found)


class ScopeIndex:
    """Budgets by the values of their scope keys, so finding the budgets that cover a
    call costs one dict lookup per distinct set of scope keys instead of a test per
    budget (a batch of 1,000 records against 100 budgets was 100,000 tests)."""

    def __init__(self, budgets: dict[str, Budget]):
        self.source = budgets
        self.watched = [b for b in budgets.values() if b.webhook_url and b.alert_thresholds]
        self._by_fields: dict[tuple[str, ...], dict[tuple[Any, ...], list[Budget]]] = {}
        for b in budgets.values():  # by name, so every answer lists budgets by name
            fields = _scope_fields(b.scope)
            values = tuple(_scope_value(b.scope, f) for f in fields)
            self._by_fields.setdefault(fields, {}).setdefault(values, []).append(b)

    def covering(self, attributes: dict[str, Any], *, watched_only: bool = False) -> list[Budget]:
        """The budgets covering a call with these attributes, by name."""
        out: list[Budget] = []
        for fields, table in self._by_fields.items():
            found = table.get(tuple(_scope_value(attributes, f) for f in fields))
            if found:
                out += [b for b in found if b.webhook_url and b.alert_thresholds] if watched_only else found
        out.sort(key=lambda b: b.name)
        return out


def _scope_fields(scope: dict[str, Any]) -> tuple[str, ...]:
    return tuple(sorted(k for k in scope if k != "tags")) + tuple(f"tag:{t}" for t in sorted(scope.get("tags", ())))


def _scope_value(attributes: dict[str, Any], field: str) -> Any:
    if field.startswith("tag:"):
        return (attributes.get("tags") or {}).get(field[4:])
    return attributes.get(field)


def _tkey(t: float) -> str:
    """A threshold as it appears in alert keys: ``0.8``, ``1``."""
    return format(t, "g")


def status_dict(b: Budget, sp: Spend, start: datetime | None, end: datetime | None) -> dict[str, Any]:
    remaining = b.limit - sp.spent
    return {
        "name": b.name,
        **b.definition(),
        "spent": canonical(sp.spent),
        "remaining": plain(remaining if remaining > 0 else Decimal(0)),
        "fraction": None if b.limit == 0 else round(float(sp.spent / b.limit), 6),
        "exceeded": sp.spent >= b.limit,
        "window_start": iso(start),
        "window_end": iso(end),
        "records": sp.records,
        "unknown_cost": sp.unknown_cost,
        "other_currencies": {c: {"cost": canonical(o["cost"]), "records": o["records"]}
                             for c, o in sorted(sp.other.items())},
    }


class AlertLoop:
    """Evaluates alerts off the request path: :meth:`note` (called with each batch of
    newly stored records) only appends to a deque; a thread evaluates what accumulated at
    most every ``interval`` seconds, so a /track request never waits for an aggregate.

    At start it evaluates every budget's current and previous window (records stored
    before a crash, whose evaluation the crash lost) and takes over unqueued claims. Every
    ``sweep_every`` seconds it takes over unqueued claims again and reads every current
    window afresh (spend stored through other replicas, which :meth:`note` never sees)."""

    def __init__(self, budgets: Budgets, *, interval: float = 0.5, sweep_every: float = 10.0):
        self.budgets = budgets
        self.interval = interval
        self.sweep_every = sweep_every
        self._pending: deque[list[UsageRecord]] = deque()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._everything = False
        self._start_lock = threading.Lock()

    #: batches waiting beyond this are replaced by one evaluation of every current window
    MAX_PENDING = 1000

    def note(self, records: list[UsageRecord]) -> None:
        if records:
            if self._thread is None:
                self.start()  # an app served without its lifespan still evaluates
            if len(self._pending) >= self.MAX_PENDING:
                self._pending.clear()  # memory stays bounded; nothing is missed:
                self._everything = True  # the windows of now and before are evaluated
            self._pending.append(records)
            self._wake.set()

    def start(self) -> None:
        with self._start_lock:
            if self._thread is None:
                self._stop.clear()
                self._thread = threading.Thread(target=self._run, name="usageledger-budget-alerts", daemon=True)
                self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        startup_done = False
        last_sweep = time.monotonic()
        while not self._stop.is_set():
            try:
                if not startup_done or self._everything:
                    self._everything = False
                    self.budgets.evaluate(None, previous=True)
                if not startup_done or time.monotonic() - last_sweep >= self.sweep_every:
                    self.budgets.reclaim()
                    if startup_done:
                        self.budgets.evaluate(None)
                    last_sweep = time.monotonic()
                startup_done = True
                batch: list[UsageRecord] = []
                while self._pending:
                    batch += self._pending.popleft()
                if batch:
                    try:
                        self.budgets.evaluate(batch)
                    except Exception:
                        self._pending.appendleft(batch)  # evaluate them again next time
                        raise
            except Exception:
                log.exception("evaluating budget alerts failed; trying again in 1 s")
                self._stop.wait(1.0)
                continue
            self._stop.wait(self.interval)  # at most one pass per interval
            self._wake.wait(self.sweep_every)
            self._wake.clear()
