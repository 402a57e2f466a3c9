"""`usageledger demo` (what `make demo` runs): a collector on embedded SQLite in its own
uvicorn process, a producer recording a few thousand simulated LLM calls through
PersistentDelivery (the durable journal, batching, retries), a live delivery progress
bar, then cost per model and per day read back from the collector's /api/v1/summary.
The collector keeps running (dashboard, API docs) until Ctrl-C."""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

__all__ = ["run_demo", "simulated_calls"]

MODELS = [
    ("openai", "gpt-4o"),
    ("openai", "gpt-4o-mini"),
    ("anthropic", "claude-3-5-sonnet-20241022"),
    ("anthropic", "claude-3-5-haiku-20241022"),
    ("google", "gemini-1.5-flash"),
]
USERS = [f"user-{i}" for i in range(8)]
#: how long delivery of the simulated calls may take before the demo gives up
DELIVERY_TIMEOUT_S = 120.0


def _port_in_use(host: str, port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex((host, port)) == 0


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _wait_healthy(url: str, proc: subprocess.Popen, log: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the collector exited with code {proc.returncode}:\n{_tail(log)}")
        try:
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"the collector at {url} did not answer /healthz within {timeout}s:\n{_tail(log)}")


def simulated_calls(n: int, days: int, seed: int = 7) -> list[dict[str, Any]]:
    """``n`` LLM calls spread over the last ``days`` days (several providers, models, users,
    sessions), without cost: the collector prices them from the offline tables."""
    rng = random.Random(seed)
    now = datetime.now(UTC)
    calls = []
    for _ in range(n):
        provider, model = rng.choice(MODELS)
        ts = now - timedelta(days=rng.randrange(days), seconds=rng.randrange(86_400))
        input_tokens = rng.randint(50, 4000)
        calls.append({
            "provider": provider,
            "model": model,
            "input_tokens": input_tokens,
            "output_tokens": rng.randint(10, 1500),
            "cache_read_tokens": min(rng.choice([0, 0, 0, 512, 1024]), input_tokens),
            "user_id": rng.choice(USERS),
            "session_id": f"s-{rng.randrange(200)}",
            "timestamp": min(ts, now).isoformat(),
            "tags": {"env": rng.choice(["prod", "staging"])},
        })
    return calls


def _deliver(console: Console, url: str, work: Path, calls: list[dict[str, Any]]) -> None:
    from ..facades.delivery import PersistentDelivery

    n = len(calls)
    t0 = time.perf_counter()
    with PersistentDelivery(db_path=work / "queue.db", api_base=url, batch_interval=0.05) as delivery:
        for call in calls:
            delivery.enqueue(call)
        enqueue_s = time.perf_counter() - t0
        console.print(f"[bold]producer[/] enqueued {n:,} calls in {enqueue_s * 1000:.1f} ms "
                      f"({enqueue_s / max(n, 1) * 1e6:.1f} µs each, no I/O on the caller's thread)")
        columns = (TextColumn("delivering"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        deadline = time.monotonic() + DELIVERY_TIMEOUT_S
        with Progress(*columns, console=console, transient=False) as progress:
            task = progress.add_task("deliver", total=n)
            while True:
                stats = delivery.stats()
                progress.update(task, completed=min(stats["delivered"] or 0, n))
                if (stats["delivered"] or 0) >= n or stats["dead"] or time.monotonic() > deadline:
                    break
                time.sleep(0.05)
        if stats["dead"] or not delivery.flush(max(deadline - time.monotonic(), 1.0)):
            raise RuntimeError(f"not everything was delivered: {delivery.stats()}")
        stats = delivery.stats()
    total_s = time.perf_counter() - t0
    console.print(f"[bold]delivered[/] {stats['delivered']:,} calls in {total_s:.2f} s "
                  f"(dead-lettered: {stats['dead']}, still queued: {stats['queued']})")


def _report(console: Console, url: str) -> dict[str, list[dict[str, Any]]]:
    report = {}
    for group in ("model", "day"):
        resp = httpx.get(f"{url}/api/v1/summary", params={"group_by": group}, timeout=30)
        resp.raise_for_status()
        rows, totals = resp.json()["groups"], resp.json()["totals"]
        if group == "model":
            rows.sort(key=lambda r: Decimal(r["cost"]), reverse=True)
        report[group] = rows
        table = Table(title=f"cost per {group} (from {url}/api/v1/summary?group_by={group})")
        table.add_column(group, no_wrap=True)
        for name in ("calls", "input tokens", "output tokens", "cost"):
            table.add_column(name, justify="right")
        for r in rows:
            table.add_row(str(r[group]), f"{r['count']:,}", f"{r['input_tokens']:,}",
                          f"{r['output_tokens']:,}", f"{Decimal(r['cost']):.6f} {r['currency']}")
        # the collector's totals: per currency, never added across currencies
        total = " · ".join(f"{Decimal(v):.6f} {c}" for c, v in totals["costs"].items())
        table.add_row("[bold]total", f"[bold]{totals['count']:,}", "", "", f"[bold]{total}")
        console.print(table)
    return report


def run_demo(
    host: str = "127.0.0.1",
    port: int = 8765,
    n: int = 3000,
    days: int = 7,
    keep_running: bool = True,
    workdir: str | None = None,
    console: Console | None = None,
) -> dict[str, list[dict[str, Any]]]:
    """Run the demo; returns the two summaries (``{"model": rows, "day": rows}``).
    Ctrl-C or SIGTERM at any point stops the collector and returns cleanly; a temporary
    folder the demo made (no ``workdir``) is removed at the end."""
    console = console or Console()
    import importlib.util

    missing = [m for m in ("fastapi", "uvicorn") if importlib.util.find_spec(m) is None]
    if missing:
        raise RuntimeError(f"the demo's collector needs {', '.join(missing)}: "
                           "pip install 'usageledger[server]'")
    work = Path(workdir or tempfile.mkdtemp(prefix="usageledger-demo-"))
    work.mkdir(parents=True, exist_ok=True)
    with _stop_on_sigterm():
        try:
            return _run(console, host, port, n, days, keep_running, work)
        finally:
            if workdir is None:
                shutil.rmtree(work, ignore_errors=True)


@contextlib.contextmanager
def _stop_on_sigterm() -> Iterator[None]:
    """SIGTERM stops the demo as Ctrl-C does (collector stopped, folder removed), instead
    of ending this process and leaving its collector running."""
    active = True

    def stop(signum: int, frame: Any) -> None:
        if active:
            raise KeyboardInterrupt
        # after the demo (a handler installed later may chain to this one): as before it
        if callable(previous):
            previous(signum, frame)
        elif previous != signal.SIG_IGN:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)

    try:
        previous = signal.signal(signal.SIGTERM, stop)
    except ValueError:  # not the main thread: signals stay as they are
        yield
        return
    try:
        yield
    finally:
        active = False
        if signal.getsignal(signal.SIGTERM) is stop:
            signal.signal(signal.SIGTERM, previous)


def _run(console: Console, host: str, port: int, n: int, days: int, keep_running: bool,
         work: Path) -> dict[str, list[dict[str, Any]]]:
    if _port_in_use(host, port):
        free = _free_port(host)
        console.print(f"[yellow]{host}:{port} is already in use (another collector?): "
                      f"using the free port {free} instead[/]")
        port = free
    url = f"http://{host}:{port}"
    db, log = work / "collector.db", work / "collector.log"
    console.print(f"[bold]collector[/] starting on {url} with storage sqlite:///{db} (log: {log})")
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "usageledger", "serve", "--storage", f"sqlite:///{db}",
             "--host", host, "--port", str(port)],
            stdout=out, stderr=subprocess.STDOUT,
        )
    report: dict[str, list[dict[str, Any]]] = {}
    try:
        _wait_healthy(url, proc, log)
        _deliver(console, url, work, simulated_calls(n, days))
        report = _report(console, url)
        if keep_running:
            console.print(f"\ncollector running at [bold]{url}[/]  dashboard: {url}/  "
                          f"API docs: {url}/docs  metrics: {url}/metrics\nPress Ctrl-C to stop.")
            proc.wait()
            if proc.returncode:
                console.print(f"[red]the collector exited with code {proc.returncode}[/]\n{_tail(log)}")
    except KeyboardInterrupt:  # Ctrl-C, or SIGTERM (see _stop_on_sigterm)
        console.print("\nstopping the collector")
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
    return report
