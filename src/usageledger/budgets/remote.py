"""Budgets on a collector, through its API: the same ``put``/``status``/``list``/``remove``
as :class:`~usageledger.budgets.Budgets` (what ``usageledger budget --url`` uses)."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import httpx

__all__ = ["RemoteBudgets"]


class RemoteBudgets:
    def __init__(self, api_base: str, api_key: str | None = None, *, timeout: float = 30.0):
        if not api_base.startswith(("http://", "https://")):
            raise ValueError(f"--url must be an http(s) URL, got {api_base!r}")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.base = api_base.rstrip("/") + "/api/v1/budgets"
        self._http = httpx.Client(timeout=timeout, headers=headers)

    def _answer(self, resp: httpx.Response, what: str) -> Any:
        if resp.status_code == 404:
            return None
        if resp.status_code >= 400:
            try:
                detail = resp.json().get("detail", resp.text)
            except ValueError:
                detail = resp.text
            raise ValueError(f"{what}: the collector answered {resp.status_code}: {detail}")
        return resp.json()

    def put(self, name: str, body: dict[str, Any], source: str = "") -> dict[str, Any]:
        return self._answer(self._http.put(f"{self.base}/{quote(name, safe='')}", json=body), f"budget {name!r}")

    def status(self, name: str) -> dict[str, Any] | None:
        return self._answer(self._http.get(f"{self.base}/{quote(name, safe='')}"), f"budget {name!r}")

    def list(self) -> list[dict[str, Any]]:
        return self._answer(self._http.get(self.base), "budgets")["budgets"]

    def remove(self, name: str) -> bool:
        return self._answer(self._http.delete(f"{self.base}/{quote(name, safe='')}"), f"budget {name!r}") is not None

    def close(self) -> None:
        self._http.close()
