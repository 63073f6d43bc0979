"""A pool of 60 nodes in every Kamailio way (native, KEMI, sidecar), cold
start included: the split must follow the weights as it does with 3.

Dispatcher's own algorithm 11 (rweight), which the examples used on cold
start, sends about a quarter of all calls to the first destination once a
set has more than about 25 (kamailio issue 2698); the examples now choose
in script, in proportion to the rweights, with any number of nodes.

60 SIPp UASes (tests/sipp/kamailio/uas.xml), one per node; the caller
counts the X-Node of each answer. Each node's count must be within 5
standard deviations + 1 of calls x its share (`split_within`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from sipstatus.codec import decode
from sipstatus.proxy.kamailio import JsonRpcClient
from sipstatus.proxy.nodetable import NodeTable
from sipstatus.proxy.policy import make_policy
from tests.support import ROOT
from tests.support.kamailio import EXAMPLES, Kamailio, needs_kamailio, start_example
from tests.support.sip import Publisher, SipClient, body
from tests.support.sipp import SippNode, place_calls, split_within

pytestmark = needs_kamailio("jansson", "app_python3")

NODES = 60
CALLS = 1200
NAMES = [f"n{i:02d}" for i in range(NODES)]
#: Cold-start rweights 1..10 and reported weight hints 5..100, all over the place.
RWEIGHTS = {name: 1 + (7 * i) % 10 for i, name in enumerate(NAMES)}
HINTS = {name: 5 + (37 * i) % 96 for i, name in enumerate(NAMES)}


def publish(kam: Kamailio) -> None:
    client = SipClient(kam.port)
    try:
        for name, weight in HINTS.items():
            assert Publisher(client, name).report(weight).status == 200
    finally:
        client.close()


def push(kam: Kamailio) -> None:
    """What the sidecar pushes: htable.seti sipstatus NODE WEIGHT."""
    rpc = JsonRpcClient(f"unix:{kam.workdir}/kamailio_rpc.sock")
    for name, weight in HINTS.items():
        rpc.call("htable.seti", "sipstatus", name, weight)


def default_policy() -> dict[str, int]:
    """The KEMI script's weights for the hints (the library's default policy, no limits)."""
    table = NodeTable(NAMES)
    for name, weight in HINTS.items():
        table.update(decode(body(name, weight)), 0.0)
    return make_policy().weights(table.views(1.0))


WAYS: dict[str, tuple[Path, Callable[[Kamailio], None], Callable[[], dict[str, int]], dict, dict]] = {
    "native": (EXAMPLES / "native" / "kamailio.cfg", publish, lambda: HINTS, {}, {}),
    "kemi": (EXAMPLES / "kemi" / "kamailio.cfg", publish, default_policy,
             {"KEMI_SCRIPT": f'"{EXAMPLES / "kemi" / "sipstatus_kemi.py"}"'}, {"SIPSTATUS_PATH": str(ROOT)}),
    "sidecar": (EXAMPLES / "sidecar" / "kamailio.cfg", push, lambda: HINTS, {}, {}),
}


@pytest.mark.parametrize("phase", ["cold start", "reported"])
@pytest.mark.parametrize("way", list(WAYS))
def test_sixty_nodes_split_by_their_weights(workdir: Path, nodes: dict[str, SippNode], way: str,
                                            phase: str) -> None:
    config, weigh, weights, defines, env = WAYS[way]
    # No failover and no probing here: 60 SIPp processes on a busy test
    # machine may answer late, and that is not what this test is about.
    kam = start_example(config, workdir, nodes.values(), {"FAILOVER_TIMEOUT": 30000, "DS_PING_INTERVAL": 0, **defines}, env)
    try:
        expected = RWEIGHTS
        if phase == "reported":
            weigh(kam)
            expected = weights()
        # 150 calls/s: the KEMI script builds a NodeTable of 60 nodes per call,
        # and the test machine is shared.
        counts = place_calls(kam.port, CALLS, workdir, rate=150)
        top = sorted(counts.items(), key=lambda kv: -kv[1])[:3]
        print(f"[{way}, {phase}] {CALLS} calls over {NODES} nodes; most: {top}, least: "
              f"{min((counts.get(n, 0), n) for n in NAMES)}")
        problems = split_within(counts, expected, CALLS)
        assert not problems, f"{problems}\n{kam.log_tail(10)}"
    finally:
        kam.stop()
