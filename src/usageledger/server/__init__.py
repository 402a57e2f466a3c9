"""The collector service: ``create_app(storage, api_keys=None, max_body_bytes=...)`` and
``serve(storage, host=, port=, api_keys=)`` (need the ``server`` extra), over the
ingestion rules of :class:`usageledger.server.collector.Collector` (which need no extra:
``usageledger import`` uses them too)."""

from __future__ import annotations

from typing import Any

__all__ = ["create_app", "serve"]


def __getattr__(name: str) -> Any:
    # the web framework is imported only when the app is asked for, so the command line
    # can use the Collector without the server extra installed
    if name in __all__:
        from . import app

        return getattr(app, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
