"""A journal belongs to one destination: it records it, refuses pipelines of another, and
derived journal names keep the whole file name; journals made before are adopted."""

from __future__ import annotations

import msgspec
import pytest

from tests.support.fault_server import FaultServer
from usageledger import Meter
from usageledger.delivery import PersistentDelivery
from usageledger.journal import JournalDestinationError, JournalError, SqliteJournal
from usageledger.pipeline import Pipeline
from usageledger.records import KIND_USAGE, make_usage_record
from usageledger.sinks.http import HttpSink
from usageledger.sinks.summary import SummarySink
from usageledger.storage import create_storage


def test_two_pipelines_with_different_sinks_on_one_journal_are_refused(tmp_path):
    journal = tmp_path / "shared.journal"
    first = Pipeline(HttpSink("http://127.0.0.1:9", "/api/v1"), journal_path=journal, dispatch=False)
    try:
        with pytest.raises(JournalDestinationError) as err:
            Pipeline(SummarySink(tmp_path / "totals.json"), journal_path=journal, dispatch=False)
        msg = str(err.value)
        assert str(journal) in msg
        assert "collector http://127.0.0.1:9/api/v1" in msg and f"summary file {tmp_path / 'totals.json'}" in msg
        assert isinstance(err.value, JournalError)
        # the same destination is welcome (another process of the same app)
        Pipeline(HttpSink("http://127.0.0.1:9", "/api/v1"), journal_path=journal, dispatch=False).stop(1)
    finally:
        first.stop(1)


def test_persistent_delivery_to_another_collector_names_both(tmp_path):
    journal = tmp_path / "q.db"
    PersistentDelivery(db_path=journal, api_base="http://127.0.0.1:9", api_key="secret").stop(1)
    with pytest.raises(JournalDestinationError) as err:
        PersistentDelivery(db_path=journal, api_base="https://user:pw@other.example:8443")
    msg = str(err.value)
    assert "http://127.0.0.1:9/api/v1" in msg and "https://user@other.example:8443/api/v1" in msg
    assert "pw" not in msg.replace("https://user@", "") and "secret" not in msg


def test_meters_on_u_db_and_u_jsonl_in_one_folder_store_their_own_records(tmp_path):
    db, jl = tmp_path / "u.db", tmp_path / "u.jsonl"
    a = Meter(storage="sqlite", db_path=db)
    b = Meter(storage="jsonl", path=jl)
    ids_a = {a.record("openai", "gpt-4o", 10, 5) for _ in range(20)}
    ids_b = {b.record("anthropic", "claude", 7, 3) for _ in range(20)}
    assert a.flush(20) and b.flush(20)
    assert {r.id for r in a.query(limit=1000)} == ids_a
    assert {r.id for r in b.query(limit=1000)} == ids_b
    a.close()
    b.close()
    assert (tmp_path / "u.db.journal").exists() and (tmp_path / "u.jsonl.journal").exists()
    assert not (tmp_path / "u.journal").exists()


def test_a_journal_made_before_destinations_were_recorded_is_adopted_and_drained(tmp_path):
    journal = tmp_path / "old.db"
    old = SqliteJournal(journal)  # no destination recorded, as older versions made them
    items = [(f"id-{i}", "raw", msgspec.json.encode({"id": f"id-{i}", "n": i})) for i in range(30)]
    old.append(items)
    old.close()
    with FaultServer() as server:
        d = PersistentDelivery(db_path=journal, api_base=server.url, batch_interval=0.02)
        assert d.flush(20)
        d.stop(5)
        assert {i for i, _, _ in items} <= server.stored_ids()
    assert SqliteJournal(journal).destination == f"collector {server.url}/api/v1"


def test_a_meter_drains_the_journal_an_older_version_named(tmp_path):
    db = tmp_path / "u.db"
    legacy = SqliteJournal(tmp_path / "u.journal")  # `u.db` -> `u.journal` before
    rec = make_usage_record("openai", "gpt-4o", 1, 2)
    from usageledger.records import encode

    legacy.append([(rec.id, KIND_USAGE, encode(rec))])
    legacy.close()
    m = Meter(storage="sqlite", db_path=db)
    try:
        assert m.flush(20)
        assert rec.id in {r.id for r in m.query(limit=10)}
    finally:
        m.close()
    assert create_storage("sqlite", db_path=db).query(limit=10)[0].id == rec.id
