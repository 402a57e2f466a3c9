"""BudgetGuard + instrument(): a call over budget raises BudgetExceeded and never reaches
the (fake) provider server; a call within budget goes through and is recorded. Real
collector process, real openai SDK."""

from __future__ import annotations

import time

import httpx
import pytest
from openai import OpenAI

import usageledger
from tests.budgets.support import record
from tests.server.support import Collector
from tests.support.fake_llm_server import FakeLLMServer
from usageledger import BudgetExceeded, BudgetGuard, Meter

KEY = "instrument-key"
MESSAGES = [{"role": "user", "content": "hi"}]


def test_instrumented_call_over_budget_never_reaches_the_provider(tmp_path):
    with Collector(f"sqlite:///{tmp_path}/usage.db", api_keys=[KEY],
                   extra_args=["--alert-journal", str(tmp_path / "alerts.journal")]) as col, \
            FakeLLMServer() as llm, Meter() as meter, BudgetGuard(col.url, KEY, cache_s=0) as guard:
        auth = {"Authorization": f"Bearer {KEY}"}
        r = httpx.put(col.url + "/api/v1/budgets/acme", headers=auth, timeout=30,
                      json={"scope": {"customer_key": "acme"}, "period": "day", "limit": "0.01"})
        assert r.status_code == 200, r.text
        r = httpx.post(col.url + "/api/v1/track", headers=auth, timeout=30,
                       json={"tracked": [record(cost="0.02", customer_key="acme")]})
        assert r.status_code == 200 and r.json()["accepted"] == 1, r.text
        time.sleep(1.5)  # the collector answers checks from a 1 s cache (the PUT filled it)
        handle = usageledger.instrument(meter, providers=["openai"], guard=guard)
        try:
            client = OpenAI(base_url=llm.openai_url, api_key="k", max_retries=0)
            sent = llm.count()
            with usageledger.attributes(customer_key="acme"), pytest.raises(BudgetExceeded) as err:
                client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
            assert err.value.budgets == ["acme"]
            assert llm.count() == sent  # the provider saw nothing
            with usageledger.attributes(customer_key="globex"):
                client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
            assert llm.count() == sent + 1
            assert [r.customer_key for r in meter.query()] == ["globex"]
        finally:
            handle.uninstrument()
