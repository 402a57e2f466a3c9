"""Stores for the price tests: memory, sqlite and a fresh PostgreSQL database per test
(on the real server of tests/conftest.py)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from usageledger.storage import create_storage
from usageledger.storage.base import StorageBackend


@pytest.fixture
def pg_url(postgres_server) -> str:
    import psycopg

    name = f"ul_prices_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(postgres_server.url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return postgres_server.url.rsplit("/", 1)[0] + "/" + name


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def store(request, tmp_path) -> Iterator[StorageBackend]:
    kind = request.param
    if kind == "memory":
        s = create_storage("memory")
    elif kind == "sqlite":
        s = create_storage(f"sqlite:///{tmp_path}/usage.db")
    else:
        s = create_storage(request.getfixturevalue("pg_url"))
    yield s
    s.close()
