"""The collector's budget routes in-process (TestClient over the real app and a real
SQLite store): exact paths and fields, 400 naming the field, check answers."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from fastapi.testclient import TestClient

from tests.budgets.support import record
from usageledger.server import create_app
from usageledger.storage import create_storage

LOCAL = ("127.0.0.1", 40000)


@pytest.fixture
def client(tmp_path):
    store = create_storage(f"sqlite:///{tmp_path}/collector.db")
    with TestClient(create_app(store, api_keys=["k"]), client=LOCAL,
                    headers={"Authorization": "Bearer k"}) as c:
        yield c
    store.close()


def put(client, name, body):
    return client.put(f"/api/v1/budgets/{name}", json=body)


def test_put_get_list_delete_with_status(client):
    body = {"scope": {"user_id": "u1", "tags": {"team": "a"}}, "period": "day", "limit": "5.00",
            "currency": "USD", "alert_thresholds": [0.5, 0.8, 1.0], "webhook_url": "https://example.com/h"}
    r = put(client, "u1-daily", body)
    assert r.status_code == 200, r.text
    got = r.json()
    assert {k: got[k] for k in body} == body
    assert got["spent"] == "0" and got["remaining"] == "5.00" and got["exceeded"] is False
    now = datetime.now(UTC)
    recs = [record(cost="1.25", user_id="u1", tags={"team": "a"}) for _ in range(2)]
    recs.append(record(cost="9", user_id="u2", tags={"team": "a"}))
    assert client.post("/api/v1/track", json={"tracked": recs + recs[:1]}).status_code == 200
    one = client.get("/api/v1/budgets/u1-daily").json()
    assert (one["spent"], one["remaining"], one["fraction"], one["exceeded"]) == ("2.5", "2.50", 0.5, False)
    assert one["window_start"] == now.strftime("%Y-%m-%dT00:00:00Z")
    put(client, "all", {"limit": "1", "period": "total"})
    listed = client.get("/api/v1/budgets").json()["budgets"]
    assert [(b["name"], b["spent"], b["exceeded"]) for b in listed] == [("all", "11.5", True), ("u1-daily", "2.5", False)]
    assert client.delete("/api/v1/budgets/all").json() == {"name": "all", "deleted": True}
    assert client.delete("/api/v1/budgets/all").status_code == 404
    assert client.get("/api/v1/budgets/all").status_code == 404
    # replace
    assert put(client, "u1-daily", {**body, "limit": "2"}).json()["exceeded"] is True


@pytest.mark.parametrize(("body", "field"), [
    ({"limit": "-5"}, "limit"),
    ({"limit": "five"}, "limit"),
    ({"limit": "5", "period": "fortnight"}, "period"),
    ({"limit": "5", "scope": {"team": "a"}}, "scope.team"),
    ({"limit": "5", "alert_thresholds": [0.0]}, "alert_thresholds"),
    ({"limit": "5", "alert_thresholds": [11]}, "alert_thresholds"),
    ({"limit": "5", "webhook_url": "file:///etc/passwd"}, "webhook_url"),
])
def test_bad_input_answers_400_naming_the_field(client, body, field):
    r = put(client, "b", body)
    assert r.status_code == 400
    assert r.json()["detail"].startswith(f"{field}:")
    assert client.get("/api/v1/budgets").json() == {"budgets": []}


def test_body_that_is_not_json_is_400(client):
    r = client.put("/api/v1/budgets/b", content=b"{nope")
    assert r.status_code == 400 and r.json()["detail"].startswith("body:")


def test_check_matching_and_non_matching_scopes(client):
    put(client, "u1", {"scope": {"user_id": "u1"}, "period": "month", "limit": "1"})
    put(client, "acme", {"scope": {"customer_key": "acme", "tags": {"env": "prod"}}, "period": "month", "limit": "100"})
    assert client.post("/api/v1/track", json={"tracked": [record(cost="1", user_id="u1")]}).status_code == 200
    r = client.get("/api/v1/budgets/check", params={"user_id": "u1", "model": "gpt-4o"})
    assert r.status_code == 200
    ans = r.json()
    assert ans["allowed"] is False and ans["exceeded"] == ["u1"] and [b["name"] for b in ans["budgets"]] == ["u1"]
    ans = client.get("/api/v1/budgets/check", params=[("customer_key", "acme"), ("tags", "env:prod"),
                                                      ("tags", "team:x")]).json()
    assert ans["allowed"] is True and [b["name"] for b in ans["budgets"]] == ["acme"]
    assert client.get("/api/v1/budgets/check", params={"user_id": "u2"}).json() == {
        "allowed": True, "exceeded": [], "budgets": []}
    assert client.get("/api/v1/budgets/check", params={"customer_key": "acme"}).json()["budgets"] == []
    bad = client.get("/api/v1/budgets/check", params={"tags": "nocolon"})
    assert bad.status_code == 400 and bad.json()["detail"].startswith("tags:")


def test_budget_routes_need_the_key(client):
    assert client.get("/api/v1/budgets", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert client.get("/api/v1/budgets/check", headers={"Authorization": ""}).status_code == 401


def test_a_store_without_budgets_answers_501(tmp_path):
    store = create_storage("jsonl", path=tmp_path / "u.jsonl")
    with TestClient(create_app(store), client=LOCAL) as c:
        r = c.get("/api/v1/budgets")
        assert r.status_code == 501 and "does not keep budgets" in r.json()["detail"]
        assert c.post("/api/v1/track", json={"tracked": [record(cost="1")]}).status_code == 200
    store.close()
