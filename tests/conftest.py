"""Fixtures and hooks shared by several test modules."""

from functools import cache

import pytest

from tests.support.kamailio_rpc import running_kamailio


@pytest.fixture
def kamailio(tmp_path):
    """A real Kamailio with DISPATCHER_LIST; yields its run directory
    (rpc.sock, rpc.fifo, dispatcher.list, kamailio.log)."""
    with running_kamailio(tmp_path) as run:
        yield run


@cache
def _peer_missing(marker: str) -> str:
    """Why the real-peer tier `marker` cannot run here, or "" if it can."""
    if marker == "asterisk":
        from tests.support.asterisk_live import PREFIX, WHY_NOT
        return "" if PREFIX is not None else WHY_NOT or "Asterisk is not available"
    from tests.support.opensips import opensips_build
    return opensips_build()[1]


def pytest_runtest_setup(item: pytest.Item) -> None:
    # A tier whose peer is missing is skipped here, from one line, so that
    # pytest's summary folds its tests into one line that says why.
    for marker in ("asterisk", "opensips"):
        if item.get_closest_marker(marker) is not None:
            why = _peer_missing(marker)
            if why:
                pytest.skip(why)
