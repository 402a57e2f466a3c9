"""instrument() as a process-wide switch: patched at import, thread-safe, fork-safe, and
records that reach a real collector in their typed shape."""

from __future__ import annotations

import contextvars
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import httpx
from openai import OpenAI
from openai.resources.chat.completions.completions import Completions

import usageledger
from tests.integrations.helpers import MESSAGES, tokens
from tests.server.support import Collector
from tests.support.fake_llm_server import EXPECTED, response_model
from usageledger.delivery import PersistentDelivery
from usageledger.integrations import capture
from usageledger.meter import Meter

ROOT = Path(__file__).resolve().parents[2]


def _client(server) -> OpenAI:
    return OpenAI(base_url=server.openai_url, api_key="k", max_retries=0)


def test_sdks_imported_after_instrument_are_patched_and_none_is_imported_by_it(llm_server):
    script = textwrap.dedent(f"""
        import sys
        import usageledger
        from usageledger.meter import Meter

        meter = Meter()
        handle = usageledger.instrument(meter)
        # nothing imported for the SDKs that are installed but not used yet
        assert not {{"openai", "anthropic", "litellm"}} & set(sys.modules), sorted(sys.modules)

        import openai
        from openai.resources.chat.completions.completions import Completions
        assert hasattr(Completions.create, "__usageledger_original__")
        assert openai.__loader__ is openai.__spec__.loader  # the real loader, not ours
        assert type(openai.__loader__).__name__ != "_Then"

        import anthropic
        from anthropic.resources.messages.messages import Messages
        assert hasattr(Messages.stream, "__usageledger_original__")

        client = openai.OpenAI(base_url="{llm_server.openai_url}", api_key="k", max_retries=0)
        client.chat.completions.create(model="gpt-4o", messages=[{{"role": "user", "content": "x"}}])
        assert [r.input_tokens for r in meter.query()] == [600]

        handle.uninstrument()
        assert not hasattr(Completions.create, "__usageledger_original__")
        assert not any(type(f).__name__ == "_ImportHook" for f in sys.meta_path)
        assert "litellm" not in sys.modules
        meter.close(10)
        print("ok")
    """)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "ok"


def test_instrument_from_many_threads_patches_once(llm_server, meter):
    original = vars(Completions)["create"]
    handles = []
    start = threading.Barrier(8)

    def go():
        start.wait(30)
        handles.append(usageledger.instrument(meter))

    threads = [threading.Thread(target=go) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(handles) == 8 and len({id(h) for h in handles}) == 1
    # one wrapper around the original, not a wrapper around a wrapper
    assert vars(Completions)["create"].__usageledger_original__ is original

    def call(user: str):
        with usageledger.attributes(user_id=user):
            for _ in range(3):
                _client(llm_server).chat.completions.create(model="gpt-4o", messages=MESSAGES)

    workers = []
    for i in range(4):
        ctx = contextvars.copy_context()
        workers.append(threading.Thread(target=ctx.run, args=(call, f"user-{i}")))
    for t in workers:
        t.start()
    for t in workers:
        t.join(120)
    users = sorted(r.user_id for r in meter.query())
    assert users == sorted(f"user-{i}" for i in range(4) for _ in range(3))
    usageledger.uninstrument()
    assert vars(Completions)["create"] is original


def test_a_forked_child_captures_on_its_own_even_if_a_lock_was_held(llm_server, meter):
    handle = usageledger.instrument(meter, providers=["openai"])
    held, release = threading.Event(), threading.Event()

    def hold():  # another thread holds the registry lock at the moment of fork
        with capture._registry.lock:
            held.set()
            release.wait(30)

    holder = threading.Thread(target=hold)
    holder.start()
    assert held.wait(30)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through its exit status
        code = 3
        try:
            child_meter = Meter()
            usageledger.instrument(child_meter, providers=["openai"])  # needs the lock
            _client(llm_server).chat.completions.create(model="gpt-4o", messages=MESSAGES)
            mine = [tokens(r) for r in child_meter.query()]
            inherited = [tokens(r) for r in meter.query()]  # the parent's handle, copied
            usageledger.uninstrument()
            code = 0 if mine == [EXPECTED["chat"]] and inherited == [EXPECTED["chat"]] else 1
        finally:
            os._exit(code)
    release.set()
    holder.join(30)
    deadline = time.monotonic() + 120
    status = None
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        time.sleep(0.05)
    else:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        raise AssertionError("the forked child hung (a lock inherited held?)")
    assert os.waitstatus_to_exitcode(status) == 0
    assert meter.query() == []  # what the child recorded stays in the child
    handle.uninstrument()


def test_records_reach_a_real_collector_typed(llm_server, tmp_path):
    from anthropic import Anthropic

    with Collector(f"sqlite:///{tmp_path}/usage.db", log_path=tmp_path / "c.log") as collector:
        delivery = PersistentDelivery(api_base=collector.url, db_path=tmp_path / "queue.db")
        handle = usageledger.instrument(delivery)
        try:
            with usageledger.attributes(user_id="u1", customer_key="acme", session_id="s9",
                                        tags={"feature": "chat"}):
                _client(llm_server).chat.completions.create(model="gpt-4o", messages=MESSAGES)
                with Anthropic(base_url=llm_server.url, api_key="k",
                               max_retries=0).messages.stream(
                        model="claude-sonnet-4", max_tokens=32, messages=MESSAGES) as stream:
                    stream.get_final_text()
            assert delivery.flush(60)
        finally:
            handle.uninstrument()
            delivery.stop(30)
        rows = httpx.get(collector.url + "/api/v1/usage", timeout=30).json()["records"]
    by_provider = {r["provider"]: r for r in rows}
    assert sorted(by_provider) == ["anthropic", "openai"]
    for provider, api, model in (("openai", "chat", "gpt-4o"),
                                 ("anthropic", "anthropic", "claude-sonnet-4")):
        row = by_provider[provider]
        assert {k: row.get(k, 0) for k in EXPECTED[api]} == EXPECTED[api]
        assert row["model"] == response_model(model)
        assert (row["user_id"], row["customer_key"], row["session_id"], row["tags"]) == (
            "u1", "acme", "s9", {"feature": "chat"})
        # typed: the payload is ours alone; the older /track shape would carry the token
        # counts in it (and api_id/service_key, which the collector would read back)
        assert set(row["payload"]) <= {"operation", "latency_ms", "stream"}
        assert row["payload"]["operation"] == "chat"
    assert by_provider["openai"]["cost"] is not None  # priced by the collector


def test_a_usage_tracker_target_counts_captured_calls(llm_server, tmp_path):
    from usageledger.tracker import UsageTracker

    tracker = UsageTracker(tmp_path / "usage_summary.json", durability="memory",
                           flush_interval=0.05)
    handle = usageledger.instrument(tracker)
    try:
        _client(llm_server).chat.completions.create(model="gpt-4o", messages=MESSAGES)
        assert tracker.flush(30)
        today = tracker.get_today()
    finally:
        handle.uninstrument()
        tracker.shutdown(30)
    row = today["by_model"][f"openai/{response_model('gpt-4o')}"]
    assert (row["calls"], row["input_tokens"], row["cache_read_tokens"], row["output_tokens"]) == (
        1, 600, 400, 300)
    assert row["cost"] > 0
