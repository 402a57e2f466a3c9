"""The collector's dashboard at ``GET /``: cost per day and model, as a plain HTML page
(no scripts, no assets)."""

from __future__ import annotations

from collections import defaultdict
from decimal import Decimal
from html import escape
from typing import Any

_STYLE = """body{font-family:system-ui,sans-serif;margin:2em;color:#222}
table{border-collapse:collapse;margin-bottom:2em}th,td{padding:.3em .8em;border-bottom:1px solid #ddd}
td.n{text-align:right;font-variant-numeric:tabular-nums}th{text-align:left;background:#f4f4f4}
.muted{color:#777}"""


def _money(value: Decimal) -> str:
    return f"{value:,.6f}"


def render(rows: list[dict[str, Any]], days: int) -> str:
    """``rows``: ``aggregate(("day", "model"))`` over the last ``days`` days."""
    models = sorted({r["model"] for r in rows})
    by_day: dict[str, dict[str, Decimal]] = defaultdict(dict)
    model_totals: dict[str, Decimal] = defaultdict(Decimal)
    calls: dict[str, int] = defaultdict(int)
    for r in rows:
        by_day[r["day"]][r["model"]] = r["cost"]
        model_totals[r["model"]] += r["cost"]
        calls[r["model"]] += r["count"]
    head = "".join(f"<th>{escape(m)}</th>" for m in models)
    body = []
    for day in sorted(by_day, reverse=True):
        costs = by_day[day]
        cells = "".join(f'<td class="n">{_money(costs[m]) if m in costs else ""}</td>' for m in models)
        body.append(f'<tr><td>{escape(day)}</td>{cells}<td class="n"><b>'
                    f"{_money(sum(costs.values(), Decimal(0)))}</b></td></tr>")
    totals = "".join(f'<td class="n"><b>{_money(model_totals[m])}</b></td>' for m in models)
    grand = sum(model_totals.values(), Decimal(0))
    summary = "".join(
        f'<tr><td>{escape(m)}</td><td class="n">{calls[m]:,}</td>'
        f'<td class="n">{_money(model_totals[m])}</td></tr>'
        for m in sorted(models, key=lambda m: model_totals[m], reverse=True)
    )
    empty = '<p class="muted">No usage recorded in this period.</p>' if not rows else ""
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>usageledger</title>
<style>{_STYLE}</style></head><body>
<h1>usageledger</h1><p class="muted">Cost (USD) over the last {days} days, by record timestamp (UTC).
API: <a href="/docs">/docs</a> · <a href="/metrics">/metrics</a></p>{empty}
<h2>Per model</h2><table><tr><th>model</th><th>calls</th><th>cost</th></tr>{summary}
<tr><td><b>total</b></td><td class="n"><b>{sum(calls.values()):,}</b></td><td class="n"><b>{_money(grand)}</b></td></tr></table>
<h2>Per day and model</h2><table><tr><th>day</th>{head}<th>total</th></tr>{''.join(body)}
<tr><td><b>total</b></td>{totals}<td class="n"><b>{_money(grand)}</b></td></tr></table>
</body></html>"""
