"""PersistenceManager, RetryManager and StateTracker on every backend."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from usageledger.kv import (
    KVStore,
    PersistenceManager,
    RetryManager,
    StateTracker,
    create_persistence_manager,
    create_retry_manager,
    create_state_tracker,
)

from .conftest import eventually, run


def test_persistence_manager_processed_items(make_store):
    async def body(s: KVStore):
        pm = await create_persistence_manager("fr_siren_provider", store=s)
        assert await pm.load_processed_items() == set()
        assert await pm.save_processed_items({"url1", "url2", "url3"}) == 3
        assert await pm.save_processed_items(["url3", "url4"]) == 1  # a union, not a replace
        assert await pm.load_processed_items() == {"url1", "url2", "url3", "url4"}
        assert await pm.is_processed("url2") and not await pm.is_processed("url9")
        assert await pm.count_processed_items() == 4
        # a real set under {prefix}:processed:{name}, with the per-type TTL
        key = "fr_siren_provider:processed:items"
        assert await s.scard(key) == 4
        assert 7 * 86400 - 5 < await s.ttl(key) <= 7 * 86400
        assert await pm.save_processed_items({"other"}, name="files") == 1
        assert await pm.load_processed_items("files") == {"other"}
        big = {f"https://api.example.com/page/{i}" for i in range(20_000)}
        assert await pm.save_processed_items(big, name="big") == len(big)
        assert await pm.load_processed_items("big") == big
        assert await pm.clear_processed_items() is True
        assert await pm.load_processed_items() == set()

    run(make_store, body)


def test_persistence_manager_state_and_errors(make_store):
    async def body(s: KVStore):
        pm = await create_persistence_manager("api_provider", store=s, ttls={"errors": timedelta(hours=1)})
        state = {"current_date": "2024-01-15", "current_cursor": "abc123", "processed_count": 150}
        await pm.save_state(state)
        assert await pm.load_state() == state
        assert await pm.load_state("other", default={}) == {}
        await pm.save_state([1, 2], name="pages")
        assert await pm.load_state("pages") == [1, 2]

        await pm.save_error("https://api.example.com/data/1", "Connection timeout", 2)
        await pm.save_error("https://api.example.com/data/2", "HTTP 500", 0)
        await pm.save_error("https://api.example.com/data/3", "gave up", 3)
        err = await pm.get_error("https://api.example.com/data/1")
        assert err["error"] == "Connection timeout" and err["retry_count"] == 2
        assert datetime.fromisoformat(err["timestamp"]).tzinfo is not None
        assert await s.ttl("api_provider:errors:https://api.example.com/data/1") <= 3600
        failed = await pm.get_failed_items(max_retries=3)
        assert [f["item_id"] for f in failed] == ["https://api.example.com/data/1",
                                                    "https://api.example.com/data/2"]
        assert len(await pm.get_failed_items(max_retries=4)) == 3
        assert await pm.clear_errors("https://api.example.com/data/1") == 1
        assert len(await pm.get_failed_items(max_retries=4)) == 2
        other = PersistenceManager(s, "api_provider_2")  # a longer prefix must not be swept up
        await other.save_error("x", "e")
        assert await pm.clear_errors() == 2
        assert await pm.get_failed_items(max_retries=10) == []
        assert len(await other.get_failed_items()) == 1
        assert await pm.clear_state() is True and await pm.load_state() is None

    run(make_store, body)


def test_persistence_manager_validates():
    store = None
    with pytest.raises(ValueError, match="prefix=''"):
        PersistenceManager(store, "")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown types"):
        PersistenceManager(store, "p", ttls={"nope": 1})  # type: ignore[arg-type]


def test_retry_manager_sequence_and_delays(make_store):
    async def body(s: KVStore):
        rm = await create_retry_manager(max_retries=3, backoff_factor=2.0, base_delay=0.5,
                                        max_delay=1.5, jitter=False, store=s)
        assert await rm.should_retry("failed_item")
        assert await rm.get_retry_delay("failed_item") == 0.5
        assert await rm.record_retry("failed_item", "Error 1") == 1
        assert await rm.get_retry_delay("failed_item") == 0.5
        assert await rm.record_retry("failed_item", "Error 2") == 2
        assert await rm.get_retry_delay("failed_item") == 1.0
        assert await rm.claim_retry("failed_item", "Error 3") == 3
        assert await rm.get_retry_delay("failed_item") == 1.5  # capped at max_delay
        assert not await rm.should_retry("failed_item")
        assert await rm.claim_retry("failed_item", "Error 4") is None
        info = await rm.get_retry_info("failed_item")
        assert info["last_error"] == "Error 4" and info["retry_count"] == 4
        assert await rm.clear_retry_data("failed_item") is True
        assert await rm.should_retry("failed_item") and await rm.get_retry_count("failed_item") == 0

        jittered = RetryManager(s, max_retries=5, base_delay=1.0, max_delay=10.0, jitter=True)
        for _ in range(3):
            await jittered.record_retry("j")
        delays = {await jittered.get_retry_delay("j") for _ in range(20)}
        assert all(0 <= d <= 4.0 for d in delays) and len(delays) > 1

    run(make_store, body)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"max_retries": -1}, "max_retries=-1"), ({"backoff_factor": 0.5}, "backoff_factor=0.5"),
     ({"base_delay": 10, "max_delay": 1}, "max_delay=1")],
)
def test_retry_manager_validates(kwargs, match):
    with pytest.raises(ValueError, match=match):
        RetryManager(None, **kwargs)  # type: ignore[arg-type]


def test_two_workers_race_on_the_same_item(make_store):
    """Two workers, each on its own connection, share every item: together they are granted
    exactly max_retries attempts per item, numbered 1..max_retries."""

    async def body(s: KVStore):
        second = make_store()
        try:
            managers = [RetryManager(s, max_retries=3), RetryManager(second, max_retries=3)]
            grants: dict[str, list[int]] = {}

            async def worker(rm: RetryManager, item: str) -> None:
                while await rm.should_retry(item):
                    attempt = await rm.claim_retry(item, "boom")
                    if attempt is not None:
                        grants.setdefault(item, []).append(attempt)
                    await asyncio.sleep(0)

            items = [f"item-{i}" for i in range(30)]
            await asyncio.gather(*(worker(rm, item) for item in items for rm in managers for _ in range(2)))
            assert {item: sorted(v) for item, v in grants.items()} == {item: [1, 2, 3] for item in items}
        finally:
            await second.close()

    run(make_store, body)


def test_state_tracker_counters(make_store):
    async def body(s: KVStore):
        tracker = await create_state_tracker("my_tracker", store=s)
        assert await tracker.get_counter("api_calls") == 0
        assert await tracker.increment_counter("api_calls", 5) == 5
        assert await tracker.increment_counter("api_calls") == 6
        await tracker.increment_counter("successful_fetches", 3)
        assert await tracker.get_counters() == {"api_calls": 6, "successful_fetches": 3}
        assert await s.get("my_tracker:counter:api_calls") == 6
        await tracker.reset_counter("api_calls")
        assert await tracker.get_counter("api_calls") == 0

    run(make_store, body)


def test_state_tracker_stats(make_store):
    async def body(s: KVStore):
        tracker = StateTracker(s, "t")
        empty = await tracker.get_processing_stats("api_request")
        assert empty == {"count": 0, "total_time": 0.0, "min_time": 0.0, "max_time": 0.0,
                         "avg_time": 0.0, "last_updated": None}
        for d in (1.5, 0.25, 3.0):
            await tracker.record_processing_time("api_request", d)
        stats = await tracker.get_processing_stats("api_request")
        assert (stats["count"], stats["total_time"], stats["min_time"], stats["max_time"]) == (3, 4.75, 0.25, 3.0)
        assert stats["avg_time"] == pytest.approx(4.75 / 3)
        updated = datetime.fromisoformat(stats["last_updated"])
        assert abs((datetime.now(UTC) - updated).total_seconds()) < 60
        with pytest.raises(ValueError, match="duration=-1"):
            await tracker.record_processing_time("api_request", -1)
        assert await tracker.reset_processing_stats("api_request") == 5

    run(make_store, body)


def test_state_tracker_is_atomic_under_concurrency(make_store):
    """60 tasks on two connections record distinct times at once: count, total, min and max
    come out exact (no lost update)."""

    async def body(s: KVStore):
        second = make_store()
        try:
            trackers = [StateTracker(s, "conc"), StateTracker(second, "conc")]
            durations = [(i + 1) / 1000 for i in range(60)]  # 1 ms .. 60 ms

            async def record(i: int, d: float) -> None:
                tracker = trackers[i % 2]
                await tracker.record_processing_time("op", d)
                await tracker.increment_counter("ops")

            await asyncio.gather(*(record(i, d) for i, d in enumerate(reversed(durations))))
            stats = await trackers[0].get_processing_stats("op")
            assert stats["count"] == 60
            assert stats["total_time"] == pytest.approx(sum(durations), abs=1e-9)
            assert (stats["min_time"], stats["max_time"]) == (0.001, 0.06)
            assert await trackers[1].get_counter("ops") == 60
        finally:
            await second.close()

    run(make_store, body)


def test_state_tracker_ttl(make_store):
    async def body(s: KVStore):
        tracker = StateTracker(s, "ttl", ttl=1.0)
        await tracker.increment_counter("c")
        await tracker.record_processing_time("op", 0.1)
        # recorded first: a tracker that stored nothing would pass the expiry check below
        assert await tracker.get_counter("c") == 1
        assert (await tracker.get_processing_stats("op"))["count"] == 1

        async def expired() -> bool:
            return await tracker.get_counter("c") == 0 and (await tracker.get_processing_stats("op"))["count"] == 0

        await eventually(expired)

    run(make_store, body)
