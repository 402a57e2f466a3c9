"""Redis unreachable at start or mid-run: KVUnavailableError naming host:port, no hang, no
silent empty answers, and the same store works again once Redis is back."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import tempfile

import pytest

from tests.support.servers import _wait_port, free_port, start_redis
from usageledger.kv import (
    KVError,
    KVUnavailableError,
    SyncKVStore,
    create_persistence_manager,
    create_store,
)
from usageledger.kv.redis_store import RedisKVStore


def test_unreachable_at_start():
    port = free_port()  # nothing listens here

    async def main():
        store = RedisKVStore("127.0.0.1", port, key_prefix="u:")
        try:
            with pytest.raises(KVUnavailableError, match=f"Redis at 127.0.0.1:{port} .*unreachable"):
                await store.get("x")
            with pytest.raises(KVUnavailableError, match=f"127.0.0.1:{port}"):
                await store.set("x", 1)
            with pytest.raises(KVUnavailableError, match=f"127.0.0.1:{port}"):
                await create_persistence_manager("job", store=store)
        finally:
            await store.close()

    asyncio.run(main())
    env = {"USAGELEDGER_KV_TYPE": "redis", "USAGELEDGER_KV_REDIS_HOST": "127.0.0.1",
           "USAGELEDGER_KV_REDIS_PORT": str(port)}
    with SyncKVStore(lambda: create_store(env=env)) as kv:
        with pytest.raises(KVUnavailableError, match=f"127.0.0.1:{port}") as info:
            kv.incr("n")
        assert isinstance(info.value, KVError) and isinstance(info.value, ConnectionError)


def _restart_on(port: int, directory: str) -> subprocess.Popen:
    """A fresh redis-server on the port the stopped one used."""
    proc = subprocess.Popen(
        ["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--daemonize", "no",
         "--dir", directory, "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    _wait_port(port)
    return proc


def test_redis_stops_mid_run_then_returns():
    server = start_redis()
    restarted: subprocess.Popen | None = None
    address = f"127.0.0.1:{server.port}"

    async def main():
        nonlocal restarted
        store = RedisKVStore(url=server.url, key_prefix="mid:")
        pm = await create_persistence_manager("job", store=store)
        await pm.save_processed_items({"a", "b"})
        await store.set("n", 0)
        errors: list[BaseException] = []
        stop = asyncio.Event()

        async def writer(i: int) -> None:
            gen = 0
            while not stop.is_set():
                gen += 1
                try:
                    await store.mset({f"w{i}:{k}": gen for k in range(10)})
                except BaseException as exc:  # every failure must be the documented one
                    errors.append(exc)
                    return

        tasks = [asyncio.create_task(writer(i)) for i in range(8)]
        await asyncio.sleep(0.05)
        await asyncio.to_thread(server.stop)
        done, pending = await asyncio.wait(tasks, timeout=15)
        assert not pending, "writers hung after Redis stopped"
        assert len(errors) == 8
        assert all(isinstance(e, KVUnavailableError) and address in str(e) for e in errors), errors
        # reads fail loudly rather than answering "nothing processed yet"
        with pytest.raises(KVUnavailableError, match=address):
            await pm.load_processed_items()
        with pytest.raises(KVUnavailableError, match=address):
            await store.incr("n")

        restarted = await asyncio.to_thread(_restart_on, server.port, tempfile.mkdtemp(prefix="ul-redis-"))
        # the same store object reconnects through its pool
        await store.set("n", 5)
        assert await store.incr("n") == 6
        await pm.save_processed_items({"c"})
        assert await pm.load_processed_items() == {"c"}  # the restarted server had no data
        stop.set()
        await store.close()

    try:
        asyncio.run(main())
    finally:
        server.stop()
        if restarted is not None:
            restarted.terminate()
            restarted.wait(10)


def test_redis_hangs_mid_run():
    """A server that stops answering (SIGSTOP) times out into KVUnavailableError; after
    SIGCONT the store answers again."""
    server = start_redis()

    async def main():
        store = RedisKVStore(url=server.url, key_prefix="hang:", socket_timeout=0.3, retries=1)
        await store.set("k", "before")
        os.kill(server.proc.pid, signal.SIGSTOP)
        try:
            with pytest.raises(KVUnavailableError, match=f"127.0.0.1:{server.port}"):
                await store.get("k")
        finally:
            os.kill(server.proc.pid, signal.SIGCONT)
        await store.set("k", "after")
        assert await store.get("k") == "after"
        await store.close()

    try:
        asyncio.run(main())
    finally:
        server.stop()
