"""The collector's dashboard: server-rendered pages with SVG charts.

No script runs on these pages: charts are SVG drawn here, styles come from one file the
collector serves, and every value read from storage (model names, tags, ids are
attacker-controlled: anyone with an ingest key chooses them) is escaped as text. The
answers carry a Content-Security-Policy that forbids scripts altogether, so even a
mistake in escaping could not run one. Nothing is loaded from another host.

Filters live in the URL (``/?user_id=u2&since=2026-11-01&model=gpt-4o``): the filter form
is a plain GET form, so every view can be bookmarked and shared. Totals are the storage's
exact aggregates, the same figures ``/api/v1/summary`` answers for the same filters.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from html import escape
from typing import Any
from urllib.parse import urlencode

from ..errors import UsageLedgerError
from ..storage._keys import PROJECT_TAG

__all__ = ["PAGE_CSP", "ViewFilters", "parse_filters", "Page", "money"]

#: no scripts, no inline styles, nothing from another origin, never framed
PAGE_CSP = ("default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; "
            "frame-ancestors 'none'; base-uri 'none'")

#: rows of a records or runs page
PAGE_ROWS = 50
#: groups drawn in a "top" chart; the rest are summed into "other"
TOP_N = 10
#: the window shown when the URL names none
DEFAULT_DAYS = 30
#: hourly buckets are refused over ranges longer than this (a chart of 8,760 bars says nothing)
MAX_HOURLY_DAYS = 31

TOKEN_KEYS = ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens",
              "reasoning_tokens")


def money(value: Decimal) -> str:
    """Every digit of an exact cost, as the API writes it ("0.00000075", never "7.5E-7")."""
    return format(value, "f")


def _e(value: Any) -> str:
    return escape("" if value is None else str(value), quote=True)


class FilterError(UsageLedgerError, ValueError):
    """A filter in the URL cannot be read; the page says which and why."""


@dataclass(frozen=True)
class ViewFilters:
    """The filters of a view, as read from the URL."""

    since: datetime
    until: datetime
    provider: str | None = None
    model: str | None = None
    user_id: str | None = None
    customer_key: str | None = None
    session_id: str | None = None
    tag: str | None = None  # "key:value"
    bucket: str = "day"
    page: int = 0
    extra: dict[str, str] = field(default_factory=dict)
    #: the signed-in key's project (None: every project); not from the URL
    project: str | None = None

    def storage_filters(self) -> dict[str, Any]:
        out: dict[str, Any] = {"since": self.since, "until": self.until}
        for name in ("provider", "model", "user_id", "customer_key", "session_id"):
            value = getattr(self, name)
            if value:
                out[name] = value
        if self.tag:
            key, _, value = self.tag.partition(":")
            out["tags"] = {key: value}
        if self.project is not None:
            out["tags"] = {**out.get("tags", {}), PROJECT_TAG: self.project}
        return out

    def query(self, **changes: Any) -> str:
        """This view's URL query with ``changes`` applied (None drops a key)."""
        params: dict[str, str] = {
            "since": self.since.date().isoformat(),
            "until": (self.until - timedelta(days=1)).date().isoformat(),
        }
        for name in ("provider", "model", "user_id", "customer_key", "session_id", "tag"):
            if getattr(self, name):
                params[name] = getattr(self, name)
        if self.bucket != "day":
            params["bucket"] = self.bucket
        params.update(self.extra)
        for k, v in changes.items():
            if v is None:
                params.pop(k, None)
            else:
                params[k] = str(v)
        return urlencode(params)


def _day(name: str, text: str) -> date:
    try:
        return date.fromisoformat(text[:10])
    except ValueError:
        raise FilterError(f"{name} must be a date like 2026-11-01, got {text!r}") from None


def parse_filters(params: dict[str, str], today: date | None = None,
                  extra: Sequence[str] = ()) -> ViewFilters:
    """``since`` and ``until`` are whole UTC days, both included (as a date picker means
    them); without ``since`` the view shows the last 30 days."""
    today = today or datetime.now(UTC).date()
    until_day = _day("until", params["until"]) if params.get("until") else today
    since_day = (_day("since", params["since"]) if params.get("since")
                 else until_day - timedelta(days=DEFAULT_DAYS - 1))
    if since_day > until_day:
        raise FilterError(f"since ({since_day}) is after until ({until_day})")
    bucket = params.get("bucket") or "day"
    if bucket not in ("day", "hour"):
        raise FilterError(f"bucket must be day or hour, got {bucket!r}")
    if bucket == "hour" and (until_day - since_day).days >= MAX_HOURLY_DAYS:
        raise FilterError(f"hourly buckets cover at most {MAX_HOURLY_DAYS} days; "
                          f"narrow the dates or choose daily")
    tag = params.get("tag") or None
    if tag is not None and (":" not in tag or tag.startswith(":")):
        raise FilterError(f"tag must look like key:value, got {tag!r}")
    page_text = params.get("page") or "0"
    if not page_text.isdigit() or int(page_text) > 10**6:
        raise FilterError(f"page must be a whole number, got {page_text!r}")
    for name, value in params.items():
        if "\x00" in value:
            raise FilterError(f"{name} contains a NUL character")
    since = datetime.combine(since_day, datetime.min.time(), UTC)
    until = datetime.combine(until_day + timedelta(days=1), datetime.min.time(), UTC)
    return ViewFilters(
        since=since, until=until,
        provider=params.get("provider") or None, model=params.get("model") or None,
        user_id=params.get("user_id") or None, customer_key=params.get("customer_key") or None,
        session_id=params.get("session_id") or None, tag=tag, bucket=bucket,
        page=int(page_text), extra={k: params[k] for k in extra if params.get(k)},
    )


# -- totals per currency -------------------------------------------------------------------------

def _currency(row: dict[str, Any]) -> str:
    return row.get("currency") or "USD"


def costs_by_currency(rows: Iterable[dict[str, Any]]) -> dict[str, Decimal]:
    out: dict[str, Decimal] = {}
    for r in rows:
        out[_currency(r)] = out.get(_currency(r), Decimal(0)) + r["cost"]
    return out


def _costs_text(costs: dict[str, Decimal]) -> str:
    if not costs:
        return "0"
    return " + ".join(f"{money(v)} {c}" for c, v in sorted(costs.items()))


def _main_currency(rows: Sequence[dict[str, Any]]) -> str:
    counts: dict[str, int] = {}
    for r in rows:
        counts[_currency(r)] = counts.get(_currency(r), 0) + r["count"]
    return max(counts, key=lambda c: (counts[c], c == "USD")) if counts else "USD"


@dataclass
class Group:
    """One group of a breakdown: its label, count, tokens and cost per currency."""

    label: str
    count: int = 0
    tokens: int = 0
    costs: dict[str, Decimal] = field(default_factory=dict)


def merge_groups(rows: Iterable[dict[str, Any]], key: Callable[[dict[str, Any]], str]) -> list[Group]:
    groups: dict[str, Group] = {}
    for r in rows:
        g = groups.setdefault(key(r), Group(key(r)))
        g.count += r["count"]
        g.tokens += sum(r[k] for k in TOKEN_KEYS)
        g.costs[_currency(r)] = g.costs.get(_currency(r), Decimal(0)) + r["cost"]
    return list(groups.values())


# -- SVG charts ----------------------------------------------------------------------------------

def _svg_number(value: float) -> str:
    return f"{value:.1f}"


def column_chart(title: str, labels: Sequence[str], values: Sequence[Decimal | int],
                 unit: str, css_id: str) -> str:
    """Vertical bars, one per bucket; each bar's exact value in its tooltip."""
    width, height, pad = 760, 180, 24
    top = max((float(v) for v in values), default=0.0) or 1.0
    n = max(len(values), 1)
    slot = (width - 2 * pad) / n
    bar = max(slot * 0.8, 1.0)
    parts = []
    for i, (label, v) in enumerate(zip(labels, values, strict=True)):
        h = (height - 2 * pad) * float(v) / top
        x = pad + i * slot + (slot - bar) / 2
        y = height - pad - h
        shown = money(v) if isinstance(v, Decimal) else f"{v:,}"
        parts.append(f'<rect class="bar" x="{_svg_number(x)}" y="{_svg_number(y)}" '
                     f'width="{_svg_number(bar)}" height="{_svg_number(h)}">'
                     f"<title>{_e(label)}: {_e(shown)} {_e(unit)}</title></rect>")
    axis = ""
    if labels:
        axis = (f'<text class="axis" x="{pad}" y="{height - 6}">{_e(labels[0])}</text>'
                f'<text class="axis end" x="{width - pad}" y="{height - 6}">{_e(labels[-1])}</text>')
    top_label = money(Decimal(str(top))) if unit != "tokens" else f"{int(top):,}"
    return (f'<figure class="chart" id="{css_id}"><figcaption>{_e(title)}</figcaption>'
            f'<svg role="img" viewBox="0 0 {width} {height}" width="100%" '
            f'aria-label="{_e(title)}">'
            f'<text class="axis" x="{pad}" y="14">max {_e(top_label)} {_e(unit)}</text>'
            f'<line class="base" x1="{pad}" y1="{height - pad}" x2="{width - pad}" y2="{height - pad}"/>'
            f'{"".join(parts)}{axis}</svg></figure>')


def bar_chart(title: str, groups: Sequence[Group], currency: str, css_id: str) -> str:
    """Horizontal bars of cost in ``currency``, one per group, label and exact value as text."""
    row_h, width, label_w = 22, 760, 240
    values = [g.costs.get(currency, Decimal(0)) for g in groups]
    top = max((float(v) for v in values), default=0.0) or 1.0
    height = row_h * max(len(groups), 1) + 8
    parts = []
    for i, (g, v) in enumerate(zip(groups, values, strict=True)):
        y = 4 + i * row_h
        w = (width - label_w - 160) * float(v) / top
        label = g.label if len(g.label) <= 32 else g.label[:31] + "…"
        parts.append(
            f'<text class="label" x="0" y="{y + 15}">{_e(label)}<title>{_e(g.label)}</title></text>'
            f'<rect class="bar" x="{label_w}" y="{y + 3}" width="{_svg_number(w)}" height="{row_h - 6}"/>'
            f'<text class="value" x="{_svg_number(label_w + w + 6)}" y="{y + 15}">'
            f"{_e(money(v))} {_e(currency)}</text>")
    return (f'<figure class="chart" id="{css_id}"><figcaption>{_e(title)}</figcaption>'
            f'<svg role="img" viewBox="0 0 {width} {height}" width="100%" aria-label="{_e(title)}">'
            f'{"".join(parts)}</svg></figure>')


# -- pages ---------------------------------------------------------------------------------------

NAV = (("/", "Overview"), ("/records", "Records"), ("/runs", "Runs"), ("/budgets", "Budgets"),
       ("/health", "Delivery"))


@dataclass
class Page:
    """Frame shared by every view: navigation, the filter form, logout."""

    path: str
    filters: ViewFilters | None
    logout: bool

    def render(self, title: str, body: str, error: str | None = None) -> str:
        nav = "".join(
            f'<a href="{href}{"?" + self.filters.query(page=None) if self.filters else ""}"'
            f'{" class=current" if href == self.path else ""}>{name}</a>' for href, name in NAV)
        logout = ('<form method="post" action="/logout" class="logout">'
                  '<button type="submit">Log out</button></form>') if self.logout else ""
        err = f'<p class="error" role="alert">{_e(error)}</p>' if error else ""
        return (f'<!doctype html><html lang="en"><head><meta charset="utf-8">'
                f'<meta name="viewport" content="width=device-width, initial-scale=1">'
                f"<title>{_e(title)} · usageledger</title>"
                f'<link rel="stylesheet" href="/static/dashboard.css"></head><body>'
                f'<header><b class="brand">usageledger</b><nav>{nav}</nav>{logout}</header>'
                f"<main><h1>{_e(title)}</h1>{self._form()}{err}{body}</main>"
                f'<footer>API: <a href="/docs">/docs</a> · <a href="/redoc">/redoc</a> · '
                f'<a href="/metrics">/metrics</a></footer></body></html>')

    def _form(self) -> str:
        f = self.filters
        if f is None:
            return ""

        def field_(name: str, label: str, value: str | None, kind: str = "text") -> str:
            return (f'<label>{label}<input type="{kind}" name="{name}" '
                    f'value="{_e(value or "")}"></label>')

        bucket = "".join(f'<option value="{b}"{" selected" if f.bucket == b else ""}>{b}</option>'
                         for b in ("day", "hour"))
        extra = "".join(f'<input type="hidden" name="{_e(k)}" value="{_e(v)}">'
                        for k, v in f.extra.items())
        return ('<form method="get" class="filters">'
                + field_("since", "From", f.since.date().isoformat(), "date")
                + field_("until", "To", (f.until - timedelta(days=1)).date().isoformat(), "date")
                + field_("provider", "Provider", f.provider)
                + field_("model", "Model", f.model)
                + field_("user_id", "User", f.user_id)
                + field_("customer_key", "Customer", f.customer_key)
                + field_("tag", "Tag (key:value)", f.tag)
                + f'<label>Bucket<select name="bucket">{bucket}</select></label>'
                + extra + '<button type="submit">Apply</button>'
                + f'<a class="reset" href="{self.path}">Reset</a></form>')


def _buckets(f: ViewFilters) -> list[str]:
    step = timedelta(days=1) if f.bucket == "day" else timedelta(hours=1)
    out, t = [], f.since
    while t < f.until:
        out.append(t.date().isoformat() if f.bucket == "day" else t.strftime("%Y-%m-%dT%H:00"))
        t += step
    return out


def _bucket_key(row: dict[str, Any], bucket: str) -> str:
    value = row[bucket]
    if isinstance(value, datetime):
        return value.date().isoformat() if bucket == "day" else value.strftime("%Y-%m-%dT%H:00")
    text = str(value)
    return text[:10] if bucket == "day" else text[:13] + ":00"


def _top_table(title: str, groups: list[Group], css_id: str, link: Callable[[str], str] | None,
               currency: str) -> str:
    groups = sorted(groups, key=lambda g: (-g.costs.get(currency, Decimal(0)), -g.count, g.label))
    shown, rest = groups[:TOP_N], groups[TOP_N:]
    if rest:
        other = Group("other")
        for g in rest:
            other.count += g.count
            other.tokens += g.tokens
            for c, v in g.costs.items():
                other.costs[c] = other.costs.get(c, Decimal(0)) + v
        shown = [*shown, other]
    rows = "".join(
        f"<tr><td>{_link(g.label, link) if g.label != 'other' or not rest else 'other'}</td>"
        f'<td class="n">{g.count:,}</td><td class="n">{g.tokens:,}</td>'
        f'<td class="n money">{_e(_costs_text(g.costs))}</td></tr>' for g in shown)
    empty = '<p class="muted">Nothing in this range.</p>' if not groups else ""
    return (f'<section class="top" id="{css_id}"><h2>{_e(title)}</h2>{empty}'
            + (bar_chart(title, shown, currency, css_id + "-chart") if groups else "")
            + f'<table><thead><tr><th>{_e(title.split()[-1])}</th><th>records</th>'
              f'<th>tokens</th><th>cost</th></tr></thead><tbody>{rows}</tbody></table></section>')


def _link(label: str, link: Callable[[str], str] | None) -> str:
    if link is None or label == "(none)":
        return _e(label)
    return f'<a href="?{_e(link(label))}">{_e(label)}</a>'


def overview(f: ViewFilters, aggregate: Callable[..., list[dict[str, Any]]],
             tag_keys: Sequence[str]) -> str:
    """Spend and tokens over time, by provider and model, top users, customers and tags."""
    flt = f.storage_filters()
    by_time = aggregate((f.bucket,), **flt)
    totals_cost = costs_by_currency(by_time)
    count = sum(r["count"] for r in by_time)
    tokens = {k: sum(r[k] for r in by_time) for k in TOKEN_KEYS}
    unknown = sum(r.get("unknown_cost", 0) for r in by_time)
    currency = _main_currency(by_time)
    labels = _buckets(f)
    cost_at = {label: Decimal(0) for label in labels}
    tok_at = {label: 0 for label in labels}
    for r in by_time:
        k = _bucket_key(r, f.bucket)
        if k in cost_at:
            if _currency(r) == currency:
                cost_at[k] += r["cost"]
            tok_at[k] += sum(r[t] for t in TOKEN_KEYS)
    cards = (
        f'<div class="cards">'
        f'<div class="card" id="total-cost"><span>cost</span><b class="money">'
        f"{_e(_costs_text(totals_cost))}</b></div>"
        f'<div class="card" id="total-records"><span>records</span><b>{count:,}</b></div>'
        f'<div class="card" id="total-input"><span>input tokens</span><b>{tokens["input_tokens"]:,}</b></div>'
        f'<div class="card" id="total-output"><span>output tokens</span><b>{tokens["output_tokens"]:,}</b></div>'
        f'<div class="card"><span>cache read / write</span><b>{tokens["cache_read_tokens"]:,} / '
        f'{tokens["cache_write_tokens"]:,}</b></div>'
        f'<div class="card"><span>records without a price</span><b>{unknown:,}</b></div></div>')
    time_charts = (column_chart(f"Spend per {f.bucket} ({currency})", labels,
                                [cost_at[k] for k in labels], currency, "spend-chart")
                   + column_chart(f"Tokens per {f.bucket}", labels, [tok_at[k] for k in labels],
                                  "tokens", "tokens-chart"))
    by_model = merge_groups(aggregate(("provider", "model"), **flt),
                            lambda r: f'{r["provider"]} / {r["model"]}')
    by_model.sort(key=lambda g: (-g.costs.get(currency, Decimal(0)), g.label))
    model_rows = "".join(
        f"<tr><td>{_link(g.label, lambda lab: f.query(provider=lab.split(' / ', 1)[0], model=lab.split(' / ', 1)[1], page=None))}</td>"
        f'<td class="n">{g.count:,}</td><td class="n">{g.tokens:,}</td>'
        f'<td class="n money">{_e(_costs_text(g.costs))}</td></tr>' for g in by_model)
    models = ('<section id="models"><h2>By provider and model</h2>'
              + (bar_chart("Cost by provider and model", by_model[:TOP_N * 2], currency,
                           "models-chart") if by_model else '<p class="muted">Nothing in this range.</p>')
              + '<table><thead><tr><th>provider / model</th><th>records</th><th>tokens</th>'
                f"<th>cost</th></tr></thead><tbody>{model_rows}</tbody></table></section>")

    def none_label(r: dict[str, Any], key: str) -> str:
        return "(none)" if r[key] is None else str(r[key])

    users = _top_table("Top users", merge_groups(aggregate(("user_id",), **flt),
                                                 lambda r: none_label(r, "user_id")),
                       "users", lambda u: f.query(user_id=u, page=None), currency)
    customers = _top_table("Top customers", merge_groups(aggregate(("customer_key",), **flt),
                                                         lambda r: none_label(r, "customer_key")),
                           "customers", lambda c: f.query(customer_key=c, page=None), currency)
    tag_sections = []
    for key in tag_keys:
        rows = aggregate((f"tag:{key}",), **flt)
        groups = merge_groups(rows, lambda r, key=key: none_label(r, f"tag:{key}"))
        tag_sections.append(_top_table(
            f"Top tags {key}", groups, f"tag-{len(tag_sections)}",
            lambda v, key=key: f.query(tag=f"{key}:{v}", page=None), currency))
    tags = "".join(tag_sections) or '<section id="tags"><h2>Top tags</h2><p class="muted">No tags in the latest records.</p></section>'
    return (cards + time_charts + models + f'<div class="grid">{users}{customers}</div>'
            + f'<div class="grid" id="tags">{tags}</div>')


def _pager(f: ViewFilters, has_more: bool) -> str:
    prev = (f'<a rel="prev" href="?{_e(f.query(page=f.page - 1 or None))}">← newer</a>'
            if f.page else "")
    nxt = f'<a rel="next" href="?{_e(f.query(page=f.page + 1))}">older →</a>' if has_more else ""
    return f'<nav class="pager">{prev} <span>page {f.page + 1}</span> {nxt}</nav>'


def records_page(f: ViewFilters, records: Sequence[Any], has_more: bool) -> str:
    """One page of stored records, newest first, every field shown as text."""
    head = ("time", "provider", "model", "input", "output", "cache read", "cache write",
            "reasoning", "cost", "user", "customer", "session", "tags", "id", "response id")
    rows = []
    for r in records:
        cost = "—" if r.cost is None else f"{money(r.cost)} {r.currency}"
        tags = ", ".join(f"{k}={v}" for k, v in sorted(r.tags.items()))
        cells = (r.timestamp.strftime("%Y-%m-%d %H:%M:%S"), r.provider, r.model,
                 f"{r.input_tokens:,}", f"{r.output_tokens:,}", f"{r.cache_read_tokens:,}",
                 f"{r.cache_write_tokens:,}", f"{r.reasoning_tokens:,}", cost, r.user_id,
                 r.customer_key, r.session_id, tags, r.id, r.response_id)
        rows.append("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in cells) + "</tr>")
    empty = '<p class="muted">No records match.</p>' if not records else ""
    return (f'{empty}<div class="scroll"><table id="records"><thead><tr>'
            + "".join(f"<th>{h}</th>" for h in head)
            + f'</tr></thead><tbody>{"".join(rows)}</tbody></table></div>{_pager(f, has_more)}')


def _duration(run: dict[str, Any]) -> str:
    start, end = run.get("start_time"), run.get("end_time")
    try:
        s = datetime.fromisoformat(str(start))
        e = datetime.fromisoformat(str(end))
    except (TypeError, ValueError):
        return "—"
    return f"{(e - s).total_seconds():.1f} s"


def runs_page(f: ViewFilters, runs: Sequence[dict[str, Any]], has_more: bool) -> str:
    """Agent runs: status, duration, metrics."""
    statuses: dict[str, int] = {}
    for r in runs:
        statuses[str(r.get("status"))] = statuses.get(str(r.get("status")), 0) + 1
    status_groups = [Group(k, count=v, costs={"runs": Decimal(v)}) for k, v in sorted(statuses.items())]
    chart = bar_chart("Runs on this page by status", status_groups, "runs", "runs-chart") if runs else ""
    rows = []
    for r in runs:
        metrics = r.get("metrics") or {}
        metric_text = ", ".join(f"{k}={v}" for k, v in sorted(metrics.items())) if isinstance(metrics, dict) else str(metrics)
        cells = (r.get("agent_name"), r.get("job_type") or r.get("run_type"), r.get("status"),
                 r.get("start_time"), _duration(r), metric_text, r.get("run_id"))
        rows.append("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in cells) + "</tr>")
    empty = '<p class="muted">No runs match.</p>' if not runs else ""
    return (f'{chart}{empty}<div class="scroll"><table id="runs"><thead><tr><th>agent</th><th>type</th>'
            '<th>status</th><th>started</th><th>duration</th><th>metrics</th><th>run id</th>'
            f'</tr></thead><tbody>{"".join(rows)}</tbody></table></div>{_pager(f, has_more)}')


def health_page(counters: dict[str, float], uptime_s: float, stored: int | None) -> str:
    """What this collector process received, stored, refused and dropped as duplicates."""
    received = counters.get("received", 0)
    rate = received / uptime_s if uptime_s > 0 else 0.0
    names = (("received", "records received"), ("accepted", "stored"),
             ("duplicates", "duplicates dropped (same id)"), ("rejected", "rejected (invalid)"))
    groups = [Group(label, count=int(counters.get(k, 0)), costs={"records": Decimal(int(counters.get(k, 0)))})
              for k, label in names]
    rows = "".join(f'<tr><td>{label}</td><td class="n" id="health-{k}">{int(counters.get(k, 0)):,}</td></tr>'
                   for k, label in names)
    stored_row = f'<tr><td>records in storage</td><td class="n">{stored:,}</td></tr>' if stored is not None else ""
    return (f'<p class="muted">Since this collector process started {uptime_s:,.0f} s ago; '
            f"every replica counts its own.</p>"
            f'<div class="cards"><div class="card" id="ingest-rate"><span>ingest rate (mean)</span>'
            f"<b>{rate:,.1f} records/s</b></div></div>"
            + bar_chart("Records by result", groups, "records", "health-chart")
            + f'<table id="health"><tbody>{rows}{stored_row}</tbody></table>')


def _scope_text(scope: dict[str, Any]) -> str:
    if not scope:
        return "all usage"
    parts = []
    for k, v in sorted(scope.items()):
        if isinstance(v, dict):
            parts.extend(f"tag {tk}={tv}" for tk, tv in sorted(v.items()))
        else:
            parts.append(f"{k}={v}")
    return ", ".join(parts)


def burn_bar(fraction: float | None, thresholds: Sequence[float]) -> str:
    """Spend against the limit as an SVG bar (capped at 100%), threshold ticks on it."""
    width, height = 240, 16
    shown = 0.0 if fraction is None else max(0.0, min(fraction, 1.0))
    cls = "bar over" if fraction is not None and fraction >= 1 else "bar"
    ticks = "".join(
        f'<line class="tick" x1="{_svg_number(width * t)}" y1="0" x2="{_svg_number(width * t)}" '
        f'y2="{height}"/>' for t in thresholds if 0 < t < 1)
    return (f'<svg class="burn" role="img" viewBox="0 0 {width} {height}" width="{width}" '
            f'height="{height}" aria-label="burn {shown:.0%}"><rect class="track" x="0" y="0" '
            f'width="{width}" height="{height}"/><rect class="{cls}" x="0" y="0" '
            f'width="{_svg_number(width * shown)}" height="{height}"/>{ticks}</svg>')


def budgets_page(statuses: Sequence[dict[str, Any]] | None) -> str:
    """Every budget: scope, window, spent against the limit (exact), burn bar, state."""
    if statuses is None:
        return ('<p class="muted">This collector\'s storage does not keep budgets '
                "(use SQLite or PostgreSQL).</p>")
    if not statuses:
        return ('<p class="muted">No budgets yet: <code>usageledger budget set NAME --limit 5 '
                "--period day</code> or <code>PUT /api/v1/budgets/NAME</code>.</p>")
    rows = []
    for b in statuses:
        fraction = b.get("fraction")
        state = "exceeded" if b.get("exceeded") else ("" if fraction is None else f"{fraction:.0%}")
        window = "all time" if b.get("period") == "total" else (
            f"{str(b.get('window_start'))[:10]} – {str(b.get('window_end'))[:10]}")
        others = "; ".join(f"{c}: {o['cost']} ({o['records']} records, not counted)"
                           for c, o in (b.get("other_currencies") or {}).items())
        cells = (
            f"<td>{_e(b['name'])}</td><td>{_e(_scope_text(b.get('scope') or {}))}</td>"
            f"<td>{_e(b.get('period'))}<br><span class=muted>{_e(window)}</span></td>"
            f'<td class="n money">{_e(b["spent"])} / {_e(b["limit"])} {_e(b.get("currency"))}</td>'
            f"<td>{burn_bar(fraction, b.get('alert_thresholds') or ())}</td>"
            f'<td class="{"error" if b.get("exceeded") else ""}">{_e(state)}</td>'
            f"<td>{_e(others)}</td>")
        rows.append(f"<tr>{cells}</tr>")
    return ('<table id="budgets"><thead><tr><th>budget</th><th>scope</th><th>window</th>'
            "<th>spent / limit</th><th>burn</th><th>state</th><th>other currencies</th></tr>"
            f'</thead><tbody>{"".join(rows)}</tbody></table>')


def login_page(error: str | None, next_path: str) -> str:
    err = f'<p class="error" role="alert">{_e(error)}</p>' if error else ""
    return ('<!doctype html><html lang="en"><head><meta charset="utf-8">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            '<title>Log in · usageledger</title><link rel="stylesheet" href="/static/dashboard.css">'
            '</head><body class="login"><main><h1>usageledger</h1>'
            f'{err}<form method="post" action="/login"><label>API key'
            '<input type="password" name="api_key" autocomplete="current-password" required autofocus>'
            f'</label><input type="hidden" name="next" value="{_e(next_path)}">'
            '<button type="submit">Log in</button></form></main></body></html>')
