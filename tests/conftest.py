"""Fixtures and hooks shared by several test modules.

The Kamailio modules (tests/interop/test_kamailio_*.py) share a pool of SIPp
nodes and Kamailios started from one example configuration:
- a module names its pool in `RWEIGHTS` (node name -> rweight, the
  cold-start split in the dispatcher list) and gets `nodes`, one SIPp UAS per
  node, for the whole module, in `workdir`; a node named in the module's
  `SCENARIOS` (node name -> SIPp scenario) runs that scenario instead, with
  SIPp logging what it does;
- a module defines `start_kamailio(workdir, nodes, **defines)` (the example
  it runs, with its defines) and gets `kam` (a fresh Kamailio per test, with
  the module's `KAM_DEFINES` if it has them), `shared` (one Kamailio for the
  module's tests that change nothing) and `client` (a SipClient to `kam`).
"""

import shutil
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import pytest

from tests.support.kamailio import Kamailio
from tests.support.kamailio_rpc import running_kamailio
from tests.support.sip import SipClient
from tests.support.sipp import SippNode


@pytest.fixture
def kamailio(tmp_path):
    """A real Kamailio with DISPATCHER_LIST; yields its run directory
    (rpc.sock, rpc.fifo, dispatcher.list, kamailio.log)."""
    with running_kamailio(tmp_path) as run:
        yield run


@pytest.fixture(scope="module")
def workdir(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Logs, configurations and sockets of the module's processes; removed
    at the end (failing assertions quote the log tails they need)."""
    path = tmp_path_factory.mktemp(request.module.__name__.rsplit(".", 1)[-1])
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def nodes(request: pytest.FixtureRequest, workdir: Path) -> Iterator[dict[str, SippNode]]:
    """One SIPp UAS for each node of the module's RWEIGHTS, answering every
    INVITE with 200 and its name in X-Node (or running its SCENARIOS one)."""
    scenarios: dict[str, Path] = getattr(request.module, "SCENARIOS", {})
    started: dict[str, SippNode] = {}
    try:
        for name, rweight in request.module.RWEIGHTS.items():
            scenario = scenarios.get(name)
            started[name] = SippNode(name, workdir, rweight, scenario=scenario, log=scenario is not None)
            started[name].start()
        yield started
    finally:
        for node in started.values():
            node.stop()


def _kamailio_of(request: pytest.FixtureRequest, workdir: Path, nodes: dict[str, SippNode],
                 defines: dict[str, str | int | None]) -> Iterator[Kamailio]:
    kam = request.module.start_kamailio(workdir, nodes, **defines)
    try:
        yield kam
    finally:
        kam.stop()


@pytest.fixture
def kam(request: pytest.FixtureRequest, workdir: Path, nodes: dict[str, SippNode]) -> Iterator[Kamailio]:
    """A fresh Kamailio for a test that changes its state."""
    yield from _kamailio_of(request, workdir, nodes, getattr(request.module, "KAM_DEFINES", {}))


@pytest.fixture(scope="module")
def shared(request: pytest.FixtureRequest, workdir: Path, nodes: dict[str, SippNode]) -> Iterator[Kamailio]:
    """One Kamailio for the tests of requests that must change nothing."""
    yield from _kamailio_of(request, workdir, nodes, {})


@pytest.fixture
def client(kam: Kamailio) -> Iterator[SipClient]:
    c = SipClient(kam.port)
    yield c
    c.close()


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
