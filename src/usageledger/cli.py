"""The `usageledger` command line (typer). `queue-monitor DB` is an alias of `monitor`."""

from __future__ import annotations

import sys

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, help="usageledger: LLM usage, delivered exactly once in effect.")


@app.command()
def serve(
    storage: str = typer.Option("sqlite:///usageledger.db", help="storage URL: sqlite:///path, postgresql://..., memory://"),
    host: str = typer.Option("127.0.0.1", help="interface to bind"),
    port: int = typer.Option(8765, help="port to listen on"),
    api_key: list[str] = typer.Option(None, "--api-key", help="accepted bearer key (repeatable); none: loopback only"),
) -> None:
    """Run the collector service."""
    from .server.app import serve as run

    run(storage, host=host, port=port, api_keys=api_key or None)


@app.command()
def demo(
    port: int = typer.Option(8765, help="collector port"),
    records: int = typer.Option(3000, help="simulated LLM calls to record"),
    keep_running: bool = typer.Option(True, help="leave the collector running until Ctrl-C"),
) -> None:
    """Collector on SQLite + a producer + a cost report (what `make demo` runs)."""
    from .demo import run_demo

    run_demo(port=port, n=records, keep_running=keep_running)


def main() -> None:
    app()


def queue_monitor_main() -> None:
    sys.argv = [sys.argv[0], "monitor", *sys.argv[1:]]
    app()


if __name__ == "__main__":
    main()
