"""The collector service: ``create_app(storage, api_keys=None, max_body_bytes=...)`` and
``serve(storage, host=, port=, api_keys=)`` (needs the ``server`` extra)."""

from .app import create_app, serve

__all__ = ["create_app", "serve"]
