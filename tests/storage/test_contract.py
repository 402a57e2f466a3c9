"""One contract suite, run against all five backends (see conftest.py)."""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

import pytest

from usageledger.records import make_usage_record
from usageledger.storage.base import RunWrite

T0 = datetime(2025, 3, 1, 22, 30, tzinfo=UTC)
#: the finer counts: summed in every aggregate like the token counts they are part of
PARTS = ("cache_write_1h_tokens", "input_audio_tokens", "output_audio_tokens", "input_image_tokens",
         "output_image_tokens")


def rec(minutes: float = 0, **kw):
    kw.setdefault("provider", "openai")
    kw.setdefault("model", "gpt-4o")
    kw.setdefault("timestamp", T0 + timedelta(minutes=minutes))
    provider, model = kw.pop("provider"), kw.pop("model")
    return make_usage_record(provider, model, kw.pop("input_tokens", 10), kw.pop("output_tokens", 5), **kw)


def sample(exact_nano: bool = False):
    """A mixed set spanning two UTC days and several hours, users, sessions, tags; one cost
    is finer than a nano-unit unless ``exact_nano`` (backends with nano-unit rollups take
    another path for each)."""
    return [
        rec(0, user_id="u1", session_id="s1", tags={"env": "prod", "team": "a"}, cost="0.1"),
        rec(10, user_id="u1", session_id="s2", tags={"env": "dev"}, cost="0.2",
            cache_read_tokens=7, cache_write_tokens=3, reasoning_tokens=2,
            cache_write_1h_tokens=2, input_audio_tokens=4, input_image_tokens=3,
            output_audio_tokens=1, output_image_tokens=2, service_tier="batch"),
        rec(45, provider="anthropic", model="claude", user_id="u2", customer_key="c1",
            tags={"env": "prod"}, cost="0.000000001" if exact_nano else "0.000000000001"),
        rec(90, provider="anthropic", model="claude", user_id="u2", session_id="s1",
            customer_key="c1", input_tokens=100, output_tokens=50, cache_write_tokens=9,
            cache_write_1h_tokens=9, input_audio_tokens=60, output_audio_tokens=20),
        rec(-120, model="gpt-4o-mini", customer_key="c2", tags={"team": "a"}, cost=3),
        rec(60 * 24 * 3, model="gpt-4o-mini", user_id="u3", cost="12345678.123456789"),
    ]


def expected(records, keys, pred=lambda r: True):
    groups = defaultdict(lambda: {"count": 0, "input_tokens": 0, "output_tokens": 0,
                                  "cache_read_tokens": 0, "cache_write_tokens": 0,
                                  "reasoning_tokens": 0, "cost": Decimal(0), "unknown_cost": 0,
                                  **dict.fromkeys(PARTS, 0)})
    for r in records:
        if not pred(r):
            continue
        ts = r.timestamp.astimezone(UTC)
        values = []
        for k in keys:
            if k == "day":
                values.append(ts.strftime("%Y-%m-%d"))
            elif k == "hour":
                values.append(ts.strftime("%Y-%m-%dT%H:00Z"))
            elif k.startswith("tag:"):
                values.append(r.tags.get(k[4:]))
            else:
                values.append(getattr(r, k))
        # one row per group and currency: currency is a key even when not asked for
        g = groups[tuple(values) if "currency" in keys else (*values, r.currency)]
        g["count"] += 1
        for t in ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens",
                  "reasoning_tokens", *PARTS):
            g[t] += getattr(r, t)
        if r.cost is None:
            g["unknown_cost"] += 1
        else:
            g["cost"] += r.cost
    order = sorted(groups, key=lambda gk: tuple((v is not None, v) for v in gk))
    names = keys if "currency" in keys else (*keys, "currency")
    rows = [{**dict(zip(names, gk, strict=True)), **groups[gk]} for gk in order]
    for g in rows:  # input (uncached) + cache reads + cache writes + output
        g["total_tokens"] = (g["input_tokens"] + g["cache_read_tokens"] + g["cache_write_tokens"]
                             + g["output_tokens"])
    return rows


def newest_first(records):
    return sorted(records, key=lambda r: (r.timestamp, r.id), reverse=True)


# -- writes -----------------------------------------------------------------------------------

def test_save_many_is_idempotent_on_id(opener):
    store = opener()
    records = sample()
    assert store.save_many(records) == {r.id for r in records}
    assert store.save_many(records) == set()
    again = rec(5, id=records[0].id, cost="99")  # same id, different content: ignored
    fresh = rec(7)
    assert store.save_many([again, fresh]) == {fresh.id}  # the known id is not reported new
    assert store.count() == len(records) + 1
    stored = {r.id: r for r in store.query()}
    assert stored[records[0].id].cost == Decimal("0.1")


def test_duplicates_inside_one_batch_are_stored_once(store):
    r = rec(1)
    assert store.save_many([r, r, r]) == {r.id}
    assert store.count() == 1
    assert store.save(r) is False
    assert store.save(rec(2)) is True


def test_round_trip_keeps_every_field(store):
    r = rec(3, user_id="u", session_id="s", customer_key="c", run_id="run-1", response_id="resp",
            tags={"a": "1", "b": "x=y"}, payload={"n": 1, "nested": {"k": [1, 2]}},
            cost="0.000123456789", currency="EUR", cache_read_tokens=4, cache_write_tokens=5,
            reasoning_tokens=6, timestamp=datetime(2025, 1, 2, 3, 4, 5, 678901))
    store.save_many([r])
    (got,) = store.query()
    assert got == r
    assert got.timestamp == datetime(2025, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
    assert isinstance(got.cost, Decimal) and got.cost == Decimal("0.000123456789")


def test_reopen_keeps_records_and_dedup(opener):
    store = opener()
    records = sample()
    store.save_many(records)
    store.write_runs([RunWrite("r1", {"status": "running"}, 1)])
    again = opener()
    assert again.count() == len(records)
    assert again.save_many(records) == set()
    assert again.get_run("r1") == {"status": "running", "run_id": "r1", "seq": 1}


# -- query ------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "filters, pred",
    [
        ({}, lambda r: True),
        ({"provider": "anthropic"}, lambda r: r.provider == "anthropic"),
        ({"model": "gpt-4o-mini"}, lambda r: r.model == "gpt-4o-mini"),
        ({"user_id": "u1"}, lambda r: r.user_id == "u1"),
        ({"session_id": "s1"}, lambda r: r.session_id == "s1"),
        ({"customer_key": "c1"}, lambda r: r.customer_key == "c1"),
        ({"tags": {"env": "prod"}}, lambda r: r.tags.get("env") == "prod"),
        ({"tags": {"env": "prod", "team": "a"}}, lambda r: r.tags == {"env": "prod", "team": "a"}),
        ({"tags": {"env": "nope"}}, lambda r: False),
        ({"since": T0 + timedelta(minutes=10)}, lambda r: r.timestamp >= T0 + timedelta(minutes=10)),
        ({"until": T0 + timedelta(minutes=10)}, lambda r: r.timestamp < T0 + timedelta(minutes=10)),
        ({"since": T0, "until": T0 + timedelta(minutes=45), "provider": "openai"},
         lambda r: T0 <= r.timestamp < T0 + timedelta(minutes=45) and r.provider == "openai"),
        ({"user_id": "u2", "session_id": "s1", "provider": "anthropic", "model": "claude",
          "customer_key": "c1"}, lambda r: r.user_id == "u2" and r.session_id == "s1"),
        ({"provider": "nobody"}, lambda r: False),
    ],
)
def test_every_filter(store, filters, pred):
    records = sample()
    store.save_many(records)
    got = store.query(**filters)
    assert [r.id for r in got] == [r.id for r in newest_first(records) if pred(r)]
    assert store.aggregate((), **filters) == expected(records, (), pred) or (
        not any(map(pred, records)) and store.aggregate((), **filters)[0]["count"] == 0
    )


def test_since_inclusive_until_exclusive_with_aware_and_naive_datetimes(store):
    at = datetime(2025, 6, 1, 12, 0, 0, tzinfo=UTC)
    r = rec(0, timestamp=at)
    store.save_many([r])
    paris = timezone(timedelta(hours=2))
    assert [x.id for x in store.query(since=at)] == [r.id]
    assert store.query(until=at) == []
    assert [x.id for x in store.query(since=datetime(2025, 6, 1, 14, 0, tzinfo=paris))] == [r.id]
    assert [x.id for x in store.query(since=datetime(2025, 6, 1, 12, 0))] == [r.id]  # naive = UTC
    assert store.query(until=datetime(2025, 6, 1, 12, 0)) == []
    assert [x.id for x in store.query(until=at + timedelta(microseconds=1))] == [r.id]
    assert store.query(since=at + timedelta(microseconds=1)) == []
    late = rec(0, timestamp=datetime(2025, 6, 1, 23, 59, 59, 999999, tzinfo=UTC))
    store.save_many([late])
    assert [x.id for x in store.query(since=late.timestamp)] == [late.id]
    assert [x.id for x in store.query(until=late.timestamp)] == [r.id]
    assert [g["day"] for g in store.aggregate("day", since=late.timestamp)] == ["2025-06-01"]


def test_newest_first_ties_by_id_and_pagination(store):
    same = T0 + timedelta(hours=5)
    records = [rec(i % 7, timestamp=same if i % 3 == 0 else None) for i in range(40)]
    store.save_many(records)
    want = [r.id for r in newest_first(records)]
    assert [r.id for r in store.query()] == want
    pages = [store.query(limit=6, offset=o) for o in range(0, 40, 6)]
    assert [r.id for page in pages for r in page] == want
    assert store.query(limit=0) == []
    assert store.query(offset=100) == []
    assert [r.id for r in store.iter_records(batch_size=7)] == want
    assert [r.id for r in store.query(provider="openai", limit=3, offset=2)] == want[2:5]


def test_bad_filters_raise_naming_the_filter(store):
    with pytest.raises(TypeError, match="since"):
        store.query(since="yesterday")
    with pytest.raises(TypeError, match="unknown filter"):
        store.aggregate(("day",), colour="red")
    with pytest.raises(ValueError, match="limit"):
        store.query(limit=-1)
    with pytest.raises(ValueError, match="group_by key 'week'"):
        store.aggregate(("week",))


# -- aggregate --------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "keys",
    [("day",), ("hour",), ("provider",), ("model",), ("user_id",), ("session_id",),
     ("customer_key",), ("tag:env",), ("tag:team",), ("day", "model"), ("day", "provider", "model"),
     ("hour", "model"), ("provider", "tag:env", "user_id"), ()],
)
@pytest.mark.parametrize("exact_nano", [True, False], ids=["nano", "finer"])
def test_aggregate_per_group_key(store, keys, exact_nano):
    records = sample(exact_nano)
    store.save_many(records)
    assert store.aggregate(keys) == expected(records, keys)
    assert store.aggregate(",".join(keys)) == expected(records, keys)


@pytest.mark.parametrize("exact_nano", [True, False], ids=["nano", "finer"])
def test_aggregate_with_filters_and_time_bounds(store, exact_nano):
    records = sample(exact_nano)
    store.save_many(records)
    hour = T0.replace(minute=0)  # hour-aligned bounds, and unaligned ones
    for since, until in [(hour, hour + timedelta(hours=2)), (T0 + timedelta(minutes=5), None),
                         (None, T0 + timedelta(minutes=46)), (hour - timedelta(days=1), hour)]:
        def pred(r, since=since, until=until):
            return (since is None or r.timestamp >= since) and (until is None or r.timestamp < until)

        got = store.aggregate(("day", "model"), since=since, until=until)
        assert got == expected(records, ("day", "model"), pred), (since, until)
    got = store.aggregate(("hour",), provider="anthropic", tags={"env": "prod"})
    assert got == expected(records, ("hour",), lambda r: r.provider == "anthropic"
                           and r.tags.get("env") == "prod")
    got = store.aggregate(("day",), user_id="u1")
    assert got == expected(records, ("day",), lambda r: r.user_id == "u1")


def test_day_and_hour_are_utc_for_aware_and_naive_timestamps(store):
    tokyo = timezone(timedelta(hours=9))
    records = [
        rec(0, timestamp=datetime(2025, 1, 2, 8, 30, tzinfo=tokyo)),  # 2025-01-01 23:30 UTC
        rec(0, timestamp=datetime(2025, 1, 1, 23, 59, 59, 999999)),  # naive: UTC
        rec(0, timestamp=datetime(2025, 1, 2, 0, 0)),
    ]
    store.save_many(records)
    assert [(g["day"], g["count"]) for g in store.aggregate("day")] == [
        ("2025-01-01", 2), ("2025-01-02", 1)]
    assert [(g["hour"], g["count"]) for g in store.aggregate("hour")] == [
        ("2025-01-01T23:00Z", 2), ("2025-01-02T00:00Z", 1)]


def test_decimal_cost_is_exact(store):
    # (costs above 10^9 are refused by make_usage_record, as by the collector)
    costs = ["0.1", "0.2", "0.000000000001", "1e-15", "123456789.123456789", "0.3"]
    records = [rec(i, cost=c) for i, c in enumerate(costs)] + [rec(9)]
    store.save_many(records)
    total = sum(Decimal(c) for c in costs)
    (row,) = store.aggregate(())
    assert row["cost"] == total and row["unknown_cost"] == 1 and row["count"] == 7
    assert sum(r.cost for r in store.query() if r.cost is not None) == total
    by_day = store.aggregate(("day", "model"))
    assert sum(g["cost"] for g in by_day) == total
    assert {str(r.cost) for r in store.query() if r.cost is not None} >= {"0.1", "1E-15"}


def test_aggregate_of_an_empty_store(store):
    assert store.aggregate(("day",)) == []
    (row,) = store.aggregate(())
    assert row["count"] == 0 and row["cost"] == 0


def test_clear_removes_everything(opener):
    store = opener()
    store.save_many(sample())
    store.write_runs([RunWrite("r", {"status": "x"}, 1)])
    store.clear()
    assert store.count() == 0
    assert store.query() == [] and store.aggregate(("day", "model")) == []
    assert store.get_run("r") is None and store.query_runs() == []
    records = sample()
    assert store.save_many(records) == {r.id for r in records}  # ids are new again
    assert opener().count() == len(records)


# -- runs -------------------------------------------------------------------------------------

def test_run_write_outcomes(store):
    assert store.write_runs([
        RunWrite("r1", {"agent_name": "a", "status": "running", "start_time": "2025-01-01T00:00:00Z"}, 1),
        RunWrite("r1", {"status": "done", "metrics": {"steps": 3}}, 2, create=False),
        RunWrite("r1", {"status": "running"}, 2, create=False),
        RunWrite("r1", {"status": "zzz"}, 1, create=True),
        RunWrite("nope", {"status": "done"}, 5, create=False),
        RunWrite("r1", {"cost": "0.5"}, 3, create=True),
    ]) == ["created", "updated", "stale", "duplicate", "missing", "updated"]
    assert store.get_run("r1") == {
        "agent_name": "a", "status": "done", "start_time": "2025-01-01T00:00:00Z",
        "metrics": {"steps": 3}, "cost": "0.5", "run_id": "r1", "seq": 3,
    }
    assert store.get_run("nope") is None
    assert store.write_runs([]) == []


def test_reordered_run_replays_never_roll_back(store):
    writes = [RunWrite("r", {"status": f"s{i}", f"k{i}": i}, i, create=i == 1) for i in range(1, 6)]
    store.write_runs([writes[0], writes[3], writes[1], writes[4], writes[2]])
    for w in reversed(writes):  # a full replay, newest first
        store.write_runs([w])
    run = store.get_run("r")
    assert run["seq"] == 5 and run["status"] == "s5"
    assert run["k1"] == 1 and run["k4"] == 4 and run["k5"] == 5
    # writes older than what was stored (k2, k3 arrived after k4) changed nothing
    assert "k2" not in run and "k3" not in run


def test_query_runs_filters_order_and_pages(store):
    store.write_runs([
        RunWrite(f"r{i}", {"agent_name": "a" if i % 2 else "b", "status": "done" if i < 3 else "running",
                           "start_time": f"2025-01-0{i + 1}T00:00:00Z"}, 1)
        for i in range(5)
    ] + [RunWrite("r-nostart", {"agent_name": "a"}, 1)])
    assert [r["run_id"] for r in store.query_runs()] == ["r4", "r3", "r2", "r1", "r0", "r-nostart"]
    assert [r["run_id"] for r in store.query_runs(agent_name="a")] == ["r3", "r1", "r-nostart"]
    assert [r["run_id"] for r in store.query_runs(status="done")] == ["r2", "r1", "r0"]
    assert [r["run_id"] for r in store.query_runs(agent_name="b", status="running")] == ["r4"]
    assert [r["run_id"] for r in store.query_runs(limit=2, offset=1)] == ["r3", "r2"]


def test_run_fields_come_back_as_json_values_in_every_backend(store):
    started = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert store.write_runs([RunWrite("r", {"start_time": started, "cost": Decimal("0.10"),
                                            "n": 3, "ok": True, "none": None,
                                            "nested": {"a": [1, "x"]}}, 1)]) == ["created"]
    assert store.get_run("r") == {"start_time": "2025-01-02T03:04:05Z", "cost": "0.10", "n": 3,
                                  "ok": True, "none": None, "nested": {"a": [1, "x"]},
                                  "run_id": "r", "seq": 1}
    with pytest.raises(TypeError, match="not JSON"):
        store.write_runs([RunWrite("r", {"x": object()}, 2)])
    assert store.get_run("r")["seq"] == 1


def test_concurrent_overlapping_batches_store_each_id_once(store):
    """Several writers (collector replicas, the dispatcher) send the same ids in different
    orders at once: each id is reported new by exactly one save_many and stored once."""
    import random
    import threading

    records = [rec(i % 50, model=f"m{i % 3}", cost="0.001") for i in range(4000)]
    reported: list[set[str]] = []
    errors: list[BaseException] = []

    def writer(seed: int) -> None:
        mine = records[:]
        random.Random(seed).shuffle(mine)
        try:
            for i in range(0, len(mine), 500):
                reported.append(store.save_many(mine[i:i + 500]))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(seed,)) for seed in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sum(len(r) for r in reported) == len(records)
    assert set().union(*reported) == {r.id for r in records}
    assert store.count() == len(records)
    (row,) = store.aggregate(())
    assert row["count"] == len(records) and row["cost"] == Decimal("4.000")
    assert sum(g["count"] for g in store.aggregate(("hour", "model"))) == len(records)


@pytest.mark.parametrize("key", ["a\\b", "back\\\\slash\\", 'quo"te', "dot.ted", "br[0]ack", "$", "*"])
def test_any_tag_key_can_be_filtered_and_grouped(store, key):
    store.save_many([rec(0, tags={key: "x"}), rec(1, tags={key: "y", "other": "x"}), rec(2, tags={"other": "x"})])
    (hit,) = store.query(tags={key: "x"})
    assert hit.tags == {key: "x"}
    groups = {g[f"tag:{key}"]: g["count"] for g in store.aggregate((f"tag:{key}",))}
    assert groups == {"x": 1, "y": 1, None: 1}


# -- money per currency -------------------------------------------------------------------------

def mixed_currency_records():
    return [
        rec(0, cost="1", currency="USD", user_id="u1"),
        rec(5, cost="2", currency="EUR", user_id="u1", cache_read_tokens=4),
        rec(10, cost="0.5", currency="EUR", model="gpt-4o-mini", user_id="u2"),
        rec(15, cost="0.000000000001", currency="GBP", user_id="u1"),  # finer than nano
        rec(20, currency="EUR", user_id="u1"),  # unknown cost, still in its currency
    ]


@pytest.mark.parametrize("filters", [{}, {"user_id": "u1"}, {"provider": "openai"}],
                         ids=["rollup", "scan", "rollup-filtered"])
def test_money_never_adds_across_currencies(store, filters):
    from usageledger import UsageLedgerError
    from usageledger.totals import MixedCurrencyError, Totals

    records = mixed_currency_records()
    store.save_many(records)
    pred = (lambda r: r.user_id == "u1") if "user_id" in filters else (lambda r: True)
    for keys in [(), ("model",), ("day", "model"), ("hour",)]:
        got = store.aggregate(keys, **filters)
        assert got == expected(records, keys, pred), keys
        assert all(g["currency"] in ("USD", "EUR", "GBP") for g in got)
    totals = Totals.of_rows(store.aggregate((), **filters))
    want_eur = Decimal("2") + (0 if filters.get("user_id") else Decimal("0.5"))
    assert totals.costs == {"USD": Decimal(1), "EUR": want_eur, "GBP": Decimal("0.000000000001")}
    assert totals.count == len([r for r in records if pred(r)]) and totals.unknown_cost == 1
    with pytest.raises(MixedCurrencyError, match="EUR, GBP, USD") as err:
        totals.cost()
    assert isinstance(err.value, ValueError) and isinstance(err.value, UsageLedgerError)
    assert totals.cost("EUR") == want_eur and totals.cost("JPY") == 0
