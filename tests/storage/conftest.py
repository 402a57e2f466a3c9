"""Backends for the storage contract suite: every test gets a fresh, empty store.

PostgreSQL and Redis are the real servers of tests/conftest.py; the suite uses its own
database there (created once) and a key prefix per test, and clears them after each test.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import pytest

from usageledger.storage import create_storage
from usageledger.storage.base import StorageBackend

KINDS = ("memory", "sqlite", "jsonl", "postgres", "redis", "chdb")


@pytest.fixture(scope="session")
def storage_pg_url(postgres_server) -> str:
    import psycopg

    name = f"ul_storage_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(postgres_server.url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return postgres_server.url.rsplit("/", 1)[0] + "/" + name


@pytest.fixture
def opener(request, tmp_path) -> Iterator[Callable[[], StorageBackend]]:
    """A function that opens (or reopens) the same store; ``request.param`` is the kind."""
    kind = request.param
    opened: list[StorageBackend] = []
    memory: list[StorageBackend] = []
    prefix = f"ul-test-{uuid.uuid4().hex[:10]}:"

    def open_store() -> StorageBackend:
        if kind == "memory":
            if not memory:
                memory.append(create_storage("memory"))
            return memory[0]
        if kind == "sqlite":
            store = create_storage(f"sqlite:///{tmp_path}/usage.db")
        elif kind == "jsonl":
            store = create_storage("jsonl", path=tmp_path / "usage.jsonl")
        elif kind == "chdb":
            store = create_storage(f"chdb:///{tmp_path}/usage.chdb")
        elif kind == "postgres":
            store = create_storage(request.getfixturevalue("storage_pg_url"))
        else:
            store = create_storage(request.getfixturevalue("redis_server").url, prefix=prefix)
        opened.append(store)
        return store

    first = open_store()
    first.clear()  # postgres shares one database between tests
    yield open_store
    first.clear()
    for store in opened:
        store.close()


@pytest.fixture
def store(opener) -> StorageBackend:
    return opener()


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "opener" in metafunc.fixturenames and "kind" not in metafunc.fixturenames:
        metafunc.parametrize("opener", KINDS, indirect=True)
