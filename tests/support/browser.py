"""A real headless Chromium for page tests: Debian's ``chromium`` package (installed when
missing, as the database servers are) driven through Playwright's Python API, never a
browser that Playwright downloads."""

from __future__ import annotations

import shutil

from tests.support.servers import _apt_install

#: flags for a sandbox-less root CI box with no network: without the background-networking
#: ones Chromium keeps trying to reach Google's hosts
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage",
]


def chromium_path() -> str:
    path = shutil.which("chromium")
    if path is None:
        _apt_install("chromium")
        path = shutil.which("chromium")
    if path is None:
        raise RuntimeError("chromium is not on PATH after installing Debian's chromium package")
    return path


def launch(playwright):  # noqa: ANN001, ANN201 (Playwright's own types)
    return playwright.chromium.launch(executable_path=chromium_path(), headless=True,
                                      args=CHROMIUM_ARGS)
