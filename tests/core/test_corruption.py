"""Corruption is found and salvaged: bytes overwritten in a real journal file.

Before, random bytes in the middle of a journal went unnoticed: appends kept succeeding,
every claim failed at WARNING level forever, and 0 of 3,500 records were delivered though
most were still readable.
"""

from __future__ import annotations

import random
import threading

from usageledger.journal import SqliteJournal
from usageledger.pipeline import Pipeline

from .sinks import CollectSink

N = 3500


def _journal(path) -> dict[str, bytes]:
    j = SqliteJournal(path)
    records = {f"rec-{i:05d}": b'{"n": %d, "pad": "%s"}' % (i, b"p" * (200 + i % 150)) for i in range(N)}
    items = [(k, "raw", v) for k, v in records.items()]
    for start in range(0, N, 500):
        j.append(items[start:start + 500])
    j.checkpoint()  # everything in the main file, as after a quiet period
    j.close()
    return records


def _overwrite(path, offset: int, n: int, seed: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(random.Random(seed).randbytes(n))


def _deliver(path, tmp_path) -> CollectSink:
    sink = CollectSink()
    p = Pipeline(sink, journal_path=path, fallback_dir=tmp_path / "fb", batch_interval=0.02,
                 max_batch_size=500)
    assert p.flush(60), p.stats()
    p.stop(5)
    return sink


def _aside(tmp_path, name: str):
    found = [p for p in tmp_path.iterdir()
             if p.name.startswith(f"{name}.corrupt-") and p.name.split(".corrupt-")[1].isdigit()]
    assert len(found) == 1, list(tmp_path.iterdir())
    return found[0]


def _check_delivered(sink: CollectSink, records: dict[str, bytes]) -> None:
    assert len(sink.received) == len(set(sink.received))  # each once
    for id_ in sink.ids:  # nothing invented, nothing mangled
        assert sink.data[id_] == records[id_], id_


def test_random_bytes_mid_file_are_found_at_open_and_the_rest_is_salvaged(tmp_path, caplog):
    path = tmp_path / "j.db"
    records = _journal(path)
    size = path.stat().st_size
    _overwrite(path, size // 2, 1500, seed=7)
    sink = _deliver(path, tmp_path)
    aside = _aside(tmp_path, "j.db")
    # an ERROR naming both paths
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert any(str(path) in m and str(aside) in m for m in errors), errors
    _check_delivered(sink, records)
    # 1,500 bytes touch at most two pages, which hold at most a few dozen records
    assert len(sink.ids) >= N - 100, f"{len(sink.ids)} of {N} salvaged"
    assert len(sink.ids) < N  # the damage was real: some records were on the bad pages
    assert aside.read_bytes()[size // 2:size // 2 + 1500] == random.Random(7).randbytes(1500)  # kept as found


def test_damage_found_by_an_operation_after_open_is_salvaged(tmp_path, caplog):
    path = tmp_path / "j.db"
    records = _journal(path)
    j = SqliteJournal(path)  # sound at open
    _overwrite(path, path.stat().st_size // 3 // 4096 * 4096, 1500, seed=11)  # a page header
    got: list = []
    errors: list = []

    def claim_in_a_new_thread() -> None:  # a new connection: no page cached from before
        try:
            got.extend(j.claim(N, "me"))
        except Exception as exc:
            errors.append(exc)

    t = threading.Thread(target=claim_in_a_new_thread)
    t.start()
    t.join()
    assert errors, "the claim should have met the damaged page"
    assert j.salvaged is not None and j.salvaged["items"] >= N - 100, j.salvaged
    again = j.claim(N, "me")  # the new journal, holding what was salvaged
    assert len(again) == j.salvaged["items"]
    assert all(records[g.id] == g.data for g in again)
    assert str(path) in caplog.text and j.salvaged["from"] in caplog.text


def test_damaged_header_is_rebuilt_and_every_record_delivered(tmp_path, caplog):
    path = tmp_path / "j.db"
    records = _journal(path)
    _overwrite(path, 0, 100, seed=3)  # the whole file header, magic string included
    sink = _deliver(path, tmp_path)
    aside = _aside(tmp_path, "j.db")
    assert str(aside) in caplog.text and "header" in caplog.text
    _check_delivered(sink, records)
    assert sink.ids == set(records)  # only the header was damaged: everything is readable
