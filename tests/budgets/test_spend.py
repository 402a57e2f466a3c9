"""Spend, status and checks from the one budgets engine, on memory, sqlite and postgres:
exact decimal spend, each record id once, late records in their own window, other
currencies reported but not counted, UTC calendar windows and their edges."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from usageledger.budgets import BudgetInputError, Budgets, window
from usageledger.records import make_usage_record, new_id

NOON = datetime(2026, 3, 11, 12, 0, tzinfo=UTC)  # a Wednesday


def rec(cost: str, at: datetime, *, currency: str = "USD", id: str | None = None, **kw):
    return make_usage_record("openai", kw.pop("model", "gpt-4o"), 10, 5, cost=Decimal(cost),
                             currency=currency, timestamp=at, id=id or new_id(), **kw)


def test_spend_counts_each_id_once_late_records_in_their_window_and_one_currency(store):
    budgets = Budgets(store, cache_s=0)
    budgets.set("u1-daily", limit="1.00", period="day", user_id="u1")
    first = rec("0.10", NOON, user_id="u1")
    store.save_many([first, rec("0.000000123", NOON + timedelta(minutes=1), user_id="u1")])
    # a retrying client sends the first one again, alone and inside a batch
    store.save_many([first])
    store.save_many([first, rec("0.25", NOON + timedelta(minutes=2), user_id="u1")])
    # other currencies: reported, not counted
    store.save_many([rec("7", NOON, user_id="u1", currency="EUR"), rec("2", NOON, user_id="u1", currency="EUR")])
    # a late record for yesterday arrives now: it counts in yesterday's window only
    store.save_many([rec("0.5", NOON - timedelta(days=1), user_id="u1")])
    # another user's spend is not in this scope
    store.save_many([rec("9", NOON, user_id="u2")])

    today = budgets.status("u1-daily", at=NOON)
    assert today["spent"] == "0.350000123"
    assert today["remaining"] == "0.649999877"
    assert today["records"] == 3
    assert today["exceeded"] is False
    assert today["fraction"] == pytest.approx(0.350000123)
    assert today["other_currencies"] == {"EUR": {"cost": "9", "records": 2}}
    assert (today["window_start"], today["window_end"]) == ("2026-03-11T00:00:00Z", "2026-03-12T00:00:00Z")
    yesterday = budgets.status("u1-daily", at=NOON - timedelta(days=1))
    assert yesterday["spent"] == "0.5" and yesterday["records"] == 1
    assert yesterday["window_start"] == "2026-03-10T00:00:00Z"


def test_budget_in_another_currency_counts_only_that_currency(store):
    budgets = Budgets(store, cache_s=0)
    budgets.set("eur", limit="5", period="total", currency="EUR")
    store.save_many([rec("7", NOON, currency="EUR"), rec("3", NOON)])
    s = budgets.status("eur", at=NOON)
    assert (s["spent"], s["exceeded"], s["window_start"], s["window_end"]) == ("7", True, None, None)
    assert s["other_currencies"] == {"USD": {"cost": "3", "records": 1}}


def test_day_window_edges_last_microsecond_and_midnight(store):
    budgets = Budgets(store, cache_s=0)
    budgets.set("d", limit="10", period="day")
    midnight = datetime(2026, 3, 12, tzinfo=UTC)
    store.save_many([
        rec("1", midnight - timedelta(milliseconds=1)),   # 23:59:59.999 on the 11th
        rec("2", midnight),                               # 00:00:00.000 on the 12th
        rec("4", midnight - timedelta(microseconds=1)),   # 23:59:59.999999 on the 11th
    ])
    assert budgets.status("d", at=midnight - timedelta(hours=1))["spent"] == "5"
    assert budgets.status("d", at=midnight)["spent"] == "2"


def test_week_starts_monday_and_month_is_calendar(store):
    budgets = Budgets(store, cache_s=0)
    budgets.set("w", limit="10", period="week")
    budgets.set("m", limit="10", period="month")
    monday = datetime(2026, 3, 9, tzinfo=UTC)
    store.save_many([
        rec("1", monday - timedelta(microseconds=1)),  # Sunday night: last week
        rec("2", monday),
        rec("4", monday + timedelta(days=7) - timedelta(microseconds=1)),  # next Sunday 23:59:59.999999
        rec("8", datetime(2026, 3, 31, 23, 59, 59, 999000, tzinfo=UTC)),   # next week, still March
        rec("16", datetime(2026, 4, 1, tzinfo=UTC)),                        # April
    ])
    w = budgets.status("w", at=NOON)
    assert (w["window_start"], w["window_end"], w["spent"]) == ("2026-03-09T00:00:00Z", "2026-03-16T00:00:00Z", "6")
    m = budgets.status("m", at=NOON)
    assert (m["window_start"], m["window_end"], m["spent"]) == ("2026-03-01T00:00:00Z", "2026-04-01T00:00:00Z", "15")
    assert window("month", datetime(2026, 12, 31, 23, 0, tzinfo=UTC))[1] == datetime(2027, 1, 1, tzinfo=UTC)


def test_check_answers_budgets_covering_the_call_only(store):
    budgets = Budgets(store, cache_s=0)
    budgets.set("all", limit="100", period="day")
    budgets.set("u1", limit="1", period="day", user_id="u1")
    budgets.set("acme-mini", limit="5", period="day", customer_key="acme", model="gpt-4o-mini")
    budgets.set("team-a", limit="0.5", period="day", tags={"team": "a"})
    now = datetime.now(UTC)
    store.save_many([rec("1.5", now, user_id="u1"), rec("0.2", now, user_id="u2", tags={"team": "a"})])

    over = budgets.check(user_id="u1", model="gpt-4o")
    assert over["allowed"] is False and over["exceeded"] == ["u1"]
    assert [b["name"] for b in over["budgets"]] == ["all", "u1"]
    ok = budgets.check(user_id="u2", tags={"team": "a", "env": "prod"})
    assert ok["allowed"] is True and [b["name"] for b in ok["budgets"]] == ["all", "team-a"]
    assert ok["budgets"][1]["spent"] == "0.2"
    # a scope key the call does not carry, or carries with another value: not covered
    assert [b["name"] for b in budgets.check(customer_key="acme")["budgets"]] == ["all"]
    assert [b["name"] for b in budgets.check(customer_key="acme", model="gpt-4o-mini")["budgets"]] == ["acme-mini", "all"]
    assert [b["name"] for b in budgets.check(tags=["team:b"])["budgets"]] == ["all"]
    with pytest.raises(BudgetInputError, match="colour"):
        budgets.check(colour="red")


def test_limit_zero_is_always_exceeded_and_check_sees_new_spend_after_cache_s(store):
    budgets = Budgets(store, cache_s=0.3)
    budgets.set("stop", limit="0", period="day", user_id="x")
    budgets.set("small", limit="1", period="day", user_id="y")
    assert budgets.check(user_id="x")["allowed"] is False
    assert budgets.check(user_id="y")["allowed"] is True
    store.save_many([rec("1", datetime.now(UTC), user_id="y")])
    deadline = datetime.now(UTC) + timedelta(seconds=10)
    while budgets.check(user_id="y")["allowed"] and datetime.now(UTC) < deadline:
        pass
    assert budgets.check(user_id="y")["exceeded"] == ["small"]


@pytest.mark.parametrize(("body", "field"), [
    ({"limit": "-1"}, "limit"),
    ({"limit": "abc"}, "limit"),
    ({"limit": "NaN"}, "limit"),
    ({"limit": True}, "limit"),
    ({}, "limit"),
    ({"limit": "5", "period": "year"}, "period"),
    ({"limit": "5", "scope": {"region": "eu"}}, "scope.region"),
    ({"limit": "5", "scope": {"tags": {"a": 1}}}, "scope.tags"),
    ({"limit": "5", "scope": "u1"}, "scope"),
    ({"limit": "5", "alert_thresholds": [0]}, "alert_thresholds"),
    ({"limit": "5", "alert_thresholds": [10.5]}, "alert_thresholds"),
    ({"limit": "5", "alert_thresholds": 0.5}, "alert_thresholds"),
    ({"limit": "5", "webhook_url": "ftp://example.com/x"}, "webhook_url"),
    ({"limit": "5", "webhook_url": "example.com"}, "webhook_url"),
    ({"limit": "5", "currency": ""}, "currency"),
    ({"limit": "5", "colour": "red"}, "colour"),
])
def test_bad_definitions_name_the_field(body, field):
    from usageledger.storage import create_storage

    budgets = Budgets(create_storage("memory"))
    with pytest.raises(BudgetInputError) as err:
        budgets.put("b", body, "the test")
    assert err.value.field == field
    assert str(err.value).startswith(f"{field}:") and "(from the test)" in str(err.value)
    assert budgets.list() == []


def test_definitions_persist_in_storage_and_delete_removes_them(tmp_path):
    from usageledger.storage import create_storage

    url = f"sqlite:///{tmp_path}/b.db"
    first = create_storage(url)
    Budgets(first).set("keep", limit="2.50", period="week", user_id="u", tags={"t": "1"},
                       alert_thresholds=[1.0, 0.5], webhook_url="https://example.com/hook")
    Budgets(first).set("drop", limit="1", period="day")
    first.close()
    again = create_storage(url)
    budgets = Budgets(again)
    keep = budgets.status("keep")
    assert keep["limit"] == "2.50" and keep["alert_thresholds"] == [0.5, 1.0]
    assert keep["scope"] == {"user_id": "u", "tags": {"t": "1"}}
    assert budgets.remove("drop") is True and budgets.remove("drop") is False
    assert [s["name"] for s in budgets.list()] == ["keep"]
    again.close()


class SlowStore:
    """A memory store whose aggregates take ``delay`` seconds, as a scan of a large window
    does (a real backend, slowed: nothing about its answers is faked)."""

    def __new__(cls, delay: float):
        import time

        from usageledger.storage.memory import MemoryStorage

        class Slow(MemoryStorage):
            def _aggregate(self, keys, f):
                time.sleep(delay)
                return super()._aggregate(keys, f)

        return Slow()


def test_a_slow_read_is_kept_ten_times_its_duration_then_refreshed_in_the_background():
    import time

    store = SlowStore(0.3)
    budgets = Budgets(store, cache_s=0.05)
    budgets.set("all", limit="10", period="day")
    t0 = time.monotonic()
    assert budgets.check()["budgets"][0]["spent"] == "0"
    assert time.monotonic() - t0 >= 0.3  # the first check waits for the read
    store.save_many([rec("3", datetime.now(UTC))])
    time.sleep(0.1)  # past cache_s, within 10 x 0.3 s
    t0 = time.monotonic()
    assert budgets.check()["budgets"][0]["spent"] == "0"  # cached: no read
    assert time.monotonic() - t0 < 0.25
    time.sleep(3.0)  # past 10 x the read time
    t0 = time.monotonic()
    assert budgets.check()["budgets"][0]["spent"] == "0"  # stale, answered at once...
    assert time.monotonic() - t0 < 0.25
    deadline = time.monotonic() + 10
    while budgets.check()["budgets"][0]["spent"] != "3":  # ...while it is read again
        assert time.monotonic() < deadline
        time.sleep(0.05)
    # a budget's status (GET /budgets/{name}) reads afresh, whatever the cache holds
    store.save_many([rec("1", datetime.now(UTC))])
    assert budgets.status("all")["spent"] == "4"
