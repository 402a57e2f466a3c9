"""Retention: bound a collector's storage while every summary and budget stays exact
(``usageledger retention apply``, ``serve --retention-days``; docs/collector.md).

Raw usage records older than N days (from the start of the UTC day N days ago) are folded
into daily rollups and deleted, one batch per transaction (storage/_retention.py); runs
whose ``start_time`` is older go the same way into daily counts. A project may have a
retention of its own (``project_days``); the others follow ``days``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from .base import StorageBackend, ts_us

__all__ = ["apply_retention", "cutoff_for", "RetentionLoop", "parse_project_days"]

log = logging.getLogger("usageledger.retention")

DEFAULT_BATCH = 5000


def cutoff_for(days: int, now: datetime | None = None) -> datetime:
    """The start of the UTC day ``days`` days before ``now``: records before it go."""
    if isinstance(days, bool) or not isinstance(days, int) or days < 1:
        raise ValueError(f"retention days must be a positive integer, got {days!r}")
    now = (now or datetime.now(UTC)).astimezone(UTC)
    return (now - timedelta(days=days)).replace(hour=0, minute=0, second=0, microsecond=0)


def parse_project_days(values: list[str] | None, option: str = "--project-days") -> dict[str, int]:
    """``["a=7", "b=30"]`` -> ``{"a": 7, "b": 30}`` (ValueError naming the option)."""
    out: dict[str, int] = {}
    for v in values or ():
        name, sep, days = v.partition("=")
        if not sep or not name or not days.strip().isdigit() or int(days) < 1:
            raise ValueError(f"{option} takes PROJECT=DAYS with DAYS a positive integer, got {v!r}")
        out[name.strip()] = int(days)
    return out


def apply_retention(store: StorageBackend, days: int | None = None,
                    project_days: Mapping[str, int] | None = None, *, now: datetime | None = None,
                    batch: int = DEFAULT_BATCH, runs: bool = True,
                    stop: Callable[[], bool] | None = None) -> dict[str, Any]:
    """Fold and delete what is older than the retention of each project (``days`` for the
    projects without one of their own; None: only those in ``project_days``). Safe to
    interrupt at any point and to run again; several processes may run it at once.
    ``stop()`` is asked between batches (True: return now, the rest waits for the next
    run). Returns counts and cutoffs."""
    if not getattr(store, "supports_retention", False):
        raise ValueError(f"{type(store).__name__} does not support retention: use sqlite, "
                         "postgresql or memory storage")
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ValueError(f"batch must be a positive integer, got {batch!r}")
    per_project = dict(project_days or {})
    plan: list[tuple[str | None, datetime]] = [(p, cutoff_for(d, now)) for p, d in sorted(per_project.items())]
    if days is not None:
        plan.append((None, cutoff_for(days, now)))
    if not plan:
        raise ValueError("nothing to retain: give days or project_days")
    excluded = sorted(per_project)
    folded = deleted_runs = 0
    stopped = stop or (lambda: False)
    for project, cutoff in plan:
        us = ts_us(cutoff)
        # the mark first: raw records are complete from it on, whatever happens next
        store.set_retention_mark(project, us)  # type: ignore[attr-defined]
        while not stopped() and (n := store.retain(us, project, excluded, batch)):  # type: ignore[attr-defined]
            folded += n
        if runs:
            while not stopped() and (n := store.retain_runs(us, project, excluded, batch)):  # type: ignore[attr-defined]
                deleted_runs += n
    cutoffs = {("*" if p is None else p): c.isoformat().replace("+00:00", "Z") for p, c in plan}
    log.info("retention folded %d records and %d runs (cutoffs %s)", folded, deleted_runs, cutoffs)
    return {"records": folded, "runs": deleted_runs, "cutoffs": cutoffs}


class RetentionLoop:
    """``serve --retention-days``: applies retention now and then every ``interval_s`` on a
    daemon thread until stopped (a failure is logged and tried again next time)."""

    def __init__(self, store: StorageBackend, days: int | None, project_days: Mapping[str, int] | None = None,
                 interval_s: float = 3600.0):
        if days is None and not project_days:
            raise ValueError("retention needs days or project_days")
        if days is not None:
            cutoff_for(days)  # checks it
        self.store, self.days, self.project_days, self.interval_s = store, days, dict(project_days or {}), interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.last: dict[str, Any] | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="usageledger-retention", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                # a shutdown waits for one batch at most, not the whole pass
                self.last = apply_retention(self.store, self.days, self.project_days, stop=self._stop.is_set)
            except Exception as exc:
                log.warning("retention failed, trying again in %.0f s: %r", self.interval_s, exc)
            self._stop.wait(self.interval_s)

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
