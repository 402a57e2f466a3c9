"""UsageTracker: recording, reads that include what is not written yet, filters, pricing,
synchronous mode, shutdown without loss, threads, the LiteLLM callback."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from types import SimpleNamespace

import pytest

from usageledger import UsageTracker

from .helpers import Expect, file_summary


def test_record_is_counted_before_and_after_the_write(make, logs):
    t = make(flush_interval=60, flush_size=1000)  # nothing written unless asked
    e = Expect()
    e.many(t, 25)
    s = t.get_today()
    e.check(s)
    assert s["unflushed"] == 25
    assert not t.storage_path.exists()
    assert t.flush(10)
    s = t.get_today()
    e.check(s)
    assert s["unflushed"] == 0
    e.check(file_summary(t))
    st = t.stats()
    assert st["records_applied"] == 25 and st["recorded"] == 25 and st["unflushed"] == 0
    assert st["tier"] == "primary" and st["write_failures"] == 0
    assert t.storage_path.with_name("usage.json.bak").exists() or st["writes"] == 1


def test_flush_size_triggers_a_write_without_waiting_for_the_interval(make):
    t = make(flush_interval=60, flush_size=5)
    e = Expect()
    e.many(t, 5)
    for _ in range(500):
        if t.stats()["records_applied"] == 5:
            break
        threading.Event().wait(0.01)
    assert t.stats()["records_applied"] == 5
    e.check(file_summary(t))


def test_file_format_is_documented_shape(make):
    t = make()
    t.record("gpt-4o", 10, 5, provider="openai", cost="0.25", cache_read_tokens=3)
    t.record("gpt-4o", 1, 1, provider="openai", cost=None)  # priced by genai-prices
    t.record("no-such-model-xyz", 1, 1, provider="acme")  # unknown: unpriced
    t.record("m", 1, 1, provider="eu", cost="2", currency="EUR")
    assert t.flush(10)
    import json

    doc = json.loads(t.storage_path.read_text())
    assert doc["format"] == "usageledger-summary" and doc["version"] == 1
    day = datetime.now(UTC).date().isoformat()
    gpt = doc["days"][day]["openai"]["gpt-4o"]
    # the second call priced at gpt-4o list prices ($2.50 / $10 per million tokens)
    expected = Decimal("0.25") + Decimal("0.0000125")
    assert t.calculate_cost("gpt-4o", 1, 1, provider="openai") == Decimal("0.0000125")
    assert gpt["calls"] == 2 and gpt["cache_read_tokens"] == 3 and Decimal(gpt["cost"]) == expected
    assert isinstance(gpt["cost"], str)
    assert doc["days"][day]["acme"]["no-such-model-xyz"]["unpriced_calls"] == 1
    assert doc["days"][day]["eu"]["m"]["cost_other"] == {"EUR": "2"}
    assert len(doc["recent_ids"]) == 4
    s = t.get_today()
    assert s["cost"] == expected and s["unpriced_calls"] == 1 and s["cost_other"] == {"EUR": Decimal(2)}


def test_days_since_until_filters_use_each_records_own_day(make):
    t = make()
    now = datetime.now(UTC)
    e = Expect()
    for back, n in ((0, 3), (1, 2), (10, 4)):
        for i in range(n):
            e.record(t, i, timestamp=now - timedelta(days=back))
    assert t.flush(10)
    today, yesterday, old = (now.date() - timedelta(days=b) for b in (0, 1, 10))
    assert t.get_today()["calls"] == 3
    assert t.get_summary(days=2)["calls"] == 5
    assert t.get_summary(days=11)["calls"] == 9
    assert t.get_summary(since=yesterday)["calls"] == 5
    assert t.get_summary(since=old.isoformat(), until=yesterday)["calls"] == 6
    assert t.get_summary(since=now - timedelta(days=10))["calls"] == 9
    assert t.get_summary(until=old)["calls"] == 4
    e.check(t.get_summary())
    assert list(t.get_summary()["by_day"]) == sorted(d.isoformat() for d in (today, yesterday, old))
    # a record timestamped in another time zone lands on its UTC day
    tz = datetime(2025, 1, 1, 23, 30, tzinfo=UTC).astimezone(__import__("zoneinfo").ZoneInfo("Asia/Tokyo"))
    t.record("gpt-4o", 1, 1, provider="openai", cost=0, timestamp=tz)
    assert t.get_summary(since="2025-01-01", until="2025-01-01")["calls"] == 1
    with pytest.raises(ValueError, match="days"):
        t.get_summary(days=0)
    with pytest.raises(ValueError, match="days or since"):
        t.get_summary(days=1, since="2025-01-01")
    with pytest.raises(ValueError, match="since"):
        t.get_summary(since="yesterday")


def test_invalid_input_raises_naming_the_field_and_nothing_is_counted(make):
    t = make()
    with pytest.raises(ValueError, match="input_tokens"):
        t.record("gpt-4o", -1, 0)
    with pytest.raises(TypeError, match="output_tokens"):
        t.record("gpt-4o", 1, "2")
    with pytest.raises(ValueError, match="cost"):
        t.record("gpt-4o", 1, 1, cost=float("nan"))
    with pytest.raises(ValueError, match="flush_size"):
        UsageTracker(t.storage_path, flush_size=0)
    with pytest.raises(ValueError, match="flush_interval"):
        UsageTracker(t.storage_path, flush_interval=-1)
    assert t.get_summary()["calls"] == 0 and t.stats()["recorded"] == 0


def test_calculate_cost_known_unknown_and_overrides(make, logs):
    t = make(prices={"my-model": {"input": "2", "output": "8"}})
    assert t.calculate_cost("my-model", 1_000_000, 500_000) == Decimal(6)
    known = t.calculate_cost("gpt-4o", 1000, 1000, provider="openai")
    assert known == Decimal("0.0125")  # list prices: $2.50 in, $10 out per million
    assert t.calculate_cost("openai/gpt-4o", 1000, 1000) == known
    assert t.calculate_cost("definitely-not-a-model", 10, 10) is None
    assert "definitely-not-a-model" in logs.text
    t.record("my-model", 1_000_000, 500_000, provider="custom")
    assert t.get_today()["cost"] == Decimal(6)  # priced while still unflushed
    assert t.flush(10)
    assert t.get_today()["cost"] == Decimal(6)
    with pytest.raises(ValueError, match="prices"):
        UsageTracker(t.storage_path, prices={"x": {"input": "-1", "output": "1"}})


def test_provider_from_model_prefix(make):
    t = make()
    t.record("anthropic/claude-3-5-sonnet-latest", 1, 1, cost=0)
    t.record("plain-model", 1, 1, cost=0)
    s = t.get_today()
    assert set(s["by_model"]) == {"anthropic/claude-3-5-sonnet-latest", "unknown/plain-model"}


def test_shutdown_loses_nothing_and_a_new_tracker_continues(make, tmp_path):
    t = make(flush_interval=60, flush_size=10_000)
    e = Expect()
    e.many(t, 500)
    assert t.shutdown(10)
    e.check(file_summary(t))
    st = t.stats()
    assert st["pipeline"]["queued"] == 0 and st["unflushed"] == 0
    t2 = make()
    e.check(t2.get_summary())
    e.many(t2, 10, start=500)
    assert t2.shutdown(10)
    e.check(file_summary(t2))
    # after a clean stop the backup holds the same totals as the primary
    bak = t2.storage_path.with_name("usage.json.bak")
    import json

    assert json.loads(bak.read_text())["days"] == json.loads(t2.storage_path.read_text())["days"]


def test_interpreter_exit_without_shutdown_loses_nothing(tmp_path):
    code = f"""
from usageledger import UsageTracker
t = UsageTracker({str(tmp_path / 'usage.json')!r}, flush_interval=60, flush_size=10000,
                 backup_dir={str(tmp_path / 'b')!r}, emergency_dir={str(tmp_path / 'e')!r})
for i in range(300):
    t.record("gpt-4o", i, 1, provider="openai", cost="0.001")
"""
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
    t = UsageTracker(tmp_path / "usage.json", backup_dir=tmp_path / "b", emergency_dir=tmp_path / "e")
    try:
        s = t.get_summary()
        assert (s["calls"], s["input_tokens"], s["cost"]) == (300, sum(range(300)), Decimal("0.3"))
        assert s["unflushed"] == 0
    finally:
        t.shutdown(5)


def test_synchronous_mode_writes_in_the_callers_thread(make):
    t = make(synchronous=True, flush_interval=60)
    e = Expect()
    e.many(t, 5)
    # no flush: record() returned after the file write
    e.check(file_summary(t))
    st = t.stats()
    assert st["synchronous"] and st["records_applied"] == 5 and st["writes"] == 5
    assert st["pipeline"]["recorder"]["written"] == 0  # the journal was not needed
    e.check(t.get_summary())
    assert t.get_summary()["unflushed"] == 0


def test_eight_threads_record_while_another_reads(make):
    t = make(flush_interval=0.02, flush_size=50)
    per_thread, threads_n = 400, 8
    started = [0] * threads_n
    done = [0] * threads_n
    cost = Decimal("0.000123")
    errors: list[BaseException] = []
    stop = threading.Event()
    reads = []

    def writer(k: int) -> None:
        try:
            for _ in range(per_thread):
                started[k] += 1
                t.record("gpt-4o", 3, 2, provider="openai", cost=cost, user_id=f"u{k}")
                done[k] += 1
        except BaseException as exc:  # pragma: no cover - the assertion below reports it
            errors.append(exc)

    def reader() -> None:
        try:
            while not stop.is_set():
                low = sum(done)
                calls = t.get_summary()["calls"]
                high = sum(started)
                # exact at every instant: never a record twice, never one that returned missing
                assert low <= calls <= high, (low, calls, high)
                reads.append(calls)
        except BaseException as exc:
            errors.append(exc)

    r = threading.Thread(target=reader)
    r.start()
    ws = [threading.Thread(target=writer, args=(k,)) for k in range(threads_n)]
    for w in ws:
        w.start()
    for w in ws:
        w.join()
    assert t.flush(30)
    stop.set()
    r.join()
    assert not errors, errors
    n = per_thread * threads_n
    s = t.get_summary()
    assert (s["calls"], s["input_tokens"], s["output_tokens"], s["cost"]) == (n, 3 * n, 2 * n, cost * n)
    fs = file_summary(t)
    assert (fs["calls"], fs["cost"]) == (n, cost * n)
    assert len(reads) > 5 and reads == sorted(reads)
    assert t.stats()["records_applied"] == n and t.stats()["duplicates_skipped"] == 0


# -- LiteLLM ---------------------------------------------------------------------------------
def _openai_response(prompt=100, completion=20, cached=30, reasoning=5, rid="chatcmpl-1"):
    usage = SimpleNamespace(
        prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion,
        prompt_tokens_details=SimpleNamespace(cached_tokens=cached, audio_tokens=None),
        completion_tokens_details=SimpleNamespace(reasoning_tokens=reasoning),
    )
    return SimpleNamespace(id=rid, model="gpt-4o-2024-08-06", usage=usage, choices=[])


def test_litellm_success_callback_records_usage(make, logs):
    t = make()
    kwargs = {"model": "gpt-4o", "litellm_params": {"custom_llm_provider": "openai"},
              "response_cost": 0.5}
    start, end = datetime.now(), datetime.now()
    t.log_success_event(kwargs, _openai_response(), start, end)
    # Anthropic through LiteLLM: cache counts as separate usage fields, prompt includes them
    anthropic_usage = {"prompt_tokens": 1000, "completion_tokens": 50, "cache_read_input_tokens": 600,
                       "cache_creation_input_tokens": 100}
    asyncio.run(t.async_log_success_event(
        {"model": "anthropic/claude-3-5-sonnet-20241022"}, {"id": "msg_1", "usage": anthropic_usage},
        start, end))
    # an unknown model: LiteLLM's own response_cost is used
    t.log_success_event({"model": "my-private-model", "custom_llm_provider": "vllm",
                         "response_cost": 0.125}, _openai_response(10, 1, 0, 0), start, end)
    # events without usage or garbage never raise
    t.log_success_event({"model": "x"}, SimpleNamespace(usage=None), start, end)
    t.log_success_event(None, None, start, end)
    t.log_success_event({"model": "x"}, {"usage": {"prompt_tokens": "lots"}}, start, end)
    assert t.flush(10)
    s = t.get_today()
    gpt = s["by_model"]["openai/gpt-4o"]
    assert (gpt["calls"], gpt["input_tokens"], gpt["cache_read_tokens"], gpt["output_tokens"],
            gpt["reasoning_tokens"]) == (1, 70, 30, 20, 5)
    # list prices per million: input $2.50, cached input $1.25, output $10
    assert gpt["cost"] == Decimal("0.0004125")
    claude = s["by_model"]["anthropic/claude-3-5-sonnet-20241022"]
    assert (claude["input_tokens"], claude["cache_read_tokens"], claude["cache_write_tokens"]) == (300, 600, 100)
    assert s["by_model"]["vllm/my-private-model"]["cost"] == Decimal("0.125")
    assert s["calls"] == 4  # the three real events plus the garbage one with zero tokens
    assert s["by_model"]["unknown/x"]["input_tokens"] == 0


def test_fork_child_records_its_own_and_nothing_is_counted_twice(make):
    import os

    t = make(flush_interval=60, flush_size=1000)
    e = Expect()
    e.many(t, 7)  # pending in the parent at fork time
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through its exit status
        code = 1
        try:
            child = Expect()
            child.many(t, 3, start=100)
            s = t.get_summary()
            ok = s["unflushed"] == 3 and t.flush(10)
            # a clean exit releases the journal lease (os._exit skips atexit); without it
            # the parent would wait for the lease to expire
            # (its result is not asserted: the parent may commit into the shared journal
            # while the child stops)
            t.shutdown(10)
            code = 0 if ok else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert t.flush(10)
    for i in range(100, 103):  # what the child recorded
        e.calls += 1
        e.input_tokens += i
        e.output_tokens += 2 * i + 1
        e.cost += Decimal(i % 7) / Decimal(1000) + Decimal("0.000001")
        e.by_day[next(iter(e.by_day))] += 1
    e.check(t.get_summary())
    e.check(file_summary(t))


_WORKER = """
import sys
from usageledger import UsageTracker
path, b, e, k, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
t = UsageTracker(path, backup_dir=b, emergency_dir=e, flush_interval=0.02, flush_size=20,
                 max_backoff=0.2)
for i in range(n):
    t.record("gpt-4o", k, 1, provider="openai", cost="0.001")
    if i % 10 == 0:
        t.get_summary()  # reads re-load what the other processes wrote
t.shutdown(30)
"""


def test_several_processes_share_one_summary_file(tmp_path):
    """Worker processes (gunicorn-style) on one file: they share the journal (one
    dispatcher holds its lease) and write under the file lock; totals are exact."""
    path = tmp_path / "usage.json"
    procs = [subprocess.Popen([sys.executable, "-c", _WORKER, str(path), str(tmp_path / "b"),
                               str(tmp_path / "e"), str(k), "150"]) for k in range(1, 5)]
    for p in procs:
        assert p.wait(60) == 0
    from usageledger.sinks.summary import SummarySink
    from usageledger.tracker import _summarise

    # the last worker to stop drained the shared journal: the files alone are exact
    sink = SummarySink(path, backup_dir=tmp_path / "b", emergency_dir=tmp_path / "e")
    on_disk = _summarise([sink.days()], None, None)
    assert (on_disk["calls"], on_disk["cost"]) == (600, Decimal("0.600"))
    t = UsageTracker(path, backup_dir=tmp_path / "b", emergency_dir=tmp_path / "e")
    try:
        assert t.flush(30)  # anything a worker left in the shared journal
        s = t.get_summary()
        assert (s["calls"], s["input_tokens"], s["cost"]) == (600, 150 * (1 + 2 + 3 + 4), Decimal("0.600"))
    finally:
        t.shutdown(5)


def test_summary_keeps_currencies_apart(make):
    """USD and EUR are never added: ``cost`` is USD, ``cost_other`` the others, ``costs``
    every currency, in the totals and in each breakdown, before and after the write."""
    t = make(flush_interval=60, flush_size=1000)
    t.record("gpt-4o", 10, 5, provider="openai", cost="1")
    t.record("large", 10, 5, provider="mistral", cost="2", currency="EUR")
    t.record("large", 10, 5, provider="mistral", cost="0.5", currency="EUR")
    for _ in range(2):
        s = t.get_today()
        assert s["cost"] == Decimal(1) and s["cost_other"] == {"EUR": Decimal("2.5")}
        assert s["costs"] == {"EUR": Decimal("2.5"), "USD": Decimal(1)}
        assert s["by_provider"]["mistral"]["costs"] == {"EUR": Decimal("2.5")}
        assert s["by_provider"]["mistral"]["cost"] == 0
        assert s["calls"] == 3 and s["total_tokens"] == 45
        assert t.flush(10)


def test_summary_sums_the_finer_counts(make):
    """The summary file keeps the 1-hour cache writes and audio/image tokens beside the token
    sums, in the totals and each breakdown, before and after the write."""
    t = make(flush_interval=60, flush_size=1000)
    t.record("gpt-audio", 100, 50, provider="openai", input_audio_tokens=60, output_audio_tokens=20)
    t.record("claude-opus-4-5", 10, 5, provider="anthropic", cache_write_tokens=30,
             cache_write_1h_tokens=25, input_image_tokens=4, output_image_tokens=1)
    for _ in range(2):
        s = t.get_today()
        assert (s["input_audio_tokens"], s["output_audio_tokens"], s["cache_write_1h_tokens"]) == (60, 20, 25)
        assert (s["input_image_tokens"], s["output_image_tokens"]) == (4, 1)
        assert s["by_provider"]["anthropic"]["cache_write_1h_tokens"] == 25
        assert s["total_tokens"] == 100 + 50 + 10 + 5 + 30  # the parts are not added again
        assert t.flush(10)
