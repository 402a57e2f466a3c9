"""report, export and import against real SQLite and JSONL stores with known totals."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from tests.cli.conftest import totals, usage_records
from usageledger.export import CSV_FIELDS, read_export
from usageledger.pricebook import PriceBook
from usageledger.storage import create_storage


def _money_cells(line: str) -> list[str]:
    return [c for c in line.replace("┃", "│").split("│") if c.strip().startswith("$")]


def test_report_table_total_row_and_chart(cli, store_url):
    r = cli("report", "--storage", store_url)
    assert r.code == 0, r.err
    records = usage_records()
    want = totals(records)
    lines = r.out.splitlines()
    total = next(line for line in lines if "total" in line and "│" in line)
    cells = [c.strip() for c in total.split("│") if c.strip()]
    assert cells[0] == "total"
    assert cells[1] == f"{want['count']:,}"
    assert cells[2] == f"{want['input_tokens']:,}"
    assert cells[3] == f"{want['output_tokens']:,}"
    assert f"${want['cost']:,.2f}" in cells
    # the record without a price is counted in its own column, shown because it is non-zero
    assert "no price" in r.out and cells[-1] == "1"
    # one data row per (day, model)
    assert sum(1 for line in lines if line.startswith("│ 2026-03-0")) == 6
    # chart: one bar per day, longest for the most expensive day
    chart = lines[lines.index("cost per day") + 1:]
    days = [line for line in chart if line.startswith("2026-03-0")]
    assert [d.split()[0] for d in days] == ["2026-03-01", "2026-03-02", "2026-03-03"]
    bars = [d.count("█") for d in days]
    assert bars[0] < bars[1] < bars[2]
    per_day = {}
    for rec in records:
        day = rec.timestamp.date().isoformat()
        per_day[day] = per_day.get(day, Decimal(0)) + (rec.cost or 0)
    for line in days:
        assert line.rstrip().endswith(f"${per_day[line.split()[0]]:,.2f}")


def test_report_json_is_exact(cli, store_url):
    r = cli("report", "--storage", store_url, "--format", "json", "--group-by", "model")
    assert r.code == 0, r.err
    doc = json.loads(r.out)
    assert doc["group_by"] == ["model"]
    records = usage_records()
    want = totals(records)
    assert doc["total"]["count"] == want["count"]
    assert doc["total"]["input_tokens"] == want["input_tokens"]
    assert doc["total"]["cache_read_tokens"] == want["cache_read_tokens"]
    assert Decimal(doc["total"]["cost"]) == want["cost"]  # includes 1e-13, nothing rounded
    by_model = {row["model"]: row for row in doc["rows"]}
    gpt = totals([r for r in records if r.model == "gpt-4o"])
    assert by_model["gpt-4o"]["count"] == gpt["count"]
    assert Decimal(by_model["gpt-4o"]["cost"]) == gpt["cost"]


def test_report_csv_with_range(cli, store_url):
    r = cli("report", "--storage", store_url, "--format", "csv", "--group-by", "day",
            "--since", "2026-03-02", "--until", "2026-03-03T00:00:00Z")
    assert r.code == 0, r.err
    rows = list(csv.DictReader(io.StringIO(r.out)))
    assert [row["day"] for row in rows] == ["2026-03-02"]
    want = totals([x for x in usage_records() if x.timestamp.day == 2])
    assert int(rows[0]["count"]) == want["count"] == 10
    assert Decimal(rows[0]["cost"]) == want["cost"]
    assert rows[0]["unknown_cost"] == "1"


def test_report_of_an_empty_range(cli, store_url):
    r = cli("report", "--storage", store_url, "--since", "2030-01-01")
    assert r.code == 0, r.err
    assert "no records in range" in r.out
    assert "total" in r.out


def test_report_on_a_jsonl_store(cli, tmp_path):
    url = f"jsonl:///{tmp_path / 'usage.jsonl'}"
    store = create_storage(url)
    store.save_many(usage_records())
    store.close()
    r = cli("report", "--storage", url, "--format", "json", "--group-by", "day")
    assert r.code == 0, r.err
    assert Decimal(json.loads(r.out)["total"]["cost"]) == totals(usage_records())["cost"]


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_export_then_import_gives_the_same_totals(cli, store_url, tmp_path, fmt):
    out = tmp_path / f"usage.{fmt}"
    r = cli("export", "--storage", store_url, "--format", fmt, "--out", out)
    assert r.code == 0, r.err
    assert "exported 31 records" in r.err
    back = list(read_export(out))
    original = {rec.id: rec for rec in usage_records()}
    assert {rec.id: rec for rec in back} == original  # every field, exactly

    target = f"sqlite:///{tmp_path / 'reimported.db'}"
    r = cli("import", out, "--storage", target)
    assert r.code == 0, r.err
    assert r.out.strip() == "imported 31 of 31 records (0 already stored)"
    # importing again stores nothing twice
    r = cli("import", out, "--storage", target)
    assert r.out.strip() == "imported 0 of 31 records (31 already stored)"
    a, b = create_storage(store_url), create_storage(target)
    try:
        # every record back as it was, except the one stored without a cost: the import
        # prices it as the collector prices a posted record (from the price table here)
        book = PriceBook(b)
        assert {r.id: r for r in b.iter_records()} == {r.id: book.price(r) for r in a.iter_records()}
        assert [r.cost for r in a.query() if r.id == "rec-1-7"] == [None]
        assert [r.cost for r in b.query() if r.id == "rec-1-7"] == [book.cost(
            next(r for r in usage_records() if r.id == "rec-1-7"))[0]]
        for group_by in (("tag:team",),):  # the priced record has no tag: same groups
            assert [g for g in a.aggregate(group_by) if g["tag:team"] == "search"] == \
                [g for g in b.aggregate(group_by) if g["tag:team"] == "search"]
    finally:
        a.close()
        b.close()


def test_import_prices_like_a_post(cli, tmp_path):
    """An imported record without a cost is stored exactly as the collector stores the
    same record posted to /track: priced from the storage's override, or from the price
    table, through the one Collector.ingest."""
    from fastapi.testclient import TestClient

    from usageledger.export import write_records
    from usageledger.pricebook import entry_json, parse_price
    from usageledger.records import encode, make_usage_record
    from usageledger.server import create_app

    at = datetime(2026, 3, 1, 12, tzinfo=UTC)
    recs = [
        make_usage_record("acme", "house-model", 1_000_000, 500_000, timestamp=at, id="r-override"),
        make_usage_record("openai", "gpt-4o", 1234, 567, timestamp=at, id="r-table"),
        make_usage_record("openai", "gpt-4o", 10, 5, cost="0.5", timestamp=at, id="r-own-cost"),
        make_usage_record("nobody", "unknown-model", 10, 5, timestamp=at, id="r-unknown"),
    ]
    out = tmp_path / "in.jsonl"
    with out.open("w") as f:
        write_records(recs, f, "jsonl")

    def new_store(name):
        store = create_storage(f"sqlite:///{tmp_path / name}")
        day, entry = parse_price({"input_per_mtok": "1.25", "output_per_mtok": "3", "currency": "EUR"})
        store.put_price("acme", "house-model", day, entry_json(entry))
        return store

    imported, posted = new_store("imported.db"), new_store("posted.db")
    imported.close()
    r = cli("import", out, "--storage", f"sqlite:///{tmp_path / 'imported.db'}")
    assert r.code == 0, r.err
    with TestClient(create_app(posted), client=("127.0.0.1", 40000)) as c:
        body = b'{"tracked":[' + b",".join(encode(x) for x in recs) + b"]}"
        resp = c.post("/api/v1/track", content=body, headers={"Content-Type": "application/json"})
        assert resp.json()["accepted"] == 4, resp.text
    imported = create_storage(f"sqlite:///{tmp_path / 'imported.db'}")
    try:
        got = {x.id: x for x in imported.iter_records()}
        assert got == {x.id: x for x in posted.iter_records()}
        assert (got["r-override"].cost, got["r-override"].currency) == (Decimal("1.25") + Decimal("1.5"), "EUR")
        assert got["r-table"].cost is not None and got["r-table"].currency == "USD"
        assert got["r-own-cost"].cost == Decimal("0.5")
        assert got["r-unknown"].cost is None
        assert imported.aggregate(("currency",)) == posted.aggregate(("currency",))
    finally:
        imported.close()
        posted.close()


def test_export_csv_columns_and_range(cli, store_url, tmp_path):
    out = tmp_path / "day3.csv"
    r = cli("export", "--storage", store_url, "--format", "csv", "--out", out, "--since", "2026-03-03")
    assert r.code == 0, r.err
    rows = list(csv.DictReader(out.open(newline="")))
    assert tuple(rows[0]) == CSV_FIELDS
    assert len(rows) == 11
    assert all(row["timestamp"].startswith("2026-03-03") for row in rows)
    # newest first, as the storage answers
    assert rows[0]["timestamp"] > rows[-1]["timestamp"]
    assert {row["tags"] for row in rows} == {'{"team":"search"}', ""}


def test_export_to_stdout(cli, store_url):
    r = cli("export", "--storage", store_url, "--format", "jsonl", "--out", "-", "--until", "2026-03-02")
    assert r.code == 0, r.err
    lines = r.out.splitlines()
    assert len(lines) == 10
    assert {json.loads(line)["timestamp"][:10] for line in lines} == {"2026-03-01"}


def test_failed_export_leaves_no_file(cli, store_url, tmp_path):
    target = tmp_path / "no-such-dir" / "out.csv"
    r = cli("export", "--storage", store_url, "--format", "csv", "--out", target)
    assert r.code == 1
    assert r.err == f"error: cannot write {target}: no directory {target.parent}\n"
    assert not target.parent.exists()


def _narrow_store(tmp_path):
    from datetime import UTC, datetime

    from usageledger.records import make_usage_record

    store = create_storage(f"sqlite:///{tmp_path / 'narrow.db'}")
    recs = []
    for i, cost in enumerate(("123456789.12", "0.000123", "98765.43", "7")):
        recs.append(make_usage_record(
            "openai", "a-very-long-fine-tuned-model-name-for-the-acme-corporation-v" + str(i),
            input_tokens=123_456_789 + i, output_tokens=98_765_432, cache_read_tokens=11_111_111,
            cache_write_tokens=2_222_222, reasoning_tokens=3_333_333, cost=Decimal(cost),
            user_id=f"user-with-a-long-identifier-{i}",
            timestamp=datetime(2026, 3, 1 + i, tzinfo=UTC)))
    store.save_many(recs)
    store.close()
    return f"sqlite:///{tmp_path / 'narrow.db'}"


@pytest.mark.parametrize("columns", [80, 60])
def test_report_in_a_narrow_terminal_never_cuts_figures(cli, tmp_path, monkeypatch, columns):
    url = _narrow_store(tmp_path)
    monkeypatch.setenv("COLUMNS", str(columns))
    r = cli("report", "--storage", url, "--group-by", "day,provider,model,user_id")
    assert r.code == 0, r.err
    lines = r.out.splitlines()
    assert all(len(line) <= columns for line in lines), max(lines, key=len)
    table = r.out.split("cost per day")[0]
    assert "…" not in table
    # every cost, whole, as the wide table prints it
    for cost in ("$123,456,789.12", "$0.000123", "$98,765.43", "$7.00", "$123,555,561.55"):
        assert cost in table, cost
    assert "left out to fit" in r.out  # says which columns it gave up


def test_report_wide_terminal_keeps_every_column(cli, tmp_path, monkeypatch):
    url = _narrow_store(tmp_path)
    monkeypatch.setenv("COLUMNS", "250")
    r = cli("report", "--storage", url, "--group-by", "day,model")
    assert r.code == 0, r.err
    assert "left out" not in r.out
    for header in ("calls", "input", "output", "cache read", "cache write", "reasoning", "cost"):
        assert header in r.out
    assert "123,456,789" in r.out


def test_report_keeps_currencies_apart(cli, tmp_path):
    """1 USD + 2 EUR is never 3: rows per currency, the total per currency, one chart per
    currency; JSON has ``costs`` and a null single-number ``cost``."""
    from datetime import UTC, datetime

    from usageledger.records import make_usage_record

    url = f"sqlite:///{tmp_path / 'mixed.db'}"
    store = create_storage(url)
    at = datetime(2026, 3, 1, 12, tzinfo=UTC)
    store.save_many([
        make_usage_record("openai", "gpt-4o", 10, 5, cost="1", currency="USD", timestamp=at),
        make_usage_record("mistral", "large", 20, 5, cost="2", currency="EUR", timestamp=at,
                          cache_read_tokens=7),
    ])
    store.close()
    r = cli("report", "--storage", url, "--group-by", "day")
    assert r.code == 0, r.err
    total = next(line for line in r.out.splitlines() if "total" in line and "│" in line)
    assert "2.00 EUR · $1.00" in total and "3.00" not in total
    assert "cost per day (EUR)" in r.out and "cost per day (USD)" in r.out
    doc = json.loads(cli("report", "--storage", url, "--format", "json", "--group-by", "day").out)
    assert [(row["currency"], row["cost"]) for row in doc["rows"]] == [("EUR", "2"), ("USD", "1")]
    assert doc["total"]["costs"] == {"EUR": "2", "USD": "1"}
    assert doc["total"]["cost"] is None and doc["total"]["currency"] is None
    assert doc["total"]["total_tokens"] == 10 + 5 + 20 + 7 + 5
    rows = list(csv.DictReader(io.StringIO(cli("report", "--storage", url, "--format", "csv").out)))
    assert {(row["currency"], row["cost"]) for row in rows} == {("EUR", "2"), ("USD", "1")}
