"""`usageledger prices show`: the price in force and its source (override with its date,
alias -> model, or the genai-prices table with its version)."""

from __future__ import annotations

import json
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
