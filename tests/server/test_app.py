"""The collector app in-process (FastAPI TestClient over the real ASGI app and a real
storage backend): wire protocol, validation, limits, auth, runs, queries, metrics."""

from __future__ import annotations

import gzip
import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import msgspec
import pytest
import uuid_utils
from fastapi.testclient import TestClient

from tests.server.support import record
from usageledger.server import create_app
from usageledger.storage import create_storage

LOCAL = ("127.0.0.1", 40000)
REMOTE = ("203.0.113.9", 40000)


@pytest.fixture
def store(tmp_path):
    s = create_storage(f"sqlite:///{tmp_path}/collector.db")
    yield s
    s.close()


@pytest.fixture
def client(store):
    with TestClient(create_app(store), client=LOCAL) as c:
        yield c


def track(client, items, **kw):
    return client.post("/api/v1/track", json={"tracked": items}, **kw)


def statuses(resp):
    """Per-item statuses from an answer that has them (some item was rejected)."""
    assert resp.status_code == 200, resp.text
    return [(r["id"], r["status"]) for r in resp.json()["results"]]


def compact(resp):
    """(accepted, duplicate ids) from a compact answer (no item was rejected)."""
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert "results" not in body, body
    assert body["duplicate"] == len(body["duplicate_ids"])
    return body["accepted"], body["duplicate_ids"]


def metric(client, name: str) -> float:
    text = client.get("/metrics").text
    m = re.search(rf"^{name} ([0-9.e+]+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


# -- /track ------------------------------------------------------------------------------------
def test_same_id_in_two_batches_is_stored_once_and_reported_duplicate(client, store):
    a, b, c = record(1), record(2), record(3)
    assert compact(track(client, [a, b])) == (2, [])
    assert compact(track(client, [b, c])) == (1, [b["id"]])
    assert store.count() == 3
    stored = {r.id: r for r in store.query()}
    assert set(stored) == {a["id"], b["id"], c["id"]}
    assert stored[a["id"]].input_tokens == 101 and stored[a["id"]].cost == Decimal("0.000001")


def test_same_id_twice_in_one_batch(client, store):
    a = record(1)
    assert compact(track(client, [a, dict(a)])) == (1, [a["id"]])
    assert store.count() == 1
    # with a refusal in the batch every item is answered: the first copy accepted
    b = record(2)
    assert statuses(track(client, [b, dict(b), 7])) == [
        (b["id"], "accepted"), (b["id"], "duplicate"), ("", "rejected")]


def test_invalid_items_are_rejected_alone_with_a_message(client, store):
    good = record(1)
    no_id = {k: v for k, v in record(2).items() if k != "id"}
    negative = record(3, input_tokens=-5)
    wrong_type = record(4, output_tokens="many")
    nan_cost = record(5, cost="NaN")
    nul = record(6, user_id="a\x00b")
    not_object = 42
    huge = record(7, input_tokens=10**15)
    results = track(client, [good, no_id, negative, wrong_type, nan_cost, nul, not_object, huge]).json()["results"]
    assert [r["status"] for r in results] == ["accepted"] + ["rejected"] * 7
    errors = [r["error"] for r in results[1:]]
    assert "id" in errors[0] and "exactly-once" in errors[0]
    assert "input_tokens" in errors[1] and "-5" in errors[1]
    assert "output_tokens" in errors[2]
    assert "cost" in errors[3] and "NaN" in errors[3]
    assert "user_id" in errors[4] and "NUL" in errors[4]
    assert "JSON object" in errors[5]
    assert "input_tokens" in errors[6]
    assert results[2]["id"] == negative["id"]
    assert [r.id for r in store.query()] == [good["id"]]


def test_timestamps_are_stored_in_utc_and_a_missing_one_is_the_receipt_time(client, store):
    aware = record(1, timestamp="2025-03-01T12:00:00+02:00")
    naive = record(2, timestamp="2025-03-01T12:00:00")
    bare = {"id": "no-ts", "provider": "openai", "model": "gpt-4o", "input_tokens": 1}
    assert compact(track(client, [aware, naive, bare])) == (3, [])
    got = {r.id: r.timestamp for r in store.query()}
    assert got[aware["id"]].isoformat() == "2025-03-01T10:00:00+00:00"
    assert got[naive["id"]].isoformat() == "2025-03-01T12:00:00+00:00"
    assert got["no-ts"].year >= 2025 and got["no-ts"].utcoffset().total_seconds() == 0


def test_a_missing_timestamp_is_the_time_in_a_uuid7_id(client, store):
    """Raw POSTs without timestamp: a UUIDv7 id (made an hour ago here) dates the record,
    in our shape and in the seed-000 shape; an id without a time falls back to receipt."""
    made = datetime(2025, 6, 30, 23, 59, 59, 987000, tzinfo=UTC)
    ns = int(made.timestamp()) * 10**9 + 987_000_000
    v7 = str(uuid_utils.uuid7(nanoseconds=ns))
    v7_alias = str(uuid_utils.uuid7(nanoseconds=ns - 3600 * 10**9 - 987_000_000))
    v4 = str(uuid_utils.uuid4())
    before = datetime.now(UTC)
    items = [
        {"id": v7, "provider": "openai", "model": "gpt-4o", "input_tokens": 1},
        {"id": v7_alias, "api_id": "openai", "service_key": "gpt-4o", "payload": {"input_tokens": 2}},
        {"id": v4, "provider": "openai", "model": "gpt-4o"},
    ]
    assert compact(track(client, items)) == (3, [])
    got = {r.id: r.timestamp for r in store.query()}
    assert got[v7] == made
    assert got[v7_alias] == made.replace(microsecond=0) - timedelta(hours=1)
    assert got[v4] >= before.replace(microsecond=0)
    # the day of a summary follows the event time
    days = client.get("/api/v1/summary", params={"group_by": "day"}).json()["groups"]
    assert {g["day"] for g in days} >= {"2025-06-30"}


def test_legacy_track_shape_is_an_alias(client, store):
    items = [
        {"id": "s1", "api_id": "openai", "service_key": "gpt-4o",
         "payload": {"input_tokens": 1000, "output_tokens": 200, "note": "x"}},
        {"id": "s2", "api_id": "openai_chat", "service_key": "anthropic::claude-3-5-haiku-20241022",
         "payload": {"prompt_tokens": 7, "completion_tokens": 3, "cache_read_input_tokens": 2},
         "user_id": "alice", "timestamp": "2025-01-02T03:04:05Z"},
        {"id": "s3", "api_id": "openai", "service_key": "gpt", "payload": {"tokens": 1}},
        {"id": "s4", "api_id": "openai", "service_key": "gpt", "payload": {"input_tokens": "lots"}},
        {"id": "s5", "api_id": "openai", "payload": {}},
    ]
    assert statuses(track(client, items)) == [
        ("s1", "accepted"), ("s2", "accepted"), ("s3", "accepted"), ("s4", "rejected"), ("s5", "rejected")]
    got = {r.id: r for r in store.query()}
    s1, s2, s3 = got["s1"], got["s2"], got["s3"]
    assert (s1.provider, s1.model, s1.input_tokens, s1.output_tokens) == ("openai", "gpt-4o", 1000, 200)
    assert s1.payload == {"input_tokens": 1000, "output_tokens": 200, "note": "x"}
    assert s1.cost is not None and s1.cost > 0  # priced from the offline tables
    assert (s2.provider, s2.model) == ("anthropic", "claude-3-5-haiku-20241022")
    assert (s2.input_tokens, s2.output_tokens, s2.cache_read_tokens) == (7, 3, 2)
    assert s2.tags == {"api_id": "openai_chat"} and s2.user_id == "alice"
    assert s2.timestamp.isoformat() == "2025-01-02T03:04:05+00:00"
    assert (s3.provider, s3.model, s3.input_tokens, s3.payload) == ("openai", "gpt", 0, {"tokens": 1})
    errors = {r["id"]: r.get("error") for r in track(client, items[3:]).json()["results"]}
    assert "payload.input_tokens" in errors["s4"]
    assert "service_key" in errors["s5"]


def test_gzip_bodies(client, store):
    items = [record(i) for i in range(50)]
    body = gzip.compress(msgspec.json.encode({"tracked": items}))
    resp = client.post("/api/v1/track", content=body,
                       headers={"Content-Encoding": "gzip", "Content-Type": "application/json"})
    assert compact(resp) == (50, [])
    assert store.count() == 50
    bad = client.post("/api/v1/track", content=b"not gzip at all", headers={"Content-Encoding": "gzip"})
    assert bad.status_code == 400 and "gzip" in bad.json()["detail"]
    cut = client.post("/api/v1/track", content=body[:-20], headers={"Content-Encoding": "gzip"})
    assert cut.status_code == 400 and "truncated" in cut.json()["detail"]
    other = client.post("/api/v1/track", content=b"{}", headers={"Content-Encoding": "br"})
    assert other.status_code == 415 and "br" in other.json()["detail"]


def test_oversize_bodies_are_413(store):
    limit = 10_000
    with TestClient(create_app(store, max_body_bytes=limit), client=LOCAL) as c:
        small = track(c, [record(1)])
        assert small.status_code == 200
        big = msgspec.json.encode({"tracked": [record(i) for i in range(200)]})
        assert len(big) > limit
        resp = c.post("/api/v1/track", content=big)  # declared by Content-Length
        assert resp.status_code == 413 and str(limit) in resp.json()["detail"]

        def chunks():  # no Content-Length: counted while reading
            for i in range(0, len(big), 1000):
                yield big[i:i + 1000]

        resp = c.post("/api/v1/track", content=chunks())
        assert resp.status_code == 413
        # a gzip bomb: 9 KB on the wire, 10 MB inflated
        bomb = gzip.compress(b'{"tracked": [' + b" " * 10_000_000 + b"]}")
        assert len(bomb) < limit
        resp = c.post("/api/v1/track", content=bomb, headers={"Content-Encoding": "gzip"})
        assert resp.status_code == 413 and "decompressed" in resp.json()["detail"]
        runs = c.post("/api/v1/runs/batch", content=big)
        assert runs.status_code == 413
        assert store.count() == 1


@pytest.mark.parametrize("body, needle", [
    (b'{"tracked": [', "malformed JSON"),
    (b"{'tracked': []}", "malformed JSON"),
    (b'{"tracked": [NaN]}', "malformed JSON"),
    (b"", "malformed JSON"),
    (b"[]", '{"tracked": [item, ...]}'),
    (b'{"records": []}', "tracked"),
    (b'{"tracked": {"id": 1}}', "tracked"),
])
def test_malformed_or_non_batch_bodies_are_400_with_a_message(client, body, needle):
    resp = client.post("/api/v1/track", content=body, headers={"Content-Type": "application/json"})
    assert resp.status_code == 400
    assert needle in resp.json()["detail"]


def test_empty_batch_is_fine(client):
    assert compact(track(client, [])) == (0, [])


# -- auth --------------------------------------------------------------------------------------
def test_api_keys_are_required_when_configured(store):
    app = create_app(store, api_keys=["k-one", "k-two"])
    with TestClient(app, client=REMOTE) as c:
        for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "k-one"},
                        {"Authorization": "Basic k-one"}, {"Authorization": "Bearer "}):
            resp = track(c, [record(1)], headers=headers)
            assert resp.status_code == 401, headers
            assert resp.headers["www-authenticate"] == "Bearer"
            assert "API key" in resp.json()["detail"]
        again = record(2)
        for key in ("k-one", "k-two"):
            resp = track(c, [again], headers={"Authorization": f"Bearer {key}"})
            assert resp.status_code == 200
        assert c.get("/api/v1/usage").status_code == 401
        # a browser without a session is sent to the login page, never shown data
        home = c.get("/", follow_redirects=False)
        assert home.status_code == 303 and home.headers["location"].startswith("/login")
        assert c.get("/healthz").status_code == 200
    assert store.count() == 1


def test_without_keys_only_loopback_clients_are_served(store):
    app = create_app(store)
    with TestClient(app, client=REMOTE) as remote:
        resp = track(remote, [record(1)])
        assert resp.status_code == 403 and "--api-key" in resp.json()["detail"]
        assert remote.get("/api/v1/summary").status_code == 403
    for host in ("127.0.0.1", "127.8.9.1", "::1"):
        with TestClient(app, client=(host, 1)) as local:
            assert track(local, [record(1)]).status_code == 200
    assert store.count() == 3


# -- runs --------------------------------------------------------------------------------------
def test_run_create_is_idempotent_and_patch_is_partial(client):
    run = {"run_id": "r-1", "agent_name": "crawler", "job_type": "daily", "status": "running",
           "start_time": "2025-03-01T10:00:00Z"}
    first = client.post("/api/v1/runs", json=run)
    assert first.status_code == 201 and first.json() == {"run_id": "r-1", "status": "created"}
    again = client.post("/api/v1/runs", json=run)
    assert again.status_code == 200 and again.json()["status"] == "duplicate"
    patched = client.patch("/api/v1/runs/r-1", json={"status": "success", "items_succeeded": 7})
    assert patched.status_code == 200 and patched.json()["status"] == "updated"
    got = client.get("/api/v1/runs/r-1").json()
    assert got["status"] == "success" and got["items_succeeded"] == 7
    assert got["agent_name"] == "crawler" and got["job_type"] == "daily"
    listed = client.get("/api/v1/runs", params={"agent_name": "crawler", "status": "success"}).json()
    assert [r["run_id"] for r in listed["runs"]] == ["r-1"]
    assert client.get("/api/v1/runs", params={"status": "running"}).json()["runs"] == []


def test_patch_of_an_unknown_run_is_404(client):
    resp = client.patch("/api/v1/runs/ghost", json={"status": "success"})
    assert resp.status_code == 404 and "ghost" in resp.json()["detail"]
    assert client.patch("/api/v1/runs/ghost", json={"seq": 3, "status": "x"}).status_code == 404
    assert client.get("/api/v1/runs/ghost").status_code == 404


def test_an_older_write_never_rolls_back_a_newer_one(client):
    assert client.post("/api/v1/runs", json={"run_id": "r", "seq": 1, "status": "running"}).status_code == 201
    newer = client.patch("/api/v1/runs/r", json={"seq": 5, "status": "success", "items": 9})
    assert newer.json()["status"] == "updated"
    older = client.patch("/api/v1/runs/r", json={"seq": 3, "status": "running", "items": 2})
    assert older.status_code == 200 and older.json()["status"] == "stale"
    replayed_create = client.post("/api/v1/runs", json={"run_id": "r", "seq": 1, "status": "running"})
    assert replayed_create.json()["status"] == "duplicate"
    got = client.get("/api/v1/runs/r").json()
    assert (got["status"], got["items"], got["seq"]) == ("success", 9, 5)
    # an update replayed as a create is applied when it is newer (a pitfall of the original client)
    late = client.post("/api/v1/runs", json={"run_id": "r", "seq": 6, "status": "archived"})
    assert late.status_code == 200 and late.json()["status"] == "updated"
    assert client.get("/api/v1/runs/r").json()["status"] == "archived"


def test_run_batch(client):
    body = {"runs": [
        {"id": "w1", "run_id": "b-1", "seq": 0, "create": True, "status": "running", "agent_name": "a"},
        {"id": "w2", "run_id": "b-1", "seq": 1, "create": False, "status": "success"},
        {"id": "w3", "run_id": "b-1", "seq": 1, "create": False, "status": "again"},
        {"id": "w4", "run_id": "b-2", "seq": 1, "create": False, "status": "success"},
        {"id": "w5", "run_id": "b-1", "seq": 0, "create": True, "status": "running"},
        {"id": "w6", "run_id": "", "seq": 0},
        {"id": "w7", "run_id": "b-3", "seq": -1},
        {"run_id": "b-3"},
        {"id": "w9", "run_id": "b-3", "create": "yes"},
        {"id": "w10", "run_id": "b-1", "create": False, "note": "no seq: on top of what is stored"},
    ]}
    resp = client.post("/api/v1/runs/batch", json=body)
    assert resp.status_code == 200
    got = [(r["id"], r["status"]) for r in resp.json()["results"]]
    assert got == [("w1", "created"), ("w2", "updated"), ("w3", "stale"), ("w4", "missing"),
                   ("w5", "duplicate"), ("w6", "rejected"), ("w7", "rejected"), ("", "rejected"),
                   ("w9", "rejected"), ("w10", "updated")]
    errors = [r.get("error", "") for r in resp.json()["results"]]
    assert "run_id" in errors[5] and "seq" in errors[6] and "id" in errors[7] and "create" in errors[8]
    run = client.get("/api/v1/runs/b-1").json()
    assert (run["status"], run["seq"], run["note"]) == ("success", 2, "no seq: on top of what is stored")
    assert client.post("/api/v1/runs/batch", json={"writes": []}).status_code == 400


@pytest.mark.parametrize("body, field", [
    ({"run_id": ""}, "run_id"),
    ({"run_id": 5}, "run_id"),
    ({"agent_name": "x"}, "run_id"),
    ({"run_id": "r", "seq": -1}, "seq"),
    ({"run_id": "r", "seq": 1.5}, "seq"),
    ({"run_id": "r", "seq": True}, "seq"),
    ({"run_id": "r", "seq": 2**64}, "seq"),
    ([{"run_id": "r"}], "JSON object"),
    ({"run_id": "r", "agent_name": 5}, "agent_name"),
    ({"run_id": "r", "items_failed": "three"}, "items_failed"),
    ({"run_id": "r", "metrics_json": "not json"}, "metrics_json"),
    ({"run_id": "r", "metrics_json": [1]}, "metrics_json"),
])
def test_run_validation_names_the_field(client, body, field):
    resp = client.post("/api/v1/runs", json=body)
    assert resp.status_code == 422, resp.text
    assert field in resp.json()["detail"]


def test_metrics_json_sent_as_a_string_is_stored_as_an_object(client):
    client.post("/api/v1/runs", json={"run_id": "mj", "metrics_json": '{"pages": 3}'})
    assert client.get("/api/v1/runs/mj").json()["metrics_json"] == {"pages": 3}


def test_patch_body_must_match_the_path(client):
    client.post("/api/v1/runs", json={"run_id": "p"})
    resp = client.patch("/api/v1/runs/p", json={"run_id": "q", "status": "x"})
    assert resp.status_code == 422 and "differs" in resp.json()["detail"]
    assert client.patch("/api/v1/runs/p", content=b"[1]").status_code == 422
    assert client.patch("/api/v1/runs/p", content=b"{").status_code == 400


# -- queries -----------------------------------------------------------------------------------
def test_usage_filters_and_pages(client):
    items = [record(i, tags={"env": "prod" if i % 2 else "dev"}) for i in range(30)]
    items.append(record(40, provider="anthropic", model="claude-3-5-haiku-20241022", cost=None))
    track(client, items)
    page = client.get("/api/v1/usage", params={"limit": 10}).json()
    assert len(page["records"]) == 10 and page["next_offset"] == 10
    stamps = [r["timestamp"] for r in page["records"]]
    assert stamps == sorted(stamps, reverse=True)
    everything = []
    offset = 0
    while offset is not None:
        page = client.get("/api/v1/usage", params={"limit": 7, "offset": offset}).json()
        everything += page["records"]
        offset = page["next_offset"]
    assert sorted(r["id"] for r in everything) == sorted(i["id"] for i in items)
    assert [r["provider"] for r in client.get("/api/v1/usage", params={"provider": "anthropic"}).json()["records"]] == ["anthropic"]
    prod = client.get("/api/v1/usage", params=[("tag", "env:prod"), ("limit", 1000)]).json()["records"]
    assert len(prod) == 15 and all(r["tags"] == {"env": "prod"} for r in prod)
    window = client.get("/api/v1/usage", params={"since": "2025-03-05T00:00:00Z",
                                                 "until": "2025-03-07T00:00:00+00:00"}).json()["records"]
    assert {r["timestamp"][:10] for r in window} == {"2025-03-05", "2025-03-06"}
    assert client.get("/api/v1/usage", params={"limit": 1001}).status_code == 422
    assert client.get("/api/v1/usage", params={"since": "yesterday"}).status_code == 422
    bad_tag = client.get("/api/v1/usage", params={"tag": "no-colon"})
    assert bad_tag.status_code == 422 and "key:value" in bad_tag.json()["detail"]


def test_summary_has_exact_cost_strings(client):
    items = [record(i % 3, model="a-model", cost="0.000001") for i in range(300)]
    items += [record(1, model="b-model", cost="0.1"), record(2, model="b-model", cost="0.2")]
    track(client, items)
    resp = client.get("/api/v1/summary", params={"group_by": "model"}).json()
    by_model = {g["model"]: g for g in resp["groups"]}
    assert Decimal(by_model["a-model"]["cost"]) == Decimal("0.0003")
    assert Decimal(by_model["b-model"]["cost"]) == Decimal("0.3")
    assert "E" not in by_model["a-model"]["cost"]
    assert resp["totals"]["count"] == 302 and Decimal(resp["totals"]["cost"]) == Decimal("0.3003")
    days = client.get("/api/v1/summary", params={"group_by": "day,model", "model": "a-model"}).json()
    assert {g["day"] for g in days["groups"]} == {"2025-03-01", "2025-03-02", "2025-03-03"}
    assert sum(g["count"] for g in days["groups"]) == 300
    bad = client.get("/api/v1/summary", params={"group_by": "day,colour"})
    assert bad.status_code == 422 and "colour" in bad.json()["detail"]
    assert client.get("/api/v1/summary", params={"group_by": "day,day"}).status_code == 422


def test_summary_totals_are_per_currency(client):
    """1 USD and 2 EUR are never 3: the totals answer per currency, and the single-number
    ``cost`` is null when there is more than one."""
    now = datetime.now(UTC).isoformat()
    track(client, [record(1, cost="1", currency="USD", timestamp=now),
                   record(2, cost="2", currency="EUR", timestamp=now, cache_read_tokens=5),
                   record(3, cost="0.5", currency="EUR", timestamp=now)])
    resp = client.get("/api/v1/summary", params={"group_by": "model"}).json()
    assert [(g["model"], g["currency"], g["cost"]) for g in resp["groups"]] == [
        ("gpt-4o-mini", "EUR", "2.5"), ("gpt-4o-mini", "USD", "1")]
    t = resp["totals"]
    assert t["costs"] == {"EUR": "2.5", "USD": "1"} and t["cost"] is None and t["currency"] is None
    assert t["count"] == 3 and t["total_tokens"] == 3 * 10 + 101 + 102 + 103 + 5
    usd = client.get("/api/v1/summary", params={"group_by": "day", "user_id": "u1"}).json()
    assert usd["totals"]["cost"] == "1" and usd["totals"]["currency"] == "USD"
    page = client.get("/").text
    assert "2.5 EUR" in page and "1 USD" in page and "3.5" not in page


def test_metrics_counters_change(client):
    before = {n: metric(client, f"usageledger_records_{n}_total")
              for n in ("received", "accepted", "duplicate", "rejected")}
    a, b = record(1), record(2)
    track(client, [a, b, record(3, input_tokens=-1)])
    track(client, [a])
    after = {n: metric(client, f"usageledger_records_{n}_total")
             for n in ("received", "accepted", "duplicate", "rejected")}
    assert {n: after[n] - before[n] for n in after} == {
        "received": 4, "accepted": 2, "duplicate": 1, "rejected": 1}
    text = client.get("/metrics").text
    assert 'usageledger_http_request_duration_seconds_count{method="POST",route="/api/v1/track"} 2.0' in text
    assert 'usageledger_http_requests_total{method="POST",route="/api/v1/track",status="200"} 2.0' in text
    client.post("/api/v1/runs", json={"run_id": "m"})
    assert metric(client, 'usageledger_run_writes_total{status="created"}') == 1
    client.get("/api/v1/runs/some-unknown-id")
    assert 'route="/api/v1/runs/{run_id}",status="404"' in client.get("/metrics").text


def test_dashboard_docs_and_health(client):
    track(client, [record(1, model="gpt-4o-mini", timestamp=None)])
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "gpt-4o-mini" in page.text and "0.000001" in page.text
    assert client.get("/healthz").json() == {"status": "ok"}
    spec = client.get("/openapi.json").json()
    assert {"/api/v1/track", "/api/v1/runs", "/api/v1/runs/{run_id}", "/api/v1/runs/batch",
            "/api/v1/usage", "/api/v1/summary", "/healthz", "/metrics", "/"} <= set(spec["paths"])
    assert "UsageRecord" in spec["components"]["schemas"]
    assert client.get("/docs").status_code == 200


def test_storage_failure_is_503_and_retryable(tmp_path):
    store = create_storage(f"sqlite:///{tmp_path}/gone.db")
    with TestClient(create_app(store), client=LOCAL) as c:
        store.close()  # a real failure: the database handle is gone
        resp = track(c, [record(1)])
        assert resp.status_code == 503 and resp.headers["retry-after"] == "1"
        assert "storage unavailable" in resp.json()["detail"]
        assert c.get("/api/v1/summary").status_code == 503


def test_empty_filter_values_are_no_filter(client):
    track(client, [record(1, session_id="s1"), record(2)])
    for path in ("/api/v1/usage", "/api/v1/summary"):
        resp = client.get(path, params={"session_id": "", "user_id": "", "provider": ""})
        assert resp.status_code == 200, resp.text
    assert client.get("/api/v1/summary", params={"session_id": ""}).json()["totals"]["count"] == 2
    assert client.get("/api/v1/summary", params={"session_id": "s1"}).json()["totals"]["count"] == 1
    assert client.get("/api/v1/runs", params={"status": ""}).status_code == 200


@pytest.mark.parametrize("keys", [["ok", ""], [" padded "], ["naïve"], "one-string"])
def test_unusable_api_keys_are_refused_at_start(store, keys):
    with pytest.raises((ValueError, TypeError), match="key"):
        create_app(store, api_keys=keys)


# -- the client reads both forms of the answer ----------------------------------------------
def test_http_sink_reads_compact_and_per_record_answers(store):
    """HttpSink against the real app: a batch of new records (compact answer), a resend
    with new records mixed in (compact, with duplicates), and a batch with a refusal (per
    record): every record is settled as the collector decided."""
    from usageledger.journal.base import JournalItem
    from usageledger.records import KIND_RAW
    from usageledger.sinks.base import OK, Reject
    from usageledger.sinks.http import HttpSink

    def items(recs):
        return [JournalItem(r["id"] if isinstance(r, dict) else f"x{i}", KIND_RAW,
                            msgspec.json.encode(r), 0) for i, r in enumerate(recs)]

    answers = []
    with TestClient(create_app(store), client=LOCAL) as http:
        sink = HttpSink("http://testserver", compress=None)
        sink._http = http  # the real app in-process, through httpx like any server
        original = sink.results_from

        def spy(batch, resp):
            answers.append(resp.json())
            return original(batch, resp)

        sink.results_from = spy
        first = [record(i) for i in range(5)]
        assert sink.send(items(first)) == {r["id"]: OK for r in first}
        assert answers[-1] == {"accepted": 5, "duplicate": 0, "duplicate_ids": []}

        more = [record(10 + i) for i in range(3)]
        again = sink.send(items(first[:2] + more))
        assert again == {r["id"]: OK for r in first[:2] + more}
        assert answers[-1]["accepted"] == 3 and answers[-1]["duplicate_ids"] == [first[0]["id"], first[1]["id"]]

        bad = record(20, input_tokens=-1)
        fresh = record(21)
        mixed = sink.send(items([first[2], bad, fresh]))
        assert "results" in answers[-1] and answers[-1]["rejected"] == 1
        assert mixed[first[2]["id"]] is OK and mixed[fresh["id"]] is OK
        assert isinstance(mixed[bad["id"]], Reject) and "input_tokens" in mixed[bad["id"]].reason
    assert store.count() == 9


def test_finer_token_counts_in_both_track_shapes(client, store):
    """A PersistentDelivery item (the older shape, as track_item makes it) and a record both
    carry the finer counts and the tier; a part above its whole is refused by name."""
    from usageledger.integrations._common import track_item
    from usageledger.pricing import price_record
    from usageledger.records import make_usage_record

    fields = dict(provider="openai", model="gpt-audio", input_tokens=1200, output_tokens=500,
                  input_audio_tokens=800, output_audio_tokens=300, service_tier="default")
    legacy = track_item(fields)
    rich = make_usage_record("anthropic", "claude-opus-4-5", 1200, 500, cache_write_tokens=900,
                             cache_write_1h_tokens=600, service_tier="batch")
    wire = msgspec.to_builtins(rich)
    bad = {**wire, "id": "too-many", "cache_write_1h_tokens": 901}
    assert statuses(track(client, [legacy, wire, bad])) == [
        (legacy["id"], "accepted"), (rich.id, "accepted"), ("too-many", "rejected")]
    got = {r.id: r for r in store.query()}
    a, b = got[legacy["id"]], got[rich.id]
    assert (a.input_audio_tokens, a.output_audio_tokens, a.service_tier) == (800, 300, "default")
    assert a.cost == price_record(make_usage_record(**fields, timestamp=a.timestamp)).cost
    assert (b.cache_write_1h_tokens, b.service_tier) == (600, "batch")
    assert b.cost == price_record(rich).cost
    error = {r["id"]: r.get("error") for r in track(client, [bad]).json()["results"]}["too-many"]
    assert "cache_write_1h_tokens (901) must be at most cache_write_tokens (900)" in error
