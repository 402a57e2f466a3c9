from __future__ import annotations

import logging

import pytest

from . import helpers


@pytest.fixture
def make(tmp_path):
    """Trackers made here are shut down at the end of the test."""
    made = []

    def _make(*args, **kw):
        t = helpers.tracker(tmp_path, *args, **kw)
        made.append(t)
        return t

    yield _make
    for t in made:
        t.shutdown(5)


@pytest.fixture
def logs(caplog):
    caplog.set_level(logging.INFO, logger="usageledger")
    return caplog
