from __future__ import annotations

import logging

import pytest

from . import helpers


@pytest.fixture
def make(tmp_path, caplog):
    """Trackers made here are shut down at the end of the test, which then checks that no
    unexpected exception reached the tracker's or the sink's catch-alls (failures must be
    handled as such)."""
    made = []

    def _make(*args, **kw):
        t = helpers.tracker(tmp_path, *args, **kw)
        made.append(t)
        return t

    yield _make
    for t in made:
        t.shutdown(5)
    # the tracker's and the sink's own catch-alls (the core dispatcher logs a journal on a
    # full disk with its traceback by design, so it is not checked here)
    mine = ("usageledger.summary", "usageledger.tracker")
    unexpected = [r for r in caplog.records if r.name in mine and r.exc_info]
    assert not unexpected, [r.getMessage() for r in unexpected]


@pytest.fixture
def logs(caplog):
    caplog.set_level(logging.INFO, logger="usageledger")
    return caplog
