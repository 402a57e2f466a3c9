"""`usageledger prices ...`: the prices a collector's storage keeps, over the table."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import typer

prices_app = typer.Typer(no_args_is_help=True, help="Prices: overrides and aliases kept in a storage, over genai-prices' table.")


@prices_app.command("show")
def prices_show(
    provider: str = typer.Argument(..., help="provider, e.g. openai", show_default=False),
    model: str = typer.Argument(..., help="model or alias name", show_default=False),
    storage: str = typer.Option(None, "--storage", help="storage URL holding the overrides and aliases (none: the table only)", show_default=False),
    at: str = typer.Option(None, "--at", help="the time to price at, ISO 8601 (default: now)", show_default=False),
    as_json: bool = typer.Option(False, "--json", help="print JSON"),
) -> None:
    """The price in force for PROVIDER MODEL and where it comes from: an override (with
    its date), an alias (-> model), or the genai-prices table (with its version)."""
    from .cli import _out, _storage
    from .pricebook import PriceBook, PriceEntry

    when = datetime.now(UTC) if at is None else _parse_at(at)
    store = _storage(storage, must_exist=True) if storage else None
    try:
        quote = PriceBook(store).quote(provider, model, when)
    finally:
        if store is not None:
            store.close()
    if quote is None:
        raise ValueError(f"no price known for {provider}/{model} at {when.isoformat()}: "
                         f"set one with PUT /api/v1/prices/{provider}/{model} on the collector")
    prices, source = quote
    if isinstance(prices, PriceEntry):
        rows = {"input_per_mtok": prices.input, "output_per_mtok": prices.output,
                "cache_read_per_mtok": prices.cache_read, "cache_write_per_mtok": prices.cache_write,
                "reasoning_per_mtok": prices.reasoning, "per_request": prices.per_request or None,
                "currency": prices.currency}
    else:
        rows = {"input_per_mtok": prices.input, "output_per_mtok": prices.output,
                "cache_read_per_mtok": prices.cache_read, "cache_write_per_mtok": prices.cache_write,
                "currency": "USD"}
        if prices.tiers:
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


def _parse_at(value: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"--at must be an ISO 8601 time such as 2025-03-10T12:00:00Z, got {value!r}") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
