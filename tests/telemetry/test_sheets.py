"""Google Sheets export against a local values:append server and token endpoint."""

from __future__ import annotations

import json

import pytest

from tests.telemetry.sheets_server import SheetsServer
from usageledger.telemetry import ConfigError, TelemetryClient
from usageledger.telemetry.models import SHEET_COLUMNS
from usageledger.telemetry.sheets import SHEETS_SCOPE, ServiceAccountAuth


@pytest.fixture(scope="module")
def rsa_key():
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
    public = key.public_key().public_bytes(serialization.Encoding.PEM,
                                           serialization.PublicFormat.SubjectPublicKeyInfo)
    return private, public


@pytest.fixture
def server(rsa_key):
    srv = SheetsServer(public_key_pem=rsa_key[1])
    yield srv
    srv.stop()


def sheets_client(tmp_path, server: SheetsServer, **kw) -> TelemetryClient:
    opts = dict(base_dir=str(tmp_path), api_enabled=False, batch_interval=0.05, max_backoff=0.2,
                sheets_enabled=True, sheets_spreadsheet_id="sheet/1", sheets_range="Runs!A1",
                sheets_api_url=server.url, sheets_allow_insecure_local=True)
    opts.update(kw)
    return TelemetryClient(**opts)


def by_run_id(rows):
    return {row[0]: dict(zip(SHEET_COLUMNS, row, strict=True)) for row in rows}


def test_finished_runs_are_appended_as_rows_with_a_bearer_token(tmp_path, server):
    client = sheets_client(tmp_path, server, sheets_token="static-token")
    try:
        done = client.start_run("a", "j", product="words")
        client.end_run(done, items_succeeded=3)
        still_running = client.start_run("a", "j")
        assert client.flush(20)
        rows = by_run_id(server.rows)
        assert set(rows) == {done}  # only finished runs become rows
        assert rows[done]["status"] == "success" and rows[done]["items_succeeded"] == 3
        assert rows[done]["product"] == "words" and rows[done]["subdomain"] == ""
        assert server.appends[0]["spreadsheet"] == "sheet/1" and server.appends[0]["range"] == "Runs!A1"
        client.end_run(still_running)
    finally:
        client.close(5)


def test_service_account_jwt_is_exchanged_once_and_reused(tmp_path, server, rsa_key):
    creds = tmp_path / "sa.json"
    creds.write_text(json.dumps({"type": "service_account", "client_email": "bot@proj.iam.example",
                                 "private_key": rsa_key[0], "token_uri": server.token_uri}))
    client = sheets_client(tmp_path, server, sheets_credentials_file=str(creds))
    try:
        for batch in range(3):
            for _ in range(5):
                client.end_run(client.start_run("a", f"j{batch}"))
            assert client.flush(20)
        assert len(server.rows) == 15
        assert len(server.token_requests) == 1
        claims = server.token_requests[0]
        assert claims["iss"] == "bot@proj.iam.example" and claims["scope"] == SHEETS_SCOPE
        assert claims["exp"] - claims["iat"] == 3600
        assert {a["token"] for a in server.appends} == {"access-1"}
        # a token the API stops accepting is fetched again
        server.valid_tokens.discard("access-1")
        client.end_run(client.start_run("a", "after-revoke"))
        assert client.flush(20)
        assert len(server.rows) == 16 and len(server.token_requests) == 2
    finally:
        client.close(5)


def test_sheets_failures_never_block_or_fail_a_run(tmp_path, server):
    server.fail_next = [500, 503, 429, 500]
    client = sheets_client(tmp_path, server, sheets_token="static-token")
    try:
        with client.track_run("a", "j") as ctx:
            ctx.set_metrics(items_succeeded=1)
        # returned while the export still retries its four failures: a run that waited for
        # the export would come back with the row already appended
        assert server.rows == []
        assert client.pipelines["sqlite"].flush(10) and client.pipelines["ndjson"].flush(10)
        assert client.database.get_run(ctx.run_id).status == "success"
        assert client.flush(30)
        assert list(by_run_id(server.rows)) == [ctx.run_id]
        assert client.get_stats()["destinations"]["sheets"]["retried"] >= 4
    finally:
        client.close(5)


def test_a_refused_row_is_dead_lettered_not_retried_forever(tmp_path, server):
    server.fail_next = [403]
    client = sheets_client(tmp_path, server, sheets_token="static-token")
    try:
        client.end_run(client.start_run("a", "j"))
        assert client.flush(20)
        assert client.get_stats()["dead"]["sheets"] == 1 and server.rows == []
        client.end_run(client.start_run("a", "j2"))
        assert client.flush(20)
        assert len(server.rows) == 1
    finally:
        client.close(5)


def test_local_token_uri_needs_the_explicit_flag(tmp_path, rsa_key):
    info = {"client_email": "bot@x", "private_key": rsa_key[0], "token_uri": "http://127.0.0.1:1/token"}
    with pytest.raises(ConfigError, match="token_uri='http://127.0.0.1:1/token' .* points at this machine"):
        ServiceAccountAuth(info)
    assert ServiceAccountAuth(info, allow_insecure_local=True).token_uri.endswith("/token")
    with pytest.raises(ConfigError, match="lacks private_key"):
        ServiceAccountAuth({"client_email": "bot@x"})
    bad = tmp_path / "nope.json"
    with pytest.raises(ConfigError, match="cannot be read"):
        ServiceAccountAuth(str(bad))
