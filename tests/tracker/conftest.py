from __future__ import annotations

import logging

import pytest

from . import helpers


@pytest.fixture
def make(tmp_path, caplog):
    """Trackers made here are shut down at the end of the test, which then checks that no
    unexpected exception was caught and logged inside usageledger (failures must be
    handled as such, not reach a catch-all)."""
    made = []

    def _make(*args, **kw):
        t = helpers.tracker(tmp_path, *args, **kw)
        made.append(t)
        return t

    yield _make
    for t in made:
        t.shutdown(5)
    unexpected = [r for r in caplog.records if r.name.startswith("usageledger") and r.exc_info]
    assert not unexpected, [r.getMessage() for r in unexpected]


@pytest.fixture
def logs(caplog):
    caplog.set_level(logging.INFO, logger="usageledger")
    return caplog
