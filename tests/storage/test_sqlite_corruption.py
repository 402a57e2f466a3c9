"""A damaged SQLite storage file is moved aside and salvaged, as the journal's is: bytes
overwritten in a real file, no mocks.

Before, a damaged page made every query touching it fail ("database disk image is
malformed") for as long as the file was used, and a damaged header made the backend
refuse to open at all."""

from __future__ import annotations

import logging
import random
import sqlite3
import threading
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from usageledger.records import make_usage_record
from usageledger.storage.base import RunWrite
from usageledger.storage.sqlite import QUICK_CHECK_MAX_BYTES, SQLiteStorage

N = 3000
T0 = datetime(2025, 5, 1, tzinfo=UTC)


def _records():
    return [make_usage_record("openai", f"m{i % 3}", 10 + i, 5, timestamp=T0 + timedelta(minutes=i),
                              user_id=f"u{i % 7}", tags={"team": f"t{i % 4}"}, cost=Decimal(i) / 1000,
                              payload={"pad": "p" * (200 + i % 150)})
            for i in range(N)]


def _store(path):
    """A storage file of N records, a run, a budget and a price, all in the main file."""
    records = _records()
    s = SQLiteStorage(path)
    for start in range(0, N, 500):
        s.save_many(records[start:start + 500])
    s.write_runs([RunWrite("run-1", {"agent_name": "a", "status": "ok"}, seq=2)])
    s.put_budget("b1", {"limit": "5"})
    s.put_price("openai", "m0", "", {"input": "0.001"})
    with s._db as c:
        c.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    s.close()
    return {r.id: r for r in records}


def _overwrite(path, offset: int, n: int, seed: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(random.Random(seed).randbytes(n))


def _another_process_writes(path) -> None:
    """A write through another connection: the store's page cache (filled by its check
    at open) no longer counts, so its next read goes to the file, damage included."""
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("CREATE TABLE touched (x)")
    other.close()


def _aside(tmp_path, name: str):
    found = [p for p in tmp_path.iterdir()
             if p.name.startswith(f"{name}.corrupt-") and p.name.split(".corrupt-")[1].isdigit()]
    assert len(found) == 1, list(tmp_path.iterdir())
    return found[0]


def _check_salvaged(store: SQLiteStorage, records: dict) -> list:
    got = store.query()
    assert len(got) == len({r.id for r in got})
    for r in got:  # nothing invented, nothing mangled
        assert r == records[r.id], r.id
    # the rollups were rebuilt from the salvaged rows: totals from them match the rows
    (row,) = store.aggregate(group_by=())
    assert row["count"] == len(got)
    assert row["cost"] == sum(r.cost for r in got)
    by_user = {r["user_id"]: r["count"] for r in store.aggregate(group_by="user_id")}
    assert sum(by_user.values()) == len(got)
    return got


def test_damage_mid_file_is_found_at_open_and_the_rest_is_salvaged(tmp_path, caplog):
    path = tmp_path / "usage.db"
    records = _store(path)
    size = path.stat().st_size
    assert size <= QUICK_CHECK_MAX_BYTES
    _overwrite(path, size // 2, 1500, seed=7)
    with pytest.raises(sqlite3.DatabaseError, match="malformed"):  # the damage is real
        sqlite3.connect(path).execute("SELECT count(*), sum(length(payload)) FROM usage").fetchall()
    caplog.set_level(logging.INFO)
    s = SQLiteStorage(path)
    aside = _aside(tmp_path, "usage.db")
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert any(str(path) in m and str(aside) in m for m in errors), errors
    got = _check_salvaged(s, records)
    # 1,500 bytes touch at most two pages, which hold at most a few dozen records
    assert N - 100 <= len(got) < N, len(got)
    assert s.salvaged["rows"]["usage"] == len(got) and s.salvaged["from"] == str(aside)
    assert s.get_run("run-1")["status"] == "ok"
    assert s.list_budgets() == {"b1": {"limit": "5"}}
    assert [p["model"] for p in s.list_prices()] == ["m0"]
    # the backend keeps working on the new file, which is sound
    extra = make_usage_record("openai", "m9", 1, 1, timestamp=T0)
    assert s.save_many([extra]) == {extra.id}
    s.close()
    again = SQLiteStorage(path)
    assert again.count() == len(got) + 1 and again.salvaged is None
    assert sqlite3.connect(path).execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    again.close()


def test_damage_found_by_an_operation_is_salvaged_and_the_operation_answers(tmp_path, caplog):
    path = tmp_path / "usage.db"
    records = _store(path)
    s = SQLiteStorage(path)  # sound at open
    _overwrite(path, path.stat().st_size // 3 // 4096 * 4096, 1500, seed=11)  # a page header
    _another_process_writes(path)
    got = s.query()  # meets the damaged page, then answers from the salvaged file
    assert s.salvaged is not None and N - 100 <= len(got) < N, s.salvaged
    assert {r.id for r in got} <= set(records)
    _check_salvaged(s, records)
    assert str(path) in caplog.text and s.salvaged["from"] in caplog.text
    s.close()


def test_a_write_that_meets_the_damage_is_stored_in_the_new_file(tmp_path):
    path = tmp_path / "usage.db"
    _store(path)
    s = SQLiteStorage(path)
    size = path.stat().st_size
    # every page but the first: whatever the insert touches is damaged
    _overwrite(path, 4096, size - 4096, seed=5)
    _another_process_writes(path)
    new = [make_usage_record("anthropic", "c", 1, 2, timestamp=T0 + timedelta(days=1), cost="0.5")]
    assert s.save_many(new) == {new[0].id}
    assert s.salvaged is not None
    assert s.query(provider="anthropic") == new
    assert s.aggregate(group_by=(), provider="anthropic")[0]["cost"] == Decimal("0.5")
    s.close()


def test_a_damaged_header_is_rebuilt_and_every_row_salvaged(tmp_path, caplog):
    path = tmp_path / "usage.db"
    records = _store(path)
    _overwrite(path, 0, 100, seed=3)  # the whole file header, magic string included
    s = SQLiteStorage(path)
    aside = _aside(tmp_path, "usage.db")
    assert str(aside) in caplog.text and "header" in caplog.text
    assert s.salvaged["header_rebuilt"] is True
    got = _check_salvaged(s, records)
    assert len(got) == N  # only the header was damaged: every row reads
    assert s.get_run("run-1")["seq"] == 2
    s.close()


def test_threads_meeting_the_damage_at_once_replace_the_file_once(tmp_path):
    path = tmp_path / "usage.db"
    records = _store(path)
    s = SQLiteStorage(path)
    _overwrite(path, path.stat().st_size // 2 // 4096 * 4096, 4096 * 3, seed=13)
    _another_process_writes(path)
    answers: list = []
    errors: list = []

    def read() -> None:
        try:
            answers.append(len(s.query(limit=None)))
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=read) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert len(list(tmp_path.glob("usage.db.corrupt-*[0-9]"))) == 1
    assert set(answers) == {s.count()} and s.count() < N
    _check_salvaged(s, records)
    s.close()
