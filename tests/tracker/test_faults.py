"""Every failure is real: a tmpfs that fills up, immutable files and directories (root
ignores permission bits, not chattr +i), a read-only mount, a directory in place of the
file, corrupt JSON. Each test: no exception reaches the caller, the final totals equal
the sum of everything recorded, and stats and logs say what happened."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from decimal import Decimal
from pathlib import Path

import pytest

from tests.core.test_disk_faults import tmpfs
from usageledger.journal.base import JournalItem
from usageledger.records import KIND_USAGE, encode, make_usage_record
from usageledger.sinks.base import OK, Retry
from usageledger.sinks.summary import SummarySink

from .helpers import Expect, file_summary, fill, immutable


def test_disk_full_moves_to_backup_then_back_to_primary(make, tmp_path, logs):
    with tmpfs(tmp_path / "small", size="1m") as small:
        # the journal lives off the small disk: a journal keeps a reserve file it gives back
        # when the disk fills, which would make room for the summary file this test fills for
        t = make(str(small / "usage.json"), journal_path=tmp_path / "usage.journal")
        e = Expect()
        e.write(t, 10)
        filler = fill(small)
        e.many(t, 30, start=10)
        assert t.flush(10)  # the backup location took the writes
        st = t.stats()
        assert st["failures_by_error"].get("ENOSPC", 0) >= 1
        assert st["failures_by_tier"]["primary"] >= 1 and st["tier"] == "backup"
        assert st["tier_writes"]["backup"] >= 1 and st["pipeline"]["dropped"] == 0
        assert "refused the write" in logs.text and "No space left" in logs.text
        assert "written to the backup location" in logs.text
        e.check(t.get_summary())
        e.check(file_summary(t))  # primary is older: the newer backup copy wins, not a sum
        filler.unlink()
        e.write(t, 5, start=40)
        assert t.stats()["tier"] == "primary"
        e.check(file_summary(t))
        assert t.shutdown(5)
        e.check(file_summary(t))


def test_every_location_full_keeps_records_in_the_journal_until_space_returns(make, tmp_path, logs):
    with tmpfs(tmp_path / "p", size="1m") as p, tmpfs(tmp_path / "b", size="1m") as b, \
            tmpfs(tmp_path / "e", size="1m") as em:
        # the journal on a disk with room: this test is about the summary file
        t = make(str(p / "usage.json"), backup_dir=b, emergency_dir=em, journal_path=tmp_path / "j")
        e = Expect()
        e.write(t, 3)
        fillers = [fill(d) for d in (p, b, em)]
        e.many(t, 20, start=3)
        assert not t.flush(1.0)  # nothing can be written: False, never an exception
        st = t.stats()
        assert st["retried_batches"] >= 1 and st["tier"] is None
        assert set(st["failures_by_tier"]) == {"primary", "backup", "emergency"}
        assert st["failures_by_error"].get("ENOSPC", 0) >= 3
        assert st["pipeline"]["retried"] >= 1 and st["pipeline"]["dead"] == 0
        assert st["pipeline"]["queued"] + st["pipeline"]["inflight"] == 20
        assert "no summary location accepts writes" in logs.text and "stay in the journal" in logs.text
        e.check(t.get_summary())  # reads still include what waits in the journal
        assert t.get_summary()["unflushed"] == 20
        for f in fillers:
            f.unlink()
        assert t.flush(15)
        e.check(file_summary(t))
        assert t.stats()["tier"] == "primary"


def test_intermittent_failures_then_success(make, tmp_path, logs):
    with tmpfs(tmp_path / "small", size="1m") as small, tmpfs(tmp_path / "b", size="1m") as b, \
            tmpfs(tmp_path / "em", size="1m") as em:
        t = make(str(small / "usage.json"), backup_dir=b, emergency_dir=em, journal_path=tmp_path / "j")
        e = Expect()
        for round_ in range(4):
            fillers = [fill(d) for d in (small, b, em)]
            e.many(t, 15, start=round_ * 100)
            assert not t.flush(0.3)
            e.check(t.get_summary())
            for f in fillers:
                f.unlink()
            e.write(t, 5, start=round_ * 100 + 50)
            e.check(file_summary(t))
        st = t.stats()
        assert st["retried_batches"] >= 4 and st["records_applied"] == e.calls
        assert st["duplicates_skipped"] == 0
        assert "refused the write" in logs.text


def test_read_only_file(make, logs):
    t = make()
    e = Expect()
    e.write(t, 5)
    with immutable(t.storage_path):
        e.write(t, 12, start=5)
        st = t.stats()
        # access(W_OK) reports the immutable file as not writable (it would for a user
        # without write permission too): the write is refused before any rename
        assert st["failures_by_error"].get("EACCES", 0) >= 1 and st["tier"] == "backup"
        e.check(t.get_summary())
        e.check(file_summary(t))
        assert "the summary file is read-only" in logs.text
    e.write(t, 3, start=50)
    assert t.stats()["tier"] == "primary"
    e.check(file_summary(t))


def test_read_only_directory(make, logs):
    t = make()
    e = Expect()
    e.write(t, 5)
    with immutable(t.storage_path.parent):
        e.write(t, 12, start=5)
        st = t.stats()
        assert st["failures_by_error"].get("EPERM", 0) >= 1 and st["tier"] == "backup"
        e.check(file_summary(t))
    e.write(t, 3, start=50)
    e.check(file_summary(t))
    assert t.stats()["tier"] == "primary"


def test_read_only_mount_from_the_start(make, tmp_path, logs):
    with tmpfs(tmp_path / "ro", ro=True) as ro:
        t = make(str(ro / "usage.json"))
        e = Expect()
        e.write(t, 20)
        st = t.stats()
        assert st["failures_by_error"].get("EROFS", 0) >= 1 and st["tier"] == "backup"
        # the journal beside the file cannot be opened: it lives in the fallback location
        assert not st["pipeline"]["journal"].startswith(str(ro)), st["pipeline"]["journal"]
        assert "cannot be opened" in logs.text and "using the fallback location" in logs.text
        e.check(t.get_summary())
        e.check(file_summary(t))
        assert t.shutdown(5)
        e.check(file_summary(t))


def test_a_directory_in_place_of_the_file(make, logs):
    t = make()
    e = Expect()
    e.write(t, 5)
    t.storage_path.unlink()
    (t.storage_path / "inside").mkdir(parents=True)
    e.write(t, 10, start=5)
    st = t.stats()
    assert st["directory_in_place"] >= 1 and st["tier"] == "backup"
    assert st["failures_by_error"].get("EISDIR", 0) >= 1
    assert "directory is in place" in logs.text
    e.check(t.get_summary())
    e.check(file_summary(t))  # .bak beside the directory is older: the backup location wins
    shutil.rmtree(t.storage_path)
    e.write(t, 2, start=20)
    assert t.stats()["tier"] == "primary"
    e.check(file_summary(t))


def _corrupt(path: Path, how: str) -> bytes:
    data = path.read_bytes()
    bad = {"truncate": data[: len(data) // 2], "garbage": b"\x00\xffnot json{{",
           "shape": b'{"format": "usageledger-summary", "version": 1, "days": 5}'}[how]
    path.write_bytes(bad)
    return bad


def _archives(path: Path) -> list[Path]:
    return sorted(path.parent.glob(path.name + ".corrupt-*"))


def test_corrupt_primary_while_running_is_repaired_from_memory(make, logs):
    t = make()
    e = Expect()
    e.write(t, 10)
    bad = _corrupt(t.storage_path, "truncate")
    e.write(t, 10, start=10)
    st = t.stats()
    assert st["corrupt_primary"] == 1 and len(st["archived"]) == 1
    assert _archives(t.storage_path)[0].read_bytes() == bad
    assert "is corrupt" in logs.text and "archived as" in logs.text
    e.check(t.get_summary())
    e.check(file_summary(t))


def test_corrupt_backup_while_running(make, logs):
    t = make()
    e = Expect()
    e.write(t, 10)
    e.many(t, 1, start=10)
    assert t.flush(10)
    bak = t.storage_path.with_name("usage.json.bak")
    _corrupt(bak, "garbage")
    e.write(t, 10, start=20)
    assert t.stats()["corrupt_backup"] == 1 and _archives(bak)
    e.check(file_summary(t))


def test_both_corrupt_while_running_loses_nothing(make, logs):
    t = make()
    e = Expect()
    e.write(t, 10)
    e.many(t, 1, start=10)
    assert t.flush(10)
    _corrupt(t.storage_path, "shape")
    _corrupt(t.storage_path.with_name("usage.json.bak"), "truncate")
    e.write(t, 4, start=20)
    st = t.stats()
    assert st["corrupt_primary"] == 1 and st["corrupt_backup"] == 1 and st["fresh_starts"] == 0
    e.check(t.get_summary())
    e.check(file_summary(t))


def test_corrupt_primary_at_start_uses_the_backup(make, logs):
    t = make()
    e = Expect()
    e.write(t, 10)
    e.many(t, 10, start=10)
    assert t.shutdown(10)  # a clean stop leaves the backup with the same totals
    _corrupt(t.storage_path, "truncate")
    t2 = make()
    st = t2.stats()
    assert st["corrupt_primary"] == 1 and st["loaded_from"].endswith("usage.json.bak")
    assert "is corrupt" in logs.text and "loaded from" in logs.text
    e.write(t2, 5, start=30)
    e.check(t2.get_summary())
    e.check(file_summary(t2))


def test_corrupt_backup_at_start(make, logs):
    t = make()
    e = Expect()
    e.many(t, 10)
    assert t.shutdown(10)
    bak = t.storage_path.with_name("usage.json.bak")
    _corrupt(bak, "garbage")
    t2 = make()
    assert t2.stats()["corrupt_backup"] == 1 and _archives(bak)
    e.write(t2, 5, start=30)
    e.check(file_summary(t2))


def test_both_corrupt_at_start_archive_and_start_fresh(make, logs):
    """Both copies destroyed by someone else while no tracker ran: their totals are gone
    (kept in the archives for a human); everything recorded since is exact."""
    t = make()
    Expect().many(t, 10)
    assert t.shutdown(10)
    primary_bad = _corrupt(t.storage_path, "garbage")
    _corrupt(t.storage_path.with_name("usage.json.bak"), "truncate")
    t2 = make()
    st = t2.stats()
    assert st["corrupt_primary"] == 1 and st["corrupt_backup"] == 1 and st["fresh_starts"] == 1
    assert len(st["archived"]) == 2 and _archives(t.storage_path)[0].read_bytes() == primary_bad
    assert "starting a fresh summary" in logs.text
    e = Expect()
    e.write(t2, 7)
    e.check(t2.get_summary())
    e.check(file_summary(t2))


def test_a_stale_emergency_copy_is_chosen_over_nothing_when_both_primary_copies_are_corrupt(make):
    t = make()
    e = Expect()
    e.write(t, 5)
    with immutable(t.storage_path.parent):
        e.many(t, 5, start=5)
        assert t.flush(10)  # this generation lives only in the backup location
    assert t.shutdown(10)  # the final write goes to the primary again
    _corrupt(t.storage_path, "garbage")
    _corrupt(t.storage_path.with_name("usage.json.bak"), "garbage")
    t2 = make()
    assert t2.stats()["loaded_from"].startswith(str(t.sink.locations[1].path.parent))
    e.check(t2.get_summary())  # the backup-location copy held every record


def _items(records):
    return [JournalItem(r.id, KIND_USAGE, encode(r), 1) for r in records]


def test_redelivery_after_a_write_whose_ack_was_lost_is_not_counted_twice(tmp_path, logs):
    """The dispatcher acks after send() returns; a crash or journal error in between
    redelivers the batch (maybe with other records, maybe to a new process)."""
    kw = dict(backup_dir=tmp_path / "b", emergency_dir=tmp_path / "e")
    sink = SummarySink(tmp_path / "s.json", **kw)
    first = [make_usage_record("openai", "gpt-4o", 10, 1, cost="0.1") for _ in range(5)]
    assert set(sink.send(_items(first)).values()) == {OK}
    more = [make_usage_record("openai", "gpt-4o", 10, 1, cost="0.1") for _ in range(3)]
    assert set(sink.send(_items(first[:2] + more)).values()) == {OK}
    assert sink.stats()["duplicates_skipped"] == 2
    # a new process reading the file recognises them too
    sink2 = SummarySink(tmp_path / "s.json", **kw)
    assert set(sink2.send(_items(first)).values()) == {OK}
    assert sink2.stats()["duplicates_skipped"] == 5
    day = first[0].timestamp.date().isoformat()
    entry = sink2.days()[day]["openai"]["gpt-4o"]
    assert (entry.calls, str(entry.cost)) == (8, "0.8")
    assert "not counted again" in logs.text


def test_the_recent_ids_are_bounded_by_the_window(tmp_path):
    sink = SummarySink(tmp_path / "s.json", backup_dir=tmp_path / "b", emergency_dir=tmp_path / "e",
                       dedup_window=5)
    recs = [make_usage_record("p", "m", 1, 1, cost="1") for _ in range(8)]
    sink.send(_items(recs[:3]))
    sink.send(_items(recs[3:]))
    assert json.loads((tmp_path / "s.json").read_text())["recent_ids"] == [r.id for r in recs[3:]]
    sink.send(_items(recs[3:]))  # inside the window: recognised
    assert sink.stats()["duplicates_skipped"] == 5


def test_a_failed_write_changes_nothing_and_returns_retry(tmp_path):
    sink = SummarySink(tmp_path / "d" / "s.json", backup_dir=tmp_path / "b", emergency_dir=tmp_path / "e")
    recs = [make_usage_record("p", "m", 1, 1, cost="1") for _ in range(3)]
    assert set(sink.send(_items(recs)).values()) == {OK}
    for d in ("d", "b", "e"):
        (tmp_path / d).mkdir(exist_ok=True)
    with immutable(tmp_path / "d", tmp_path / "b", tmp_path / "e"):
        more = [make_usage_record("p", "m", 1, 1, cost="1") for _ in range(2)]
        results = sink.send(_items(more))
        assert all(isinstance(r, Retry) for r in results.values())
        assert "EPERM" in next(iter(results.values())).reason
        day = recs[0].timestamp.date().isoformat()
        assert sink.days()[day]["p"]["m"].calls == 3  # the refused batch is not in memory either
    assert set(sink.send(_items(more)).values()) == {OK}
    assert sink.days()[day]["p"]["m"].calls == 5


def test_a_copy_of_another_lineage_is_added_once_then_absorbed(make, tmp_path, logs):
    """A snapshot of another lineage (here: a file copied in by hand) holds other records:
    reads add it, the next write absorbs it, and it is never counted twice."""
    other = make("elsewhere/usage.json")
    eo = Expect()
    eo.many(other, 6)
    assert other.shutdown(10)
    t = make()
    e = Expect()
    e.write(t, 4, start=100)
    emergency = t.sink.locations[-1].path
    emergency.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(other.storage_path, emergency)
    total = Expect()
    total.calls, total.input_tokens = e.calls + eo.calls, e.input_tokens + eo.input_tokens
    total.output_tokens, total.cost = e.output_tokens + eo.output_tokens, e.cost + eo.cost
    total.by_day = {d: e.by_day.get(d, 0) + eo.by_day.get(d, 0) for d in {*e.by_day, *eo.by_day}}
    total.check(t.get_summary())
    st = t.stats()
    assert st["foreign_lineages"] == 1 and st["lineages_merged"] == 0 and "other lineage" in logs.text
    total.check(file_summary(t))  # a new reader adds them up too
    total.write(t, 2, start=200)
    st = t.stats()
    assert st["foreign_lineages"] == 0 and st["lineages_merged"] == 1 and "absorbed into" in logs.text
    total.check(file_summary(t))  # primary absorbed it; the emergency copy is superseded
    total.check(t.get_summary())


_NOBODY = """
import json, os, sys
import usageledger.tracker, usageledger.pricing, sqlite3, platformdirs  # noqa: E401,F401
from usageledger import UsageTracker
# after the imports: the interpreter's own files live under /root, which nobody cannot read
os.setgid(65534); os.setuid(65534)
root, n = sys.argv[1], int(sys.argv[2])
t = UsageTracker(root + "/locked/usage.json", backup_dir=root + "/mine/b", emergency_dir=root + "/mine/e",
                 flush_interval=0.05, max_backoff=0.2)
for i in range(n):
    t.record("gpt-4o", i, 1, provider="openai", cost="0.01")
ok = t.flush(10)
s = t.get_summary()
st = t.stats()
t.shutdown(5)
print(json.dumps({"ok": ok, "calls": s["calls"], "cost": str(s["cost"]), "tier": st["tier"],
                  "errors": st["failures_by_error"], "loaded_from": st["loaded_from"],
                  "unreadable": st["unreadable"], "blocked": st["blocked_files"],
                  "foreign": st["foreign_lineages"]}))
"""


@pytest.mark.parametrize("bak_readable", [True, False])
def test_permission_denied_for_a_normal_user(bak_readable):
    """As an unprivileged user (root ignores permission bits): the summary directory and
    file belong to root; the file is readable, not writable. When the ``.bak`` cannot be
    read either, it may hold something newer: it is never overwritten, a new lineage is
    written to the backup location, and reads add the readable primary to it."""
    root = Path(tempfile.mkdtemp(prefix="ul-tracker-perm-"))
    try:
        os.chmod(root, 0o755)
        (root / "mine").mkdir()
        os.chown(root / "mine", 65534, 65534)
        from usageledger import UsageTracker

        t = UsageTracker(root / "locked" / "usage.json", backup_dir=root / "rb", emergency_dir=root / "re")
        for i in range(4):
            t.record("gpt-4o", i, 1, provider="openai", cost="0.01")
        assert t.shutdown(10)
        os.chmod(root / "locked", 0o755)
        os.chmod(t.storage_path, 0o644)
        os.chmod(t.storage_path.with_name("usage.json.bak"), 0o644 if bak_readable else 0o600)
        out = subprocess.run([sys.executable, "-c", _NOBODY, str(root), "6"], capture_output=True,
                             text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        res = json.loads(out.stdout.strip().splitlines()[-1])
        assert res["ok"] and res["calls"] == 10 and res["cost"] == "0.10"
        assert res["tier"] == "backup"
        if bak_readable:
            assert res["errors"].get("EACCES", 0) >= 1 and res["foreign"] == 0
            assert "[Errno 13]" in out.stderr and "refused the write" in out.stderr
        else:
            assert res["unreadable"] >= 1 and res["foreign"] == 1
            # the unreadable .bak, and the primary holding the other (foreign) lineage
            assert res["blocked"] == [str(root / "locked" / n) for n in ("usage.json", "usage.json.bak")]
            assert "cannot be read" in out.stderr and "never overwritten" in out.stderr
        # a root process sees the same exact totals
        t2 = UsageTracker(root / "locked" / "usage.json", backup_dir=root / "mine" / "b",
                          emergency_dir=root / "mine" / "e")
        s2 = t2.get_summary()
        t2.shutdown(5)
        assert (s2["calls"], str(s2["cost"])) == (10, "0.10")
    finally:
        subprocess.run(["chattr", "-R", "-i", str(root)], check=False, capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


def test_a_file_from_a_newer_format_is_kept_and_never_overwritten(make, logs):
    t = make()  # creates the directory and the journal; writes nothing
    newer = b'{"format": "usageledger-summary", "version": 2, "shards": ["elsewhere"]}'
    t.storage_path.write_bytes(newer)
    # stopped, so that t2's dispatcher is the one holding the shared journal's lease and
    # writing (t's could take it first now and then: the tier asserted is t2's)
    assert t.shutdown(5)
    t2 = make()
    e = Expect()
    e.write(t2, 4)
    st = t2.stats()
    assert st["unreadable"] >= 1 and str(t2.storage_path) in st["blocked_files"]
    assert st["tier"] == "backup" and st["corrupt_primary"] == 0
    assert t2.storage_path.read_bytes() == newer and "newer usageledger" in logs.text
    e.check(t2.get_summary())
    e.check(file_summary(t2))


def test_synchronous_write_refused_everywhere_goes_to_the_journal(make, tmp_path, logs):
    t = make(synchronous=True, journal_path=tmp_path / "j")
    e = Expect()
    e.many(t, 3)
    dirs = [loc.path.parent for loc in t.sink.locations]
    for d in dirs:
        d.mkdir(parents=True, exist_ok=True)
    with immutable(*dirs):
        e.many(t, 4, start=3)  # returns normally: committed to the journal instead
        st = t.stats()
        assert st["retried_batches"] >= 4 and st["tier"] is None
        assert st["pipeline"]["recorder"]["written"] == 4 and st["unflushed"] == 4
        e.check(t.get_summary())
        assert not t.flush(0.3)
    assert t.flush(10)
    e.check(file_summary(t))
    assert t.stats()["duplicates_skipped"] == 0 and t.stats()["unflushed"] == 0


def test_records_left_in_the_journal_count_in_reads_from_the_start(make, tmp_path, logs):
    t = make(journal_path=tmp_path / "j")
    e = Expect()
    e.write(t, 2)
    dirs = [loc.path.parent for loc in t.sink.locations]
    for d in dirs:
        d.mkdir(parents=True, exist_ok=True)
    with immutable(*dirs):
        e.many(t, 5, start=2)
        assert not t.shutdown(0.5)  # nothing can be written: the 5 stay in the journal
        assert "stay in the journal" in logs.text
        t2 = make(journal_path=tmp_path / "j")
        s = t2.get_summary()
        e.check(s)
        assert s["unflushed"] == 5 and t2.stats()["unflushed"] == 5
    assert t2.flush(10)
    e.check(t2.get_summary())
    e.check(file_summary(t2))
    assert t2.stats()["unflushed"] == 0


_CRASHING_WORKER = """
import sys
from usageledger import UsageTracker
path, root, progress = sys.argv[1], sys.argv[2], sys.argv[3]
t = UsageTracker(path, backup_dir=root + "/b", emergency_dir=root + "/e", flush_interval=0.005,
                 flush_size=5, durability="committed", lease_s=1.0)
with open(progress, "w", buffering=1) as f:
    for i in range(100_000):
        t.record("gpt-4o", 1, 1, provider="openai", cost="0.001")
        f.write("x\\n")  # after record() returned: the record is committed to the journal
"""


def test_sigkill_while_writing_then_another_process_takes_over(tmp_path, logs):
    """A process killed while its dispatcher writes the file: its in-flight batch returns
    to ready when its lease expires and the next tracker delivers it; a batch that was
    already in the file is recognised by id (nothing lost, nothing twice)."""
    import signal
    import time

    path = tmp_path / "usage.json"
    progress = tmp_path / "progress"
    proc = subprocess.Popen([sys.executable, "-c", _CRASHING_WORKER, str(path), str(tmp_path),
                             str(progress)], stderr=subprocess.DEVNULL)
    generation = 0
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # until it has written the file a few times
            try:
                generation = json.loads(path.read_bytes())["generation"]
            except (OSError, ValueError, KeyError):
                pass  # not written yet, or caught mid-replace: read again
            if generation >= 20:
                break
            time.sleep(0.01)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    # otherwise the kill landed before any writing and the checks below prove nothing
    assert generation >= 20, f"the worker wrote the file {generation} times in 30 s"
    assert proc.returncode == -signal.SIGKILL
    returned = len(progress.read_text().splitlines())
    assert returned > 0, "no record() returned before the kill"
    from usageledger import UsageTracker

    t = UsageTracker(path, backup_dir=tmp_path / "b", emergency_dir=tmp_path / "e", lease_s=1.0)
    try:
        assert t.flush(30)
        s = t.get_summary()
        # a record whose record() returned right before the kill may be unlogged: +1 at most
        assert returned <= s["calls"] <= returned + 1
        assert s["cost"] == Decimal("0.001") * s["calls"] and s["unflushed"] == 0
        st = t.stats()
        # at most the dead process's one batch in flight was in the file already
        assert st["duplicates_skipped"] <= 5 and st["pipeline"]["queued"] == 0
        if st["duplicates_skipped"]:
            assert "not counted again" in logs.text and "expired" in logs.text
    finally:
        t.shutdown(5)
