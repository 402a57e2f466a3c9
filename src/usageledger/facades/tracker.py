"""UsageTracker: record LLM usage without stalling a streaming loop and keep
daily totals in a JSON file.

``record()`` validates, builds a UsageRecord and hands it to the core pipeline (one append
to the recorder's buffer); the journal commit follows within 50 ms and the dispatcher
writes the summary file through :class:`~usageledger.sinks.summary.SummarySink` every
``flush_interval`` seconds or as soon as ``flush_size`` records wait. Records stay in the
journal until a write of the file succeeds.

Reads (``get_summary``, ``get_today``) add the records not yet in the file: the tracker
keeps each record it accepted in a dict until the store reports it counted; the store
does that under the lock :meth:`SummaryStore.snapshot
<usageledger.summary_store.SummaryStore.snapshot>` is taken under, and the snapshot drops
the counted ones from that dict, so a record is seen in the file or as pending, never
both and never neither.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterable, Mapping
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from ..core import _hooks, paths
from ..core.pipeline import Pipeline
from ..core.settings import DEFAULTS, Settings, parse
from ..integrations.litellm import LiteLLMHooks
from ..integrations.litellm import split_model as _split_model
from ..integrations.litellm import usage_from_litellm as _from_litellm  # noqa: F401  (old name)
from ..schema.records import KIND_USAGE, UsageRecord, decode_usage, make_usage_record
from ..schema.totals import PART_SUMS, TOKEN_SUMS, Totals
from ..sinks.summary import SummarySink
from ..summary.document import Days, apply_records, day_of, entries, in_range
from ..summary.store import SummaryStore

__all__ = ["UsageTracker"]

log = logging.getLogger("usageledger.tracker")

#: attempts before a record would be dead-lettered: in effect never, since a summary file
#: that refuses writes for a while must not lose records
_MAX_ATTEMPTS = 1_000_000_000


def default_storage_path() -> Path:
    return paths.summary_file()


class UsageTracker(LiteLLMHooks):
    """Daily LLM usage totals in a JSON file, recorded without blocking.

    ``storage_path``: the summary file (default: ``usage_summary.json`` in the user data
    dir). ``flush_interval`` / ``flush_size``: the file is written at most every
    ``flush_interval`` seconds, sooner when ``flush_size`` records wait (they are the
    pipeline's ``batch_interval`` / ``max_batch_size``; the journal commit stays at 50 ms).
    ``prices``: overrides per model, as for :func:`usageledger.pricing.calculate_cost`.
    ``backup_dir`` / ``emergency_dir``: the failure tiers (default: platformdirs).
    ``synchronous=True``: ``record()`` writes the file in the caller's thread and returns
    after the write (the journal only takes records whose write failed).
    ``durability``: of the journal (``buffered``, ``committed``, ``fsync``, ``memory``).
    A tracker is also a LiteLLM callback (:class:`~usageledger.integrations.litellm.LiteLLMHooks`):
    ``litellm.callbacks = [tracker.litellm_callback()]``.
    """

    def __init__(
        self,
        storage_path: str | os.PathLike[str] | None = None,
        *,
        flush_interval: float = 5.0,
        flush_size: int = 10,
        prices: Mapping[str, Any] | None = None,
        backup_dir: str | os.PathLike[str] | None = None,
        emergency_dir: str | os.PathLike[str] | None = None,
        synchronous: bool = False,
        durability: str | None = None,
        journal_path: str | os.PathLike[str] | None = None,
        max_backoff: float = 30.0,
        dedup_window: int | None = None,
        max_pending: int = 100_000,
        exit_timeout: float = 5.0,
        lease_s: float = 15.0,
    ):
        # the tracker's flush_interval / flush_size are the pipeline's batch_interval /
        # max_batch_size: checked here under the names the caller used
        settings = Settings(
            durability="committed" if synchronous and durability is None else (durability or "buffered"),
            batch_interval=parse("flush_interval", flush_interval, "argument"),
            max_batch_size=parse("flush_size", flush_size, "argument"),
            max_attempts=_MAX_ATTEMPTS,
            base_delay=min(DEFAULTS.base_delay, parse("max_backoff", max_backoff, "argument")),
            max_backoff=max_backoff,
            exit_timeout=exit_timeout,
            lease_s=lease_s,
            journal_path=journal_path,
        )
        if not isinstance(max_pending, int) or max_pending < 0:
            raise ValueError(f"max_pending must be an integer >= 0, got {max_pending!r}")
        from ..prices.pricing import check_prices

        self.prices = check_prices(prices)
        self.storage_path = Path(storage_path or default_storage_path()).expanduser().absolute()
        if self.storage_path.is_dir():
            log.error("summary path %s is a directory; writes go to the backup location", self.storage_path)
        self.synchronous = bool(synchronous)
        self.max_pending = max_pending
        self._pending: dict[str, UsageRecord] = {}
        self.recorded = 0
        self.untracked = 0  # accepted while the pending map was full: not in reads until written
        if dedup_window is None:
            # a redelivery follows a lost ack of the batch(es) in flight, and a journal that
            # cannot ack cannot claim either: a few batches would do, 200 are kept
            dedup_window = max(2_000, 4 * settings.max_batch_size)
        self.sink = SummarySink(
            self.storage_path, backup_dir=backup_dir, emergency_dir=emergency_dir,
            price=self._price_record, on_applied=self._counted, dedup_window=dedup_window,
        )
        if settings.journal_path is None and settings.durability != "memory":
            settings = settings.replace(journal_path=self._journal_beside(self.storage_path))
        emergency = self.sink.locations[-1].path.parent
        self._pipeline = Pipeline(
            self.sink,
            settings.replace(fallback_dir=emergency / "journal"),
            name="usageledger-tracker",
        )
        self._submit = self._pipeline.submit
        self._closed = False
        # the parent delivers what it had accepted; the child starts with nothing pending
        _hooks.reset_in_child(self)
        self._pending_from_journal()  # reads the file now: corruption is reported at start

    def _after_fork_child(self) -> None:
        self._pending = {}
        self.sink.after_fork_child()

    def _pending_from_journal(self) -> None:
        """Records a previous process left in the journal count in reads from the start.
        They join the pending map first and a snapshot then drops the ones the file counts:
        one the dispatcher writes meanwhile is either popped when it is counted or dropped
        by the snapshot."""
        self.store.snapshot()  # the file is read before the journal's items are looked at
        room = self.max_pending - len(self._pending)
        for journal in self._pipeline.recorder.journals:
            for state in ("ready", "inflight"):
                if room <= 0:
                    break
                try:
                    items = journal.items(state, limit=room)
                except Exception as exc:
                    log.warning("reading %s items of journal %s failed: %s", state, journal.location, exc)
                    continue
                for item in items:
                    if item["kind"] != KIND_USAGE or self.store.is_counted(item["id"]):
                        continue
                    try:
                        rec = decode_usage(item["data"])
                    except Exception:
                        continue  # the dispatcher will reject it
                    if self._pending.setdefault(rec.id, rec) is rec:
                        room -= 1
        self.store.snapshot(pending=self._pending)

    @staticmethod
    def _journal_beside(path: Path) -> Path:
        # the path hash keeps journals of different summary files apart even where the
        # recorder's fallback directory puts them side by side
        tag = hashlib.sha1(str(path).encode()).hexdigest()[:10]
        return path.with_name(f".{path.stem}-{tag}.journal")

    # -- recording (hot path) -------------------------------------------------------------------
    def record(
        self,
        model: str,
        input_tokens: int = 0,
        output_tokens: int = 0,
        provider: str | None = None,
        cost: Any = None,
        timestamp: datetime | None = None,
        **fields: Any,
    ) -> str:
        """Record one call; returns its id. Non-blocking unless ``synchronous=True``.
        ``input_tokens`` excludes cache tokens (pass ``cache_read_tokens`` /
        ``cache_write_tokens``). Without ``provider``, ``"openai/gpt-4o"`` gives provider
        ``openai`` and model ``gpt-4o``; a bare model name gives provider ``unknown``.
        ``cost=None`` is priced when the record is written. Other fields as
        :func:`usageledger.records.make_usage_record`. Only invalid input raises."""
        if provider is None:
            provider, model = _split_model(model)
        rec = make_usage_record(provider, model, input_tokens, output_tokens, cost=cost,
                                timestamp=timestamp, **fields)
        pending = self._pending
        if len(pending) < self.max_pending:
            pending[rec.id] = rec
        else:
            self.untracked += 1
        self.recorded += 1
        if self.synchronous:
            self._record_now(rec)
        else:
            self._submit(rec.id, KIND_USAGE, rec)
        return rec.id

    def _record_now(self, rec: UsageRecord) -> None:
        error = self.store.apply([rec])
        if error is not None:
            # the file refused: the journal keeps it and the dispatcher retries
            self._submit(rec.id, KIND_USAGE, rec)

    def _counted(self, ids: Iterable[str]) -> None:
        pop = self._pending.pop
        for i in ids:
            pop(i, None)

    def _price_record(self, record: UsageRecord) -> UsageRecord:
        from ..prices.pricing import price_record

        return price_record(record, self.prices)

    def calculate_cost(
        self,
        model: str,
        input_tokens: int = 0,
        output_tokens: int = 0,
        *,
        provider: str | None = None,
        cache_read_tokens: int = 0,
        cache_write_tokens: int = 0,
    ) -> Decimal | None:
        """Exact USD cost from the tracker's ``prices`` and genai-prices' tables; None for
        an unknown model (never raises for one)."""
        from ..prices.pricing import calculate_cost

        if provider is None and isinstance(model, str) and "/" in model:
            provider, model = _split_model(model)
        try:
            return calculate_cost(
                model, input_tokens, output_tokens, provider=provider,
                cache_read_tokens=cache_read_tokens, cache_write_tokens=cache_write_tokens,
                prices=self.prices,
            )
        except (TypeError, ValueError):
            raise
        except Exception as exc:  # a price table problem must not reach the caller
            log.warning("pricing %r failed: %r", model, exc)
            return None

    # -- reading --------------------------------------------------------------------------------
    @property
    def store(self) -> SummaryStore:
        """The summary file's store: ``store.snapshot()``, ``store.today()``, ``stats()``."""
        return self.sink.store

    def get_summary(
        self,
        days: int | None = None,
        *,
        since: date | datetime | str | None = None,
        until: date | datetime | str | None = None,
    ) -> dict[str, Any]:
        """Totals from the file plus the records not written yet.

        ``days=N``: the last N UTC days including today; ``since`` / ``until``: first and
        last day (inclusive; a date, a datetime (its UTC day) or ``"YYYY-MM-DD"``). The
        result has the totals (``calls``, token sums, ``total_tokens``, ``cost`` as an exact
        Decimal in USD, ``unpriced_calls``, ``cost_other``) and the same totals ``by_day``,
        ``by_model`` (``"provider/model"``) and ``by_provider``; ``unflushed`` counts the
        records included that are not in the file yet."""
        first, last = _day_range(days, since, until)
        # each record is in the snapshot or in its `pending`, never both, never neither
        snap = self.store.snapshot(pending=self._pending)
        parts = list(snap.parts)
        unflushed = snap.pending
        if unflushed:
            priced = [r if r.cost is not None else self._price_quietly(r) for r in unflushed]
            parts.append(apply_records({}, priced))
        out = _summarise(parts, first, last)
        out["unflushed"] = sum(1 for r in unflushed if in_range(day_of(r), first, last))
        return out

    def get_today(self) -> dict[str, Any]:
        """``get_summary(days=1)``: today's UTC totals."""
        return self.get_summary(days=1)

    def _price_quietly(self, r: UsageRecord) -> UsageRecord:
        try:
            return self._price_record(r)
        except Exception:
            return r

    # -- lifecycle ------------------------------------------------------------------------------
    def flush(self, timeout: float | None = 30.0) -> bool:
        """Write everything recorded so far to the file; True when done before ``timeout``.
        False (not an exception) when the file refuses writes: the records stay in the
        journal."""
        return self._pipeline.flush(timeout)

    def shutdown(self, timeout: float | None = 30.0) -> bool:
        """Flush and stop the threads. What cannot be written by ``timeout`` stays in the
        journal (written by the next tracker on this file). True when nothing is left."""
        if self._closed:
            return not self._pending
        self._closed = True
        try:
            done = self._pipeline.stop(timeout)
        finally:
            self.sink.close()
        if not done:
            log.warning("tracker stopped with %d records not yet in the summary file; they stay in "
                        "the journal", len(self._pending))
        return done

    close = shutdown

    def __enter__(self) -> UsageTracker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    def stats(self) -> dict[str, Any]:
        """Counters of the summary file (see docs/tracker.md) plus ``recorded``,
        ``unflushed`` and the pipeline's stats under ``pipeline``."""
        out = self.sink.stats()
        out.update(
            recorded=self.recorded,
            unflushed=len(self._pending),
            untracked=self.untracked,
            synchronous=self.synchronous,
            storage_path=str(self.storage_path),
            pipeline=self._pipeline.stats(),
        )
        return out


# -- helpers -----------------------------------------------------------------------------------
def _as_day(name: str, value: date | datetime | str) -> str:
    if isinstance(value, datetime):
        if value.tzinfo is not None:
            value = value.astimezone(UTC)
        return value.date().isoformat()
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, str):
        try:
            return date.fromisoformat(value[:10]).isoformat()
        except ValueError:
            raise ValueError(f"{name} must be a date, a datetime or 'YYYY-MM-DD', got {value!r}") from None
    raise TypeError(f"{name} must be a date, a datetime or 'YYYY-MM-DD', got {value!r}")


def _day_range(days: Any, since: Any, until: Any) -> tuple[str | None, str | None]:
    if days is not None and since is not None:
        raise ValueError(f"give days or since, not both (days={days!r}, since={since!r})")
    first = last = None
    if days is not None:
        if isinstance(days, bool) or not isinstance(days, int) or days < 1:
            raise ValueError(f"days must be an integer >= 1, got {days!r}")
        today = datetime.now(UTC).date()
        first = (today - timedelta(days=days - 1)).isoformat()
    elif since is not None:
        first = _as_day("since", since)
    if until is not None:
        last = _as_day("until", until)
    return first, last


def _out(t: Totals) -> dict[str, Any]:
    """The documented totals shape of ``get_summary``, from the one totals type: ``cost``
    in USD and ``cost_other`` for the other currencies (never added to it), plus
    ``costs``, every currency."""
    return {"calls": t.count, **{k: getattr(t, k) for k in TOKEN_SUMS},
            **{k: getattr(t, k) for k in PART_SUMS}, "total_tokens": t.total_tokens, "cost": t.cost("USD"), "unpriced_calls": t.unknown_cost,
            "cost_other": {c: v for c, v in sorted(t.costs.items()) if c != "USD"},
            "costs": dict(sorted(t.costs.items()))}


def _summarise(parts: list[Days], first: str | None, last: str | None) -> dict[str, Any]:
    total = Totals()
    by_day: dict[str, Totals] = {}
    by_model: dict[str, Totals] = {}
    by_provider: dict[str, Totals] = {}
    for day, provider, model, t in entries(parts, first, last):
        total += t
        for table, key in ((by_day, day), (by_model, f"{provider}/{model}"), (by_provider, provider)):
            acc = table.get(key)
            if acc is None:
                acc = table[key] = Totals()
            acc += t
    return {"since": first, "until": last, **_out(total),
            "by_day": {k: _out(v) for k, v in sorted(by_day.items())},
            "by_model": {k: _out(v) for k, v in by_model.items()},
            "by_provider": {k: _out(v) for k, v in by_provider.items()}}
