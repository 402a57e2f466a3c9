"""/metrics usage totals: exact, bounded labels (top pairs plus other), only with a key."""

from __future__ import annotations

from fastapi.testclient import TestClient

from tests.server.support import record
from usageledger.server.app import create_app
from usageledger.storage import create_storage


def _sample(text: str, name: str, **labels: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(f"{name}{{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return None


def test_usage_totals_top_pairs_and_other_with_a_key():
    store = create_storage("memory")
    recs = [record(i, model=f"m-{i % 25}", input_tokens=1000 - i, output_tokens=1, cost="0.25")
            for i in range(50)]
    with TestClient(create_app(store, api_keys=["k"], metrics_access="public"), client=("10.0.0.5", 5000)) as c:
        assert c.post("/api/v1/track", json={"tracked": recs},
                      headers={"Authorization": "Bearer k"}).status_code == 200
        anonymous = c.get("/metrics").text
        assert "usageledger_records_accepted_total 50.0" in anonymous
        assert "usageledger_tokens_total" not in anonymous  # stored data needs a key
        text = c.get("/metrics", headers={"Authorization": "Bearer k"}).text
    pairs = {line.split('model="')[1].split('"')[0] for line in text.splitlines()
             if line.startswith("usageledger_tokens_total{")}
    assert len(pairs) == 21 and "other" in pairs  # top 20 by tokens, the rest summed
    total_in = sum(1000 - i for i in range(50))
    shown_in = sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith("usageledger_tokens_total{") and 'type="input"' in line)
    assert shown_in == total_in
    assert _sample(text, "usageledger_cost_total", model="m-0", currency="USD") == 0.5
    # m-0 .. m-4 have the most input tokens (records 0-4 and 25-29)
    assert _sample(text, "usageledger_tokens_total", model="m-0", type="input") == 1000 + 975
    assert _sample(text, "usageledger_cost_total", model="other", currency="USD") == 0.25 * 2 * 5  # five models beyond the top 20, two records each
