"""Helpers shared by the capture tests."""

from __future__ import annotations

import re
from typing import Any

MESSAGES = [{"role": "user", "content": "hi"}]
_IDS = re.compile(r"(chatcmpl-|resp_|msg_)\d{6}")


def same_ids(text: str) -> str:
    """``text`` with the fake server's per-response ids blanked (they differ per call)."""
    return _IDS.sub(r"\1ID", text)


def dump(obj: Any) -> str:
    """What a user sees of an SDK object, ids blanked."""
    text = obj.model_dump_json(warnings=False) if hasattr(obj, "model_dump_json") else repr(obj)
    return same_ids(text)


def tokens(record: Any) -> dict[str, int]:
    return {name: getattr(record, name) for name in (
        "input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens",
        "reasoning_tokens")}
