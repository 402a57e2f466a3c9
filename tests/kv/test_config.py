"""Store construction from arguments and USAGELEDGER_KV_* variables; the global store."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path

import pytest

from usageledger.kv import (
    KVConfigError,
    MemoryKVStore,
    SqliteKVStore,
    configure_global_store,
    create_store,
    get_global_store,
    reset_global_store,
)
from usageledger.kv.config import KV_ENV


def test_env_builds_sqlite_store(tmp_path):
    env = {
        "USAGELEDGER_KV_TYPE": "sqlite",
        "USAGELEDGER_KV_SQLITE_PATH": str(tmp_path / "env.db"),
        "USAGELEDGER_KV_KEY_PREFIX": "app:",
        "USAGELEDGER_KV_SERIALIZER": "msgpack",
        "USAGELEDGER_KV_DEFAULT_TTL": "3600",
        "USAGELEDGER_KV_REDIS_HOST": "ignored-for-sqlite",
    }
    store = create_store(env=env)
    try:
        assert isinstance(store, SqliteKVStore)
        assert store.path == tmp_path / "env.db"
        assert store.key_prefix == "app:" and store.codec.name == "msgpack"
        assert store.default_ttl == 3600.0
    finally:
        asyncio.run(store.close())


def test_arguments_beat_env(tmp_path):
    env = {"USAGELEDGER_KV_TYPE": "sqlite", "USAGELEDGER_KV_KEY_PREFIX": "env:"}
    store = create_store("memory", env=env, key_prefix="arg:", default_ttl=timedelta(minutes=1))
    assert isinstance(store, MemoryKVStore)
    assert store.key_prefix == "arg:" and store.default_ttl == 60.0


def test_env_builds_redis_store(redis_server):
    port = redis_server.url.rsplit(":", 1)[1].split("/")[0]
    env = {"USAGELEDGER_KV_TYPE": "redis", "USAGELEDGER_KV_REDIS_HOST": "127.0.0.1",
           "USAGELEDGER_KV_REDIS_PORT": port, "USAGELEDGER_KV_REDIS_DB": "3",
           "USAGELEDGER_KV_KEY_PREFIX": "cfgtest:"}

    async def main():
        store = create_store(env=env)
        try:
            assert (store.address, store.db) == (f"127.0.0.1:{port}", 3)
            await store.set("x", 1)
            assert await store.get("x") == 1
            await store.clear()
        finally:
            await store.close()

    asyncio.run(main())


@pytest.mark.parametrize(
    ("var", "value", "expect"),
    [
        ("USAGELEDGER_KV_TYPE", "mongo", "one of memory, sqlite, redis"),
        ("USAGELEDGER_KV_REDIS_PORT", "abc", "whole number from 1 to 65535"),
        ("USAGELEDGER_KV_REDIS_PORT", "70000", "whole number from 1 to 65535"),
        ("USAGELEDGER_KV_REDIS_DB", "-1", "whole number"),
        ("USAGELEDGER_KV_SERIALIZER", "yaml", "one of json, msgpack, pickle"),
        ("USAGELEDGER_KV_DEFAULT_TTL", "soon", "positive number of seconds"),
        ("USAGELEDGER_KV_DEFAULT_TTL", "-5", "positive number of seconds"),
    ],
)
def test_bad_env_values_name_variable_and_value(var, value, expect):
    env = {"USAGELEDGER_KV_TYPE": "redis", var: value}
    with pytest.raises(KVConfigError) as info:
        create_store(env=env)
    msg = str(info.value)
    assert f"{var}={value!r}" in msg and f"environment {var}" in msg and expect in msg


def test_pickle_from_env_still_needs_allow_pickle():
    with pytest.raises(KVConfigError, match="allow_pickle=True"):
        create_store(env={"USAGELEDGER_KV_TYPE": "memory", "USAGELEDGER_KV_SERIALIZER": "pickle"})


def test_bad_argument_names_option():
    with pytest.raises(KVConfigError, match=r"port=0 \(from argument\)"):
        create_store("redis", port=0)


def test_docs_list_every_variable():
    doc = (Path(__file__).parents[2] / "docs" / "kv.md").read_text()
    missing = [var for var in KV_ENV if f"`{var}`" not in doc]
    assert not missing, f"docs/kv.md does not document {missing}"


def test_global_store(tmp_path):
    async def main():
        configured = configure_global_store("sqlite", path=str(tmp_path / "g.db"), key_prefix="g:")
        try:
            assert get_global_store() is configured
            await get_global_store().set("k", "v")
            assert await configured.get("k") == "v"
        finally:
            await reset_global_store()

    asyncio.run(main())
