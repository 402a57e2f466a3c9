"""`usageledger prices ...`: the prices a collector's storage keeps, over the table."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import typer

#: the prices of the finer token kinds, shown when set (override) or listed by the table
_PARTS = ("cache_write_1h", "input_audio", "output_audio", "input_image", "output_image", "reasoning")

prices_app = typer.Typer(no_args_is_help=True, help="Prices: overrides and aliases kept in a storage, over genai-prices' table.")


@prices_app.command("show")
def prices_show(
    provider: str = typer.Argument(..., help="provider, e.g. openai", show_default=False),
    model: str = typer.Argument(..., help="model or alias name", show_default=False),
    storage: str = typer.Option(None, "--storage", help="storage URL holding the overrides and aliases (none: the table only)", show_default=False),
    at: str = typer.Option(None, "--at", help="the time to price at, ISO 8601 (default: now)", show_default=False),
    service_tier: str = typer.Option(None, "--service-tier", help="the table's prices of this tier: batch, flex, priority... (default: standard)", show_default=False),
    as_json: bool = typer.Option(False, "--json", help="print JSON"),
) -> None:
    """The price in force for PROVIDER MODEL and where it comes from: an override (with
    its date), an alias (-> model), or the genai-prices table (with its version)."""
    from ..prices.pricebook import PriceBook, PriceEntry
    from ._console import _out, _storage

    when = datetime.now(UTC) if at is None else _parse_at(at)
    store = _storage(storage, must_exist=True) if storage else None
    try:
        quote = PriceBook(store).quote(provider, model, when, service_tier)
    finally:
        if store is not None:
            store.close()
    if quote is None:
        raise ValueError(f"no price known for {provider}/{model} at {when.isoformat()}: "
                         f"set one with PUT /api/v1/prices/{provider}/{model} on the collector")
    prices, source = quote
    rows = {"input_per_mtok": prices.input, "output_per_mtok": prices.output,
            "cache_read_per_mtok": prices.cache_read, "cache_write_per_mtok": prices.cache_write,
            **{f"{part}_per_mtok": getattr(prices, part) for part in _PARTS},
            "per_request": prices.per_request or None,
            "currency": prices.currency if isinstance(prices, PriceEntry) else "USD"}
    if getattr(prices, "tiers", ()):
        rows["tiers"] = ", ".join(f"above {start:,} input tokens: {t.input}/{t.output}" for start, t in prices.tiers)
    rows = {k: str(v) for k, v in rows.items() if v is not None}
    if source["source"] == "override":
        origin = f"override from {source['effective_from'] or 'the beginning'}"
    else:
        origin = f"genai-prices table {source['genai_prices']}"
    if "alias" in source:
        origin = f"alias {source['provider']}/{source['alias']} -> {source['model']}, {origin}"
    if as_json:
        print(json.dumps({**source, "prices": rows}, indent=2))
        return
    out = _out()
    out.print(f"{source['provider']}/{source['model']} at {when.isoformat()}: {origin}")
    for k, v in rows.items():
        out.print(f"  {k:<22} {v}")


def _parse_at(value: str, option: str = "--at") -> datetime:
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{option} must be an ISO 8601 time such as 2025-03-10T12:00:00Z, got {value!r}") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def reprice(
    storage: str = typer.Option(..., "--storage", help="storage URL: sqlite:///path.db, postgresql://...", show_default=False),
    since: str = typer.Option(None, "--since", help="records from this time (ISO 8601 date or time, UTC)", show_default=False),
    until: str = typer.Option(None, "--until", help="records before this time (ISO 8601 date or time, UTC)", show_default=False),
    provider: str = typer.Option(None, "--provider", help="only this provider", show_default=False),
    model: str = typer.Option(None, "--model", help="only this model", show_default=False),
    only_unknown: bool = typer.Option(False, "--only-unknown", help="only records without a cost"),
    batch_size: int = typer.Option(1000, "--batch-size", min=1, help="records per transaction"),
) -> None:
    """Recompute the cost of stored records from the current prices (overrides, aliases,
    table), in batches, the summaries following. Safe to stop and run again."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from ..prices.reprice import reprice as run
    from ._console import _err, _out, _storage

    start = None if since is None else _parse_at(since, "--since")
    end = None if until is None else _parse_at(until, "--until")
    store = _storage(storage, must_exist=True)
    try:
        filters = {k: v for k, v in (("since", start), ("until", end), ("provider", provider),
                                     ("model", model)) if v is not None}
        total = store.aggregate((), **filters)[0]["count"]
        with Progress(TextColumn("repricing"), BarColumn(), MofNCompleteColumn(),
                      TextColumn("{task.fields[changed]:,} changed"), TimeElapsedColumn(),
                      console=_err(), transient=False) as bar:
            task = bar.add_task("reprice", total=total, changed=0)
            got = run(store, since=start, until=end, provider=provider, model=model,
                      only_unknown=only_unknown, batch_size=batch_size,
                      progress=lambda seen, changed: bar.update(task, completed=seen, changed=changed))
    finally:
        store.close()
    _out().print(f"{got['seen']:,} records read, {got['changed']:,} costs changed")
