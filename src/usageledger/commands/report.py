"""Cost and token reports from a storage backend (`usageledger report`).

Totals come from ``StorageBackend.aggregate`` (exact Decimal cost, one row per group and
currency) summed by :class:`~usageledger.totals.Totals` (cost per currency: money is never
added across currencies); this module only lays them out: a rich table with a total row,
CSV, JSON, and a bar chart of cost per day (one per currency).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any

from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from ..schema.records import TOKEN_FIELDS
from ..schema.totals import Totals
from ..storage.base import StorageBackend, check_group_by

__all__ = ["REPORT_FORMATS", "build_report", "render_table", "render_chart", "to_csv", "to_json"]

REPORT_FORMATS = ("table", "csv", "json")
#: numeric columns of every report row, in display order
VALUE_KEYS = ("count", *TOKEN_FIELDS, "cost", "unknown_cost")
#: the columns of a CSV/JSON row after its group keys
ROW_KEYS = ("count", *TOKEN_FIELDS, "total_tokens", "cost", "currency", "unknown_cost")
_HEADERS = {
    "count": "calls",
    "input_tokens": "input",
    "output_tokens": "output",
    "cache_read_tokens": "cache read",
    "cache_write_tokens": "cache write",
    "reasoning_tokens": "reasoning",
    "cost": "cost",
    "unknown_cost": "no price",
}
_ALWAYS = ("count", "input_tokens", "output_tokens", "cost")
_EIGHTHS = " ▏▎▍▌▋▊▉"


def build_report(
    storage: StorageBackend,
    group_by: Sequence[str] | str = ("day", "model"),
    since: datetime | None = None,
    until: datetime | None = None,
) -> tuple[tuple[str, ...], list[dict[str, Any]], Totals, list[tuple[str, str, Decimal]]]:
    """``(keys, rows, total, cost_per_day)``: the aggregate rows (one per group and
    currency), their :class:`Totals`, and ``(day, currency, cost)`` for each day in the
    range (from the rows when grouped by day, else one more aggregate)."""
    keys = check_group_by(group_by)
    rows = storage.aggregate(keys, since=since, until=until)
    total = Totals.of_rows(rows)
    if keys == ("day",):
        daily_rows = rows
    else:
        daily_rows = storage.aggregate(("day",), since=since, until=until)
    per_day = [(str(r["day"]), r["currency"], r["cost"]) for r in daily_rows]
    return keys, rows, total, per_day


def _money(value: Decimal, currency: str | None = "USD") -> str:
    # whole cents are enough to read a table; exact values are in csv/json
    text = f"{value:.6f}" if value and abs(value) < Decimal("0.01") else f"{value:,.2f}"
    return f"${text}" if currency in ("USD", None) else f"{text} {currency}"


#: value columns given up first when a table is wider than the terminal; cost never is
_DROP_ORDER = ("unknown_cost", "reasoning_tokens", "cache_write_tokens", "cache_read_tokens",
               "count", "output_tokens", "input_tokens")


def _costs(total: Totals) -> str:
    """Per currency (sorted by code), never added: ``2.00 EUR · $1.00``."""
    return " · ".join(_money(v, c) for c, v in sorted(total.costs.items())) or _money(Decimal(0))


def render_table(keys: tuple[str, ...], rows: list[dict[str, Any]], total: Totals,
                 width: int | None = None) -> Table:
    """Group columns, then calls, input, output and cost (in the row's currency; the total
    row shows the cost per currency); the other token columns and the count of records
    without a price only when some row has them.

    Figures are never cut: number columns do not wrap and keep their full width. When the
    table is wider than ``width`` (the terminal, or 80 columns for a pipe or a file), group
    labels wrap first, then value columns are dropped in :data:`_DROP_ORDER` (the cost
    column always stays), and the caption says which were left out."""
    shown = [k for k in VALUE_KEYS if k in _ALWAYS or k != "cost" and getattr(total, k)]
    table = _table(keys, rows, total, shown)
    if width is None:
        return table
    dropped = []
    for k in _DROP_ORDER:
        if _min_width(table) <= width:
            break
        if k in shown:
            shown.remove(k)
            dropped.append(_HEADERS[k])
            table = _table(keys, rows, total, shown)
    if dropped:
        table.caption = (f"left out to fit {width} columns: {', '.join(dropped)} "
                         "(widen the terminal, or use --format csv)")
    return table


#: a group label folds onto more lines rather than narrow below this
_LABEL_MIN = 16


def _min_width(table: Table) -> int:
    """The narrowest the table can be: value columns at full width, labels folded to
    :data:`_LABEL_MIN` (rich's own measure treats a long model name as one unbreakable word)."""
    inner = 0
    for col in table.columns:
        if col.no_wrap:
            inner += col.min_width or 0
        else:
            inner += min(_LABEL_MIN, max([len(str(c)) for c in col.cells] + [len(str(col.header)), 1]))
    return inner + 3 * len(table.columns) + 1  # one space each side, one border between


def _table(keys: tuple[str, ...], rows: list[dict[str, Any]], total: Totals,
           shown: list[str]) -> Table:
    table = Table(show_footer=True, footer_style="bold", header_style="bold")
    for i, k in enumerate(keys):
        # labels may wrap (fold), so long model names give way before any figure
        table.add_column(k, footer="total" if i == 0 else "", overflow="fold", min_width=4)
    if not keys:
        table.add_column("", footer="total")
    cells_by_key = {k: [_money(row[k], row["currency"]) if k == "cost" else f"{row[k]:,}" for row in rows]
                    for k in shown}
    for k in shown:
        text = _costs(total) if k == "cost" else f"{getattr(total, k):,}"
        widest = max([len(text), len(_HEADERS[k]), *(len(c) for c in cells_by_key[k])])
        table.add_column(_HEADERS[k], justify="right", footer=text, no_wrap=True,
                         min_width=widest)
    for i, row in enumerate(rows):
        cells = [str(row[k]) if row[k] is not None else "—" for k in keys] or [""]
        cells += [cells_by_key[k][i] for k in shown]
        table.add_row(*cells)
    return table


def render_chart(per_day: list[tuple[str, str, Decimal]], width: int = 50) -> Group:
    """Horizontal bars, one per day, in eighth-of-a-cell steps; one chart per currency
    (bars of different currencies are not comparable)."""
    title = Text("cost per day", style="bold")
    if not per_day:
        return Group(title, Text("no records in range", style="dim"))
    currencies = sorted({c for _, c, _ in per_day})
    lines = []
    for currency in currencies:
        if len(currencies) > 1:
            title = Text(f"cost per day ({currency})", style="bold")
        days = [(day, cost) for day, c, cost in per_day if c == currency]
        top = max(cost for _, cost in days)
        lines.append(title)
        for day, cost in days:
            eighths = 0 if not top else int(cost / top * width * 8)
            bar = "█" * (eighths // 8) + (_EIGHTHS[eighths % 8] if eighths % 8 else "")
            lines.append(Text.assemble(f"{day} ", (bar.ljust(width), "green"), f" {_money(cost, currency)}"))
    return Group(*lines)


def _plain(value: Any) -> Any:
    # fixed-point text: exact, and never 1E-13, which spreadsheets misread
    return format(value, "f") if isinstance(value, Decimal) else value


def to_csv(keys: tuple[str, ...], rows: list[dict[str, Any]]) -> str:
    """One line per group and currency; cost as an exact decimal string."""
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow([*keys, *ROW_KEYS])
    for row in rows:
        w.writerow([*("" if row[k] is None else row[k] for k in keys), *(_plain(row[k]) for k in ROW_KEYS)])
    return out.getvalue()


def to_json(keys: tuple[str, ...], rows: list[dict[str, Any]], total: Totals) -> str:
    """``{"group_by", "rows", "total"}``; cost as an exact decimal string. ``total`` is
    :meth:`Totals.to_dict`: ``costs`` per currency, ``cost``/``currency`` null when mixed."""
    doc = {
        "group_by": list(keys),
        "rows": [{k: _plain(row[k]) for k in (*keys, *ROW_KEYS)} for row in rows],
        "total": total.to_dict(plain=True),
    }
    return json.dumps(doc, indent=2)


def print_report(
    console: Console,
    storage: StorageBackend,
    group_by: Sequence[str] | str,
    since: datetime | None,
    until: datetime | None,
    fmt: str,
) -> None:
    keys, rows, total, per_day = build_report(storage, group_by, since, until)
    if fmt == "csv":
        console.file.write(to_csv(keys, rows))
    elif fmt == "json":
        console.file.write(to_json(keys, rows, total) + "\n")
    else:
        console.print(render_table(keys, rows, total, width=console.width))
        console.print()
        console.print(render_chart(per_day, width=max(10, min(60, console.width - 30))))
