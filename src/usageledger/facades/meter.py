"""Meter: record usage without blocking, query and summarise it from a
StorageBackend. ``record()`` goes through the core pipeline to a StorageSink."""

from __future__ import annotations

import os
from collections.abc import Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

from ..core.journal import journal_stream
from ..core.pipeline import Pipeline, default_journal_path
from ..core.settings import Settings, parse, resolve
from ..schema.records import KIND_USAGE, UsageRecord, make_usage_record
from ..schema.totals import Totals
from ..sinks.storage import StorageSink
from ..storage import create_storage
from ..storage.base import Aggregate, StorageBackend

__all__ = ["Meter"]

_PIPELINE_OPTIONS = (
    "durability", "journal_path", "journal_url", "flush_interval", "max_buffer", "max_batch_size",
    "batch_interval", "max_attempts", "max_retry_age", "max_backoff", "exit_timeout",
)
#: where a Meter's values differ from the mechanism's defaults: a store is near, so a
#: record reaches it within 50 ms
_DEFAULTS = {"batch_interval": 0.05}


def _env_names(option: str) -> tuple[str, ...]:
    return ("USAGELEDGER_JOURNAL_URL",) if option == "journal_url" else ()



class Meter:
    """``Meter(storage="memory"|"sqlite"|"jsonl"|"postgres"|"redis"|URL|StorageBackend, **kw)``.

    Storage keywords (``db_path``, ``path``, ``url``...) go to ``create_storage``;
    pipeline keywords (``durability``, ``journal_path``, ``journal_url``, ``flush_interval``,
    ``batch_interval``...) to the pipeline. ``journal_url="redis://host:port/db?stream=NAME"``
    (or the environment's ``USAGELEDGER_JOURNAL_URL``, stream suffixed ``.meter``) puts
    the journal on a Redis stream; the journal file beside the store is then its fallback. By default a memory store uses a memory
    journal and a persistent store a journal file beside it (or in the user data dir),
    so nothing accepted is lost at exit or on SIGTERM.
    """

    def __init__(
        self,
        storage: str | StorageBackend = "memory",
        *,
        prices: dict[Any, Any] | None = None,
        **kw: Any,
    ):
        settings = self._settings({k: kw.pop(k) for k in _PIPELINE_OPTIONS if k in kw})
        self.storage = storage if isinstance(storage, StorageBackend) else create_storage(storage, **kw)
        if isinstance(storage, StorageBackend) and kw:
            raise TypeError(f"storage options {sorted(kw)} given with a StorageBackend instance")
        from ..prices.pricing import check_prices

        self.prices = check_prices(prices)  # bad overrides fail here, not in the dispatcher
        drain_also: list[Path] = []
        if settings.journal_path is None and settings.durability != "memory":
            beside = self._journal_beside(self.storage)
            if beside is None:
                settings = settings.replace(durability="memory")
            else:  # the name older versions derived (`u.journal` for `u.db`): drain it too
                settings = settings.replace(journal_path=beside)
                drain_also.append(beside.with_name(beside.name.removesuffix(".journal")).with_suffix(".journal"))
        self._budgets: Any = None
        self._pipeline = Pipeline(
            StorageSink(self.storage, price=self._price, on_stored=self._stored),
            settings,
            name="usageledger-meter",
            drain_also=drain_also,
        )
        self._submit = self._pipeline.submit

    @staticmethod
    def _settings(options: dict[str, Any]) -> Settings:
        """Arguments > ``USAGELEDGER_JOURNAL_URL`` (the shared setting names the Redis
        database; the meter keeps its own stream, ``NAME.meter``) > the meter's defaults."""
        values, sources = resolve(_PIPELINE_OPTIONS, options, env_names=_env_names)
        if sources["journal_url"].startswith("environment"):
            url = parse("journal_url", values["journal_url"], sources["journal_url"])
            values["journal_url"] = journal_stream(url, "meter")
        return Settings(**{**_DEFAULTS, **values}, sources=sources)

    @staticmethod
    def _journal_beside(storage: StorageBackend) -> Path | None:
        kind = type(storage).__name__.lower()
        if "memory" in kind:
            return None
        where = getattr(storage, "path", None) or getattr(storage, "db_path", None)
        if where is not None:
            # the whole file name: `u.db` and `u.jsonl` in one folder get two journals
            path = Path(os.fspath(where)).expanduser()
            return path.with_name(path.name + ".journal")
        return default_journal_path(f"meter-{kind}.journal")

    def _price(self, record: UsageRecord) -> UsageRecord:
        from ..prices.pricing import price_record

        return price_record(record, self.prices)

    def record(
        self,
        provider: str,
        model: str,
        input_tokens: int = 0,
        output_tokens: int = 0,
        **fields: Any,
    ) -> str:
        """Record one call (non-blocking); returns the record id. Fields: cache_read_tokens,
        cache_write_tokens, reasoning_tokens, cost, currency, user_id, session_id,
        customer_key, run_id, response_id, tags, payload, timestamp, id, and the finer
        counts cache_write_1h_tokens, input_audio_tokens, output_audio_tokens,
        input_image_tokens, output_image_tokens and service_tier (see
        :class:`~usageledger.records.UsageRecord`)."""
        rec = make_usage_record(provider, model, input_tokens, output_tokens, **fields)
        self._submit(rec.id, KIND_USAGE, rec)
        return rec.id

    def flush(self, timeout: float | None = 30.0) -> bool:
        return self._pipeline.flush(timeout)

    @property
    def budgets(self) -> Any:
        """Budgets over this meter's storage (:class:`~usageledger.budgets.Budgets`, the
        collector's implementation): ``set(name, limit=, period=, user_id=..., ...)``,
        ``check(**attributes)``, ``status(name)``, ``list()``, ``remove(name)``. Reads
        flush first; alerts go out as the dispatcher stores records. Budgets live in the
        storage when it keeps them (memory, sqlite, postgres), else in this process."""
        if self._budgets is None:
            from ..budgets import Budgets

            defs = None
            if not getattr(self.storage, "supports_budgets", False):
                from ..storage.memory import MemoryStorage

                defs = MemoryStorage()
            self._budgets = Budgets(self.storage, definitions=defs, cache_s=0.0,
                                    alerts=self._alert_sender, before_read=self.flush)
        return self._budgets

    def _alert_sender(self) -> Any:
        from ..budgets.alerts import AlertSender

        location = self._pipeline.journal.location
        # beside the meter's journal; a memory journal keeps alerts in memory too
        return AlertSender(None if location == "memory" else Path(location).with_suffix(".alerts.journal"))

    def _stored(self, records: list[UsageRecord]) -> None:
        if self._budgets is not None:
            self._budgets.evaluate(records)

    def query(self, **filters: Any) -> list[UsageRecord]:
        """Flush, then the stored records matching ``filters``, newest first."""
        self.flush()
        return self.storage.query(**filters)

    def summary(self, group_by: Sequence[str] | str = ("day", "model"), **filters: Any) -> list[Aggregate]:
        """Flush, then totals per group and currency (count, token sums, ``total_tokens``,
        exact Decimal ``cost`` in the row's ``currency``)."""
        self.flush()
        return self.storage.aggregate(group_by, **filters)

    def totals(self, **filters: Any) -> Totals:
        """Flush, then the :class:`~usageledger.totals.Totals` of the records matching
        ``filters`` (cost per currency)."""
        self.flush()
        return Totals.of_rows(self.storage.aggregate((), **filters))

    def cost(self, currency: str | None = None, **filters: Any) -> Decimal:
        """Flush, then the exact total cost of the records matching ``filters``: in
        ``currency`` when given, else in their one currency. Money is never added across
        currencies: records in several raise :class:`~usageledger.MixedCurrencyError`
        naming them (pass ``currency=``, or read ``totals().costs``)."""
        return self.totals(**filters).cost(currency)

    def stats(self) -> dict[str, Any]:
        return self._pipeline.stats()

    def close(self, timeout: float | None = 30.0) -> bool:
        done = self._pipeline.stop(timeout)
        sender = None if self._budgets is None else self._budgets._alerts
        if sender is not None and hasattr(sender, "close"):
            sender.close(timeout)
        self.storage.close()
        return done

    def __enter__(self) -> Meter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
