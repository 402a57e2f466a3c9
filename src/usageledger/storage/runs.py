"""Run merging for the backends that keep agent runs (the
:class:`~usageledger.storage.base.RunStore` contract): a write's fields checked and made
JSON, the ``seq`` rule (a write applies only when its ``seq`` is newer than the stored one),
and ``query_runs`` pages for the backends that filter in Python."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import msgspec

from ..schema.records import CREATED, DUPLICATE, MISSING, STALE, UPDATED, encode

__all__ = ["RunWrite", "run_fields", "apply_run_write", "page_runs", "run_sort_key"]

_json_encode = encode  # the package's one encoder (exact decimals as strings)
_json_decode = msgspec.json.decode


@dataclass(frozen=True, slots=True)
class RunWrite:
    """One write of an agent run. ``fields`` is a JSON object of RunRecord
    fields; ``seq`` orders the writes of one run: a write whose ``seq`` is not greater
    than the stored one never replaces newer state (replays and reordering are harmless).

    ``create=True`` (POST): create the run if missing, else apply like an update — so an
    update replayed as an insert is still applied when it is newer.
    ``create=False`` (PATCH): partial update of an existing run; ``missing`` if unknown.
    """

    run_id: str
    fields: dict[str, Any]
    seq: int = 0
    create: bool = True



def run_fields(write: RunWrite) -> dict[str, Any]:
    """A write's fields without the bookkeeping keys the store owns."""
    if not isinstance(write.fields, dict):
        raise TypeError(f"RunWrite.fields must be a dict, got {write.fields!r}")
    if isinstance(write.seq, bool) or not isinstance(write.seq, int):
        raise TypeError(f"RunWrite.seq must be an integer, got {write.seq!r}")
    if not isinstance(write.run_id, str) or not write.run_id:
        raise ValueError(f"RunWrite.run_id must be a non-empty string, got {write.run_id!r}")
    fields = {k: v for k, v in write.fields.items() if k not in ("run_id", "seq")}
    # one JSON round trip: every backend then stores and returns the same values
    # (datetimes as ISO strings, Decimals as strings), whatever the caller passed
    try:
        return _json_decode(_json_encode(fields))
    except (TypeError, msgspec.EncodeError) as exc:
        raise TypeError(f"RunWrite.fields of run {write.run_id!r} is not JSON: {exc}") from None


def apply_run_write(stored: dict[str, Any] | None, write: RunWrite) -> tuple[str, dict[str, Any] | None]:
    """The outcome of ``write`` on ``stored`` (a run as ``get_run`` returns it), and the new
    stored run, or None when nothing changes."""
    fields = run_fields(write)
    if stored is None:
        if not write.create:
            return MISSING, None
        return CREATED, {**fields, "run_id": write.run_id, "seq": write.seq}
    if write.seq <= stored["seq"]:
        return (DUPLICATE if write.create else STALE), None
    return UPDATED, {**stored, **fields, "run_id": write.run_id, "seq": write.seq}


def page_runs(
    runs: Iterable[dict[str, Any]],
    agent_name: str | None,
    status: str | None,
    limit: int | None,
    offset: int,
) -> list[dict[str, Any]]:
    """``query_runs`` for the backends that filter in Python: the runs matching
    ``agent_name`` and ``status``, newest ``start_time`` first, one page."""
    selected = [
        r for r in runs
        if (agent_name is None or r.get("agent_name") == agent_name)
        and (status is None or r.get("status") == status)
    ]
    selected.sort(key=run_sort_key, reverse=True)
    return selected[offset:None if limit is None else offset + limit]


def run_sort_key(run: dict[str, Any]) -> tuple[bool, str, str]:
    """Sorted with ``reverse=True``: newest ``start_time`` first (ISO strings order as
    times), runs without it last, ties by ``run_id`` descending."""
    started = run.get("start_time")
    return (started is not None, "" if started is None else str(started), run["run_id"])
