"""The summary file's three parts on their own: the document (pure functions), the snapshot
store's reading API (``snapshot``, ``today``, ``is_counted``) and the SummarySink adapter."""

from __future__ import annotations

import subprocess
import sys
import threading
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from usageledger.journal.base import JournalItem
from usageledger.records import KIND_RAW, KIND_USAGE, encode, make_usage_record
from usageledger.sinks.base import OK, Reject, Retry
from usageledger.summary_file import SummaryDoc, absorb, live_copies, new_doc, with_records
from usageledger.summary_store import Snapshot, SummaryStore
from usageledger.totals import Totals

from .helpers import immutable

NOW = datetime.now(UTC)
YESTERDAY = NOW - timedelta(days=1)


def rec(i: int = 1, *, cost: str | None = "0.5", currency: str = "USD", when: datetime = NOW,
        model: str = "gpt-4o"):
    return make_usage_record("openai", model, i, 2 * i, cost=None if cost is None else Decimal(cost),
                             currency=currency, timestamp=when)


def store(tmp_path, name="s.json", **kw) -> SummaryStore:
    return SummaryStore(tmp_path / name, backup_dir=tmp_path / "b", emergency_dir=tmp_path / "e", **kw)


# -- the document --------------------------------------------------------------------------
def test_with_records_makes_the_next_generation_and_leaves_the_old_one_alone():
    doc = new_doc("w")
    r1, r2 = rec(1), rec(2, when=YESTERDAY)
    nxt = with_records(doc, [r1, r2], "w2", dedup_window=1)
    assert (nxt.lineage, nxt.generation, nxt.writer) == (doc.lineage, 1, "w2")
    assert nxt.recent_ids == [r2.id]  # the window keeps the last ids only
    assert doc.days == {} and doc.generation == 0 and doc.recent_ids == []
    e = nxt.days[NOW.date().isoformat()]["openai"]["gpt-4o"]
    assert (e.calls, e.input_tokens, e.output_tokens, e.cost) == (1, 1, 2, Decimal("0.5"))


def test_absorb_adds_other_lineages_and_records_up_to_which_generation():
    mine = with_records(new_doc("a"), [rec(1)], "a", 10)
    other = with_records(with_records(new_doc("b"), [rec(2)], "b", 10), [rec(3)], "b", 10)
    merged = absorb(mine, [other], "a", 10)
    assert merged.generation == mine.generation and merged.lineage == mine.lineage
    assert merged.absorbed == {other.lineage: 2}
    assert merged.days[NOW.date().isoformat()]["openai"]["gpt-4o"].calls == 3
    assert set(merged.recent_ids) == set(mine.recent_ids) | set(other.recent_ids)
    assert mine.days[NOW.date().isoformat()]["openai"]["gpt-4o"].calls == 1  # untouched


def test_live_copies_keeps_the_newest_of_a_lineage_and_drops_absorbed_ones():
    a1 = with_records(new_doc("a"), [rec(1)], "a", 10)
    a2 = with_records(a1, [rec(2)], "a", 10)
    b1 = with_records(new_doc("b"), [rec(3)], "b", 10)
    c1 = with_records(new_doc("c"), [rec(4)], "c", 10)
    a3 = with_records(absorb(a2, [c1], "a", 10), [], "a", 10)  # a took c in
    live = live_copies([(a1, "p"), (b1, "q"), (a2, "p.bak"), (c1, "r")])
    assert sorted((d.lineage, d.generation, w) for d, w in live) == sorted(
        [(a2.lineage, 2, "p.bak"), (b1.lineage, 1, "q"), (c1.lineage, 1, "r")])
    live = live_copies([(a3, "p"), (c1, "r"), (b1, "q")])
    assert {d.lineage for d, _ in live} == {a3.lineage, b1.lineage}


# -- the store's reading API ---------------------------------------------------------------
def test_snapshot_and_today_give_totals_per_currency(tmp_path):
    s = store(tmp_path)
    assert s.apply([rec(1), rec(2, cost="1.5", currency="EUR"), rec(3, cost=None),
                    rec(4, cost="2", when=YESTERDAY)]) is None
    snap = s.snapshot()
    assert isinstance(snap, Snapshot) and snap.generation == 1 and snap.pending == ()
    today = s.today()
    assert isinstance(today, Totals)
    assert (today.count, today.input_tokens, today.output_tokens, today.unknown_cost) == (3, 6, 12, 1)
    assert today.costs == {"USD": Decimal("0.5"), "EUR": Decimal("1.5")}
    everything = snap.totals()
    assert everything.count == 4 and everything.costs["USD"] == Decimal("2.5")
    day = YESTERDAY.date().isoformat()
    assert snap.totals(day, day).count == 1
    assert {(d, m) for d, _, m, _ in snap.entries()} == {(NOW.date().isoformat(), "gpt-4o"),
                                                         (day, "gpt-4o")}


def test_a_snapshot_is_a_value_later_writes_do_not_change(tmp_path):
    s = store(tmp_path)
    s.apply([rec(1)])
    before = s.snapshot()
    s.apply([rec(2)])
    after = s.snapshot()
    assert (before.generation, before.totals().count) == (1, 1)
    assert (after.generation, after.totals().count) == (2, 2)


def test_snapshot_drops_from_pending_what_the_file_counts_and_returns_the_rest(tmp_path):
    s = store(tmp_path)
    counted, waiting = rec(1), rec(2)
    s.apply([counted])
    pending = {counted.id: counted, waiting.id: waiting}
    snap = s.snapshot(pending=pending)
    assert snap.pending == (waiting,)
    assert pending == {waiting.id: waiting}
    assert s.is_counted(counted.id) and not s.is_counted(waiting.id)


def test_snapshot_sees_what_another_process_counted(tmp_path):
    s = store(tmp_path)
    s.apply([rec(1)])
    mine = rec(7)
    pending = {mine.id: mine}
    assert s.snapshot(pending=pending).totals().count == 1
    # another process counts `mine` (it shares the journal and held its lease)
    code = """
import sys
from usageledger.records import decode_usage
from usageledger.summary_store import SummaryStore
s = SummaryStore(sys.argv[1], backup_dir=sys.argv[2], emergency_dir=sys.argv[3])
sys.exit(0 if s.apply([decode_usage(bytes.fromhex(sys.argv[4]))]) is None else 1)
"""
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "s.json"), str(tmp_path / "b"),
                    str(tmp_path / "e"), encode(mine).hex()], check=True, timeout=60)
    snap = s.snapshot(pending=pending)
    assert snap.totals().count == 2 and snap.pending == () and pending == {}


def test_on_applied_and_snapshot_share_one_lock_so_no_record_is_seen_twice_or_never(tmp_path):
    """A reader taking snapshots while a writer applies: with ``on_applied`` dropping the
    counted ids from the pending map, every snapshot holds each record once."""
    pending: dict = {}
    s = store(tmp_path, on_applied=lambda ids: [pending.pop(i, None) for i in ids])
    stop = threading.Event()
    seen: list[int] = []
    bad: list[str] = []
    n = 300

    def reader():
        while not stop.is_set():
            snap = s.snapshot(pending=pending)
            total = snap.totals().count + len(snap.pending)
            seen.append(total)
            if seen and total < max(seen):
                bad.append(f"went back to {total}")

    recs = [rec(i) for i in range(n)]
    th = threading.Thread(target=reader)
    th.start()
    try:
        for i in range(0, n, 10):
            batch = recs[i:i + 10]
            for r in batch:  # handed on (pending) before the write, as UsageTracker does
                pending[r.id] = r
            assert s.apply(batch) is None
            snap = s.snapshot(pending=pending)
            assert snap.totals().count + len(snap.pending) == i + len(batch)
    finally:
        stop.set()
        th.join()
    assert not bad and len(seen) > 5 and pending == {}


def test_a_store_that_cannot_write_keeps_the_snapshot_it_had(tmp_path):
    s = SummaryStore(tmp_path / "d" / "s.json", backup_dir=tmp_path / "b", emergency_dir=tmp_path / "e")
    s.apply([rec(1)])
    (tmp_path / "b").mkdir(exist_ok=True)
    (tmp_path / "e").mkdir(exist_ok=True)
    with immutable(tmp_path / "d", tmp_path / "b", tmp_path / "e"):
        error = s.apply([rec(2)])
        assert error is not None and "no summary location accepts writes" in error
        assert s.snapshot().totals().count == 1
    assert s.apply([rec(2)]) is None and s.today().count == 2


# -- the sink adapter ----------------------------------------------------------------------
def test_the_sink_speaks_the_sink_contract_over_a_shared_store(tmp_path):
    from usageledger.sinks.summary import SummarySink

    s = store(tmp_path)
    sink = SummarySink(store=s)
    good = rec(1)
    results = sink.send([JournalItem(good.id, KIND_USAGE, encode(good), 1),
                         JournalItem("x", KIND_RAW, b"{}", 1)])
    assert results[good.id] is OK and isinstance(results["x"], Reject)
    assert s.today().count == 1 and sink.stats()["rejected"] == 1
    assert sink.destination == f"summary file {s.path}" and sink.path == s.path
    with pytest.raises(ValueError, match="is not the store's file"):
        SummarySink(tmp_path / "other.json", store=s)
    with pytest.raises(TypeError, match="path or a store"):
        SummarySink()


def test_the_sink_answers_retry_with_the_stores_reason(tmp_path):
    from usageledger.sinks.summary import SummarySink

    sink = SummarySink(tmp_path / "d" / "s.json", backup_dir=tmp_path / "b", emergency_dir=tmp_path / "e")
    for d in ("d", "b", "e"):
        (tmp_path / d).mkdir()
    r = rec(1)
    with immutable(tmp_path / "d", tmp_path / "b", tmp_path / "e"):
        [(rid, result)] = sink.send([JournalItem(r.id, KIND_USAGE, encode(r), 1)]).items()
    assert rid == r.id and isinstance(result, Retry) and "no summary location" in result.reason


def test_the_old_import_path_keeps_the_documented_names():
    import usageledger.sinks.summary as old
    import usageledger.summary_file as doc
    import usageledger.summary_store as st

    for name in old.__all__:
        assert getattr(old, name) is not None, name
    assert old.SummaryDoc is doc.SummaryDoc is SummaryDoc and old.Location is st.Location
    assert old.CorruptSummary is doc.CorruptSummary


def test_the_tracker_reads_through_its_store(tmp_path):
    from .helpers import tracker

    t = tracker(tmp_path)
    try:
        t.record("gpt-4o", 10, 5, provider="openai", cost=Decimal("0.25"))
        assert t.flush(10)
        assert isinstance(t.store, SummaryStore) and t.store is t.sink.store
        assert t.store.today().count == 1 == t.get_today()["calls"]
        assert t.store.today().costs == {"USD": Decimal("0.25")}
    finally:
        t.shutdown(5)
