"""`usageledger prices show`: the price in force and its source (override with its date,
alias -> model, or the genai-prices table with its version)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from importlib.metadata import version

from usageledger.pricebook import entry_json, parse_price
from usageledger.storage import create_storage


def test_prices_show_sources(cli, tmp_path):
    url = f"sqlite:///{tmp_path}/usage.db"
    store = create_storage(url)
    for day, inp in (("", "1.10"), ("2025-03-10", "0.80")):
        store.put_price("openai", "my-ft", day, entry_json(parse_price({"input_per_mtok": inp, "output_per_mtok": "4"})[1]))
    store.put_alias("azure", "prod-gpt4o", "gpt-4o")
    store.close()

    r = cli("prices", "show", "openai", "my-ft", "--storage", url, "--at", "2025-03-09T23:00:00Z")
    assert r.code == 0, r.err
    assert "override from the beginning" in r.out and "1.10" in r.out
    r = cli("prices", "show", "openai", "my-ft", "--storage", url, "--at", "2025-03-10T00:00:00Z", "--json")
    got = json.loads(r.out)
    assert (got["source"], got["effective_from"], got["prices"]["input_per_mtok"]) == ("override", "2025-03-10", "0.80")

    r = cli("prices", "show", "azure", "prod-gpt4o", "--storage", url, "--json")
    got = json.loads(r.out)
    assert (got["alias"], got["model"], got["source"], got["genai_prices"]) == (
        "prod-gpt4o", "gpt-4o", "table", version("genai-prices"))
    assert got["prices"]["input_per_mtok"] == "2.5"  # gpt-4o's published price, per 1M tokens

    r = cli("prices", "show", "openai", "gpt-4o")
    assert r.code == 0 and f"genai-prices table {version('genai-prices')}" in r.out

    r = cli("prices", "show", "azure", "nobody-knows", "--storage", url)
    assert r.code == 1 and "no price known for azure/nobody-knows" in r.err
    r = cli("prices", "show", "openai", "gpt-4o", "--at", "yesterday")
    assert r.code == 1 and "--at" in r.err


def test_prices_show_part_prices_and_service_tier(cli, tmp_path):
    """The table's audio and 1-hour cache-write prices, a tier's prices, an override's part
    prices: all read from the same data genai-prices prices with."""
    from genai_prices.data_snapshot import get_snapshot

    def table(provider, model, **context):
        info = get_snapshot().find_provider_model(model, None, provider, None)[1]
        return info.get_prices(datetime.now(UTC), context or None)

    r = cli("prices", "show", "openai", "gpt-audio", "--json")
    got = json.loads(r.out)["prices"]
    want = table("openai", "gpt-audio")
    assert (got["input_audio_per_mtok"], got["output_audio_per_mtok"]) == (
        str(want.input_audio_mtok), str(want.output_audio_mtok))

    r = cli("prices", "show", "anthropic", "claude-opus-4-5", "--service-tier", "batch", "--json")
    got = json.loads(r.out)
    want = table("anthropic", "claude-opus-4-5", processing="batch")
    assert got["service_tier"] == "batch"
    assert (got["prices"]["input_per_mtok"], got["prices"]["cache_write_1h_per_mtok"]) == (
        str(want.input_mtok), str(want.cache_write_1h_mtok))
    assert want.input_mtok < table("anthropic", "claude-opus-4-5").input_mtok

    r = cli("prices", "show", "perplexity", "sonar", "--json")
    assert json.loads(r.out)["prices"]["per_request"] == str(table("perplexity", "sonar").requests_kcount / 1000)

    url = f"sqlite:///{tmp_path}/usage.db"
    store = create_storage(url)
    store.put_price("openai", "voice-ft", "", entry_json(parse_price(
        {"input_per_mtok": "2", "output_per_mtok": "8", "input_audio_per_mtok": "40"})[1]))
    store.close()
    r = cli("prices", "show", "openai", "voice-ft", "--storage", url)
    assert r.code == 0 and "input_audio_per_mtok" in r.out and "40" in r.out
