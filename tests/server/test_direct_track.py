"""``POST /api/v1/track`` goes straight to its route function (server.app.DirectPost),
past FastAPI's route matching and dependency solving: every answer, header and metric is
the one the routed path gives. Two apps from the same code, one with the direct path taken
out, get the same requests and must answer alike."""

from __future__ import annotations

import gzip

import msgspec
from fastapi.testclient import TestClient

from tests.server.support import record
from usageledger.server.app import DirectPost, create_app
from usageledger.server.auth import PROJECT_TAG
from usageledger.storage import create_storage

KEY = "direct-track-key-5c1e9a"
AUTH = {"Authorization": f"Bearer {KEY}"}
HEADERS = ("content-type", "content-length", "x-content-type-options", "x-frame-options",
           "referrer-policy", "retry-after", "www-authenticate")


def body(*items: dict) -> bytes:
    return msgspec.json.encode({"tracked": list(items)})


def _routed(app):
    """The same app without the direct path: /track goes through FastAPI's router."""
    app.user_middleware = [m for m in app.user_middleware if m.cls is not DirectPost]
    return app


def _answer(resp) -> tuple:
    return resp.status_code, resp.content, {h: resp.headers.get(h) for h in HEADERS}


def _requests() -> list[tuple[str, dict]]:
    """The requests, built once (the same ids for both apps); ``{read}``/``{ingest}`` stand
    for the project keys each app makes."""
    good = [record(i) for i in range(3)]
    bad = {**record(9), "input_tokens": -1}
    return [
        ("a batch", {"content": body(*good), "headers": AUTH}),
        ("the same batch again: duplicates", {"content": body(*good), "headers": AUTH}),
        ("a batch with a refused item", {"content": body(record(3), bad), "headers": AUTH}),
        ("gzip", {"content": gzip.compress(body(record(4))), "headers": {**AUTH, "Content-Encoding": "gzip"}}),
        ("bad gzip", {"content": b"not gzip", "headers": {**AUTH, "Content-Encoding": "gzip"}}),
        ("brotli", {"content": body(record(5)), "headers": {**AUTH, "Content-Encoding": "br"}}),
        ("malformed JSON", {"content": b'{"tracked": [', "headers": AUTH}),
        ("not a batch", {"content": b'{"records": []}', "headers": AUTH}),
        ("too large", {"content": body(*[record(100 + i, payload={"t": "x" * 1000}) for i in range(20)]),
                       "headers": AUTH}),
        ("no key", {"content": body(record(6))}),
        ("a wrong key", {"content": body(record(6)), "headers": {"Authorization": "Bearer nope"}}),
        ("a read key", {"content": body(record(6)), "headers": {"Authorization": "Bearer {read}"}}),
        ("an ingest key: its project", {"content": body(record(7)),
                                        "headers": {"Authorization": "Bearer {ingest}"}}),
        ("a bad project parameter", {"content": body(record(8)), "headers": AUTH,
                                     "params": {"project": "no spaces allowed here"}}),
        ("a global key's project", {"content": body(record(8)), "headers": AUTH, "params": {"project": "p2"}}),
    ]


def test_the_direct_track_answers_like_the_routed_one(tmp_path):
    answers, metrics, stored = [], [], []
    plan = _requests()
    last = record(50)
    for name, routed in (("direct", False), ("routed", True)):
        store = create_storage(f"sqlite:///{tmp_path}/{name}.db")
        app = create_app(store, api_keys=[KEY], max_body_bytes=16_000)
        if routed:
            app = _routed(app)
        with TestClient(app) as client:
            keys = {role: client.post("/api/v1/keys", headers=AUTH, json={"project": "p1", "role": role,
                                                                            "name": role}).json()["key"]
                    for role in ("read", "ingest")}
            seen = []
            for what, kw in plan:
                headers = {k: v.format(**keys) for k, v in kw.get("headers", {}).items()}
                resp = client.post("/api/v1/track", **{**kw, "headers": headers})
                # the keys differ between the two stores: never quoted in an answer
                seen.append((what, *_answer(resp)))
            seen.append(("GET", *_answer(client.get("/api/v1/track", headers=AUTH))))
            text = client.get("/metrics", headers=AUTH).text
            # the counters (not their creation times, nor the latencies)
            metrics.append(sorted(line for line in text.splitlines() if "_total" in line and (
                line.startswith("usageledger_records_") or "/api/v1/track" in line)))
            rows = client.get("/api/v1/usage", headers=AUTH, params={"limit": 1000}).json()["records"]
            stored.append(sorted((r["id"], r.get("tags", {}).get(PROJECT_TAG)) for r in rows))
            store.close()  # a storage failure: 503 and Retry-After on both
            resp = client.post("/api/v1/track", content=body(last), headers=AUTH)
            seen.append(("storage closed", resp.status_code, resp.headers.get("retry-after"),
                         resp.json()["detail"].split(":")[0]))
        answers.append(seen)
    direct, routed = answers
    for a, b in zip(direct, routed, strict=True):
        assert a == b, a[0]
    statuses = {a[0]: a[1] for a in direct}
    assert statuses["a batch"] == 200 and statuses["malformed JSON"] == 400
    assert statuses["too large"] == 413 and statuses["no key"] == 401 and statuses["a read key"] == 403
    assert statuses["brotli"] == 415 and statuses["a bad project parameter"] == 422
    assert statuses["GET"] == 405 and statuses["storage closed"] == 503
    assert direct[-1][2] == "1"
    assert metrics[0] == metrics[1] and any('status="200"' in line for line in metrics[0])
    assert stored[0] == stored[1]
    projects = [project for _, project in stored[0]]
    assert len(projects) == 7 and projects.count("p1") == 1 and projects.count("p2") == 1
