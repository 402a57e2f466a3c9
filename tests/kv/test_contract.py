"""One contract suite, run against memory, SQLite and a real Redis server."""

from __future__ import annotations

import asyncio
import warnings
from datetime import timedelta
from pathlib import Path

import pytest

from usageledger.kv import (
    MISSING,
    KVConfigError,
    KVSerializationError,
    KVStore,
    KVTypeError,
    PickleNotAllowedError,
    PickleWarning,
)

from .conftest import eventually, run

VALUES = [
    {"a": 1, "nested": {"list": [1, 2.5, "x", None, True]}},
    [1, "two", 3.0],
    "plain ✓ text",
    "",
    2.5,
    0,
    -17,
    2**70,
    None,
    False,
    True,
]


def test_get_set_roundtrip(make_store):
    async def body(s: KVStore):
        for i, value in enumerate(VALUES):
            await s.set(f"v{i}", value)
        for i, value in enumerate(VALUES):
            got = await s.get(f"v{i}", MISSING)
            assert got == value and type(got) is type(value), (i, value, got)
        assert await s.get("nope") is None
        assert await s.get("nope", "dflt") == "dflt"
        assert await s.get("nope", MISSING) is MISSING
        await s.set("v0", "replaced")
        assert await s.get("v0") == "replaced"

    run(make_store, body)


def test_json_and_msgpack(make_store):
    async def body(s: KVStore):
        await s.set("t", (1, 2))
        assert await s.get("t") == [1, 2]
        with pytest.raises(KVSerializationError, match="key 'bad'.*object"):
            await s.set("bad", object())
        assert not await s.exists("bad")

    run(make_store, body)

    async def body_mp(s: KVStore):
        await s.set("b", {"raw": b"\x00\xff", "f": 1.25, "n": [None, 3]})
        assert await s.get("b") == {"raw": b"\x00\xff", "f": 1.25, "n": [None, 3]}
        await s.set("i", 300)
        assert await s.incr("i", 5) == 305
        assert await s.get("i") == 305
        assert await s.compare_and_set("b", {"raw": b"\x00\xff", "f": 1.25, "n": [None, 3]}, 1.5)
        assert await s.get("b") == 1.5

    run(make_store, body_mp, serializer="msgpack")


def test_delete_exists(make_store):
    async def body(s: KVStore):
        await s.mset({"a": 1, "b": 2})
        await s.sadd("s", "m")
        assert await s.exists("a") and await s.exists("s")
        assert await s.delete("a", "s", "missing") == 2
        assert not await s.exists("a") and not await s.exists("s")
        assert await s.smembers("s") == set()
        assert await s.delete() == 0
        assert await s.get("b") == 2

    run(make_store, body)


def test_ttl_expiry_observed(make_store):
    async def body(s: KVStore):
        await s.set("short", "x", ttl=1.0)
        await s.set("delta", "y", ttl=timedelta(milliseconds=1000))
        await s.set("long", "z", ttl=60)
        await s.set("forever", "w")
        assert await s.get("short") == "x" and await s.exists("delta")
        remaining = await s.ttl("short")
        assert remaining is not None and 0 < remaining <= 1.0
        assert await s.ttl("forever") is None and await s.ttl("missing") is None

        async def gone() -> bool:
            return not await s.exists("short") and await s.get("delta") is None

        await eventually(gone)
        assert await s.keys() == ["forever", "long"]
        assert await s.mget(["short", "delta", "long"]) == {"long": "z"}
        assert await s.delete("short") == 0
        assert 50 < await s.ttl("long") <= 60  # minus the wait for the short ones

    run(make_store, body)


def test_default_ttl_and_expire(make_store):
    async def body(s: KVStore):
        await s.set("d", 1)  # store default applies
        await s.set("e", 1, ttl=60)
        assert 0 < await s.ttl("d") <= 1.0
        assert await s.expire("e", 0.2) is True
        assert await s.expire("missing", 5) is False
        await eventually(lambda: _absent(s, "d", "e"))
        await s.mset({"m1": 1, "m2": 2})
        await eventually(lambda: _absent(s, "m1", "m2"))

    run(make_store, body, default_ttl=1.0)


async def _absent(s: KVStore, *keys: str) -> bool:
    return not any([await s.exists(k) for k in keys])


@pytest.mark.parametrize("bad", [0, -1, "5", True, float("inf")])
def test_bad_ttl_is_rejected(make_store, bad):
    async def body(s: KVStore):
        with pytest.raises((ValueError, TypeError), match="ttl"):
            await s.set("k", 1, ttl=bad)
        assert not await s.exists("k")

    run(make_store, body)


def test_incr(make_store):
    async def body(s: KVStore):
        assert await s.incr("c") == 1
        assert await s.incr("c", 10) == 11
        assert await s.incr("c", -12) == -1
        assert await s.get("c") == -1
        await s.set("n", 41)
        assert await s.incr("n") == 42
        await s.set("str", "abc")
        with pytest.raises(KVTypeError, match="'str'"):
            await s.incr("str")
        assert await s.get("str") == "abc"
        await s.set("float", 1.5)
        with pytest.raises(KVTypeError):
            await s.incr("float")
        await s.sadd("set", "a")
        with pytest.raises(KVTypeError):
            await s.incr("set")
        with pytest.raises(TypeError, match="amount"):
            await s.incr("c", 1.5)

    run(make_store, body)


def test_incr_ttl_applies_on_creation_only(make_store):
    async def body(s: KVStore):
        assert await s.incr("w", ttl=1.0) == 1
        first = await s.ttl("w")
        assert first is not None and first <= 1.0
        assert await s.incr("w", ttl=60) == 2  # does not extend the window
        assert await s.ttl("w") <= 1.0

        async def restarted() -> bool:
            return not await s.exists("w")

        await eventually(restarted)
        assert await s.incr("w") == 1
        assert await s.ttl("w") is None

    run(make_store, body)


def test_fifty_concurrent_incrs_land_exactly(make_store):
    async def body(s: KVStore):
        async def worker() -> list[int]:
            return [await s.incr("hits") for _ in range(20)]

        results = await asyncio.gather(*(worker() for _ in range(50)))
        assert await s.get("hits") == 1000
        seen = sorted(v for r in results for v in r)
        assert seen == list(range(1, 1001))  # every increment saw a distinct value

    run(make_store, body)


def test_prefix_scan_stops_at_prefix_end(make_store):
    names = ["user", "user:1", "user:2", "user:2:x", "user;x", "users", "usex", "v", "user\uffff",
             "user:\U0010ffff", "a*[b]?c", "a*[b]?c:1", "aX[b]?c:1", "a*xb]?c"]

    async def body(s: KVStore):
        await s.mset({n: i for i, n in enumerate(names)})
        assert await s.keys("user:") == ["user:1", "user:2", "user:2:x", "user:\U0010ffff"]
        assert await s.keys("user:2") == ["user:2", "user:2:x"]
        assert await s.keys("user") == sorted(n for n in names if n.startswith("user"))
        assert await s.keys("a*[b]?c") == ["a*[b]?c", "a*[b]?c:1"]  # glob characters are literal
        assert await s.keys("zzz") == []
        assert await s.keys() == sorted(names)
        assert await s.keys("") == sorted(names)

    run(make_store, body)


def test_key_prefix_isolates_stores(make_store):
    async def body(s: KVStore):
        other = make_store(key_prefix=make_store.prefix + "other:")
        try:
            await s.set("x", 1)
            await other.set("x", 2)
            assert await s.get("x") == 1 and await other.get("x") == 2
            assert await other.keys() == ["x"]
            assert "other:x" in await s.keys()  # the parent prefix sees the nested one
            assert await other.clear() == 1
            assert await s.get("x") == 1 and await other.get("x") is None
        finally:
            await other.close()

    run(make_store, body)


def test_mget_mset(make_store):
    async def body(s: KVStore):
        await s.mset({"a": 1, "b": [2], "c": {"k": "v"}})
        await s.sadd("set", "m")
        assert await s.mget(["a", "b", "c", "missing", "set"]) == {"a": 1, "b": [2], "c": {"k": "v"}}
        assert await s.mget([]) == {}
        with pytest.raises(KVSerializationError):
            await s.mset({"d": 1, "e": object()})
        assert not await s.exists("d")  # nothing written when one value fails
        await s.mset({"t1": 1, "t2": 2}, ttl=1.0)
        assert 0 < await s.ttl("t2") <= 1.0
        await eventually(lambda: _absent(s, "t1", "t2"))
        many = {f"k{i}": i for i in range(1200)}  # over SQLite's parameter limit
        await s.mset(many)
        assert await s.mget(list(many)) == many

    run(make_store, body)


def test_compare_and_set(make_store):
    async def body(s: KVStore):
        assert await s.compare_and_set("k", MISSING, {"v": 1}) is True
        assert await s.compare_and_set("k", MISSING, {"v": 2}) is False
        current = await s.get("k")
        assert await s.compare_and_set("k", {"v": 9}, {"v": 3}) is False
        assert await s.compare_and_set("k", current, {"v": 3}) is True
        assert await s.get("k") == {"v": 3}
        assert await s.compare_and_set("missing", 1, 2) is False
        await s.set("n", 5)
        assert await s.compare_and_set("n", 5, 6, ttl=1.0) is True
        assert await s.get("n") == 6
        await eventually(lambda: _absent(s, "n"))
        assert await s.compare_and_set("n", MISSING, 1) is True  # expired counts as absent

        async def cas_add(amount: float) -> None:
            while True:
                cur = await s.get("f", MISSING)
                new = amount if cur is MISSING else cur + amount
                if await s.compare_and_set("f", cur, new):
                    return

        await asyncio.gather(*(cas_add(0.5) for _ in range(50)))
        assert await s.get("f") == 25.0

    run(make_store, body)


def test_sets(make_store):
    async def body(s: KVStore):
        assert await s.sadd("s", "a", "b", "a") == 2
        assert await s.sadd("s", "b", "c") == 1
        assert await s.smembers("s") == {"a", "b", "c"}
        assert await s.scard("s") == 3 and await s.sismember("s", "a")
        assert not await s.sismember("s", "z") and not await s.sismember("missing", "a")
        assert await s.srem("s", "a", "z") == 1
        assert await s.srem("s", "b", "c") == 2
        assert not await s.exists("s")  # an emptied set is gone
        assert await s.smembers("missing") == set() and await s.scard("missing") == 0
        with pytest.raises(TypeError, match="member 1"):
            await s.sadd("s", "ok", 1)
        await s.set("val", 1)
        with pytest.raises(KVTypeError):
            await s.sadd("val", "x")
        with pytest.raises(KVTypeError):
            await s.sadd("val", "x", ttl=0.1)
        assert await s.ttl("val") is None and await s.get("val") == 1  # untouched by the failure
        await s.sadd("s2", "x")
        with pytest.raises(KVTypeError):
            await s.get("s2")
        for expected in (MISSING, "x"):
            with pytest.raises(KVTypeError):
                await s.compare_and_set("s2", expected, "y")
        assert await s.mget(["s2"]) == {}
        await s.set("s2", "now a value")  # set() replaces a set, members included
        assert await s.get("s2") == "now a value"
        await s.delete("s2")
        assert await s.sadd("s2", "y") == 1 and await s.smembers("s2") == {"y"}

    run(make_store, body)


def test_set_ttl_and_large_set(make_store):
    async def body(s: KVStore):
        await s.sadd("t", "a", ttl=1.0)
        assert 0 < await s.ttl("t") <= 1.0
        await eventually(lambda: _absent(s, "t"))
        assert await s.sadd("t", "b") == 1
        assert await s.smembers("t") == {"b"}  # expired members do not come back
        members = [f"https://example.com/item/{i}" for i in range(12_000)]
        assert await s.sadd("big", *members) == len(members)
        assert await s.scard("big") == len(members)
        assert await s.smembers("big") == set(members)

    run(make_store, body)


def test_clear_only_own_prefix(make_store):
    async def body(s: KVStore):
        neighbour = make_store(key_prefix=make_store.prefix[:-1] + "X:")
        try:
            await neighbour.set("keep", 1)
            await s.mset({"a": 1, "b": 2})
            await s.sadd("s", "x")
            assert await s.clear() == 3
            assert await s.keys() == []
            assert await neighbour.get("keep") == 1
        finally:
            await neighbour.clear()
            await neighbour.close()

    run(make_store, body)


def test_keys_must_be_strings(make_store):
    async def body(s: KVStore):
        with pytest.raises(TypeError, match="key=1"):
            await s.set(1, "x")  # type: ignore[arg-type]

    run(make_store, body)


class _Evil:
    """Unpickling this would create a file: proof that refused pickle data never runs."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_pickle_only_when_allowed(make_store, tmp_path):
    with pytest.raises(KVConfigError, match="allow_pickle=True"):
        make_store(serializer="pickle")
    marker = tmp_path / "pwned"

    async def body(s: KVStore):
        await s.set("p", _Evil(str(marker)))
        await s.set("plain", {1, 2})
        assert await s.get("plain") == {1, 2}  # pickle keeps types json cannot
        marker.unlink(missing_ok=True)
        safe = make_store()  # same data, default json serialiser, no allow_pickle
        try:
            with pytest.raises(PickleNotAllowedError, match="key 'p' holds pickle data"):
                await safe.get("p")
            with pytest.raises(PickleNotAllowedError):
                await safe.mget(["p"])
        finally:
            await safe.close()
        assert not marker.exists()

    with pytest.warns(PickleWarning, match="pickle"):
        store = make_store(serializer="pickle", allow_pickle=True)

    async def main():
        try:
            await body(store)
        finally:
            await store.close()

    with warnings.catch_warnings():
        warnings.simplefilter("error", PickleWarning)
        asyncio.run(main())


def test_undecodable_bytes_raise_clear_error(make_store):
    async def body(s: KVStore):
        await s.set("x", {"a": 1})
        other = make_store(serializer="msgpack")
        try:
            with pytest.raises(KVSerializationError, match="key 'x'.*msgpack"):
                await other.get("x")
        finally:
            await other.close()

    run(make_store, body)


def test_a_prefix_never_reaches_the_keys_of_a_longer_prefix(make_store):
    async def body(s: KVStore):
        base = make_store.prefix[:-1]  # without its ":"
        app, app2 = make_store(key_prefix=base + "app"), make_store(key_prefix=base + "app2")
        try:
            assert app.key_prefix == base + "app:"  # the separator is added
            await app.set("x", 1)
            await app2.set("y", 2)
            await app2.sadd("s", "m")
            assert await app.keys() == ["x"]
            assert await app.clear() == 1
            assert await app2.keys() == ["s", "y"] and await app2.get("y") == 2
        finally:
            await app2.clear()
            await app.close()
            await app2.close()

    run(make_store, body)


def test_keys_written_under_a_bare_prefix_stay_readable(make_store):
    async def body(s: KVStore):
        base = make_store.prefix[:-1]
        old = make_store(key_prefix=base + "legacy", prefix_separator="")
        try:
            assert old.key_prefix == base + "legacy"
            await old.set("k", "v")  # stored as "<base>legacyk", as before separators
            again = make_store(key_prefix=base + "legacy", prefix_separator="")
            assert await again.get("k") == "v"
            await again.close()
        finally:
            await old.clear()
            await old.close()

    run(make_store, body)
