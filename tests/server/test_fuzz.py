"""Property-based fuzzing of the collector's OpenAPI spec (schemathesis) and of /track
bodies (hypothesis): whatever the input, the answer is never a server error, and the
storage keeps answering queries about what was accepted."""

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
                     "NaN", "openai::gpt-4o"]),
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


@given(batch=st.lists(items, max_size=6))
@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
def test_track_bodies_never_cause_a_server_error(batch):
    with TestClient(app, headers=AUTH) as client:
        resp = client.post("/api/v1/track", content=msgspec.json.encode({"tracked": batch}))
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
