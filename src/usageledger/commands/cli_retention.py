"""`usageledger retention apply`: fold old raw records into exact daily rollups and delete
them (docs/collector.md, "Retention")."""

from __future__ import annotations

import json

import typer

retention_app = typer.Typer(no_args_is_help=True, help="Retention: bound the storage, keep every summary exact.")


@retention_app.command("apply")
def retention_apply(
    storage: str = typer.Option(..., "--storage", help="storage URL (sqlite:///..., postgresql://..., memory://)", show_default=False),
    days: int = typer.Option(None, "--days", min=1, help="keep raw records of the last N days (from the start of that UTC day)", show_default=False),
    project_days: list[str] = typer.Option(None, "--project-days", help="PROJECT=DAYS: a project's own retention (repeatable)", show_default=False),
    batch: int = typer.Option(5000, "--batch", min=1, help="records per transaction"),
    as_json: bool = typer.Option(False, "--json", help="print JSON"),
) -> None:
    """Fold raw records (and runs) older than the retention into daily rollups and delete
    them; safe to interrupt and run again."""
    from ..storage.retention import apply_retention, parse_project_days
    from ._console import _storage

    per_project = parse_project_days(project_days)
    if days is None and not per_project:
        raise typer.BadParameter("give --days N and/or --project-days PROJECT=DAYS", param_hint="--days")
    store = _storage(storage, must_exist=True)
    try:
        done = apply_retention(store, days, per_project, batch=batch)
    finally:
        store.close()
    if as_json:
        print(json.dumps(done))
    else:
        typer.echo(f"folded {done['records']} records and {done['runs']} runs into daily rollups "
                   f"(cutoffs: {', '.join(f'{p} {c}' for p, c in done['cutoffs'].items())})")
