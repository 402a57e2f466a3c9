"""BudgetGuard: ask a collector whether a call may go ahead, before making it.

    guard = BudgetGuard("http://127.0.0.1:8765", "KEY")
    guard.require(user_id="u1", model="gpt-4o")   # raises BudgetExceeded when over budget

Answers are cached per set of attributes for ``cache_s`` seconds (one request per second
per distinct caller at most, by default). A collector that cannot be asked follows
``fail_open``: True (default) allows the call and logs once until the collector answers
again; False refuses it with :class:`BudgetUnavailable` (a :class:`BudgetExceeded`).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import httpx

from ..schema.records import UsageRecord
from .engine import check_attributes
from .model import SCOPE_KEYS, BudgetExceeded, BudgetUnavailable

__all__ = ["BudgetGuard"]

log = logging.getLogger("usageledger.budgets")

#: record fields a budget's scope never names
_IGNORED = frozenset(UsageRecord.__struct_fields__) - set(SCOPE_KEYS)


class BudgetGuard:
    def __init__(
        self,
        api_base: str,
        api_key: str | None = None,
        *,
        cache_s: float = 1.0,
        fail_open: bool = True,
        timeout: float = 2.0,
        api_url: str = "/api/v1",
    ):
        if not isinstance(api_base, str) or not api_base.startswith(("http://", "https://")):
            raise ValueError(f"api_base must be an http(s) URL, got {api_base!r}")
        if isinstance(cache_s, bool) or not isinstance(cache_s, int | float) or cache_s < 0:
            raise ValueError(f"cache_s must be a non-negative number of seconds, got {cache_s!r}")
        self.url = api_base.rstrip("/") + "/" + api_url.strip("/") + "/budgets/check"
        self.cache_s = float(cache_s)
        self.fail_open = fail_open
        headers = {"User-Agent": "usageledger-guard"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self._http = httpx.Client(timeout=timeout, headers=headers)
        self._cache: dict[tuple, tuple[float, dict[str, Any]]] = {}
        self._lock = threading.Lock()
        self._warned = False

    def check(self, **attributes: Any) -> dict[str, Any]:
        """The collector's answer for a call with these attributes (provider, model,
        user_id, customer_key, session_id, tags): ``{"allowed", "exceeded", "budgets"}``.
        When the collector cannot answer and ``fail_open`` is True: allowed, with
        ``"error"`` saying why."""
        # a caller passing every attribute of its records (run_id, response_id...) is not
        # wrong: record fields no budget scopes on are left out; any other name is an error
        attrs = check_attributes({k: v for k, v in attributes.items() if k not in _IGNORED}, "BudgetGuard.check")
        key = tuple(sorted((k, tuple(sorted(v.items())) if k == "tags" else v) for k, v in attrs.items()))
        now = time.monotonic()
        with self._lock:
            hit = self._cache.get(key)
        if hit is not None and now - hit[0] < self.cache_s:
            return hit[1]
        params: list[tuple[str, str]] = [(k, v) for k, v in attrs.items() if k != "tags"]
        params += [("tags", f"{k}:{v}") for k, v in attrs.get("tags", {}).items()]
        try:
            resp = self._http.get(self.url, params=params)
            if resp.status_code != 200:
                raise httpx.HTTPStatusError(f"HTTP {resp.status_code}: {resp.text[:200]}",
                                            request=resp.request, response=resp)
            answer = resp.json()
        except (httpx.HTTPError, ValueError) as exc:
            return self._unavailable(f"{type(exc).__name__}: {exc}", attrs)
        if self._warned:
            log.info("budget checks at %s answer again", self.url)
            self._warned = False
        with self._lock:
            if len(self._cache) > 10_000:
                self._cache.clear()
            self._cache[key] = (now, answer)
        return answer

    def _unavailable(self, error: str, attrs: dict[str, Any]) -> dict[str, Any]:
        if not self.fail_open:
            raise BudgetUnavailable([], {"allowed": False, "exceeded": [], "budgets": [], "error": error},
                                    f"budget check unavailable at {self.url} ({error}); fail_open=False refuses the call")
        if not self._warned:
            self._warned = True
            log.warning("budget check unavailable at %s (%s): allowing calls (fail_open=True)", self.url, error)
        return {"allowed": True, "exceeded": [], "budgets": [], "error": error}

    def require(self, **attributes: Any) -> dict[str, Any]:
        """:meth:`check`, raising :class:`BudgetExceeded` unless the call is allowed."""
        answer = self.check(**attributes)
        if not answer.get("allowed", False):
            raise BudgetExceeded(list(answer.get("exceeded", [])), answer)
        return answer

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> BudgetGuard:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
