"""Fixtures shared by the interop test modules."""

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.e2e_pool import SPECS, UAS, E2eNode
from tests.support.fake_ami import FakeAmis, Scenario
from tests.support.sipp import SippNode


@pytest.fixture(scope="module")
def pool(workdir: Path) -> Iterator[dict[str, E2eNode]]:
    """The SIPp nodes and their fake AMIs, shared by every test."""
    amis = FakeAmis()
    started: list[SippNode] = []
    nodes: dict[str, E2eNode] = {}
    try:
        for name, spec in SPECS.items():
            uas = SippNode(name, workdir, spec.rweight, scenario=UAS, log=True)
            uas.start()
            started.append(uas)
            port = amis.serve(Scenario(answers={"CoreShowChannels": spec.transcript}, max_calls=spec.core_max_calls))
            nodes[name] = E2eNode(name, uas, port)
        yield nodes
    finally:
        for uas in started:
            uas.stop()
        amis.close()
