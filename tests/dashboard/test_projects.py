"""A project key's dashboard session in a real headless Chromium against a real collector
process: its project only, and revocation ends the session at once."""

from __future__ import annotations

from datetime import UTC, datetime

import httpx
import pytest

from tests.server.support import Collector
from usageledger.records import new_id

KEY = "dash-projects-global-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
TODAY = datetime.now(UTC).replace(hour=12, minute=0, second=0, microsecond=0)


@pytest.fixture(scope="module")
def collector(tmp_path_factory):
    path = tmp_path_factory.mktemp("dash-projects") / "usage.db"
    c = Collector(f"sqlite:///{path}", api_keys=[KEY]).start()
    for project in ("alpha", "beta"):
        rec = {"id": new_id(), "timestamp": TODAY.isoformat(), "provider": "openai",
               "model": f"model-of-{project}", "input_tokens": 10, "output_tokens": 1, "cost": "0.5",
               "user_id": f"user-of-{project}"}
        r = httpx.post(c.url + "/api/v1/track", json={"tracked": [rec]}, params={"project": project},
                       headers=AUTH)
        assert r.json()["accepted"] == 1, r.text
    yield c
    c.stop()


def test_a_project_keys_session_shows_its_project_only(browser, collector):
    made = httpx.post(collector.url + "/api/v1/keys", json={"project": "alpha", "role": "read"},
                      headers=AUTH).json()
    context = browser.new_context()
    page = context.new_page()
    try:
        page.goto(collector.url + "/records")
        assert "/login" in page.url
        page.fill("input[name=api_key]", made["key"])
        page.click("button[type=submit]")
        page.wait_for_url(collector.url + "/records")
        text = page.content()
        assert "model-of-alpha" in text and "model-of-beta" not in text
        page.goto(collector.url + "/")
        assert "user-of-alpha" in page.content() and "user-of-beta" not in page.content()
        assert httpx.delete(collector.url + f"/api/v1/keys/{made['id']}", headers=AUTH).status_code == 200
        page.goto(collector.url + "/records")
        assert "/login" in page.url  # revoked: the session is over at the next page
    finally:
        context.close()
