"""`usageledger salvage FILE` on a real journal with bytes overwritten."""

from __future__ import annotations

import random

from usageledger.journal import SqliteJournal


def _journal(path, n=2000) -> dict[str, bytes]:
    j = SqliteJournal(path)
    records = {f"r{i:05d}": b'{"n": %d, "pad": "%s"}' % (i, b"q" * (150 + i % 100)) for i in range(n)}
    j.append([(k, "raw", v) for k, v in records.items()])
    j.checkpoint()
    j.close()
    return records


def test_salvage_of_a_sound_journal_changes_nothing(cli, tmp_path):
    path = tmp_path / "j.db"
    _journal(path, 10)
    r = cli("salvage", path)
    assert r.code == 0, r.err
    assert "no damage found" in r.out and "10 ready" in r.out
    assert [p.name for p in tmp_path.iterdir() if ".corrupt-" in p.name] == []


def test_salvage_moves_a_damaged_journal_aside_and_keeps_what_reads(cli, tmp_path):
    path = tmp_path / "j.db"
    records = _journal(path)
    with open(path, "r+b") as f:  # a damaged header and a damaged page mid-file
        f.write(random.Random(1).randbytes(100))
        f.seek(path.stat().st_size // 2 // 4096 * 4096)
        f.write(random.Random(2).randbytes(600))
    r = cli("salvage", path)
    assert r.code == 0, r.err
    aside = [p for p in tmp_path.iterdir() if p.name.split(".corrupt-")[-1].isdigit()]
    assert len(aside) == 1
    assert f"moved it aside to {aside[0]}" in r.out and "header" in r.out
    got = SqliteJournal(path).claim(len(records), "me")
    assert f"salvaged {len(got):,} records" in r.out
    assert len(records) - 100 <= len(got) < len(records)
    assert all(records[g.id] == g.data for g in got)


def test_salvage_of_a_missing_file_is_one_line(cli, tmp_path):
    r = cli("salvage", tmp_path / "nope.db")
    assert r.code == 1 and r.err.strip() == f"error: no journal at {tmp_path / 'nope.db'}: the file does not exist"
