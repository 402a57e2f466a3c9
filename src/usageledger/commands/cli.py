"""The `usageledger` command line (typer). `queue-monitor DB` is an alias of `monitor`.

Every failure the user can cause (a missing file, a file that is not a journal, a locked
database, a bad argument, an unknown storage URL) ends as one line on stderr and a
non-zero exit; ``--debug`` (anywhere on the command line) shows the traceback instead.
"""

from __future__ import annotations

import contextlib
import json
import re
import signal
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from ._console import _err, _out, _storage
from .cli_keys import keys_app
from .cli_prices import prices_app, reprice
from .cli_retention import retention_app

if TYPE_CHECKING:

    from ..facades.delivery import PersistentQueueManager

app = typer.Typer(add_completion=False, no_args_is_help=True, help="usageledger: LLM usage, delivered exactly once in effect.")


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="show the traceback of an error (may go anywhere on the line)"),
) -> None:
    """usageledger: LLM usage, delivered exactly once in effect."""


@app.command()
def serve(
    storage: str = typer.Option("sqlite:///usageledger.db", help="storage URL: sqlite:///path, postgresql://..., memory://"),
    host: str = typer.Option("127.0.0.1", help="interface to bind"),
    port: int = typer.Option(8765, help="port to listen on"),
    api_key: list[str] = typer.Option(None, "--api-key", help="accepted bearer key (repeatable; other local users can see it in the process list: prefer --api-key-file); none: loopback only"),
    api_key_file: list[Path] = typer.Option(None, "--api-key-file", help="file of accepted bearer keys, one per line (repeatable; keep it chmod 600)"),
    alert_journal: str = typer.Option(None, "--alert-journal", help="journal of budget alerts (default: beside a sqlite store, else in the user data dir)", show_default=False),
    workers: int = typer.Option(1, "--workers", min=1, help="processes serving the port (sqlite, postgresql or redis storage)"),
    metrics: str = typer.Option("key", "--metrics", help="/metrics access: key (a key that may read; the default) or public (process metrics for anyone, stored totals for a reader)"),
    retention_days: int = typer.Option(None, "--retention-days", min=1, help="fold raw records older than N days into daily rollups, hourly", show_default=False),
    retention_project_days: list[str] = typer.Option(None, "--retention-project-days", help="PROJECT=DAYS: a project's own retention (repeatable)", show_default=False),
) -> None:
    """Run the collector service. SIGTERM (and Ctrl-C) stop it cleanly: requests under
    way finish, the storage is closed, the exit status is 0. Keys come from
    --api-key-file, --api-key, or else the comma-separated USAGELEDGER_SERVER_API_KEYS;
    with none, only loopback clients are served."""
    from ..server.app import serve as run
    from ..server.keys import read_key_file

    keys = list(api_key or ())
    for path in api_key_file or ():
        try:
            keys += read_key_file(path)
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="--api-key-file") from None
    with _exit_cleanly_on_sigterm():
        from ..storage.retention import parse_project_days

        try:
            per_project = parse_project_days(retention_project_days, "--retention-project-days")
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="--retention-project-days") from None
        if metrics not in ("public", "key"):
            raise typer.BadParameter(f"must be public or key, got {metrics!r}", param_hint="--metrics")
        run(storage, host=host, port=port, api_keys=keys or None, alert_journal=alert_journal,
            workers=workers, metrics_access=metrics, retention_days=retention_days,
            retention_project_days=per_project or None)


@contextlib.contextmanager
def _exit_cleanly_on_sigterm() -> Iterator[None]:
    # uvicorn shuts down gracefully on SIGTERM, then raises the signal again under the
    # handler it found: with the default one the process dies of it (status 143). This
    # handler turns it into a normal exit; before uvicorn starts it ends startup cleanly.
    def stop(signum: int, frame: Any) -> None:
        raise SystemExit(0)

    try:
        previous = signal.signal(signal.SIGTERM, stop)
    except ValueError:  # not the main thread (embedded): leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@app.command()
def demo(
    port: int = typer.Option(8765, help="collector port"),
    records: int = typer.Option(3000, help="simulated LLM calls to record"),
    keep_running: bool = typer.Option(True, help="leave the collector running until Ctrl-C"),
) -> None:
    """Collector on SQLite + a producer + a cost report (what `make demo` runs)."""
    from .demo import run_demo

    run_demo(port=port, n=records, keep_running=keep_running)


# -- argument parsing ----------------------------------------------------------------------

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$", re.IGNORECASE)
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(value: str, option: str = "--older-than") -> float:
    """``7d``, ``12h``, ``30m``, ``45s``, ``2w`` (also ``1.5h``) as seconds."""
    m = _DURATION.match(value)
    if not m:
        raise typer.BadParameter(
            f"{value!r} is not a duration; use a number and a unit: 30s, 30m, 12h, 7d, 2w",
            param_hint=option,
        )
    return float(m.group(1)) * _UNIT_S[m.group(2).lower()]


def parse_when(value: str | None, option: str, now: datetime | None = None) -> datetime | None:
    """An ISO date (midnight UTC), an ISO datetime (UTC unless it names an offset), or a
    duration meaning that long ago (``7d``)."""
    if value is None:
        return None
    if _DURATION.match(value):
        return (now or datetime.now(UTC)) - timedelta(seconds=parse_duration(value, option))
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise typer.BadParameter(
            f"{value!r} is not a date; use 2026-11-01, 2026-11-01T12:30, 2026-11-01T12:30+02:00 or 7d",
            param_hint=option,
        ) from None
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)


def _check_range(since: datetime | None, until: datetime | None) -> None:
    if since is not None and until is not None and since >= until:
        raise typer.BadParameter(
            f"--since {since.isoformat()} is not before --until {until.isoformat()}", param_hint="--since"
        )


# -- opening things --------------------------------------------------------------------------

_LOCK_TIMEOUT = typer.Option(5.0, "--lock-timeout", min=0, help="seconds to wait for a locked journal")
_DB = typer.Argument(..., help="journal file (the db_path of PersistentDelivery) or redis://host:port/db?stream=NAME", show_default=False)
_STORAGE = typer.Option(..., "--storage", help="storage URL: sqlite:///path.db, jsonl:///path, postgresql://..., redis://...", show_default=False)
_SINCE = typer.Option(None, "--since", help="from this date/time (inclusive): 2026-11-01, 2026-11-01T12:00, 7d")
_UNTIL = typer.Option(None, "--until", help="before this date/time (exclusive)")


def _journal(db: str, lock_timeout: float) -> PersistentQueueManager:
    from ..core.journal import is_journal_url
    from ..core.journal.sqlite import check_journal_file
    from ..facades.delivery import PersistentQueueManager

    if not is_journal_url(db):
        check_journal_file(db)
    return PersistentQueueManager(db, busy_timeout_ms=int(lock_timeout * 1000))


def _when(epoch: float | None) -> str:
    if epoch is None:
        return "—"
    return datetime.fromtimestamp(epoch).astimezone().strftime("%Y-%m-%d %H:%M:%S")


# -- journal commands ------------------------------------------------------------------------


@app.command()
def monitor(
    db: str = _DB,
    interval: float = typer.Option(1.0, "--interval", min=0.1, help="seconds between refreshes"),
    once: bool = typer.Option(False, "--once", help="print one frame and exit (for scripts)"),
    rows: int = typer.Option(5, "--rows", min=0, help="items shown in the retry and failure lists"),
    lock_timeout: float = _LOCK_TIMEOUT,
) -> None:
    """Live view of a journal: counts, rates, oldest item, retries, failures, lease."""
    from .monitor import run_monitor

    mgr = _journal(db, lock_timeout)
    try:
        run_monitor(mgr, interval=interval, once=once, rows=rows, console=_out())
    finally:
        mgr.close()


@app.command()
def stats(
    db: str = _DB,
    as_json: bool = typer.Option(False, "--json", help="print JSON"),
    lock_timeout: float = _LOCK_TIMEOUT,
) -> None:
    """Counts per state, delivered and retried totals, oldest queued item, lease."""
    from rich.table import Table

    from .monitor import format_age

    mgr = _journal(db, lock_timeout)
    try:
        s = mgr.stats()
    finally:
        mgr.close()
    if as_json:
        print(json.dumps(s, indent=2))
        return
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column()
    for key in ("ready", "inflight", "dead", "delivered", "retried"):
        table.add_row(key, f"{s[key]:,}")
    for fb in s.get("fallback_journals", []):
        table.add_row("in fallback", f"{fb['waiting']:,} in {fb['path']}")
    table.add_row("oldest queued", format_age(s["oldest_queued_age_s"]))
    table.add_row("next retry", _when(s["next_not_before"]))
    holder = s["lease_holder"]
    table.add_row("lease holder", "none" if holder is None else f"{holder} (until {_when(s['lease_expires'])})")
    _out().print(table)


#: below this width `failed` prints one block per item instead of a table
_WIDE_FAILED = 120


@app.command()
def failed(
    db: str = _DB,
    limit: int = typer.Option(20, "--limit", min=1, help="how many to show, oldest first"),
    as_json: bool = typer.Option(False, "--json", help="print JSON (payloads decoded)"),
    lock_timeout: float = _LOCK_TIMEOUT,
) -> None:
    """Dead-lettered items with their error."""
    from rich.table import Table
    from rich.text import Text

    mgr = _journal(db, lock_timeout)
    try:
        items = mgr.failed(limit)
        total = mgr.stats()["dead"]
    finally:
        mgr.close()
    if as_json:
        print(json.dumps(items, indent=2, default=str))
        return
    console = _out()
    if not items:
        console.print("no failed items")
        return
    if console.width < _WIDE_FAILED:
        # one block per item: the id and the error whole, nothing squeezed into a column
        console.print(f"failed items: {len(items)} of {total}", style="bold")
        for it in items:
            payload = "" if it["payload"] is None else json.dumps(it["payload"])
            console.print()
            console.print(Text.assemble((it["id"], "bold"), f"  {it['kind']}  attempts "
                                        f"{it['attempts']}  created {_when(it['created'])}"))
            console.print(f"  error: {it['last_error'] or ''}", markup=False, overflow="fold")
            console.print(f"  payload: {payload}", markup=False, overflow="fold")
        return
    table = Table(title=f"failed items: {len(items)} of {total}", title_justify="left")
    for col in ("id", "kind", "attempts", "created", "error", "payload"):
        table.add_column(col, overflow="fold")
    for it in items:
        payload = "" if it["payload"] is None else json.dumps(it["payload"])
        table.add_row(
            it["id"], it["kind"], str(it["attempts"]), _when(it["created"]),
            it["last_error"] or "", payload if len(payload) <= 80 else payload[:79] + "…",
        )
    console.print(table)


@app.command()
def requeue(
    db: str = _DB,
    ids: list[str] = typer.Argument(None, help="ids of failed items to requeue", show_default=False),
    all_: bool = typer.Option(False, "--all", help="requeue every failed item"),
    lock_timeout: float = _LOCK_TIMEOUT,
) -> None:
    """Move failed (dead) items back to the queue, by id or --all."""
    if all_ == bool(ids):
        raise typer.BadParameter("give either --all or one or more ids, not both or neither", param_hint="IDS")
    mgr = _journal(db, lock_timeout)
    try:
        n = mgr.requeue(None if all_ else list(ids))
    finally:
        mgr.close()
    print(f"requeued {n} item{'s' if n != 1 else ''}")
    wanted = len(set(ids or ()))
    if not all_ and n < wanted:
        _err().print(f"error: {wanted - n} of {wanted} ids are not failed items in {db}")
        raise typer.Exit(1)


@app.command()
def purge(
    db: str = _DB,
    state: str = typer.Option(..., "--state", help="dead (alias failed), ready (alias queued) or inflight", show_default=False),
    older_than: str = typer.Option(None, "--older-than", help="only items enqueued longer ago than this: 30m, 12h, 7d"),
    yes: bool = typer.Option(False, "--yes", "-y", help="do not ask for confirmation"),
    lock_timeout: float = _LOCK_TIMEOUT,
) -> None:
    """Delete the items in one state (asks first unless --yes)."""
    from ..core.journal.base import STATE_NAMES, state_code

    try:
        name = STATE_NAMES[state_code(state)]
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--state") from None
    age = None if older_than is None else parse_duration(older_than, "--older-than")
    mgr = _journal(db, lock_timeout)
    try:
        in_state = mgr.stats()[name]
        scope = f"{name} items" + ("" if older_than is None else f" enqueued more than {older_than} ago")
        if not yes:
            prompt = f"Delete {scope} from {db} ({in_state:,} {name} in total)?"
            try:
                confirmed = typer.confirm(prompt, default=False, err=True)
            except typer.Abort:  # no answer (stdin closed): a script that forgot --yes
                confirmed = False
                print(file=sys.stderr)
            if not confirmed:
                _err().print("nothing purged (pass --yes to purge without the question)")
                raise typer.Exit(1)
        n = mgr.purge(name, age)
    finally:
        mgr.close()
    print(f"purged {n:,} {name} item{'s' if n != 1 else ''}; {in_state - n:,} {name} left")


@app.command()
def salvage(
    db: str = typer.Argument(..., metavar="FILE", help="the journal file to check and salvage", show_default=False),
) -> None:
    """Check a journal; when it is damaged, move it aside and put every readable record
    into a new journal at the same path, to be delivered again."""
    import logging

    from ..core.journal.base import JournalError
    from ..core.journal.sqlite import SqliteJournal

    p = Path(db).expanduser()
    if not p.exists():
        raise JournalError(f"no journal at {p}: the file does not exist")
    if p.is_dir():
        raise JournalError(f"{p} is a directory, not a journal file")
    quiet = logging.getLogger("usageledger.journal")
    level = quiet.level
    quiet.setLevel(logging.CRITICAL)  # this command reports the salvage itself, below
    try:
        journal = SqliteJournal(p)
    finally:
        quiet.setLevel(level)
    try:
        done = journal.salvaged
        ready = journal.stats()["ready"]
    finally:
        journal.close()
    if done is None:
        print(f"{p}: no damage found; nothing to do ({ready:,} ready)")
        return
    print(f"{p} was damaged: {' '.join(done['reason'].split())}")
    print(f"moved it aside to {done['from']}")
    print(f"salvaged {done['items']:,} record{'s' if done['items'] != 1 else ''}"
          f" and {done['dead']:,} dead-lettered into a new journal at {p}")
    for problem in done["problems"]:
        print(f"  {problem}")


# -- storage commands --------------------------------------------------------------------------


@app.command()
def report(
    storage: str = _STORAGE,
    since: str = _SINCE,
    until: str = _UNTIL,
    group_by: str = typer.Option("day,model", "--group-by", help="comma-separated: day, hour, provider, model, user_id, session_id, customer_key, tag:<key>"),
    fmt: str = typer.Option("table", "--format", help="table (with a chart), csv or json"),
) -> None:
    """Cost and token totals, with a chart of cost per day."""
    from ..storage.base import check_group_by
    from .report import REPORT_FORMATS, print_report

    if fmt not in REPORT_FORMATS:
        raise typer.BadParameter(f"{fmt!r} is not one of {', '.join(REPORT_FORMATS)}", param_hint="--format")
    try:
        keys = check_group_by(group_by)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--group-by") from None
    start, end = parse_when(since, "--since"), parse_when(until, "--until")
    _check_range(start, end)
    store = _storage(storage, must_exist=True)
    try:
        print_report(_out(), store, keys, start, end, fmt)
    finally:
        store.close()


@app.command()
def export(
    storage: str = _STORAGE,
    fmt: str = typer.Option(..., "--format", help="csv or jsonl", show_default=False),
    out: str = typer.Option(..., "--out", help="file to write ('-': stdout)", show_default=False),
    since: str = _SINCE,
    until: str = _UNTIL,
) -> None:
    """Stream records to CSV or JSON Lines in constant memory, with a progress bar."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    from .export import EXPORT_FORMATS, count_matching, export_records

    if fmt not in EXPORT_FORMATS:
        raise typer.BadParameter(f"{fmt!r} is not one of {', '.join(EXPORT_FORMATS)}", param_hint="--format")
    start, end = parse_when(since, "--since"), parse_when(until, "--until")
    _check_range(start, end)
    if out != "-" and not Path(out).parent.is_dir():
        raise FileNotFoundError(f"cannot write {out}: no directory {Path(out).parent}")
    store = _storage(storage, must_exist=True)
    try:
        total = count_matching(store, start, end)
        columns = (TextColumn("exporting"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
        with Progress(*columns, console=_err(), transient=False) as bar:
            task = bar.add_task("export", total=total)
            n = export_records(store, out, fmt, since=start, until=end,
                               progress=lambda k: bar.advance(task, k))
    finally:
        store.close()
    if out != "-":
        _err().print(f"exported {n:,} records to {out}")


@app.command(name="import")
def import_(
    file: str = typer.Argument(..., help="a file written by `usageledger export`", show_default=False),
    storage: str = _STORAGE,
    fmt: str = typer.Option(None, "--format", help="csv or jsonl (default: from the file name)"),
    batch: int = typer.Option(5000, "--batch", min=1, help="records per transaction"),
) -> None:
    """Load an export into a storage (records already stored are skipped by id; records
    without a cost are priced as the collector prices them)."""
    from ..server.collector import Collector
    from .export import EXPORT_FORMATS, read_export

    if fmt is not None and fmt not in EXPORT_FORMATS:
        raise typer.BadParameter(f"{fmt!r} is not one of {', '.join(EXPORT_FORMATS)}", param_hint="--format")
    if not Path(file).is_file():
        raise FileNotFoundError(f"no file {file} to import")
    records = read_export(file, fmt)
    store = _storage(storage, must_exist=False)
    try:
        # the collector's own ingestion: priced, deduplicated and counted like a POST /track
        read, stored = Collector(store).ingest_records(records, batch)
    finally:
        store.close()
    print(f"imported {stored:,} of {read:,} records ({read - stored:,} already stored)")


# -- budgets -----------------------------------------------------------------------------------

budget_app = typer.Typer(no_args_is_help=True, help="Budgets: spend limits and alerts, kept in a storage (--storage) or a collector (--url).")
app.add_typer(budget_app, name="budget")

_B_STORAGE = typer.Option(None, "--storage", help="storage URL holding the budgets: sqlite:///path.db, postgresql://...", show_default=False)
_B_URL = typer.Option(None, "--url", help="a collector's base URL, e.g. http://127.0.0.1:8765", show_default=False)
_B_KEY = typer.Option(None, "--api-key", help="the collector's bearer key (with --url)", show_default=False)


class _BudgetTarget:
    """Budgets in a storage (the engine itself) or on a collector (its API)."""

    def __init__(self, storage: str | None, url: str | None, api_key: str | None):
        if (storage is None) == (url is None):
            raise ValueError("give exactly one of --storage URL or --url COLLECTOR")
        self._store = None
        if url is not None:
            from ..budgets.remote import RemoteBudgets

            self.api: Any = RemoteBudgets(url, api_key)
        else:
            from ..budgets import Budgets

            self._store = _storage(storage, must_exist=False)  # type: ignore[arg-type]
            self.api = Budgets(self._store, cache_s=0)

    def __enter__(self) -> Any:
        return self.api

    def __exit__(self, *exc: object) -> None:
        if self._store is not None:
            self._store.close()
        else:
            self.api.close()


@budget_app.command("set")
def budget_set(
    name: str = typer.Argument(..., help="the budget's name", show_default=False),
    limit: str = typer.Option(..., "--limit", help="spend limit, a decimal (5, 12.50)", show_default=False),
    period: str = typer.Option("month", "--period", help="day, week (from Monday), month (calendar, UTC) or total"),
    currency: str = typer.Option("USD", "--currency", help="only records in this currency count"),
    user_id: str = typer.Option(None, "--user-id", help="scope: this user only", show_default=False),
    customer_key: str = typer.Option(None, "--customer-key", help="scope: this customer only", show_default=False),
    provider: str = typer.Option(None, "--provider", help="scope: this provider only", show_default=False),
    model: str = typer.Option(None, "--model", help="scope: this model only", show_default=False),
    session_id: str = typer.Option(None, "--session-id", help="scope: this session only", show_default=False),
    tag: list[str] = typer.Option(None, "--tag", help="scope: records with this tag, key=value (repeatable)", show_default=False),
    alert: list[float] = typer.Option(None, "--alert", help="alert when spend reaches this fraction of the limit (repeatable), e.g. 0.8", show_default=False),
    webhook: str = typer.Option(None, "--webhook", help="http(s) URL that alerts are POSTed to", show_default=False),
    storage: str = _B_STORAGE,
    url: str = _B_URL,
    api_key: str = _B_KEY,
) -> None:
    """Create or replace a budget."""
    tags = {}
    for t in tag or ():
        key, sep, value = t.partition("=")
        if not sep or not key:
            raise ValueError(f"--tag must look like key=value, got {t!r}")
        tags[key] = value
    scope = {k: v for k, v in (("user_id", user_id), ("customer_key", customer_key), ("provider", provider),
                               ("model", model), ("session_id", session_id)) if v is not None}
    if tags:
        scope["tags"] = tags
    body = {"scope": scope, "period": period, "limit": limit, "currency": currency,
            "alert_thresholds": list(alert or ()), "webhook_url": webhook}
    with _BudgetTarget(storage, url, api_key) as api:
        api.put(name, body, "the command line")
        status = api.status(name)
    window = "in total" if status["window_start"] is None else f"this {period} (UTC)"
    _out().print(f"budget {name}: {status['spent']} of {status['limit']} {status['currency']} spent {window}")


@budget_app.command("list")
def budget_list(
    storage: str = _B_STORAGE,
    url: str = _B_URL,
    api_key: str = _B_KEY,
    as_json: bool = typer.Option(False, "--json", help="print JSON"),
) -> None:
    """Budgets with their spend in the current window, as burn bars."""
    from rich.table import Table

    with _BudgetTarget(storage, url, api_key) as api:
        rows = api.list()
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    console = _out()
    if not rows:
        console.print("no budgets")
        return
    table = Table(title=f"budgets: {len(rows)}", title_justify="left")
    for col in ("name", "scope", "window", "spent / limit", "burn", "alerts"):
        table.add_column(col, overflow="fold", no_wrap=col == "burn")
    for b in rows:
        scope = ", ".join(f"{k}={v}" if k != "tags" else ", ".join(f"{a}={c}" for a, c in v.items())
                          for k, v in b["scope"].items()) or "all usage"
        window = "total" if b["window_start"] is None else f"{b['period']} {b['window_start'][:10]}"
        table.add_row(b["name"], scope, window, f"{b['spent']} / {b['limit']} {b['currency']}",
                      burn_bar(b["fraction"], b["exceeded"]),
                      ", ".join(f"{t:g}" for t in b["alert_thresholds"]) or "—")
    console.print(table)


def burn_bar(fraction: float | None, exceeded: bool, width: int = 12) -> str:
    """``████████░░░░  40%``; red when exceeded, yellow from 80%."""
    if fraction is None:  # a limit of zero
        return "[red]" + "█" * width + " blocked[/red]"
    filled = min(width, round(fraction * width))
    colour = "red" if exceeded else "yellow" if fraction >= 0.8 else "green"
    return f"[{colour}]{'█' * filled}{'░' * (width - filled)} {fraction:4.0%}[/{colour}]"


@budget_app.command("rm")
def budget_rm(
    name: str = typer.Argument(..., help="the budget's name", show_default=False),
    storage: str = _B_STORAGE,
    url: str = _B_URL,
    api_key: str = _B_KEY,
) -> None:
    """Delete a budget (and its alert claims)."""
    with _BudgetTarget(storage, url, api_key) as api:
        if not api.remove(name):
            raise ValueError(f"no budget {name!r}")
    _out().print(f"budget {name} deleted")


app.add_typer(prices_app, name="prices")
app.command()(reprice)
app.add_typer(keys_app, name="keys")
app.add_typer(retention_app, name="retention")


# -- entry points ------------------------------------------------------------------------------


def _fail(message: str, code: int, debug: bool) -> int:
    if debug:
        import traceback

        traceback.print_exc()
    # one line: a message can carry newlines from a database or a library
    print(f"error: {' '.join(str(message).split())}", file=sys.stderr)
    return code


def main(argv: list[str] | None = None, prog_name: str = "usageledger", *, only: str | None = None) -> int:
    """Run the command line; returns the exit status (the console script exits with it).
    ``only`` runs that one command as the whole program (``queue-monitor`` is ``monitor``)."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    command = typer.main.get_command(app)
    if only is not None:
        command = command.commands[only]  # type: ignore[attr-defined]
        args = [a for a in args if a != "--debug"]  # the group's option: handled here
    elif debug:
        # accepted anywhere on the line: move it before the command, where the group takes it
        args = ["--debug", *(a for a in args if a != "--debug")]
    try:
        result = command.main(args=args, prog_name=prog_name, standalone_mode=False)
    except typer.TyperException as exc:  # typer's (vendored click's) usage errors
        ctx = getattr(exc, "ctx", None)
        if type(exc).__name__ == "NoArgsIsHelpError":
            print(ctx.get_help() if ctx is not None else exc.format_message())
            return 0
        hint = f" (see {ctx.command_path} --help)" if ctx is not None else ""
        return _fail(exc.format_message() + hint, getattr(exc, "exit_code", 2), debug)
    except typer.Abort:
        return _fail("aborted", 1, debug)
    except KeyboardInterrupt:
        return _fail("interrupted", 130, debug)
    except Exception as exc:  # the one place that turns any failure into a line
        return _fail(_describe(exc), 1, debug)
    return result if isinstance(result, int) else 0


def _describe(exc: BaseException) -> str:
    import sqlite3

    from ..core.journal.base import JournalError

    if isinstance(exc, JournalError | ValueError | FileNotFoundError | PermissionError):
        return str(exc)
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.filename + ': ' if exc.filename else ''}{exc.strerror}"
    if isinstance(exc, sqlite3.Error):
        return f"database error: {exc}"
    return f"{type(exc).__name__}: {exc} (run with --debug for the traceback)"


def queue_monitor_main(argv: list[str] | None = None) -> int:
    """`queue-monitor DB`: the name users of the original delivery queue know, for `usageledger monitor DB`."""
    args = list(sys.argv[1:] if argv is None else argv)
    return main(args, prog_name="queue-monitor", only="monitor")


if __name__ == "__main__":
    sys.exit(main())
