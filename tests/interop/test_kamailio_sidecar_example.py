"""The sidecar example (packaging/examples/kamailio/sidecar/) against the real
Kamailio from Debian, three SIPp nodes, a SIPp caller, and `sipstatus
sidecar` following three agents (served in another process by
tests/support/fake_agents.py).

The split of the weighted random choice is checked against a binomial bound
(`split_within`, 5 sigma + 1): see tests/interop/test_kamailio_native.py.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from sipstatus.proxy.kamailio import JsonRpcClient, RpcError
from tests.support import ROOT
from tests.support.fake_agents import AgentsProcess
from tests.support.kamailio import EXAMPLES, Kamailio, needs_kamailio, start_example
from tests.support.sipp import SippNode, place_calls, split_within

pytestmark = needs_kamailio("jansson")

CONFIG = EXAMPLES / "sidecar" / "kamailio.cfg"
CALLS = 600
RWEIGHTS = {"ast1": 10, "ast2": 30, "ast3": 60}


def start_kamailio(workdir: Path, nodes: dict[str, SippNode], **defines: str | int | None) -> Kamailio:
    return start_example(CONFIG, workdir, nodes.values(), defines)


def sidecar(kam: Kamailio, agents: AgentsProcess, workdir: Path) -> subprocess.Popen:
    args = [f"--agent={node}={uri}" for node, uri in agents.uris.items()]
    log = open(workdir / f"sidecar-{kam.port}.log", "w")
    # Free slots, named: the weights these tests expect are its arithmetic
    # (the sidecar's default is water-fill, which needs call counts).
    return subprocess.Popen([sys.executable, "-m", "sipstatus.cli", "sidecar", "--listen", "udp:127.0.0.1:0",
                             "--policy", "free-slots",
                             "--kamailio-rpc", f"unix:{kam.workdir}/kamailio_rpc.sock", *args],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=log, start_new_session=True)


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def wait_for_weights(kam: Kamailio, expected: dict[str, int], timeout: float = 20.0) -> None:
    rpc = JsonRpcClient(f"unix:{kam.workdir}/kamailio_rpc.sock")
    deadline = time.monotonic() + timeout
    seen: dict[str, int | None] = {}
    while time.monotonic() < deadline:
        seen = {}
        for node in expected:
            try:
                seen[node] = rpc.call("htable.get", "sipstatus", node)["item"]["value"]
            except RpcError:
                seen[node] = None
        if seen == expected:
            return
        time.sleep(0.1)
    pytest.fail(f"Kamailio's htable never showed {expected}: {seen}")


def test_cold_start_without_the_sidecar_uses_rweight(kam: Kamailio, workdir: Path) -> None:
    # A weighted random choice in the script (not dispatcher's algorithm 11,
    # which is exact for three nodes but sends a quarter of all calls to the
    # first destination of a larger set: kamailio issue 2698).
    counts = place_calls(kam.port, CALLS, workdir)
    problems = split_within(counts, RWEIGHTS, CALLS)
    assert not problems, f"split {dict(counts)} for rweights {RWEIGHTS}: {problems}\n{kam.log_tail()}"


def test_calls_follow_the_weights_the_sidecar_pushes(kam: Kamailio, workdir: Path) -> None:
    # Free slots (named in `sidecar`): capacity x limit, scaled to
    # the roomiest: 0.6 x 100 = 60, 0.3 x 100 = 30, 0.5 x 20 = 10.
    with AgentsProcess("ast1:0.6:100", "ast2:0.3:100", "ast3:0.5:20") as agents:
        proc = sidecar(kam, agents, workdir)
        try:
            expected = {"ast1": 100, "ast2": 50, "ast3": 17}
            wait_for_weights(kam, expected)
            counts = place_calls(kam.port, CALLS, workdir)
            assert counts["failed"] == 0
            assert split_within(counts, expected, CALLS) == []
        finally:
            stop(proc)


def test_a_draining_node_gets_no_new_calls(kam: Kamailio, workdir: Path) -> None:
    with AgentsProcess("ast1:0.6:100", "ast2:0.3:100", "ast3:0.5:100") as agents:
        proc = sidecar(kam, agents, workdir)
        try:
            wait_for_weights(kam, {"ast1": 100, "ast2": 50, "ast3": 83})
            agents.command("set ast1 state=draining")
            # ast1 takes no calls: the roomiest of the rest (ast3) scales to 100.
            wait_for_weights(kam, {"ast1": 0, "ast2": 60, "ast3": 100})
            counts = place_calls(kam.port, 300, workdir)
            assert counts["ast1"] == 0 and counts["failed"] == 0
            assert split_within(counts, {"ast2": 60, "ast3": 100}, 300) == []
        finally:
            stop(proc)
