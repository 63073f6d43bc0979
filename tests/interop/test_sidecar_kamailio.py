"""`sipstatus sidecar` pushing into a REAL Kamailio 5.6 over JSON-RPC: the
htable values and dispatcher states follow what the agents report.

The agents are served by another process (tests/support/fake_agents.py)
over UDP on the loopback; Kamailio is started per test
(tests/support/kamailio_rpc.py). The tests wait for Kamailio to show what
they expect, with a deadline.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from sipstatus.proxy.kamailio import JsonRpcClient, KamailioSink, RpcError
from tests.support import ROOT
from tests.support.fake_agents import AgentsProcess
from tests.support.kamailio_rpc import running_kamailio
from tests.support.ports import free_port

pytestmark = pytest.mark.interop


def sidecar(*args: str, log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "sipstatus.cli", "sidecar", "--listen", "udp:127.0.0.1:0",
                             "--log-level", "debug", *args],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=open(log, "w"))


def stop(proc: subprocess.Popen, log: Path) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        pytest.fail(f"the sidecar did not stop on SIGTERM: {log.read_text()[-2000:]}")


def kamailio_view(rpc: JsonRpcClient, group: int = 1) -> dict[str, tuple[int | None, str]]:
    """node -> (htable weight or None, dispatcher state letter)."""
    view = {}
    for dest in KamailioSink(rpc, group=group).destinations():
        try:
            weight = rpc.call("htable.get", "sipstatus", dest.node)["item"]["value"]
        except RpcError:
            weight = None  # not set yet
        view[dest.node] = (weight, dest.flags[:1])
    return view


def wait_for(rpc: JsonRpcClient, expected: dict, log: Path, what: str, timeout: float = 15.0,
             group: int = 1) -> None:
    deadline = time.monotonic() + timeout
    while (seen := kamailio_view(rpc, group)) != expected:
        if time.monotonic() > deadline:
            pytest.fail(f"Kamailio never showed {what}: {seen} != {expected}\nsidecar log:\n"
                        f"{log.read_text()[-3000:]}")
        time.sleep(0.05)


def dispatcher_list(uris: dict[str, str], group: int = 1) -> str:
    # Kamailio's destinations are the Asterisk nodes; their agents are on the same hosts.
    lines = ["# the pool; duid names the sipstatus node"]
    for port, node in enumerate(sorted(uris), start=5081):
        host = uris[node].split(":")[1]
        lines.append(f"{group} sip:{host}:{port} 0 0 duid={node}")
    return "\n".join(lines) + "\n"


def test_htable_and_dispatcher_states_follow_the_agents(tmp_path):
    log = tmp_path / "sidecar.log"
    with AgentsProcess("ast1:0.5:100", "ast2:0.8:100", validity=2) as agents, \
            running_kamailio(tmp_path, dispatcher_list(agents.uris)) as run:
        rpc = JsonRpcClient(f"unix:{run}/rpc.sock")
        proc = sidecar("--policy", "headroom", "--kamailio-rpc", f"unix:{run}/rpc.sock",
                       *(f"--agent={n}={u}" for n, u in agents.uris.items()), log=log)
        try:
            wait_for(rpc, {"ast1": (50, "A"), "ast2": (80, "A")}, log, "the first weights")
            agents.command("set ast2 state=draining")
            wait_for(rpc, {"ast1": (50, "A"), "ast2": (0, "I")}, log, "ast2 drained")
            agents.command("set ast2 state=active capacity=0.3")
            wait_for(rpc, {"ast1": (50, "A"), "ast2": (30, "A")}, log, "ast2 back")
            agents.command("stop ast1")  # silent: stale after its validity (2 s)
            wait_for(rpc, {"ast1": (0, "I"), "ast2": (30, "A")}, log, "ast1 stale")
        finally:
            stop(proc, log)
    assert "weights: ast1=0" in log.read_text()


def test_what_kamailio_lost_is_pushed_again(tmp_path):
    # A Kamailio restart empties the htable and resets dispatcher states; the
    # agents report no change, so only the periodic full push restores them.
    log = tmp_path / "sidecar.log"
    config = tmp_path / "sidecar.toml"
    config.write_text("[kamailio]\nresync_interval = 1.0\n")
    with AgentsProcess("ast1:0.5:100", "ast2:0.8:100") as agents, \
            running_kamailio(tmp_path, dispatcher_list(agents.uris)) as run:
        rpc = JsonRpcClient(f"unix:{run}/rpc.sock")
        proc = sidecar("--config", str(config), "--policy", "headroom", "--kamailio-rpc",
                       f"unix:{run}/rpc.sock", *(f"--agent={n}={u}" for n, u in agents.uris.items()),
                       log=log)
        try:
            wait_for(rpc, {"ast1": (50, "A"), "ast2": (80, "A")}, log, "the first weights")
            rpc.call("htable.delete", "sipstatus", "ast1")
            rpc.call("dispatcher.set_duid_state", "i", 1, "ast2")
            assert kamailio_view(rpc) == {"ast1": (None, "A"), "ast2": (80, "I")}
            wait_for(rpc, {"ast1": (50, "A"), "ast2": (80, "A")}, log, "the weights restored")
        finally:
            stop(proc, log)


def test_agents_discovered_from_the_dispatcher_and_the_list_file_rewritten(tmp_path):
    log = tmp_path / "sidecar.log"
    hosts = ["127.0.0.10", "127.0.0.11"]
    port = free_port(hosts=hosts)
    with AgentsProcess("ast1:0.6:100", "ast2:0.2:100", hosts="127.0.0.x", port=port) as agents, \
            running_kamailio(tmp_path, dispatcher_list(agents.uris)) as run:
        assert agents.uris == {"ast1": f"sip:127.0.0.10:{port}", "ast2": f"sip:127.0.0.11:{port}"}
        config = tmp_path / "sidecar.toml"
        config.write_text(f'[discover]\nagent_port = {port}\n[kamailio]\nreload_interval = 1.0\n'
                          f'htable = ""\n')
        rpc = JsonRpcClient(f"unix:{run}/rpc.sock")
        proc = sidecar("--config", str(config), "--policy", "headroom", "--discover-from-dispatcher", "1",
                       "--kamailio-rpc", f"unix:{run}/rpc.sock", "--kamailio-list-file",
                       str(run / "dispatcher.list"), log=log)
        try:
            deadline = time.monotonic() + 15
            expected = {"ast1": ("60", "A"), "ast2": ("20", "A")}
            while (seen := {d.node: (d.attrs.get("rweight"), d.flags[:1])
                            for d in KamailioSink(rpc).destinations()}) != expected:
                assert time.monotonic() < deadline, f"{seen}\n{log.read_text()[-3000:]}"
                time.sleep(0.05)
            text = (run / "dispatcher.list").read_text()
            assert text.startswith("# the pool") and "duid=ast1;rweight=60" in text
            agents.command("set ast1 state=overloaded")
            deadline = time.monotonic() + 15
            while {d.node: d.flags[:1] for d in KamailioSink(rpc).destinations()}["ast1"] != "I":
                assert time.monotonic() < deadline, log.read_text()[-3000:]
                time.sleep(0.05)
        finally:
            stop(proc, log)
    assert f"dispatcher group 1: ast1=sip:127.0.0.10:{port}, ast2=sip:127.0.0.11:{port}" in log.read_text()


def test_an_unreachable_kamailio_does_not_stop_the_sidecar(tmp_path):
    log = tmp_path / "sidecar.log"
    with AgentsProcess("ast1:0.5:100") as agents:
        proc = sidecar("--kamailio-rpc", f"unix:{tmp_path}/absent.sock",
                       *(f"--agent={n}={u}" for n, u in agents.uris.items()), log=log)
        try:
            deadline = time.monotonic() + 15
            while "absent.sock" not in log.read_text():
                assert time.monotonic() < deadline and proc.poll() is None, log.read_text()
                time.sleep(0.05)
            assert proc.poll() is None
        finally:
            stop(proc, log)
    assert "trying again in" in log.read_text()
