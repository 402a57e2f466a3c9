"""TelemetryClient: agent runs and their events, recorded without slowing the
agent and delivered to every destination through the core pipeline.

The caller's thread only validates, builds the run's record and appends it to one
in-memory buffer per destination (a few microseconds); each destination is its own
:class:`~usageledger.pipeline.Pipeline` with its own journal file, writer and dispatcher
thread, so each retries on its own and a collector that is down never delays the
local files:

=========== ================================== ===================================
destination sink                               receives
=========== ================================== ===================================
ndjson      NdjsonSink (daily NDJSON files)    run writes and events
sqlite      SqliteRunSink (``agent_runs``)     run writes
collector   core HttpSink (``/runs/batch``)    run writes (if ``api_enabled``)
sheets      SheetsSink (Sheets ``:append``)    finished runs (if ``sheets_enabled``)
=========== ================================== ===================================

Every write of a run carries the full state and the run's increasing ``seq``; every
destination keeps the newest ``seq``, so replays, duplicates and reordering are harmless.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec

from ..core import _hooks
from ..core.journal import journal_stream
from ..core.pipeline import Pipeline
from ..core.sink import Sink
from ..schema.records import KIND_RUN, encode_json_object, new_id
from ..schema.runs import (
    _MS,
    RUN_STATUSES,
    SCHEMA_VERSION,
    RunRecord,
    RunWrite,
    _EventWire,
    _run_id,
    check_run_fields,
    check_status,
)
from ..sinks.http import HttpSink
from .config import ConfigError, TelemetryConfig
from .ndjson import KIND_EVENT, NdjsonSink, NDJSONWriter
from .sqlite_writer import DatabaseWriter, SqliteRunSink

#: destinations that write files on this host (never journaled on a shared stream)
_LOCAL_SINKS = frozenset({"ndjson", "sqlite"})

log = logging.getLogger("usageledger.telemetry")

__all__ = ["TelemetryClient", "RunContext"]

#: the longest error_summary / error_details kept from an exception
_SUMMARY_CHARS = 1000
_DETAILS_CHARS = 8000

_now = datetime.now


class RunContext:
    """What ``track_run`` yields: the run's id and the calls that act on it."""

    __slots__ = ("client", "run_id")

    def __init__(self, client: TelemetryClient, run_id: str):
        self.client = client
        self.run_id = run_id

    def log_event(self, event_type: str, payload: dict[str, Any] | None = None) -> None:
        self.client.log_event(self.run_id, event_type, payload)

    def set_metrics(self, **fields: Any) -> None:
        """Set run fields (items_discovered/succeeded/failed, input/output_summary,
        metrics_json, insight_id, product, platform, product_family, subdomain,
        git_repo, git_branch, git_run_tag, ...); written when the run ends."""
        self.client.set_metrics(self.run_id, **fields)

    @property
    def record(self) -> RunRecord:
        """A copy of the run's current state."""
        return self.client.get_active_run(self.run_id)


class TelemetryClient:
    """``TelemetryClient(config=None, **settings)``: ``config`` defaults to
    :meth:`TelemetryConfig.from_env`; keyword settings override it."""

    def __init__(self, config: TelemetryConfig | None = None, **settings: Any):
        if config is None:
            config = TelemetryConfig.from_env(**settings)
        elif not isinstance(config, TelemetryConfig):
            raise TypeError(f"config must be a TelemetryConfig, got {config!r}")
        elif settings:
            config = config.replace(**settings)
        config.validate()
        self.config = config
        self._owner = config.agent_owner
        self._host = config.host
        self._lock = threading.Lock()
        self._active: dict[str, tuple[RunWrite, datetime]] = {}
        self.started = 0
        self.ended: dict[str, int] = dict.fromkeys(RUN_STATUSES[1:], 0)

        try:
            self.ndjson = NDJSONWriter(config.ndjson_dir)  # type: ignore[arg-type]
            self.database = DatabaseWriter(config.database_path)  # type: ignore[arg-type]
        except (OSError, sqlite3.Error) as exc:
            raise ConfigError(
                f"telemetry files ({config.ndjson_dir}, {config.database_path}) cannot be used: {exc}"
            ) from None
        sinks: dict[str, Sink] = {"ndjson": NdjsonSink(self.ndjson), "sqlite": SqliteRunSink(self.database)}
        if config.api_enabled:
            sinks["collector"] = HttpSink(config.api_base, config.api_url, api_key=config.api_key,
                                          timeout=config.timeout)
        if config.sheets_enabled:
            from .sheets import SheetsSink

            sinks["sheets"] = SheetsSink(
                config.sheets_spreadsheet_id,  # type: ignore[arg-type]
                config.sheets_range,
                api_url=config.sheets_api_url,
                token=config.sheets_token,
                credentials=config.sheets_credentials_file,
                timeout=config.timeout,
                allow_insecure_local=config.sheets_allow_insecure_local,
            )
        self.pipelines: dict[str, Pipeline] = {}
        for name, sink in sinks.items():
            self.pipelines[name] = self._pipeline(name, sink)
        submits = {name: p.submit for name, p in self.pipelines.items()}
        #: where each kind of write goes (the hot path loops over these tuples)
        self._run_targets = tuple(s for n, s in submits.items() if n != "sheets")
        self._end_targets = tuple(submits.values())
        self._event_target = submits["ndjson"]
        _hooks.reset_in_child(self)

    def _after_fork_child(self) -> None:
        # the child continues the parent's active runs; a lock held at fork() is never released
        self._lock = threading.Lock()

    def _pipeline(self, name: str, sink: Sink) -> Pipeline:
        c = self.config
        journal = None
        if c.durability != "memory":
            Path(c.journal_dir).mkdir(parents=True, exist_ok=True)  # type: ignore[arg-type]
            journal = Path(c.journal_dir) / f"{name}.journal"  # type: ignore[arg-type]
        # a stream is drained by whichever host holds its lease: only destinations every
        # host shares (the collector, Sheets) may use one; local files keep local journals
        url = None if c.journal_url is None or name in _LOCAL_SINKS else journal_stream(c.journal_url, name)
        return Pipeline(sink, c.settings(journal_path=journal, journal_url=url),
                        name=f"usageledger-telemetry-{name}")

    # -- runs (the caller's thread: no I/O) -----------------------------------------------------
    def start_run(self, agent_name: str, job_type: str, trigger_type: str = "cli", **fields: Any) -> str:
        """Start a run; returns its id. ``fields``: any settable RunRecord field, and
        ``run_id`` to choose the id."""
        if type(agent_name) is not str or not agent_name:
            raise ValueError(f"agent_name must be a non-empty string, got {agent_name!r}")
        if type(job_type) is not str or not job_type:
            raise ValueError(f"job_type must be a non-empty string, got {job_type!r}")
        if type(trigger_type) is not str or not trigger_type:
            raise ValueError(f"trigger_type must be a non-empty string, got {trigger_type!r}")
        run_id = None
        if fields:
            run_id = fields.pop("run_id", None)
            if run_id is not None and (type(run_id) is not str or not 0 < len(run_id) <= 255):
                raise ValueError(f"run_id must be a string of 1 to 255 characters, got {run_id!r}")
            check_run_fields(fields)
        now = _now(UTC)
        ts = now.isoformat()
        if run_id is None:
            run_id = _run_id(agent_name, ts)
        live = RunWrite(
            run_id, agent_name, job_type, trigger_type, ts, SCHEMA_VERSION, self._owner, None,
            "running", 0, 0, 0, None, None, None, None, None, None, None, None, None, None,
            None, None, None, None, self._host, ts, ts, id=new_id(), seq=1,
        )
        if fields:
            for k, v in fields.items():
                setattr(live, k, v)
        # destinations get a copy: `live` keeps changing until the run ends
        snap = live.__copy__()
        with self._lock:
            if run_id in self._active:
                raise ValueError(f"run_id {run_id!r} is already an active run")
            self._active[run_id] = (live, now)
            self.started += 1
        for submit in self._run_targets:
            submit(snap.id, KIND_RUN, snap)
        return run_id

    def end_run(self, run_id: str, status: str = "success", **fields: Any) -> None:
        """End a run: ``end_time``, ``duration_ms`` and ``status``, plus any settable
        fields (final metrics), written to every destination."""
        if status not in RUN_STATUSES or status == "running":
            if status == "running":
                raise ValueError("status of an ended run cannot be 'running'")
            check_status(status)
        if fields:
            check_run_fields(fields)
        with self._lock:
            entry = self._active.pop(run_id, None)
            if entry is not None:
                self.ended[status] += 1
        if entry is None:
            raise self._unknown(run_id)
        live, started = entry
        now = _now(UTC)
        ts = now.isoformat()
        live.end_time = ts
        live.updated_at = ts
        live.status = status
        live.duration_ms = (now - started) // _MS
        live.seq += 1
        live.id = new_id()
        if fields:
            for k, v in fields.items():
                setattr(live, k, v)
        # the run left _active: nobody changes `live` any more, no copy needed
        for submit in self._end_targets:
            submit(live.id, KIND_RUN, live)

    def update_run(self, run_id: str, **fields: Any) -> None:
        """Set fields of an active run and write its state now (a progress checkpoint)."""
        if fields:
            check_run_fields(fields)
        with self._lock:
            entry = self._active.get(run_id)
            if entry is None:
                raise self._unknown(run_id)
            live = entry[0]
            for k, v in fields.items():
                setattr(live, k, v)
            live.updated_at = _now(UTC).isoformat()
            live.seq += 1
            live.id = new_id()
            snap = live.__copy__()
        for submit in self._run_targets:
            submit(snap.id, KIND_RUN, snap)

    def set_metrics(self, run_id: str, **fields: Any) -> None:
        """Set fields of an active run; they are written when it ends (or at
        :meth:`update_run`)."""
        check_run_fields(fields)
        with self._lock:
            entry = self._active.get(run_id)
            if entry is None:
                raise self._unknown(run_id)
            for k, v in fields.items():
                setattr(entry[0], k, v)

    def log_event(self, run_id: str, event_type: str, payload: dict[str, Any] | None = None) -> None:
        """Record an event of an active run (NDJSON only). ``payload`` is a JSON object."""
        if type(event_type) is not str or not event_type:
            raise ValueError(f"event_type must be a non-empty string, got {event_type!r}")
        if run_id not in self._active:
            raise self._unknown(run_id)
        raw = None if payload is None else msgspec.Raw(encode_json_object("payload", payload))
        eid = new_id()
        self._event_target(eid, KIND_EVENT, _EventWire(run_id, event_type, _now(UTC).isoformat(), raw, eid))

    @contextmanager
    def track_run(
        self, agent_name: str, job_type: str, trigger_type: str = "cli", **fields: Any
    ) -> Iterator[RunContext]:
        """Start a run, yield its :class:`RunContext`, end it ``success``; on an exception
        end it ``failed`` with ``error_summary``/``error_details`` and re-raise. A run
        the block ended itself (``client.end_run(ctx.run_id, ...)``) is left as it is."""
        run_id = self.start_run(agent_name, job_type, trigger_type, **fields)
        ctx = RunContext(self, run_id)
        try:
            yield ctx
        except BaseException as exc:
            if run_id in self._active:
                self._end_failed(run_id, exc)
            raise
        if run_id in self._active:
            self.end_run(run_id)

    def _end_failed(self, run_id: str, exc: BaseException) -> None:
        summary = f"{type(exc).__name__}: {exc}"
        details = "".join(traceback.format_exception(exc))
        try:
            self.end_run(run_id, "failed", error_summary=summary[:_SUMMARY_CHARS],
                         error_details=details[-_DETAILS_CHARS:])
        except Exception:  # never hide the caller's exception behind ours
            log.exception("recording the failure of run %s failed", run_id)

    @staticmethod
    def _unknown(run_id: Any) -> Exception:
        if type(run_id) is not str:
            return TypeError(f"run_id must be a string, got {run_id!r}")
        return ValueError(f"run_id {run_id!r} is not an active run of this client "
                          "(never started here, or already ended)")

    def get_active_run(self, run_id: str) -> RunRecord:
        """A copy of an active run's current state."""
        with self._lock:
            entry = self._active.get(run_id)
            if entry is None:
                raise self._unknown(run_id)
            return RunRecord(*(getattr(entry[0], f) for f in RunRecord.__struct_fields__))

    @property
    def active_runs(self) -> list[str]:
        with self._lock:
            return list(self._active)

    # -- delivery and stats ---------------------------------------------------------------------
    def flush(self, timeout: float | None = 30.0) -> bool:
        """Write and deliver everything submitted so far to every destination (local
        ones first). True when all settled before ``timeout``."""
        deadline = None if timeout is None else time.monotonic() + timeout
        done = True
        for pipeline in self.pipelines.values():
            left = None if deadline is None else max(deadline - time.monotonic(), 0.0)
            done = pipeline.flush(left) and done
        return done

    def get_stats(self) -> dict[str, Any]:
        """``total_runs`` and ``by_status`` as stored in the SQLite table,
        ``pending_api_posts`` (collector writes not yet delivered), this client's
        ``active_runs``/``runs_started``/``runs_ended``, and per destination ``pending``
        (queued + in flight), ``dead`` and the full pipeline ``destinations`` stats."""
        try:
            db = self.database.get_run_stats()
        except Exception as exc:  # stats must not raise into the caller
            db = {"total": None, "by_status": {}, "error": str(exc)}
        pending: dict[str, int] = {}
        dead: dict[str, int] = {}
        destinations: dict[str, Any] = {}
        for name, pipeline in self.pipelines.items():
            s = pipeline.stats()
            destinations[name] = s
            pending[name] = (s.get("queued") or 0) + (s.get("inflight") or 0)
            dead[name] = s.get("dead") or 0
        with self._lock:
            active = len(self._active)
            ended = {k: v for k, v in self.ended.items() if v}
            started = self.started
        return {
            "total_runs": db["total"],
            "by_status": db["by_status"],
            "pending_api_posts": pending.get("collector", 0),
            "active_runs": active,
            "runs_started": started,
            "runs_ended": ended,
            "pending": pending,
            "dead": dead,
            "destinations": destinations,
        }

    def close(self, timeout: float | None = None) -> bool:
        """Deliver until ``timeout`` (default ``exit_timeout`` per destination), then stop;
        what is not delivered stays in the journals. Runs still active stay ``running``."""
        if self._active:
            log.warning("closing with %d runs still active: they stay 'running'", len(self._active))
        done = True
        for pipeline in self.pipelines.values():
            done = pipeline.stop(self.config.exit_timeout if timeout is None else timeout) and done
        self.database.close()
        return done

    def __enter__(self) -> TelemetryClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
