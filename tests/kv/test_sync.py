"""The blocking facade, from plain threads with no event loop."""

from __future__ import annotations

import threading

import pytest

from usageledger.kv import (
    KVError,
    KVTypeError,
    SyncKVStore,
    create_persistence_manager,
    create_state_tracker,
    sync_store,
)


def test_sync_store_contract(make_store):
    with SyncKVStore(make_store) as kv:
        kv.set("a", {"x": 1}, ttl=60)
        assert kv.get("a") == {"x": 1} and kv.exists("a")
        assert 0 < kv.ttl("a") <= 60
        kv.mset({"b": 2, "c": 3})
        assert kv.mget(["a", "b", "zz"]) == {"a": {"x": 1}, "b": 2}
        assert kv.incr("b", 5) == 7
        assert kv.compare_and_set("c", 3, 4) and kv.get("c") == 4
        assert kv.sadd("s", "m1", "m2") == 2 and kv.smembers("s") == {"m1", "m2"}
        assert kv.scard("s") == 2 and kv.sismember("s", "m1") and kv.srem("s", "m1") == 1
        assert kv.keys() == ["a", "b", "c", "s"]
        assert kv.expire("c", 30) and kv.delete("c") == 1
        with pytest.raises(KVTypeError):  # the store's own exception, not a wrapper
            kv.incr("a")
        kv.ping()
        assert kv.clear() == 3
    with pytest.raises(KVError, match="closed"):
        kv.get("a")


def test_threads_share_one_facade(make_store):
    with SyncKVStore(make_store) as kv:
        def work() -> None:
            for _ in range(100):
                kv.incr("hits")

        threads = [threading.Thread(target=work) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert kv.get("hits") == 800


def test_managers_through_the_facade(tmp_path):
    with sync_store("sqlite", path=str(tmp_path / "s.db"), key_prefix="sync:") as kv:
        pm = kv.wrap(kv.call(create_persistence_manager("job", store=kv.store)))
        pm.save_processed_items({"u1", "u2"})
        pm.save_state({"cursor": 3})
        tracker = kv.wrap(kv.call(create_state_tracker("stats", store=kv.store)))
        tracker.record_processing_time("op", 0.5)
        assert pm.load_processed_items() == {"u1", "u2"}
        assert pm.load_state() == {"cursor": 3}
        assert tracker.get_processing_stats("op")["count"] == 1
        assert pm.prefix == "job"  # plain attributes pass through
    with sync_store("sqlite", path=str(tmp_path / "s.db"), key_prefix="sync:") as again:
        assert again.smembers("job:processed:items") == {"u1", "u2"}
