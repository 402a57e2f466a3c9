"""JSON Lines storage: one record per line, append-only, easy to inspect and parse.

Every batch is appended with one write and one ``fsync``. At open the whole file is read
into memory (the ids make dedup hold across restarts); a corrupt or torn line is skipped,
counted in ``corrupt_lines`` and logged, never fatal. Agent runs are appended as whole
snapshots (``{"kind": "run", "run": {...}}``); on reading, the highest ``seq`` wins.
Prices and aliases (the collector's overrides) are appended as changes
(``{"kind": "price", "op": "put"|"delete", ...}``, ``{"kind": "alias", ...}``) and replayed
in order at open, so they persist with the file.

One process writes a given file (an exclusive ``flock`` per append keeps lines whole if
another process appends anyway, but this process will not see that process's records).
"""

from __future__ import annotations

import fcntl
import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import msgspec

from ..core._files import write_all
from ..schema.records import UsageRecord, decode_usage, encode
from ._prices import MemoryPrices
from .base import RunWrite, unique_records
from .memory import MemoryStorage
from .runs import apply_run_write, run_fields

__all__ = ["JsonlStorage"]

log = logging.getLogger("usageledger.storage.jsonl")

_RUN_PREFIX = b'{"kind":"run",'
_PRICE_PREFIXES = (b'{"kind":"price",', b'{"kind":"alias",')


class _RunLine(msgspec.Struct):
    kind: str
    run: dict[str, Any]


_run_decoder = msgspec.json.Decoder(_RunLine)


class JsonlStorage(MemoryStorage):
    """``JsonlStorage(path)``: the in-memory engine of MemoryStorage, persisted as lines."""

    #: an append-only file: retention would come back at the next open, and keys (kept in
    #: memory by the engine) would be gone
    supports_retention = False
    supports_keys = False

    #: budgets would live only in memory here, not in the file: not offered
    supports_budgets = False

    def __init__(self, path: str | os.PathLike[str] | None = None):
        super().__init__()
        if path is None:
            from ..core.pipeline import default_journal_path

            path = default_journal_path("usage.jsonl")
        self.path = Path(os.fspath(path)).expanduser()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.corrupt_lines = 0
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
        self._load()

    def _load(self) -> None:
        with open(self.path, "rb") as fh:
            data = fh.read()
        self._needs_newline = bool(data) and not data.endswith(b"\n")
        records: list[UsageRecord] = []
        for lineno, line in enumerate(data.split(b"\n"), 1):
            if not line.strip():
                continue
            try:
                if line.startswith(_PRICE_PREFIXES):
                    self._replay_price(msgspec.json.decode(line))
                elif line.startswith(_RUN_PREFIX):
                    run = _run_decoder.decode(line).run
                    stored = self._runs.get(run["run_id"])
                    if stored is None or run["seq"] > stored["seq"]:
                        self._runs[run["run_id"]] = run
                else:
                    records.append(decode_usage(line))
            except (msgspec.DecodeError, msgspec.ValidationError, KeyError, TypeError) as exc:
                self.corrupt_lines += 1
                log.warning("%s:%d: skipped a corrupt line (%s): %.80r", self.path, lineno, exc, line)
        self._add(records)
        if self.corrupt_lines:
            log.warning("%s: %d corrupt line(s) skipped", self.path, self.corrupt_lines)

    def _append(self, lines: list[bytes]) -> None:
        if not lines:
            return
        if self._needs_newline:
            lines.insert(0, b"")  # finish a torn last line so the next record starts clean
        data = b"\n".join(lines) + b"\n"
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            write_all(self._fd, data)
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        self._needs_newline = False

    def save_many(self, records: Iterable[UsageRecord]) -> set[str]:
        with self._lock:
            batch = {i: r for i, r in unique_records(records).items() if i not in self._by_id}
            # on disk first: what memory holds is always in the file
            self._append([encode(r) for r in batch.values()])
            self._add(batch.values())
            return set(batch)

    def write_runs(self, writes: Sequence[RunWrite]) -> list[str]:
        with self._lock:
            results: list[str] = []
            pending: dict[str, dict[str, Any]] = {}
            for w in writes:
                run_fields(w)
                stored = pending.get(w.run_id) or self._runs.get(w.run_id)
                outcome, new = apply_run_write(stored, w)
                results.append(outcome)
                if new is not None:
                    pending[w.run_id] = new
            self._append([encode({"kind": "run", "run": run}) for run in pending.values()])
            self._runs.update(pending)
            return results

    def clear(self) -> None:
        with self._lock:
            os.ftruncate(self._fd, 0)
            os.fsync(self._fd)
            self._needs_newline = False
            super().clear()
            # clear() drops usage and runs; prices are configuration and stay
            self._append([*(_price_line("put", e["provider"], e["model"], e["effective_from"] or "",
                                        {k: v for k, v in e.items()
                                         if k not in ("provider", "model", "effective_from")})
                            for e in self.list_prices()),
                          *(_alias_line("put", a["provider"], a["name"], a["model"])
                            for a in self.list_aliases())])

    # -- prices: the memory engine's, each change appended first ----------------------------
    def _replay_price(self, change: dict[str, Any]) -> None:
        put = change["op"] == "put"
        if change["kind"] == "price":
            key = (change["provider"], change["model"], change["effective_from"])
            if put:
                MemoryPrices.put_price(self, *key, change["entry"])
            else:
                MemoryPrices.delete_price(self, *key)
        elif put:
            MemoryPrices.put_alias(self, change["provider"], change["name"], change["model"])
        else:
            MemoryPrices.delete_alias(self, change["provider"], change["name"])

    def put_price(self, provider: str, model: str, effective_from: str, entry: dict[str, Any]) -> None:
        with self._lock:
            self._append([_price_line("put", provider, model, effective_from, entry)])
            super().put_price(provider, model, effective_from, entry)

    def delete_price(self, provider: str, model: str, effective_from: str) -> bool:
        with self._lock:
            if not any(e["provider"] == provider and e["model"] == model
                       and (e["effective_from"] or "") == effective_from for e in self.list_prices()):
                return False
            self._append([_price_line("delete", provider, model, effective_from, None)])
            return super().delete_price(provider, model, effective_from)

    def put_alias(self, provider: str, name: str, model: str) -> None:
        with self._lock:
            self._append([_alias_line("put", provider, name, model)])
            super().put_alias(provider, name, model)

    def delete_alias(self, provider: str, name: str) -> bool:
        with self._lock:
            if not any(a["provider"] == provider and a["name"] == name for a in self.list_aliases()):
                return False
            self._append([_alias_line("delete", provider, name, None)])
            return super().delete_alias(provider, name)

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1


def _price_line(op: str, provider: str, model: str, effective_from: str, entry: Any) -> bytes:
    return encode({"kind": "price", "op": op, "provider": provider, "model": model,
                   "effective_from": effective_from, "entry": entry})


def _alias_line(op: str, provider: str, name: str, model: str | None) -> bytes:
    return encode({"kind": "alias", "op": op, "provider": provider, "name": name, "model": model})
