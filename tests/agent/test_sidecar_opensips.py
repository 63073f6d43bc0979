"""`sipstatus sidecar --opensips-mi`: load_balancer capacities and states in
an OpenSIPS (the MI server of tests/support/fake_opensips_mi.py, which follows the
OpenSIPS documentation; OpenSIPS is not in Debian) follow the agents."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from tests.support import ROOT
from tests.support.fake_agents import AgentsProcess
from tests.support.fake_opensips_mi import FakeMiServer, FakeOpenSips, LbDst


def lb_view(state: FakeOpenSips) -> dict[str, tuple[int, bool]]:
    """node -> (channels capacity, enabled)."""
    return {d.attrs.split("=", 1)[1]: (d.resources["channels"][0], not d.disabled) for d in state.lb}


def wait_for(state: FakeOpenSips, expected: dict, log, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while (seen := lb_view(state)) != expected:
        if time.monotonic() > deadline:
            pytest.fail(f"OpenSIPS never showed {expected}: {seen}\n{log.read_text()[-2000:]}")
        time.sleep(0.1)


def test_sidecar_sizes_load_balancer_destinations_and_disables_a_draining_node(tmp_path):
    state = FakeOpenSips(lb=[LbDst(1, 1, "sip:127.0.0.1:5061", {"channels": [30, 0]}, attrs="node=ast1"),
                             LbDst(2, 1, "sip:127.0.0.1:5062", {"channels": [30, 0]}, attrs="node=ast2")])
    log = tmp_path / "sidecar.log"
    with FakeMiServer(state) as mi, AgentsProcess("ast1:0.5:200", "ast2:0.25:100") as agents:
        args = [f"--agent={node}={uri}" for node, uri in agents.uris.items()]
        proc = subprocess.Popen([sys.executable, "-m", "sipstatus.cli", "sidecar", "--listen", "udp:127.0.0.1:0",
                                 "--opensips-mi", mi.url, *args], cwd=ROOT, stderr=open(log, "w"))
        try:
            # Capacity = OpenSIPS's own load (0) + free slots: 0.5 x 200, 0.25 x 100.
            wait_for(state, {"ast1": (100, True), "ast2": (25, True)}, log)
            agents.command("set ast2 state=draining")
            wait_for(state, {"ast1": (100, True), "ast2": (25, False)}, log)
        finally:
            proc.terminate()
            proc.wait(10)


def test_an_unreachable_opensips_is_named_and_the_sidecar_keeps_running(tmp_path):
    log = tmp_path / "sidecar.log"
    with AgentsProcess("ast1:0.5:200") as agents:
        proc = subprocess.Popen([sys.executable, "-m", "sipstatus.cli", "sidecar", "--listen", "udp:127.0.0.1:0",
                                 "--opensips-mi", "http://127.0.0.1:9/mi", f"--agent=ast1={agents.uris['ast1']}"],
                                cwd=ROOT, stderr=open(log, "w"))
        try:
            deadline = time.monotonic() + 15
            while "cannot reach OpenSIPS MI" not in log.read_text() and time.monotonic() < deadline:
                time.sleep(0.1)
            assert "cannot reach OpenSIPS MI at http://127.0.0.1:9/mi" in log.read_text()
            assert proc.poll() is None
        finally:
            proc.terminate()
            proc.wait(10)


def test_opensips_mi_flag_must_be_an_http_url():
    result = subprocess.run([sys.executable, "-m", "sipstatus.cli", "sidecar", "--opensips-mi", "ftp://x",
                             "--agent=ast1=sip:127.0.0.1:5070", "--check-config"],
                            cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 2
    assert "--opensips-mi: expected the mi_http URL" in result.stderr
