"""Property-based fuzzing of the collector's OpenAPI spec (schemathesis, inputs that fit
the spec and inputs that do not) and of /track and run bodies (hypothesis, with hostile
values: strings past the limits, deep nesting, numbers no double holds, costs that
underflow): whatever the input, the answer is never a server error, and the storage keeps
answering queries about what was accepted."""

from __future__ import annotations

import shutil
import tempfile

import msgspec
import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error

from usageledger import limits
from usageledger.server import create_app
from usageledger.storage import create_storage

KEY = "fuzz-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
_dir = tempfile.mkdtemp(prefix="ul-fuzz-")
store = create_storage(f"sqlite:///{_dir}/fuzz.db")
# a key, because schemathesis' test client does not connect from a loopback address
app = create_app(store, api_keys=[KEY])
schema = schemathesis.openapi.from_asgi("/openapi.json", app)


@pytest.fixture(scope="module", autouse=True)
def _cleanup():
    yield
    store.close()
    shutil.rmtree(_dir, ignore_errors=True)


@schema.parametrize()
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
def test_openapi_fuzz_finds_no_server_error(case):
    response = case.call(headers=AUTH)
    case.validate_response(response, checks=[not_a_server_error])
    assert response.status_code < 500, (case.method, case.path, response.text)


json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=12),
    st.sampled_from(["", "\x00", "2025-01-01T00:00:00", "0001-01-01T00:00:00+05:00",
                     "9999-12-31T23:59:59-05:00", "1E+30", "-1", "0.0000000000000000000001",
                     "NaN", "openai::gpt-4o", "1e-100000000", "1e400", "0." + "1" * 60]),
    # just past each string limit
    st.sampled_from([limits.MAX_ID_CHARS, limits.MAX_TEXT_CHARS, limits.MAX_TAG_VALUE_CHARS])
    .map(lambda n: "s" * (n + 1)),
)
json_values = st.recursive(json_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=6), inner, max_size=3)),
    max_leaves=8)
FIELDS = ["id", "timestamp", "provider", "model", "input_tokens", "output_tokens",
          "cache_read_tokens", "cost", "currency", "user_id", "tags", "payload", "api_id",
          "service_key"]
items = st.one_of(
    json_values,
    st.fixed_dictionaries({"id": st.text(min_size=1, max_size=8)},
                          optional={k: json_values for k in FIELDS[1:]}),
)


def _nest(depth: int, leaf: object = 1) -> object:
    for _ in range(depth):
        leaf = {"a": leaf}
    return leaf


deep_values = st.integers(min_value=limits.MAX_JSON_DEPTH - 2, max_value=limits.MAX_JSON_DEPTH + 3).map(_nest)
items = st.one_of(items, st.fixed_dictionaries(
    {"id": st.text(min_size=1, max_size=8), "provider": st.just("p"), "model": st.just("m")},
    optional={"payload": deep_values, "tags": json_values, "cost": json_scalars}))


@given(batch=st.lists(items, max_size=6))
@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
def test_track_bodies_never_cause_a_server_error(batch):
    with TestClient(app, headers=AUTH) as client:
        resp = client.post("/api/v1/track", content=msgspec.json.encode({"tracked": batch}))
        too_deep = any(limits.json_depth(item, 100) > limits.MAX_JSON_DEPTH + 1 for item in batch)
        if too_deep:  # one rule for every endpoint: the whole body is refused
            assert resp.status_code == 400 and "levels deep" in resp.json()["detail"], resp.text
            return
        assert resp.status_code == 200, resp.text
        answer = resp.json()
        if "results" in answer:  # some item was rejected: one result per item
            results = answer["results"]
            assert len(results) == len(batch)
            assert {r["status"] for r in results} <= {"accepted", "duplicate", "rejected"}
            assert answer["rejected"] == sum(r["status"] == "rejected" for r in results) > 0
            for r in results:
                assert isinstance(r["id"], str)
                assert ("error" in r) == (r["status"] == "rejected")
        else:  # compact: every item stored
            assert answer["accepted"] + answer["duplicate"] == len(batch)
            assert len(answer["duplicate_ids"]) == answer["duplicate"]
        summary = client.get("/api/v1/summary", params={"group_by": "day,provider,model,user_id"})
        assert summary.status_code == 200, summary.text
        assert client.get("/api/v1/usage", params={"limit": 1000}).status_code == 200
        assert client.get("/").status_code == 200


RAW_HOSTILE = [
    b'{"a":' * 1000 + b"1" + b"}" * 1000,  # deeper than the decoder goes
    b"[" * 1000 + b"]" * 1000,
    b"1e400",
    b'{"cost": 1e400}',
]
run_fields = st.dictionaries(st.sampled_from(["status", "agent_name", "metrics_json", "x", "seq",
                                              "run_id", "error_details"]),
                             st.one_of(json_values, deep_values), max_size=4)


@given(fields=run_fields, run_id=st.one_of(st.text(min_size=1, max_size=6), json_scalars),
       raw=st.sampled_from([None, *RAW_HOSTILE]), where=st.sampled_from(["runs", "batch", "patch"]))
@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
def test_run_bodies_never_cause_a_server_error(fields, run_id, raw, where):
    with TestClient(app, headers=AUTH) as client:
        client.post("/api/v1/runs", json={"run_id": "fuzz-existing"})
        if raw is not None:
            body = raw if where != "batch" else b'{"runs":[{"id":"w","run_id":"r","x":' + raw + b"}]}"
            if where == "runs" and raw.startswith(b"{") and raw != RAW_HOSTILE[0]:
                body = b'{"run_id":"r","x":' + raw + b"}"
        elif where == "batch":
            body = msgspec.json.encode({"runs": [{"id": "w1", "run_id": run_id, **fields}]})
        else:
            body = msgspec.json.encode({"run_id": run_id, **fields} if where == "runs" else fields)
        if where == "patch":
            resp = client.patch("/api/v1/runs/fuzz-existing", content=body)
        else:
            resp = client.post("/api/v1/runs/batch" if where == "batch" else "/api/v1/runs", content=body)
        assert resp.status_code < 500, (where, body[:200], resp.text[:300])
        if raw is not None:
            assert resp.status_code == 400, (where, raw[:40], resp.text[:300])
        runs = client.get("/api/v1/runs", params={"limit": 1000})
        assert runs.status_code == 200, runs.text[:300]
