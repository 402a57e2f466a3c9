"""Projects, roles and project keys (docs/collector.md, "Security"): every endpoint x every
role x own/other project x no/wrong/revoked/expired key, on SQLite and PostgreSQL, with no
data of another project in any answer. The app is the real ASGI app in-process over a real
store; a second app over the same store stands for another replica."""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient

from usageledger.server.app import create_app
from usageledger.server.auth import new_key
from usageledger.storage import create_storage

GLOBAL = "global-admin-key-5c1f0e"
#: strings that only project b's data holds: no answer to a project a key may contain one
SECRET_B = "secret-b"
SECRET_A = "secret-a"


def _record(project_marker: str, n: int = 0) -> dict:
    return {"id": f"{project_marker}-{n}-{uuid.uuid4().hex[:6]}", "timestamp": "2026-01-05T10:00:00Z",
            "provider": "openai", "model": f"model-{project_marker}", "input_tokens": 10,
            "output_tokens": 5, "cost": "0.25", "user_id": f"user-{project_marker}",
            "tags": {"note": project_marker}}


@pytest.fixture(params=["sqlite", "postgres"])
def storage_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/teams.db"
    return request.getfixturevalue("postgres_server").new_database("ul_teams")


def _bearer(key: str | None) -> dict[str, str]:
    return {} if key is None else {"Authorization": f"Bearer {key}"}


class World:
    """Two projects with records, runs, budgets and keys, made through the API."""

    def __init__(self, client: TestClient, store):
        self.c = client
        self.store = store
        g = _bearer(GLOBAL)
        self.keys: dict[tuple[str, str], str] = {}
        self.key_ids: dict[tuple[str, str], str] = {}
        for project in ("a", "b"):
            marker = f"secret-{project}"
            for role in ("ingest", "read", "admin"):
                r = client.post("/api/v1/keys", json={"project": project, "role": role, "name": f"{role}-{marker}"},
                                headers=g)
                assert r.status_code == 201, r.text
                self.keys[project, role] = r.json()["key"]
                self.key_ids[project, role] = r.json()["id"]
            r = client.post("/api/v1/track", json={"tracked": [_record(marker)]},
                            headers=_bearer(self.keys[project, "ingest"]))
            assert r.json()["accepted"] == 1, r.text
            r = client.post("/api/v1/runs", json={"run_id": f"run-{project}", "agent_name": f"agent-{marker}",
                                                  "status": "running", "start_time": "2026-01-05T10:00:00Z"},
                            headers=_bearer(self.keys[project, "ingest"]))
            assert r.status_code == 201, r.text
            r = client.put(f"/api/v1/budgets/budget-{project}",
                           json={"scope": {"user_id": f"user-{marker}"}, "period": "month", "limit": "10"},
                           headers=_bearer(self.keys[project, "admin"]))
            assert r.status_code == 200, r.text
        # a revoked and an expired key of project a, each with the admin role
        r = client.post("/api/v1/keys", json={"project": "a", "role": "admin"}, headers=g)
        self.revoked = r.json()["key"]
        assert client.delete(f"/api/v1/keys/{r.json()['id']}", headers=g).status_code == 200
        row, self.expired = new_key("a", "admin", expires=datetime.now(UTC) - timedelta(seconds=1))
        store.put_key(row)


@pytest.fixture
def world(storage_url):
    store = create_storage(storage_url)
    app = create_app(store, api_keys=[GLOBAL])
    with TestClient(app) as client:  # a client that is not loopback: no open mode
        yield World(client, store)
    store.close()


def _cases(w: World, own: str, other: str) -> list[tuple[str, str, dict | None, str]]:
    """(method, path, json body, what) for every endpoint, aimed at project ``own`` or
    reaching for ``other``; ``what`` names the expectation row."""
    g = _bearer(GLOBAL)
    tmp_budget = f"tmp-{uuid.uuid4().hex[:6]}"
    w.c.put(f"/api/v1/budgets/{tmp_budget}", params={"project": own},
            json={"scope": {}, "period": "day", "limit": "1"}, headers=g)
    tmp_key = w.c.post("/api/v1/keys", json={"project": own, "role": "read"}, headers=g).json()["id"]
    run = f"run-new-{uuid.uuid4().hex[:6]}"
    return [
        ("POST", "/api/v1/track", {"tracked": [_record(f"x-{own}")]}, "ingest"),
        ("GET", "/api/v1/usage", None, "read"),
        ("GET", "/api/v1/summary?group_by=model,user_id", None, "read"),
        ("POST", "/api/v1/runs", {"run_id": run, "status": "running"}, "ingest201"),
        ("PATCH", f"/api/v1/runs/run-{own}", {"status": "done"}, "ingest"),
        ("POST", "/api/v1/runs/batch", {"runs": [{"id": "1", "run_id": f"run-{own}", "status": "x"}]}, "ingest"),
        ("GET", "/api/v1/runs", None, "read"),
        ("GET", f"/api/v1/runs/run-{own}", None, "read"),
        ("GET", "/api/v1/budgets", None, "read"),
        ("GET", f"/api/v1/budgets/budget-{own}", None, "read"),
        ("GET", "/api/v1/budgets/check?user_id=user-secret-a", None, "read"),
        ("PUT", f"/api/v1/budgets/new-{uuid.uuid4().hex[:6]}", {"scope": {}, "limit": "3"}, "admin"),
        ("DELETE", f"/api/v1/budgets/{tmp_budget}", None, "admin"),
        ("GET", "/api/v1/prices", None, "read"),
        ("PUT", "/api/v1/prices/openai/model-z", {"input_per_mtok": "1", "output_per_mtok": "2"}, "global"),
        ("POST", "/api/v1/reprice", {}, "global"),
        ("GET", "/api/v1/keys", None, "admin"),
        ("POST", "/api/v1/keys", {"role": "read"}, "admin201"),
        ("DELETE", f"/api/v1/keys/{tmp_key}", None, "admin"),
        ("GET", "/metrics", None, "read"),
        ("GET", "/healthz", None, "public"),
    ]


#: expected status of a project key on its own project, by row and role
OWN = {
    "ingest": {"ingest": 200, "read": 403, "admin": 200},
    "ingest201": {"ingest": 201, "read": 403, "admin": 201},
    "read": {"ingest": 403, "read": 200, "admin": 200},
    "admin": {"ingest": 403, "read": 403, "admin": 200},
    "admin201": {"ingest": 403, "read": 403, "admin": 201},
    "global": {"ingest": 403, "read": 403, "admin": 403},
    "public": {"ingest": 200, "read": 200, "admin": 200},
}


def _send(w: World, method: str, path: str, body: dict | None, key: str | None, **params):
    return w.c.request(method, path, json=body, headers=_bearer(key), params=params or None)


def test_matrix_of_endpoints_roles_projects_and_keys(world):
    w = world
    for role in ("ingest", "read", "admin"):
        key = w.keys["a", role]
        # own project: the role decides; nothing of project b in any answer
        for method, path, body, what in _cases(w, "a", "b"):
            r = _send(w, method, path, body, key)
            assert r.status_code == OWN[what][role], (role, method, path, r.status_code, r.text)
            assert SECRET_B not in r.text, (role, method, path, r.text)
            if r.status_code == 200 and method == "GET" and what == "read" and "prices" not in path \
                    and path != "/metrics":
                assert SECRET_A in r.text, (role, method, path, r.text)  # its own data is there
        # reaching for project b: refused, or not found, never b's data
        other = [
            ("GET", "/api/v1/usage", None, {"project": "b"}, {"read": 403, "admin": 403, "ingest": 403}),
            ("GET", "/api/v1/summary", None, {"project": "b"}, {"read": 403, "admin": 403, "ingest": 403}),
            ("GET", "/api/v1/runs", None, {"project": "b"}, {"read": 403, "admin": 403, "ingest": 403}),
            ("GET", "/api/v1/runs/run-b", None, {}, {"read": 404, "admin": 404, "ingest": 403}),
            ("PATCH", "/api/v1/runs/run-b", {"status": "stolen"}, {}, {"read": 403, "admin": 409, "ingest": 409}),
            ("POST", "/api/v1/runs", {"run_id": "run-b", "status": "stolen"}, {},
             {"read": 403, "admin": 409, "ingest": 409}),
            ("POST", "/api/v1/runs/batch", {"runs": [{"id": "1", "run_id": "run-b", "status": "stolen"}]}, {},
             {"read": 403, "admin": 409, "ingest": 409}),
            ("POST", "/api/v1/track", {"tracked": [_record("x")]}, {"project": "b"},
             {"read": 403, "admin": 403, "ingest": 403}),
            ("GET", "/api/v1/budgets/budget-b", None, {}, {"read": 404, "admin": 404, "ingest": 403}),
            ("PUT", "/api/v1/budgets/budget-b", {"scope": {}, "limit": "1"}, {},
             {"read": 403, "admin": 409, "ingest": 403}),
            ("DELETE", "/api/v1/budgets/budget-b", None, {}, {"read": 403, "admin": 404, "ingest": 403}),
            ("GET", "/api/v1/budgets", None, {"project": "b"}, {"read": 403, "admin": 403, "ingest": 403}),
            ("GET", "/api/v1/keys", None, {"project": "b"}, {"read": 403, "admin": 403, "ingest": 403}),
            ("POST", "/api/v1/keys", {"project": "b", "role": "admin"}, {},
             {"read": 403, "admin": 403, "ingest": 403}),
            ("DELETE", f"/api/v1/keys/{w.key_ids['b', 'read']}", None, {},
             {"read": 403, "admin": 404, "ingest": 403}),
            ("GET", "/metrics", None, {"project": "b"}, {"read": 403, "admin": 403, "ingest": 403}),
        ]
        for method, path, body, params, expected in other:
            r = _send(w, method, path, body, key, **params)
            assert r.status_code == expected[role], (role, method, path, params, r.status_code, r.text)
            assert SECRET_B not in r.text, (role, method, path, r.text)
    # an admin's key listing holds its own project's keys, never b's (their names hold the marker)
    listing = _send(w, "GET", "/api/v1/keys", None, w.keys["a", "admin"]).text
    assert SECRET_A in listing and SECRET_B not in listing
    # project b's objects are intact after all that
    g = _bearer(GLOBAL)
    run_b = w.c.get("/api/v1/runs/run-b", headers=g).json()
    assert run_b["status"] == "running" and run_b["project"] == "b"
    assert w.c.get("/api/v1/budgets/budget-b", headers=g).status_code == 200
    assert w.c.get("/api/v1/usage", params={"project": "b"}, headers=_bearer(w.keys["b", "read"])).status_code == 200
    assert w.c.get("/api/v1/usage", headers=_bearer(w.keys["b", "read"])).status_code == 200


def test_no_wrong_revoked_or_expired_key_gets_anything(world):
    w = world
    bad = {"none": None, "wrong global": "not-the-key", "wrong stored": "ulk_000000000000_" + "x" * 43,
           "wrong secret": w.keys["a", "admin"][:-4] + "AAAA", "revoked": w.revoked, "expired": w.expired}
    for label, key in bad.items():
        for method, path, body, _what in _cases(w, "a", "b"):
            r = _send(w, method, path, body, key)
            want = 200 if path == "/healthz" else 401
            assert r.status_code == want, (label, method, path, r.status_code, r.text)
            assert SECRET_A not in r.text and SECRET_B not in r.text, (label, path, r.text)
            if key is not None:
                assert key not in r.text  # the secret is never echoed
    r = _send(w, "GET", "/api/v1/usage", None, w.revoked)
    assert "revoked" in r.json()["detail"]
    r = _send(w, "GET", "/api/v1/usage", None, w.expired)
    assert "expired" in r.json()["detail"]


def test_global_key_sees_every_project_and_may_narrow_to_one(world):
    w = world
    g = _bearer(GLOBAL)
    text = w.c.get("/api/v1/usage", headers=g).text
    assert SECRET_A in text and SECRET_B in text
    text = w.c.get("/api/v1/usage", params={"project": "a"}, headers=g).text
    assert SECRET_A in text and SECRET_B not in text
    runs = w.c.get("/api/v1/runs", params={"project": "b"}, headers=g).json()["runs"]
    assert [r["run_id"] for r in runs] == ["run-b"]
    summary = w.c.get("/api/v1/summary", params={"group_by": "model", "project": "b"}, headers=g).json()
    assert [g_["model"] for g_ in summary["groups"]] == ["model-secret-b"]


def test_a_records_project_comes_from_its_key_not_its_body(world):
    w = world
    rec = _record("secret-a")
    rec["tags"]["usageledger_project"] = "b"
    r = w.c.post("/api/v1/track", json={"tracked": [rec]}, headers=_bearer(w.keys["a", "ingest"]))
    assert r.json()["accepted"] == 1
    stored = w.store.query(tags={"usageledger_project": "a"})
    assert rec["id"] in {s.id for s in stored}
    assert rec["id"] not in {s.id for s in w.store.query(tags={"usageledger_project": "b"})}
    runs = w.c.post("/api/v1/runs", json={"run_id": "run-claim", "project": "b"},
                    headers=_bearer(w.keys["a", "ingest"]))
    assert runs.status_code == 201
    assert w.store.get_run("run-claim")["project"] == "a"


def test_revocation_holds_at_once_on_another_replica(storage_url):
    store_1, store_2 = create_storage(storage_url), create_storage(storage_url)
    try:
        with TestClient(create_app(store_1, api_keys=[GLOBAL])) as one, \
                TestClient(create_app(store_2, api_keys=[GLOBAL])) as two:
            made = one.post("/api/v1/keys", json={"project": "a", "role": "read"}, headers=_bearer(GLOBAL)).json()
            assert two.get("/api/v1/usage", headers=_bearer(made["key"])).status_code == 200
            assert one.delete(f"/api/v1/keys/{made['id']}", headers=_bearer(GLOBAL)).status_code == 200
            assert two.get("/api/v1/usage", headers=_bearer(made["key"])).status_code == 401
    finally:
        store_1.close()
        store_2.close()


def test_the_secret_is_stored_only_as_a_salted_hash(storage_url, caplog):
    store = create_storage(storage_url)
    try:
        with TestClient(create_app(store, api_keys=[GLOBAL])) as c:
            made = c.post("/api/v1/keys", json={"project": "a", "role": "admin"}, headers=_bearer(GLOBAL)).json()
            secret = made["key"][len("ulk_") + 13:]
            with caplog.at_level(logging.DEBUG):
                c.get("/api/v1/usage", headers=_bearer(made["key"][:-1] + "x"))
            listing = c.get("/api/v1/keys", headers=_bearer(GLOBAL)).text
            metrics = c.get("/metrics", headers=_bearer(GLOBAL)).text
        rows = store.list_keys()
        assert len(rows) == 1 and rows[0]["hash"] and rows[0]["salt"]
        for where in (repr(rows), listing, metrics, caplog.text):
            assert secret not in where
        assert "hash" not in listing and "salt" not in listing
        if storage_url.startswith("sqlite"):
            raw = b"".join(p.read_bytes() for p in __import__("pathlib").Path(storage_url[10:]).parent.glob("teams.db*"))
            assert secret.encode() not in raw and rows[0]["hash"].encode() in raw
    finally:
        store.close()


def _login(c: TestClient, key: str) -> int:
    c.cookies.clear()
    r = c.post("/login", data={"api_key": key, "next": "/"}, follow_redirects=False)
    return r.status_code


def test_dashboard_pages_honour_roles_and_projects(world):
    w = world
    c = w.c
    when = "?since=2026-01-01&until=2026-01-31"  # the days of the records
    pages = ["/" + when, "/records" + when, "/runs", "/budgets", "/health"]
    for role in ("read", "admin"):
        assert _login(c, w.keys["a", role]) == 303
        for path in pages:
            r = c.get(path, follow_redirects=False)
            assert r.status_code == 200, (role, path, r.status_code)
            assert SECRET_B not in r.text, (role, path)
        assert "model-secret-a" in c.get("/records" + when).text
        assert "agent-secret-a" in c.get("/runs").text
        assert "budget-a" in c.get("/budgets").text and "budget-b" not in c.get("/budgets").text
        # the session reads the API too, narrowed the same way, and never writes
        usage = c.get("/api/v1/usage")
        assert usage.status_code == 200 and SECRET_A in usage.text and SECRET_B not in usage.text
        assert c.get("/api/v1/usage", params={"project": "b"}).status_code == 403
        assert c.post("/api/v1/track", json={"tracked": [_record("x")]}).status_code == 401
        assert c.get("/api/v1/keys").status_code == 403
    # an ingest key does not read pages; wrong, revoked and expired keys do not log in
    for key in (w.keys["a", "ingest"], w.revoked, w.expired, w.keys["a", "read"][:-3] + "abc"):
        assert _login(c, key) == 401
    # revoking the key ends its sessions at once
    assert _login(c, w.keys["a", "read"]) == 303
    assert c.get("/records", follow_redirects=False).status_code == 200
    g = _bearer(GLOBAL)
    assert c.delete(f"/api/v1/keys/{w.key_ids['a', 'read']}", headers=g).status_code == 200
    assert c.get("/records", follow_redirects=False).status_code == 303
    assert c.get("/api/v1/usage").status_code == 401
    # a global key's session sees every project
    assert _login(c, GLOBAL) == 303
    text = c.get("/records" + when).text
    assert "model-secret-a" in text and "model-secret-b" in text


def test_metrics_switch(storage_url):
    store = create_storage(storage_url)
    try:
        for access, anonymous, ingesting in (("public", 200, 200), ("key", 401, 403)):
            with TestClient(create_app(store, api_keys=[GLOBAL], metrics_access=access)) as c:
                made = c.post("/api/v1/keys", json={"project": "a", "role": "read"}, headers=_bearer(GLOBAL)).json()
                ingest = c.post("/api/v1/keys", json={"project": "a", "role": "ingest"},
                                headers=_bearer(GLOBAL)).json()
                c.post("/api/v1/track", json={"tracked": [_record("secret-b")]}, params={"project": "b"},
                       headers=_bearer(GLOBAL))
                c.post("/api/v1/track", json={"tracked": [_record("secret-a")]}, headers=_bearer(ingest["key"]))
                r = c.get("/metrics")
                assert r.status_code == anonymous
                assert "model-secret-b" not in r.text  # stored totals: never without a key
                r = c.get("/metrics", headers=_bearer(ingest["key"]))
                assert r.status_code == ingesting, r.text  # an ingest key does not read
                assert "model-secret" not in r.text
                r = c.get("/metrics", headers=_bearer(made["key"]))
                assert r.status_code == 200 and "usageledger_records_received_total" in r.text
                # project a's reader: project a's stored totals only
                assert "model-secret-a" in r.text and "model-secret-b" not in r.text
                r = c.get("/metrics", headers=_bearer(GLOBAL))
                assert r.status_code == 200 and "model-secret-b" in r.text
                assert c.get("/healthz").status_code == 200  # the one public endpoint
        with TestClient(create_app(store, api_keys=[GLOBAL])) as c:  # the default: a key
            assert c.get("/metrics").status_code == 401
            assert c.get("/metrics", headers=_bearer(GLOBAL)).status_code == 200
    finally:
        store.close()


def test_cli_keys_create_list_revoke(storage_url, capsys):
    import json

    from usageledger.cli import main

    assert main(["keys", "create", "--project", "a", "--role", "read", "--name", "ci",
                 "--storage", storage_url, "--json"]) == 0
    made = json.loads(capsys.readouterr().out)
    assert made["key"].startswith("ulk_") and made["project"] == "a" and made["role"] == "read"
    store = create_storage(storage_url)
    try:
        with TestClient(create_app(store, api_keys=[GLOBAL])) as c:
            assert c.get("/api/v1/usage", headers=_bearer(made["key"])).status_code == 200
            assert main(["keys", "list", "--storage", storage_url, "--json"]) == 0
            listed = capsys.readouterr().out
            assert made["id"] in listed and made["key"][len("ulk_") + 13:] not in listed
            assert main(["keys", "revoke", made["id"], "--storage", storage_url]) == 0
            assert c.get("/api/v1/usage", headers=_bearer(made["key"])).status_code == 401
            assert main(["keys", "revoke", made["id"], "--storage", storage_url]) != 0
            assert main(["keys", "create", "--project", "a", "--role", "owner", "--storage", storage_url]) != 0
            assert "role must be one of" in capsys.readouterr().err
    finally:
        store.close()
