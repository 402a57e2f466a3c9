"""Live view of a journal file (`usageledger monitor DB`, `queue-monitor DB`).

The monitor only reads: each refresh is a handful of autocommit SELECTs through the
journal (WAL readers never block writers, and no transaction spans a refresh), so it can
watch a journal that producers and a dispatcher are writing.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console, Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from ..core.journal.base import JournalError
from ..facades.delivery import PersistentQueueManager

__all__ = ["Snapshot", "take_snapshot", "render", "run_monitor", "format_age"]


@dataclass
class Snapshot:
    """What one refresh reads from the journal."""

    at: float
    stats: dict[str, Any]
    retry_count: int = 0
    retrying: list[dict[str, Any]] = field(default_factory=list)
    failures: list[dict[str, Any]] = field(default_factory=list)

    @property
    def seen(self) -> int:
        """Items that ever entered the journal and are still visible in it or in the
        delivered counter (purges make this go down; rates clamp at zero)."""
        s = self.stats
        return s["ready"] + s["inflight"] + s["dead"] + s["delivered"]


def take_snapshot(mgr: PersistentQueueManager, rows: int = 5) -> Snapshot:
    journal = mgr.journal
    stats = mgr.stats()
    n, retrying = journal.retrying(rows)
    return Snapshot(time.time(), stats, n, retrying, journal.recent_dead(rows))


def format_age(seconds: float | None) -> str:
    """``3h 02m``, ``4m 05s``, ``12.3s``; ``—`` for None."""
    if seconds is None:
        return "—"
    sign = "-" if seconds < 0 else ""
    s = abs(seconds)
    if s < 60:
        return f"{sign}{s:.1f}s"
    if s < 3600:
        return f"{sign}{int(s // 60)}m {int(s % 60):02d}s"
    if s < 86400:
        return f"{sign}{int(s // 3600)}h {int(s % 3600 // 60):02d}m"
    return f"{sign}{int(s // 86400)}d {int(s % 86400 // 3600):02d}h"


def _clock(epoch: float | None) -> str:
    return "—" if epoch is None else time.strftime("%H:%M:%S", time.localtime(epoch))


def _short(text: str | None, width: int = 60) -> str:
    if not text:
        return ""
    one = " ".join(str(text).split())
    return one if len(one) <= width else one[: width - 1] + "…"


def _rates(now: Snapshot, prev: Snapshot | None) -> tuple[float | None, float | None]:
    if prev is None or now.at <= prev.at:
        return None, None
    dt = now.at - prev.at
    delivered = max(0, now.stats["delivered"] - prev.stats["delivered"]) / dt
    enqueued = max(0, now.seen - prev.seen) / dt
    return enqueued, delivered


def _rate(value: float | None) -> str:
    return "—" if value is None else f"{value:,.1f}/s"


def _item_table(title: str, when: str, error: str, when_width: int) -> Table:
    """One line per item, so five rows of each table fit an 80x24 terminal: the id, count
    and time never wrap (the id gives way at its start, whose time prefix is shared by
    neighbours), the error is cut with an ellipsis (`usageledger failed` shows it whole)."""
    table = Table(title=title, title_justify="left", title_style="bold", show_edge=False)
    table.add_column("id", no_wrap=True, min_width=13)
    table.add_column("attempts", justify="right", no_wrap=True, min_width=8)
    table.add_column(when, no_wrap=True, min_width=when_width)
    table.add_column(error, no_wrap=True, overflow="ellipsis", min_width=10)
    return table


def _tail_id(item_id: str, width: int = 13) -> str:
    """The end of an id: a UUIDv7 starts with its time, the same for items enqueued together,
    and ends with random bits that tell them apart."""
    return item_id if len(item_id) <= width else "…" + item_id[-(width - 1):]


def render(
    snap: Snapshot,
    prev: Snapshot | None,
    location: str,
    interval: float | None,
    problem: str | None = None,
    max_rows: int | None = None,
) -> Group:
    """One frame. ``prev`` (the previous refresh) gives the rates; None shows them as —.
    ``problem``: why the last refresh failed (the frame then shows the last good read)."""
    s = snap.stats
    enq, dlv = _rates(snap, prev)
    head = Text.assemble(
        ("usageledger monitor ", "bold"),
        (location, "cyan"),
        f"  {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(snap.at))}",
        ("" if interval is None else f"  (every {interval:g}s, Ctrl-C to quit)", "dim"),
    )

    counts = Table(box=None, show_header=True, header_style="bold", pad_edge=False)
    counts.add_column("state")
    counts.add_column("items", justify="right")
    counts.add_row("ready", f"{s['ready']:,}")
    counts.add_row("inflight", f"{s['inflight']:,}")
    counts.add_row("dead", Text(f"{s['dead']:,}", style="red" if s["dead"] else ""))
    counts.add_row("delivered", f"{s['delivered']:,}")
    counts.add_row("retried", f"{s['retried']:,}")
    if s.get("fallback_waiting"):  # written to a fallback journal while this one refused
        counts.add_row("in fallback", Text(f"{s['fallback_waiting']:,}", style="yellow"))

    flow = Table(box=None, show_header=False, pad_edge=False)
    flow.add_column(style="bold")
    flow.add_column(justify="right")
    flow.add_row("enqueue rate", _rate(enq))
    flow.add_row("delivery rate", _rate(dlv))
    flow.add_row("oldest queued", format_age(s.get("oldest_queued_age_s")))
    holder, expires = s.get("lease_holder"), s.get("lease_expires")
    if holder is None:
        lease = Text("none", style="dim")
    elif expires is not None and expires < snap.at:
        lease = Text(f"{holder} (expired {format_age(snap.at - expires)} ago)", style="yellow")
    else:
        left = "" if expires is None else f" (expires in {format_age(expires - snap.at)})"
        lease = Text(f"{holder}{left}")
    flow.add_row("lease holder", lease)

    top = Table.grid(padding=(0, 6))
    top.add_row(counts, flow)

    backlog = _item_table(f"retry backlog: {snap.retry_count:,}", "next attempt", "last error",
                          len("00:00:00 (in 59m 59s)"))
    for r in snap.retrying[:max_rows]:
        due = r["not_before"] - snap.at
        when = f"{_clock(r['not_before'])} ({'in ' + format_age(due) if due > 0 else 'due'})"
        backlog.add_row(_tail_id(r["id"]), str(r["attempts"]), when, _short(r["last_error"]))

    failures = _item_table(f"recent failures (dead: {s['dead']:,})", "died", "error",
                           len("00:00:00"))
    for r in snap.failures[:max_rows]:
        failures.add_row(_tail_id(r["id"]), str(r["attempts"]), _clock(r.get("died")),
                         _short(r["last_error"]))

    parts: list[Any] = [head]
    if problem:
        parts.insert(1, Text(f"refresh failed, showing {_clock(snap.at)}: {problem}", style="bold red"))
    return Group(Panel(Group(*parts, top), expand=False), backlog, failures)


def fit(console: Console, snap: Snapshot, prev: Snapshot | None, location: str,
        interval: float | None, problem: str | None = None) -> Group:
    """The frame, with as many item rows as let it fit the terminal's height (a frame
    taller than the screen would scroll its top away on every refresh). Into a pipe or a
    file the whole frame is printed."""
    frame = render(snap, prev, location, interval, problem)
    if not console.is_terminal:
        return frame
    shown = max(len(snap.retrying), len(snap.failures))
    while shown > 1 and len(console.render_lines(frame, pad=False)) > console.height:
        shown -= 1
        frame = render(snap, prev, location, interval, problem, max_rows=shown)
    return frame


def run_monitor(
    mgr: PersistentQueueManager,
    *,
    interval: float = 1.0,
    once: bool = False,
    rows: int = 5,
    console: Console | None = None,
) -> None:
    """Refresh every ``interval`` seconds until Ctrl-C or SIGTERM (both return normally),
    or print one frame with ``once``. On a terminal the frame is redrawn in place; into a
    pipe or file each refresh is printed after the previous one, like a log."""
    console = console or Console()
    location = mgr.journal.location
    snap = take_snapshot(mgr, rows)
    if once:
        console.print(fit(console, snap, None, location, None))
        return
    restore = _sigterm_as_interrupt()
    try:
        if console.is_terminal:
            _live(console, mgr, snap, location, interval, rows)
        else:
            _log(console, mgr, snap, location, interval, rows)
    except KeyboardInterrupt:
        return
    finally:
        restore()


def _refreshes(mgr: PersistentQueueManager, snap: Snapshot, interval: float, rows: int):
    """Yield ``(snapshot, previous, problem)`` every ``interval`` seconds, forever. A failed
    read (a writer holding the lock past the busy timeout, a disk hiccup) yields the last
    good snapshot with the reason: the view keeps going through an incident."""
    prev: Snapshot | None = None
    while True:
        time.sleep(interval)
        try:
            fresh = take_snapshot(mgr, rows)
        except JournalError as exc:
            yield snap, prev, str(exc)
            continue
        prev, snap = snap, fresh
        yield snap, prev, None


def _live(console: Console, mgr: PersistentQueueManager, snap: Snapshot, location: str,
          interval: float, rows: int) -> None:
    from rich.live import Live

    with Live(fit(console, snap, None, location, interval), console=console,
              auto_refresh=False) as live:
        for now, prev, problem in _refreshes(mgr, snap, interval, rows):
            live.update(fit(console, now, prev, location, interval, problem), refresh=True)


def _log(console: Console, mgr: PersistentQueueManager, snap: Snapshot, location: str,
         interval: float, rows: int) -> None:
    console.print(render(snap, None, location, interval))
    for now, prev, problem in _refreshes(mgr, snap, interval, rows):
        console.print(render(now, prev, location, interval, problem))


def _sigterm_as_interrupt():
    """SIGTERM ends the view like Ctrl-C (terminal restored, exit 0); returns the undo."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, stop)
    return lambda: signal.signal(signal.SIGTERM, old)
