"""Helpers of the budget tests: what a webhook (a FaultServer) took, and waiting."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from tests.server.support import record as _record
from tests.support.fault_server import FaultServer


def delivered(srv: FaultServer) -> list[dict]:
    """The alert bodies the webhook answered 200 to, in order."""
    with srv.lock:
        return [json.loads(r.body) for r in srv.requests if r.status == 200]


def wait_until(pred: Callable[[], bool], timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.05)
    return pred()


def record(**kw: Any) -> dict[str, Any]:
    """A record as clients send it, stamped now (so it is in today's windows)."""
    return _record(timestamp=datetime.now(UTC).isoformat(), **kw)
