"""`usageledger keys ...`: project API keys kept in a collector's storage (docs/collector.md,
"Security"). The secret of a new key is printed once; the storage keeps only its salted
hash."""

from __future__ import annotations

import json

import typer

keys_app = typer.Typer(no_args_is_help=True, help="Project API keys kept in a storage: create, list, revoke.")

_STORAGE = typer.Option(..., "--storage", help="storage URL the collector uses (sqlite:///..., postgresql://...)", show_default=False)


def _key_store(storage: str):  # type: ignore[no-untyped-def]
    from ._console import _storage

    store = _storage(storage, must_exist=False)
    if not getattr(store, "supports_keys", False):
        store.close()
        raise ValueError(f"the storage {storage!r} ({type(store).__name__}) does not keep API keys: "
                         "use sqlite or postgresql")
    return store


@keys_app.command("create")
def keys_create(
    project: str = typer.Option(..., "--project", help="the project the key belongs to", show_default=False),
    role: str = typer.Option(..., "--role", help="ingest (write usage and runs), read (GET only) or admin", show_default=False),
    name: str = typer.Option(None, "--name", help="a label for listings", show_default=False),
    expires: str = typer.Option(None, "--expires", help="ISO 8601 expiry time (default: never)", show_default=False),
    storage: str = _STORAGE,
    as_json: bool = typer.Option(False, "--json", help="print JSON"),
) -> None:
    """Create a key and print its secret (shown this once: store it now)."""
    from ..server.auth import new_key, public_key

    row, token = new_key(project, role, name, expires)
    store = _key_store(storage)
    try:
        store.put_key(row)
    finally:
        store.close()
    if as_json:
        print(json.dumps({**public_key(row), "key": token}))
    else:
        print(token)
        typer.echo(f"key {row['id']} ({role} of project {project}) created; the secret above is "
                   "not shown again", err=True)


@keys_app.command("list")
def keys_list(
    storage: str = _STORAGE,
    project: str = typer.Option(None, "--project", help="only this project's keys", show_default=False),
    as_json: bool = typer.Option(False, "--json", help="print JSON"),
) -> None:
    """The keys (never their secrets), revoked ones included."""
    from ..server.auth import public_key
    from ._console import _out

    store = _key_store(storage)
    try:
        rows = [public_key(r) for r in store.list_keys(project)]
    finally:
        store.close()
    if as_json:
        print(json.dumps({"keys": rows}))
        return
    from rich.table import Table

    table = Table("id", "project", "role", "name", "created", "expires", "revoked")
    for r in rows:
        table.add_row(r["id"], r["project"], r["role"], r["name"] or "", r["created_at"],
                      r["expires_at"] or "", r["revoked_at"] or "")
    _out().print(table)


@keys_app.command("revoke")
def keys_revoke(
    key_id: str = typer.Argument(..., help="the key's id (as listed)", show_default=False),
    storage: str = _STORAGE,
) -> None:
    """Revoke a key: every collector on this storage refuses it from its next request."""
    from datetime import UTC, datetime

    store = _key_store(storage)
    try:
        done = store.revoke_key(key_id, datetime.now(UTC).isoformat().replace("+00:00", "Z"))
    finally:
        store.close()
    if not done:
        raise ValueError(f"no active key {key_id!r} in {storage}")
    typer.echo(f"key {key_id} revoked")
