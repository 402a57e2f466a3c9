"""BudgetGuard and `usageledger budget` against a real collector process (and the CLI on
a storage URL): a call over budget raises BudgetExceeded before it reaches the provider;
an unreachable collector is allowed (fail_open=True, logged once) or refused
(fail_open=False)."""

from __future__ import annotations

import json
import logging
import time
from datetime import UTC, datetime

import httpx
import pytest

from tests.server.support import Collector
from tests.server.support import record as _record
from tests.support.fault_server import FaultServer
from tests.support.servers import free_port
from usageledger import BudgetExceeded, BudgetGuard
from usageledger.budgets import BudgetUnavailable
from usageledger.cli import main

KEY = "budget-test-key"
#: how long the collector caches a budget's spend for checks (BudgetService's cache_s), with margin
COLLECTOR_CACHE_S = 1.5


@pytest.fixture(scope="module")
def collector(tmp_path_factory):
    d = tmp_path_factory.mktemp("guard")
    with Collector(f"sqlite:///{d}/usage.db", api_keys=[KEY],
                   extra_args=["--alert-journal", str(d / "alerts.journal")]) as col:
        yield col


def track(col: Collector, **kw) -> None:
    rec = _record(timestamp=datetime.now(UTC).isoformat(), **kw)
    r = httpx.post(col.url + "/api/v1/track", json={"tracked": [rec]},
                   headers={"Authorization": f"Bearer {KEY}"}, timeout=30)
    assert r.status_code == 200 and r.json()["accepted"] == 1


def test_require_raises_before_the_provider_is_called(collector):
    assert main(["budget", "set", "guarded", "--limit", "0.50", "--period", "day", "--user-id", "g1",
                 "--url", collector.url, "--api-key", KEY]) == 0
    with FaultServer() as provider, BudgetGuard(collector.url, KEY, cache_s=0) as guard:
        def call_llm(user: str) -> None:  # what an instrumented SDK call does
            guard.require(user_id=user, model="gpt-4o")
            httpx.post(provider.url + "/v1/chat/completions", json={"user": user}, timeout=10)

        call_llm("g1")
        track(collector, cost="0.5", user_id="g1")
        time.sleep(COLLECTOR_CACHE_S)  # the collector's own answers are cached this long
        with pytest.raises(BudgetExceeded) as err:
            call_llm("g1")
        assert err.value.budgets == ["guarded"]
        assert err.value.status["budgets"][0]["spent"] == "0.5"
        call_llm("g2")  # not in the budget's scope
        assert [json.loads(r.body)["user"] for r in provider.requests] == ["g1", "g2"]
        assert guard.check(user_id="g1")["exceeded"] == ["guarded"]
        # record fields no scope names are left out; other names are refused
        assert guard.check(user_id="g1", run_id="r", session_id=None, tags=None)["exceeded"] == ["guarded"]
        with pytest.raises(ValueError, match="colour"):
            guard.check(colour="red")


def test_guard_caches_answers_for_cache_s(collector):
    assert main(["budget", "set", "cached", "--limit", "1", "--period", "day", "--user-id", "c1",
                 "--url", collector.url, "--api-key", KEY]) == 0
    with BudgetGuard(collector.url, KEY, cache_s=3600) as guard:
        assert guard.require(user_id="c1")["allowed"] is True
        track(collector, cost="2", user_id="c1")
        time.sleep(COLLECTOR_CACHE_S)
        assert guard.require(user_id="c1")["allowed"] is True  # the cached answer
    with BudgetGuard(collector.url, KEY, cache_s=0) as fresh, pytest.raises(BudgetExceeded):
        fresh.require(user_id="c1")


def test_collector_down_fail_open_allows_and_logs_once(caplog):
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    with BudgetGuard(url, KEY, cache_s=0, timeout=1) as guard, caplog.at_level(logging.WARNING, "usageledger.budgets"):
        first = guard.require(user_id="u")
        second = guard.require(user_id="u")
    assert first["allowed"] is True and "ConnectError" in first["error"] and second["allowed"] is True
    assert len([r for r in caplog.records if "unavailable" in r.getMessage()]) == 1


def test_collector_down_fail_closed_raises():
    url = f"http://127.0.0.1:{free_port()}"
    with BudgetGuard(url, KEY, fail_open=False, timeout=1) as guard, pytest.raises(BudgetUnavailable) as err:
        guard.require(user_id="u")
    assert isinstance(err.value, BudgetExceeded) and "fail_open=False" in str(err.value)


def test_wrong_key_is_a_failed_check_not_an_allowed_one(collector):
    with BudgetGuard(collector.url, "wrong", fail_open=False) as guard, pytest.raises(BudgetUnavailable, match="401"):
        guard.check(user_id="u")


def test_cli_list_and_rm_against_the_collector(collector, capsys):
    assert main(["budget", "set", "listed", "--limit", "10", "--period", "week", "--tag", "team=a",
                 "--alert", "0.5", "--alert", "0.9", "--webhook", "https://example.com/h",
                 "--url", collector.url, "--api-key", KEY]) == 0
    capsys.readouterr()
    assert main(["budget", "list", "--json", "--url", collector.url, "--api-key", KEY]) == 0
    listed = {b["name"]: b for b in json.loads(capsys.readouterr().out)}
    assert listed["listed"]["scope"] == {"tags": {"team": "a"}}
    assert listed["listed"]["alert_thresholds"] == [0.5, 0.9] and listed["listed"]["period"] == "week"
    assert main(["budget", "list", "--url", collector.url, "--api-key", KEY]) == 0
    table = capsys.readouterr().out
    assert "listed" in table and "team=a" in table and "░" in table
    assert main(["budget", "rm", "listed", "--url", collector.url, "--api-key", KEY]) == 0
    assert main(["budget", "rm", "listed", "--url", collector.url, "--api-key", KEY]) == 1
    assert "no budget 'listed'" in capsys.readouterr().err
    assert main(["budget", "set", "bad", "--limit", "1", "--webhook", "ftp://x",
                 "--url", collector.url, "--api-key", KEY]) == 1
    assert "webhook_url" in capsys.readouterr().err


def test_cli_on_a_storage_url_with_burn_bars(tmp_path, capsys):
    from usageledger.records import make_usage_record
    from usageledger.storage import create_storage

    url = f"sqlite:///{tmp_path}/usage.db"
    assert main(["budget", "set", "u1", "--limit", "2", "--period", "day", "--user-id", "u1", "--storage", url]) == 0
    store = create_storage(url)
    store.save_many([make_usage_record("openai", "gpt-4o", 1, 1, cost="1.5", user_id="u1")])
    store.close()
    capsys.readouterr()
    assert main(["budget", "list", "--storage", url]) == 0
    out = capsys.readouterr().out
    assert "1.5 / 2 USD" in out and "█████████░░░" in out and "75%" in out
    assert main(["budget", "set", "x", "--limit", "abc", "--storage", url]) == 1
    assert "limit: must be" in capsys.readouterr().err
    assert main(["budget", "list", "--storage", url, "--url", "http://x"]) == 1
    assert "exactly one of --storage" in capsys.readouterr().err
