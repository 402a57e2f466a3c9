"""The dashboard in a real headless Chromium against a real collector process."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from urllib.parse import urlencode

import httpx
import pytest

from tests.server.support import Collector
from usageledger.records import new_id

KEY = "dash-key-1"
HOSTILE = '<img src=x onerror="window.__pwned=1">'
TODAY = datetime.now(UTC).replace(hour=12, minute=0, second=0, microsecond=0)


def _records() -> list[dict]:
    out = []
    for i in range(60):
        day = TODAY - timedelta(days=i % 6)
        out.append({
            "id": new_id(), "timestamp": day.isoformat(), "provider": "openai",
            "model": ("gpt-4o", "gpt-4o-mini")[i % 2], "input_tokens": 100 + i,
            "output_tokens": 10 + i, "cost": f"0.{i + 1:06d}", "user_id": f"u{i % 3}",
            "customer_key": ("acme", "globex")[i % 2], "tags": {"feature": ("chat", "search")[i % 2]},
        })
    out.append({"id": new_id(), "timestamp": TODAY.isoformat(), "provider": "evil",
                "model": HOSTILE, "input_tokens": 1, "output_tokens": 1, "cost": "0.5",
                "user_id": HOSTILE, "tags": {HOSTILE: HOSTILE}})
    return out


@pytest.fixture(scope="module")
def collector(tmp_path_factory):
    path = tmp_path_factory.mktemp("dash") / "usage.db"
    c = Collector(f"sqlite:///{path}", api_keys=[KEY]).start()
    auth = {"Authorization": f"Bearer {KEY}"}
    records = _records()
    r = httpx.post(c.url + "/api/v1/track", json={"tracked": records}, headers=auth)
    assert r.status_code == 200 and r.json()["accepted"] == len(records), r.text
    run = {"run_id": "run-1", "agent_name": "crawler", "job_type": "nightly", "status": "completed",
           "start_time": TODAY.isoformat(), "end_time": (TODAY + timedelta(seconds=42)).isoformat(),
           "metrics": {"items_discovered": 10, "items_succeeded": 9}}
    assert httpx.post(c.url + "/api/v1/runs", json=run, headers=auth).status_code < 300
    for name, limit in (("acme-total", "0.0001"), ("everything-total", "1000")):
        body = {"scope": {"customer_key": "acme"} if name == "acme-total" else {},
                "period": "total", "limit": limit, "currency": "USD", "alert_thresholds": [0.5, 1.0]}
        assert httpx.put(c.url + f"/api/v1/budgets/{name}", json=body, headers=auth).status_code == 200
    yield c
    c.stop()


@pytest.fixture()
def page(browser, collector):
    context = browser.new_context()
    pg = context.new_page()
    outside: list[str] = []
    own = (collector.url + "/", "blob:" + collector.url + "/")  # ReDoc's worker is a same-origin blob
    pg.on("request", lambda req: outside.append(req.url) if not req.url.startswith(own) else None)
    pg.outside = outside
    yield pg
    context.close()
    assert outside == [], f"requests left the collector: {outside}"


def login(page, collector, key: str = KEY, target: str = "/") -> None:
    page.goto(collector.url + target)
    assert "/login" in page.url
    page.fill("input[name=api_key]", key)
    page.click("button[type=submit]")


def api_total(collector, **filters) -> str:
    r = httpx.get(collector.url + "/api/v1/summary", params={"group_by": "", **filters},
                  headers={"Authorization": f"Bearer {KEY}"})
    assert r.status_code == 200, r.text
    return r.json()["totals"]["cost"]


def test_wrong_key_shows_error_and_no_data(page, collector):
    login(page, collector, key="not-the-key")
    assert page.locator("[role=alert]").inner_text() == "That API key is not valid."
    assert "gpt-4o" not in page.content()
    # the API keeps answering 401 to a browser-like request without a session
    assert httpx.get(collector.url + "/api/v1/usage").status_code == 401


def test_login_cookie_views_and_logout(page, collector):
    login(page, collector, target="/records")
    assert page.url.startswith(collector.url + "/records")
    cookie = next(c for c in page.context.cookies() if c["name"] == "usageledger_session")
    assert cookie["httpOnly"] is True and cookie["sameSite"] == "Strict"
    assert KEY not in cookie["value"]
    assert page.locator("#records tbody tr").count() == 50  # a full page, more behind "older"
    page.click("a[rel=next]")
    assert page.locator("#records tbody tr").count() == 11

    page.goto(collector.url + "/")
    for chart in ("#spend-chart", "#tokens-chart", "#models-chart", "#users-chart", "#customers-chart"):
        assert page.locator(f"{chart} rect.bar").count() > 0, chart
    assert page.locator("section.top table").first.locator("tbody tr").count() >= 3

    page.goto(collector.url + "/runs")
    assert page.locator("#runs tbody tr").count() == 1
    assert "42.0 s" in page.locator("#runs").inner_text()
    assert "items_succeeded=9" in page.locator("#runs").inner_text()
    assert page.locator("#runs-chart rect.bar").count() == 1

    page.goto(collector.url + "/budgets")
    table = page.locator("#budgets").inner_text()
    statuses = {b["name"]: b for b in httpx.get(
        collector.url + "/api/v1/budgets", headers={"Authorization": f"Bearer {KEY}"}).json()["budgets"]}
    for name in ("acme-total", "everything-total"):
        assert f"{statuses[name]['spent']} / {statuses[name]['limit']} USD" in table
    assert statuses["acme-total"]["exceeded"] and "exceeded" in table
    assert page.locator("#budgets svg.burn rect.over").count() == 1
    assert page.locator("#budgets svg.burn").count() == 2

    page.goto(collector.url + "/health")
    assert page.locator("#health-chart rect.bar").count() == 4
    assert page.locator("#health-accepted").inner_text() == "61"

    page.click("form.logout button")
    assert "/login" in page.url
    page.goto(collector.url + "/")
    assert "/login" in page.url


def test_filters_in_the_url_match_the_api_exactly(page, collector):
    login(page, collector)
    since = (TODAY - timedelta(days=3)).date().isoformat()
    until = TODAY.date().isoformat()
    query = {"since": since, "until": until, "user_id": "u2", "model": "gpt-4o"}
    page.goto(collector.url + "/?" + urlencode(query))
    shown = page.locator("#total-cost b").inner_text()
    expected = api_total(collector, since=since,
                         until=(TODAY + timedelta(days=1)).date().isoformat(),
                         user_id="u2", model="gpt-4o")
    assert shown == f"{expected} USD"
    everything = page.goto(collector.url + "/?" + urlencode({"since": since, "until": until}))
    assert everything.status == 200
    all_cost = page.locator("#total-cost b").inner_text()
    assert Decimal(all_cost.split()[0]) > Decimal(expected)
    # the form shows the filters it applied, so the view can be shared as it is
    assert page.locator("input[name=user_id]").input_value() == ""
    page.goto(collector.url + "/?" + urlencode(query))
    assert page.locator("input[name=user_id]").input_value() == "u2"
    assert page.locator("input[name=model]").input_value() == "gpt-4o"
    # a tag filter, through the same form
    page.goto(collector.url + "/?" + urlencode({"since": since, "until": until, "tag": "feature:chat"}))
    assert page.locator("#total-cost b").inner_text() == api_total(
        collector, since=since, until=(TODAY + timedelta(days=1)).date().isoformat(),
        tag="feature:chat") + " USD"
    # a bad filter is explained, not a stack trace
    bad = page.goto(collector.url + "/?since=yesterday")
    assert bad.status == 400 and "since must be a date" in page.locator("[role=alert]").inner_text()


def test_hostile_values_are_text_and_run_nothing(page, collector):
    login(page, collector)
    for target in ("/", "/records", "/?" + urlencode({"tag": f"{HOSTILE}:{HOSTILE}"})):
        page.goto(collector.url + target)
        assert page.evaluate("window.__pwned") is None
        assert page.locator("img").count() == 0
    page.goto(collector.url + "/records")
    assert HOSTILE in page.locator("#records").inner_text()
    response = page.goto(collector.url + "/")
    csp = response.headers["content-security-policy"]
    assert "script-src" not in csp and "default-src 'none'" in csp
    assert response.headers["x-frame-options"] == "DENY"


def test_api_docs_work_offline(page, collector):
    login(page, collector)
    page.goto(collector.url + "/docs")
    page.wait_for_selector(".swagger-ui .opblock", timeout=20_000)
    assert page.locator(".swagger-ui .opblock").count() > 5
    page.goto(collector.url + "/redoc")
    page.wait_for_selector("[role=navigation], .menu-content", timeout=20_000)
    assert "track" in page.content()


def test_revoked_key_ends_the_session(browser, tmp_path):
    c = Collector(f"sqlite:///{tmp_path / 'u.db'}", api_keys=["old-key"]).start()
    try:
        context = browser.new_context()
        page = context.new_page()
        page.goto(c.url + "/")
        page.fill("input[name=api_key]", "old-key")
        page.click("button[type=submit]")
        assert page.url == c.url + "/"
        c.stop()
        c.proc = None
        c.api_keys = ["new-key"]  # restarted without the old key: revoked
        c.start()
        page.goto(c.url + "/")
        assert "/login" in page.url
        context.close()
    finally:
        c.stop()
