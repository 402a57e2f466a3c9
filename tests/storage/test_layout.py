"""The storage contract and its helper modules: base.py holds the contracts, the helpers
live in filters.py, aggregate.py and runs.py, and every name base.py ever exported still
imports from it (the same object as in its new home)."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from usageledger.server.app import create_app
from usageledger.storage import RunStore, StorageBackend, aggregate, base, filters, runs
from usageledger.storage.memory import MemoryStorage

#: every module-level name of storage/base.py before the helpers moved out of it
OLD_BASE_NAMES = """Aggregate Aggregator DIMENSIONS DailyPlan EQUALITY_KEYS FILTER_KEYS Filters
GROUP_KEYS NANO ROLLUP_KEYS RUN_RESULTS RunWrite StorageBackend TOTAL_KEYS _EPOCH _MAX_NANO
_US_PER_DAY _US_PER_HOUR _day_name _hour_name _json_decode _json_encode _sort_key add_record
add_totals apply_run_write check_group_by check_page cost_nano daily_plan day_key finish_groups
from_us group_value hour_key make_filters merge_groups nano_to_decimal page_runs record_matches
rollup_fits run_fields run_sort_key ts_us unique_records with_none_group zero_totals""".split()


@pytest.mark.parametrize("name", OLD_BASE_NAMES)
def test_every_old_base_name_still_imports_from_base(name):
    value = getattr(base, name)
    homes = [m for m in (filters, aggregate, runs) if name in vars(m)]
    # a moved helper is the very object of its new module, not a copy
    assert all(getattr(m, name) is value for m in homes)


def test_base_holds_the_contracts_and_no_helper_definitions():
    defined_here = {n for n, v in vars(base).items()
                    if getattr(v, "__module__", None) == base.__name__}
    assert defined_here == {"StorageBackend", "RunStore", "unique_records"}
    # a run write is defined with the rules that merge it (runs.py imports nothing of base)
    assert base.RunWrite is runs.RunWrite


def test_every_builtin_backend_opts_into_runs():
    from usageledger.storage.clickhouse import ClickHouseStorage
    from usageledger.storage.jsonl import JsonlStorage
    from usageledger.storage.postgres import PostgresStorage
    from usageledger.storage.redis import RedisStorage
    from usageledger.storage.sqlite import SQLiteStorage

    for cls in (MemoryStorage, JsonlStorage, SQLiteStorage, PostgresStorage, RedisStorage,
                ClickHouseStorage):
        assert issubclass(cls, RunStore) and issubclass(cls, StorageBackend)
        assert cls.supports_runs is True


class UsageOnly(StorageBackend):
    """A third-party backend that keeps usage records and does not opt into runs."""

    def __init__(self) -> None:
        self.inner = MemoryStorage()

    def save_many(self, records: Any) -> set[str]:
        return self.inner.save_many(records)

    def _query(self, f, limit, offset):
        return self.inner._query(f, limit, offset)

    def _aggregate(self, keys, f):
        return self.inner._aggregate(keys, f)


def test_a_backend_without_runs_says_so_by_name():
    store = UsageOnly()
    assert store.supports_runs is False
    for call in (lambda: store.write_runs([]), lambda: store.get_run("r"),
                 lambda: store.query_runs()):
        with pytest.raises(NotImplementedError, match="UsageOnly does not store agent runs"):
            call()
    with pytest.raises(ValueError, match="limit"):  # a bad page is still the caller's error
        store.query_runs(limit=-1)


def test_the_collector_answers_501_for_runs_on_a_usage_only_backend():
    with TestClient(create_app(UsageOnly()), client=("127.0.0.1", 5000)) as c:
        r = c.get("/api/v1/runs/r1")
        assert r.status_code == 501 and "does not store agent runs" in r.json()["detail"]
        assert c.get("/api/v1/runs").status_code == 501


def test_opting_into_runs_without_implementing_them_fails_at_construction():
    class HalfDone(RunStore, UsageOnly):
        def get_run(self, run_id: str) -> dict[str, Any] | None:
            return None

    with pytest.raises(TypeError, match="_query_runs.*write_runs|write_runs.*_query_runs"):
        HalfDone()
