"""PersistentDelivery: a durable queue that delivers dicts to the collector's
``/track`` endpoint, on the usageledger pipeline; and PersistentQueueManager for
maintenance of a journal file."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from ..core.config import DeliveryConfig, IniManager
from ..core.journal import SqliteJournal, is_journal_url, open_journal
from ..core.journal.sqlite import check_journal_file
from ..core.logs import OWNER, configure_logging, log_body, new_owner, release_logging
from ..core.pipeline import Pipeline
from ..core.recorder import open_fallbacks
from ..core.settings import DEFAULTS
from ..schema.eventtime import encode_stamped
from ..schema.records import KIND_RAW
from ..sinks.http import HttpSink

__all__ = ["PersistentDelivery", "PersistentQueueManager", "DeliveryConfig", "IniManager"]

log = logging.getLogger("usageledger.delivery")


class PersistentDelivery:
    """Durable, non-blocking delivery of usage payloads to ``{api_base}{api_url}/track``.

    ``enqueue`` does no I/O (``durability="buffered"``, the default): the payload is
    checked, encoded and appended to an in-memory buffer; a writer thread commits it to
    the SQLite journal (WAL) within ``flush_interval``, and a dispatcher thread delivers
    batches with retries, backoff and dead-lettering.
    """

    def __init__(
        self,
        config: DeliveryConfig | None = None,
        db_path: str | Path | None = None,
        *,
        sink: Any = None,
        lease_s: float = DEFAULTS.lease_s,
        fallback_dir: str | Path | None = None,
        exit_timeout: float = DEFAULTS.exit_timeout,
        **overrides: Any,
    ):
        if db_path is not None:
            overrides["db_path"] = db_path
        if config is None:
            config = DeliveryConfig.resolve(**overrides)
        elif overrides:
            config = DeliveryConfig.resolve(base=config, **overrides)
        self.config = config
        # this instance's threads are named after it: its records go to its own log file
        self._name = new_owner("usageledger-delivery")
        configure_logging(config.log_file, config.log_level, owner=self._name)
        self.sink = sink if sink is not None else HttpSink(
            config.api_base,
            config.api_url,
            api_key=config.api_key,
            timeout=config.timeout,
            compress=config.compress,
            body_logger=log_body if config.log_bodies else None,
        )
        self._pipeline = Pipeline(
            self.sink,
            config.settings(lease_s=lease_s, fallback_dir=fallback_dir, exit_timeout=exit_timeout),
            name=self._name,
        )
        self._submit = self._pipeline.submit
        self._warn_dead()

    def _warn_dead(self) -> None:
        try:
            dead = self._pipeline.journal.stats()["dead"]
        except Exception:
            return
        if dead:
            where = self._pipeline.journal.location
            log.warning(
                "%d failed deliveries wait in %s: see them with `usageledger failed %s` "
                "and requeue them with `usageledger requeue %s --all`",
                dead, where, where, where, extra={OWNER: self._name},
            )

    def enqueue(self, payload: dict[str, Any]) -> str:
        """Queue ``payload`` for delivery; returns its ``id`` (added when missing, a
        payload's own ``id`` is kept) and ``timestamp`` (the time of this call when
        missing, so a payload delivered hours later is still dated when it happened).
        Raises TypeError/ValueError for a payload that is not a JSON object; never raises
        for I/O."""
        id_, data = encode_stamped(payload)  # the event time travels with the record
        self._submit(id_, KIND_RAW, data)
        return id_

    def flush(self, timeout: float | None = None) -> bool:
        """Deliver everything queued so far; True when done before ``timeout``."""
        return self._pipeline.flush(timeout)

    def stats(self) -> dict[str, Any]:
        return self._pipeline.stats()

    def stop(self, timeout: float | None = None) -> bool:
        """Flush (deliver until ``timeout``) and close. Undelivered items stay queued."""
        try:
            return self._pipeline.stop(timeout)
        finally:
            release_logging(self._name)

    close = stop

    def __enter__(self) -> PersistentDelivery:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop(self._pipeline.exit_timeout)


class PersistentQueueManager:
    """Inspect and repair a journal file (or a ``redis://...?stream=NAME`` journal URL):
    stats, failures, requeue, purge."""

    def __init__(self, db_path: str | Path, *, busy_timeout_ms: int = 10_000,
                 fallback_dir: str | Path | None = None):
        if is_journal_url(db_path):  # a journal on a Redis stream: the same maintenance
            self.journal = open_journal(str(db_path))
            self._fallback_dir = None
            return
        path = Path(db_path).expanduser()
        if not path.exists():
            raise FileNotFoundError(f"no journal at {path}")
        # a maintenance tool must never "repair" (move aside, add tables to) a file a user
        # named by mistake: refuse anything that is not already a journal
        check_journal_file(path)
        self.journal = SqliteJournal(path, busy_timeout_ms=busy_timeout_ms)
        self._fallback_dir = fallback_dir

    def stats(self) -> dict[str, Any]:
        s = self.journal.stats()
        oldest = s.pop("oldest_ready_created")
        s["queued"] = s["ready"]
        s["failed"] = s["dead"]
        s["oldest_queued_age_s"] = None if oldest is None else round(time.time() - oldest, 3)
        # records of this journal's destination waiting in its fallback journals (written
        # while this file refused writes): the next pipeline on this journal delivers them
        s["fallback_waiting"] = 0
        s["fallback_journals"] = []
        local = isinstance(self.journal, SqliteJournal)  # a Redis stream's fallbacks are per host
        for fb in open_fallbacks(self.journal.path, self.journal.destination, self._fallback_dir) if local else []:
            try:
                fs = fb.stats()
            finally:
                fb.close()
            waiting = fs["ready"] + fs["inflight"]
            s["fallback_waiting"] += waiting
            s["fallback_journals"].append({"path": fb.location, "waiting": waiting, "dead": fs["dead"]})
        return s

    def failed(self, limit: int = 100) -> list[dict[str, Any]]:
        """Dead-lettered items, oldest first, with their error and decoded payload."""
        return [_describe(row) for row in self.journal.items("dead", limit)]

    def requeue(self, ids: list[str] | None = None) -> int:
        """Dead items (all when ``ids`` is None) back to the queue; returns how many."""
        return self.journal.requeue(ids)

    def purge(self, state: str = "dead", older_than: float | None = None) -> int:
        """Delete items in ``state`` (optionally created more than ``older_than`` seconds
        ago); returns how many."""
        cutoff = None if older_than is None else time.time() - older_than
        return self.journal.purge(state, cutoff)

    def close(self) -> None:
        self.journal.close()


def _describe(row: dict[str, Any]) -> dict[str, Any]:
    import msgspec

    out = dict(row)
    try:
        out["payload"] = msgspec.json.decode(out.pop("data"))
    except msgspec.DecodeError:
        out["payload"] = None
    return out

