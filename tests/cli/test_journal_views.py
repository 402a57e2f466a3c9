"""The journal reads the monitor uses (retrying, recent_dead, check_journal_file), on
both journals of the contract."""

from __future__ import annotations

import time

import pytest

from usageledger.journal import JournalError, MemoryJournal, SqliteJournal
from usageledger.journal.sqlite import check_journal_file


@pytest.fixture(params=["sqlite", "memory"])
def journal(request, tmp_path):
    j = SqliteJournal(tmp_path / "j.db") if request.param == "sqlite" else MemoryJournal()
    yield j
    j.close()


def test_retrying_lists_backoffs_soonest_first(journal):
    journal.append([(f"i{k}", "raw", b"{}") for k in range(5)])
    assert journal.retrying() == (0, [])
    journal.claim(5, "me")
    now = time.time()
    journal.retry(["i0"], "late", now + 50)
    journal.retry(["i1"], "soon", now + 10)
    journal.retry(["i2"], "middle", now + 30)
    journal.ack(["i3"])
    n, items = journal.retrying(2)
    assert n == 3
    assert [(i["id"], i["last_error"], i["attempts"]) for i in items] == [("i1", "soon", 1), ("i2", "middle", 1)]
    # abs: the default relative tolerance is ~30 minutes on an epoch timestamp
    assert items[0]["not_before"] == pytest.approx(now + 10, abs=1e-3)
    assert items[1]["not_before"] == pytest.approx(now + 30, abs=1e-3)


def test_recent_dead_newest_first(journal):
    journal.append([(f"i{k}", "raw", b'{"k": 1}') for k in range(3)])
    journal.claim(3, "me")
    before = time.time()
    for k in (2, 0, 1):
        journal.dead([f"i{k}"], f"error {k}")
        time.sleep(0.002)
    dead = journal.recent_dead(2)
    assert [(d["id"], d["last_error"]) for d in dead] == [("i1", "error 1"), ("i0", "error 0")]
    assert all(d["died"] >= before for d in dead)
    assert dead[0]["data"] == b'{"k": 1}'
    assert journal.requeue(["i1"]) == 1
    assert [d["id"] for d in journal.recent_dead()] == ["i0", "i2"]


def test_check_journal_file(tmp_path):
    SqliteJournal(tmp_path / "ok.db").close()
    check_journal_file(tmp_path / "ok.db")
    (tmp_path / "empty.db").write_bytes(b"")
    with pytest.raises(JournalError, match="not a usageledger journal"):
        check_journal_file(tmp_path / "empty.db")
    assert (tmp_path / "empty.db").read_bytes() == b""  # opened read-only: nothing written
