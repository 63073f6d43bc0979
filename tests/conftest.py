"""Fixtures shared by several test modules."""

import pytest

from tests.kamailio_rpc_fixture import running_kamailio


@pytest.fixture
def kamailio(tmp_path):
    """A real Kamailio with DISPATCHER_LIST; yields its run directory
    (rpc.sock, rpc.fifo, dispatcher.list, kamailio.log)."""
    with running_kamailio(tmp_path) as run:
        yield run
