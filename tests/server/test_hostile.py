"""One authenticated request must never take the collector's memory or answer 500: hostile
bodies against a real collector process, whose memory is read from /proc, plus the same
limits in the client's record construction (a local store never accepts what the
collector refuses)."""

from __future__ import annotations

import gzip
import json
from decimal import Decimal
from pathlib import Path

import httpx
import msgspec
import pytest
from fastapi.testclient import TestClient

from tests.server.support import Collector, record
from usageledger import limits
from usageledger.records import make_usage_record
from usageledger.server import create_app
from usageledger.server.wire import BodyError, decode_track
from usageledger.storage import create_storage

KEY = "hostile-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
MIB = 1024 * 1024


def _status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak) of a process, in bytes."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            out[name] = int(value.split()[0]) * 1024
    return out


def _deep(n: int) -> str:
    return '{"a":' * n + "1" + "}" * n


def _body(*items: dict) -> bytes:
    return msgspec.json.encode({"tracked": list(items)})


BIG = "x" * (7 * MIB)
# (name, method, path, body): each must be refused with a 4xx
REFUSED_BODIES = [
    ("4 million tiny items", "POST", "/api/v1/track",
     b'{"tracked":[' + b",".join([b"{}"] * 2_500_000) + b"]}"),
    ("more items than the cap", "POST", "/api/v1/track",
     _body(*[record(i) for i in range(limits.MAX_BATCH_ITEMS + 1)])),
    ("more run writes than the cap", "POST", "/api/v1/runs/batch",
     msgspec.json.encode({"runs": [{"id": str(i), "run_id": "r"} for i in range(limits.MAX_BATCH_ITEMS + 1)]})),
    ("cost 1e400 in the legacy shape", "POST", "/api/v1/track",
     b'{"tracked":[{"id":"a1","api_id":"openai","service_key":"gpt-4o","payload":{"cost":1e400}}]}'),
    ("cost 1e400 without timestamp", "POST", "/api/v1/track",
     b'{"tracked":[{"id":"a2","provider":"openai","model":"gpt-4o","cost":1e400}]}'),
    ("nested 1,000 deep in /track", "POST", "/api/v1/track",
     ('{"tracked":[{"id":"a3","provider":"p","model":"m","payload":' + _deep(1000) + '}]}').encode()),
    ("nested 1,000 deep in /runs", "POST", "/api/v1/runs",
     ('{"run_id":"deep","x":' + _deep(1000) + '}').encode()),
    ("nested 1,000 deep in /runs/batch", "POST", "/api/v1/runs/batch",
     ('{"runs":[{"id":"w","run_id":"deep","x":' + _deep(1000) + '}]}').encode()),
    ("nested 1,000 deep in PATCH", "PATCH", "/api/v1/runs/existing",
     ('{"x":' + _deep(1000) + '}').encode()),
    ("a list nested 1,000 deep", "POST", "/api/v1/track",
     ('{"tracked":' + "[" * 1000 + "]" * 1000 + "}").encode()),
    ("nested 100 deep in /runs", "POST", "/api/v1/runs",
     ('{"run_id":"deep100","x":' + _deep(100) + '}').encode()),
    ("7 MiB run field", "POST", "/api/v1/runs",
     msgspec.json.encode({"run_id": "big", "error_details": BIG})),
    ("7 MiB run id", "POST", "/api/v1/runs", msgspec.json.encode({"run_id": BIG})),
    ("payload nested 33 deep", "POST", "/api/v1/track", _body(record(payload=json.loads(_deep(33))))),
    ("a gzip bomb", "POST", "/api/v1/track", gzip.compress(b" " * (64 * MIB))),
]
# items of a /track batch that must each come back "rejected", nothing stored
REJECTED_ITEMS = [
    ("cost 1e-100000000", record(cost="1e-100000000")),
    ("cost with 60 digits", record(cost="0." + "1" * 60)),
    ("cost 1e400 as a string", record(cost="1e400")),
    ("7 MiB model", record(model=BIG)),
    ("7 MiB user", record(user_id=BIG)),
    ("7 MiB tag value", record(tags={"k": BIG})),
    ("7 MiB tag key", record(tags={BIG: "v"})),
    ("10,000 tags", record(tags={str(i): "v" for i in range(10_000)})),
    ("7 MiB id", {**record(), "id": BIG}),
    ("payload of 7 MiB", record(payload={"text": BIG})),
]


def test_hostile_bodies_are_refused_and_memory_stays_bounded(tmp_path):
    log = tmp_path / "collector.log"
    with Collector(f"sqlite:///{tmp_path}/h.db", api_keys=[KEY], log_path=log) as c, \
            httpx.Client(base_url=c.url, headers=AUTH, timeout=120) as http:
        assert http.post("/api/v1/runs", json={"run_id": "existing"}).status_code == 201
        http.post("/api/v1/track", content=_body(record()))  # warm up the routes
        before = _status(c.proc.pid)
        for name, method, path, body in REFUSED_BODIES:
            headers = {"Content-Encoding": "gzip"} if name == "a gzip bomb" else {}
            resp = http.request(method, path, content=body, headers=headers)
            assert 400 <= resp.status_code < 500, (name, resp.status_code, resp.text[:300])
            assert len(resp.content) < 2000, (name, len(resp.content))
            detail = resp.json()["detail"]
            assert isinstance(detail, str) and len(detail) < 1000, (name, detail)
        for name, item in REJECTED_ITEMS:
            resp = http.post("/api/v1/track", content=_body(item))
            assert resp.status_code == 200, (name, resp.text[:300])
            (result,) = resp.json()["results"]
            assert result["status"] == "rejected", (name, result)
            assert len(resp.content) < 2000, (name, len(resp.content))
        after = _status(c.proc.pid)
        page = http.get("/api/v1/usage", params={"limit": 1000})
        assert page.status_code == 200
        assert len(page.json()["records"]) == 1  # only the warm-up record was stored
        assert http.get("/api/v1/runs", params={"limit": 1000}).json()["runs"][0]["run_id"] == "existing"
    grown, peak = after["VmRSS"] - before["VmRSS"], after["VmHWM"] - before["VmRSS"]
    print(f"collector RSS before {before['VmRSS'] / MIB:.0f} MiB, after {after['VmRSS'] / MIB:.0f} MiB "
          f"(+{grown / MIB:.0f}), peak +{peak / MIB:.0f} MiB")
    # today's main held 2.3 GB for the 4-million-item body alone; the transient list of
    # 2.5 million raw items is about 150 MiB here
    assert peak < 512 * MIB, f"peak grew by {peak / MIB:.0f} MiB"
    assert grown < 256 * MIB, f"RSS grew by {grown / MIB:.0f} MiB"
    # no 7 MiB log line (values are refused before they are logged, and shortened when logged)
    assert log.stat().st_size < 64 * 1024


def test_a_newline_in_a_model_name_cannot_forge_a_log_line(tmp_path):
    log = tmp_path / "collector.log"
    forged = "CRITICAL: forged line"
    with Collector(f"sqlite:///{tmp_path}/h.db", api_keys=[KEY], log_path=log) as c:
        resp = httpx.post(c.url + "/api/v1/track", headers=AUTH, content=_body(
            record(model=f"no-such-model\n{forged}", cost=None)))
        assert resp.json()["accepted"] == 1
    text = log.read_text()
    assert "no-such-model" in text  # the unknown-price warning was written
    assert not any(line.startswith(forged) for line in text.splitlines())


def test_run_ids_with_a_slash_can_be_read_and_updated(tmp_path):
    with Collector(f"sqlite:///{tmp_path}/h.db", api_keys=[KEY]) as c, \
            httpx.Client(base_url=c.url, headers=AUTH) as http:
        assert http.post("/api/v1/runs", json={"run_id": "team/a/run-1", "status": "running"}).status_code == 201
        assert http.get("/api/v1/runs/team/a/run-1").json()["status"] == "running"
        assert http.patch("/api/v1/runs/team/a/run-1", json={"status": "done"}).status_code == 200
        assert http.get("/api/v1/runs/team%2Fa%2Frun-1").json()["status"] == "done"
        assert http.get("/api/v1/runs/team/a").status_code == 404


def test_head_and_security_headers_on_html_answers(tmp_path):
    with Collector(f"sqlite:///{tmp_path}/k.db", api_keys=[KEY]) as c:
        # with keys, the pages ask for a login: the redirect carries the headers too
        login = httpx.head(c.url + "/")
        assert login.status_code == 303 and login.headers["x-frame-options"] == "DENY"
    with Collector(f"sqlite:///{tmp_path}/h.db") as c, httpx.Client(base_url=c.url) as http:
        head = http.head("/")
        assert head.status_code == 200 and head.content == b""
        for path in ("/", "/docs", "/redoc"):
            resp = http.get(path)
            assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/html")
            assert resp.headers["x-content-type-options"] == "nosniff"
            assert resp.headers["x-frame-options"] == "DENY"
            assert "frame-ancestors 'none'" in resp.headers["content-security-policy"]
        dashboard_csp = http.get("/").headers["content-security-policy"]
        assert "default-src 'none'" in dashboard_csp and "script-src" not in dashboard_csp
        assert http.get("/api/v1/usage").headers["x-content-type-options"] == "nosniff"
        assert http.head("/healthz").status_code == 200


def test_usage_pages_are_capped_in_bytes_and_every_record_is_reachable(tmp_path):
    store = create_storage(f"sqlite:///{tmp_path}/p.db")
    try:
        # 200 records of about 60 KiB: 12 MiB in all, more than one answer may hold
        # the app is shut down (its alert thread stopped) before the store is closed
        with TestClient(create_app(store, api_keys=[KEY]), headers=AUTH) as client:
            items = [record(i, payload={"text": "y" * 60_000}) for i in range(200)]
            ids = {r["id"] for r in items}
            for i in range(0, 200, 50):
                assert client.post("/api/v1/track", content=_body(*items[i:i + 50])).status_code == 200
            seen, offset, pages = set(), 0, 0
            while offset is not None:
                resp = client.get("/api/v1/usage", params={"limit": 1000, "offset": offset})
                assert len(resp.content) <= limits.MAX_ANSWER_BYTES + 4096
                page = resp.json()
                seen |= {r["id"] for r in page["records"]}
                offset, pages = page["next_offset"], pages + 1
            assert seen == ids and pages >= 2
    finally:
        store.close()


# -- one set of limits for the client and the collector ----------------------------------------

@pytest.mark.parametrize("name,item", REJECTED_ITEMS[:-1] + [
    ("payload nested 33 deep", record(payload=json.loads(_deep(33)))),
    ("payload of 100 KiB", record(payload={"text": "z" * 100_000})),
])
def test_the_client_refuses_what_the_collector_refuses(name, item):
    try:
        (result,) = decode_track(_body(item))
        assert result.__class__.__name__ == "Refused", name
    except BodyError as exc:
        assert exc.status == 400, name
    # and what the collector takes, the client takes
    ok = record(payload=json.loads(_deep(32)), model="m" * limits.MAX_TEXT_CHARS)
    assert decode_track(_body(ok))[0].__class__.__name__ == "UsageRecord"
    make_usage_record(**{k: v for k, v in ok.items() if k != "timestamp"})
    kw = {k: v for k, v in item.items() if k not in ("timestamp",)}
    with pytest.raises(ValueError) as err:
        make_usage_record(**kw)
    assert len(str(err.value)) < 500  # the 7 MiB value is not quoted whole


@pytest.mark.parametrize("cost,ok", [
    ("0.000000000000000001", True), ("0.10000000000000000000000", True), ("1000000000", True),
    ("1E+9", True), ("0E+400", True), ("0E-100000000", True), ("123456789.123456789012345678", True),
    ("1e-100000000", False), ("0.0000000000000000001", False), ("1e400", False), ("1000000001", False),
    ("1." + "0" * 50, False), ("1.000000000000000000000000000001", False),
])
def test_cost_limits_are_exact_and_never_underflow(cost, ok):
    assert (limits.cost_error(Decimal(cost)) is None) is ok
    if ok:
        assert make_usage_record("p", "m", cost=cost).cost == Decimal(cost)
    else:
        with pytest.raises(ValueError, match="cost"):
            make_usage_record("p", "m", cost=cost)
