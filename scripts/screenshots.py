"""Screenshots of the dashboard's main views for docs/collector.md, from the demo's data.

Starts a real collector on a temporary SQLite file, sends it the demo's simulated calls
and a few agent runs, logs in through the login page in headless Chromium (Debian's
package, driven by Playwright) and writes PNG files to docs/img/. Run: make screenshots
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
from playwright.sync_api import sync_playwright

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.browser import launch  # noqa: E402
from tests.support.servers import free_port  # noqa: E402
from usageledger.demo import simulated_calls  # noqa: E402
from usageledger.records import new_id  # noqa: E402

KEY = "screenshot-key"
VIEWS = (("/", "dashboard-overview.png"), ("/records", "dashboard-records.png"),
         ("/runs", "dashboard-runs.png"), ("/budgets", "dashboard-budgets.png"), ("/health", "dashboard-delivery.png"))


def main() -> None:
    out_dir = ROOT / "docs" / "img"
    out_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="ul-shots-"))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "usageledger", "serve", "--storage", f"sqlite:///{work / 'u.db'}",
         "--port", str(port), "--api-key", KEY], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(300):
            try:
                if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        auth = {"Authorization": f"Bearer {KEY}"}
        calls = [dict(c, id=new_id(), customer_key=("acme", "globex", "initech")[i % 3])
                 for i, c in enumerate(simulated_calls(3000, days=30))]
        for i in range(0, len(calls), 500):
            httpx.post(url + "/api/v1/track", json={"tracked": calls[i:i + 500]}, headers=auth).raise_for_status()
        now = datetime.now(UTC)
        for i in range(12):
            start = now - timedelta(hours=3 * i)
            httpx.post(url + "/api/v1/runs", headers=auth, json={
                "run_id": f"run-{i}", "agent_name": ("crawler", "summarizer")[i % 2],
                "job_type": "nightly", "status": ("completed", "completed", "failed")[i % 3],
                "start_time": start.isoformat(), "end_time": (start + timedelta(seconds=30 + 7 * i)).isoformat(),
                "metrics": {"items_discovered": 100 + i, "items_succeeded": 90 + i}}).raise_for_status()
        for name, scope, period, limit in (("all-monthly", {}, "month", "40"),
                                           ("acme-daily", {"customer_key": "acme"}, "day", "0.25"),
                                           ("user-2-total", {"user_id": "user-2"}, "total", "5")):
            httpx.put(url + f"/api/v1/budgets/{name}", headers=auth, json={
                "scope": scope, "period": period, "limit": limit, "currency": "USD",
                "alert_thresholds": [0.5, 0.8, 1.0]}).raise_for_status()
        with sync_playwright() as p:
            browser = launch(p)
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(url + "/")
            page.fill("input[name=api_key]", KEY)
            page.click("button[type=submit]")
            for path, name in VIEWS:
                page.goto(url + path)
                page.screenshot(path=str(out_dir / name), full_page=path == "/")
                print(f"wrote docs/img/{name}")
            browser.close()
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
