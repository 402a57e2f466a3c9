"""`usageledger demo` (what `make demo` runs): a collector on embedded SQLite, a producer
recording a few thousand simulated LLM calls through PersistentDelivery, a cost report."""

from __future__ import annotations

import random
import socket
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import httpx
from rich.console import Console
from rich.table import Table

MODELS = [
    ("openai", "gpt-4o"),
    ("openai", "gpt-4o-mini"),
    ("anthropic", "claude-3-5-sonnet-20241022"),
    ("anthropic", "claude-3-5-haiku-20241022"),
    ("google", "gemini-1.5-flash"),
]
USERS = [f"user-{i}" for i in range(8)]


def _port_free(host: str, port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex((host, port)) != 0


def _wait_healthy(url: str, proc: subprocess.Popen, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the collector exited with code {proc.returncode}")
        try:
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"the collector at {url} did not answer /healthz within {timeout}s")


def simulated_calls(n: int, days: int, seed: int = 7) -> list[dict]:
    rng = random.Random(seed)
    now = datetime.now(UTC)
    calls = []
    for _ in range(n):
        provider, model = rng.choice(MODELS)
        ts = now - timedelta(days=rng.randrange(days), seconds=rng.randrange(86_400))
        calls.append({
            "provider": provider,
            "model": model,
            "input_tokens": rng.randint(50, 4000),
            "output_tokens": rng.randint(10, 1500),
            "cache_read_tokens": rng.choice([0, 0, 0, 512, 1024]),
            "user_id": rng.choice(USERS),
            "session_id": f"s-{rng.randrange(200)}",
            "timestamp": ts.isoformat(),
            "tags": {"env": rng.choice(["prod", "staging"])},
        })
    return calls


def run_demo(
    host: str = "127.0.0.1",
    port: int = 8765,
    n: int = 3000,
    days: int = 7,
    keep_running: bool = True,
    workdir: str | None = None,
) -> dict:
    from .delivery import PersistentDelivery

    console = Console()
    work = Path(workdir or tempfile.mkdtemp(prefix="usageledger-demo-"))
    work.mkdir(parents=True, exist_ok=True)
    db = work / "collector.db"
    url = f"http://{host}:{port}"
    if not _port_free(host, port):
        raise RuntimeError(f"{host}:{port} is in use: stop what listens there or pass --port")
    console.print(f"[bold]collector[/] starting on {url} with storage sqlite:///{db}")
    proc = subprocess.Popen(
        [sys.executable, "-m", "usageledger.cli", "serve", "--storage", f"sqlite:///{db}",
         "--host", host, "--port", str(port)],
    )
    try:
        _wait_healthy(url, proc)
        calls = simulated_calls(n, days)
        t0 = time.perf_counter()
        with PersistentDelivery(db_path=work / "queue.db", api_base=url, batch_interval=0.1) as delivery:
            for call in calls:
                delivery.enqueue(call)
            enqueue_s = time.perf_counter() - t0
            if not delivery.flush(120):
                raise RuntimeError(f"not everything was delivered: {delivery.stats()}")
            stats = delivery.stats()
        total_s = time.perf_counter() - t0
        console.print(
            f"[bold]producer[/] enqueued {n:,} calls in {enqueue_s*1000:.1f} ms; "
            f"all delivered in {total_s:.2f} s (delivered={stats['delivered']}, dead={stats['dead']})"
        )
        report = {}
        for group in ("model", "day"):
            rows = httpx.get(f"{url}/api/v1/summary", params={"group_by": group}, timeout=30).json()
            rows = rows.get("groups", rows) if isinstance(rows, dict) else rows
            report[group] = rows
            table = Table(title=f"cost per {group}")
            table.add_column(group)
            table.add_column("calls", justify="right")
            table.add_column("input tokens", justify="right")
            table.add_column("output tokens", justify="right")
            table.add_column("cost (USD)", justify="right")
            total = Decimal(0)
            for r in rows:
                cost = Decimal(str(r.get("cost") or 0))
                total += cost
                table.add_row(str(r[group]), f"{r['count']:,}", f"{r['input_tokens']:,}",
                              f"{r['output_tokens']:,}", f"{cost:.6f}")
            table.add_row("[bold]total", f"{sum(r['count'] for r in rows):,}", "", "", f"[bold]{total:.6f}")
            console.print(table)
        if keep_running:
            console.print(f"collector running at [bold]{url}[/] (dashboard: {url}/ , API docs: {url}/docs). Ctrl-C to stop.")
            try:
                proc.wait()
            except KeyboardInterrupt:
                console.print("stopping")
        return report
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
