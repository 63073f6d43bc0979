"""`sipstatus watch`: the live view, its JSON stream and its snapshot, against
agents served by another process over UDP on the loopback."""

from __future__ import annotations

import asyncio
import json
import shlex
import socket
import subprocess
import sys

from sipstatus.codec import MEDIA_TYPE, encode
from sipstatus.proxy.nodetable import NodeView
from sipstatus.proxy.rows import node_row
from sipstatus.proxy.watchview import CLEAR, render_json, render_table, sort_rows, state_text
from tests.support import ROOT
from tests.support.fake_agents import AgentsProcess, Lines, status_for
from tests.support.ports import free_port


def watch(*args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sipstatus.cli", "watch", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


def agent_flags(agents: AgentsProcess) -> list[str]:
    return [f"--agent={node}={uri}" for node, uri in agents.uris.items()]


def by_node(snapshot: dict) -> dict[str, dict]:
    return {n["node"]: n for n in snapshot["nodes"]}


# -- against agents ---------------------------------------------------------------------------


def test_once_json_shows_two_agents_one_draining():
    with AgentsProcess("ast1:0.5:200", "ast2:0.8:100") as agents:
        agents.command("set ast2 state=draining reason=maintenance")
        result = watch("--once", "--json", *agent_flags(agents))
    assert result.returncode == 0, result.stderr
    (line,) = result.stdout.splitlines()
    snapshot = json.loads(line)
    assert snapshot["policy"] == "water-fill"
    nodes = by_node(snapshot)
    assert nodes["ast1"]["state"] == "active" and nodes["ast1"]["weight"] == 100
    assert nodes["ast2"]["state"] == "draining" and nodes["ast2"]["weight"] == 0
    assert nodes["ast2"]["reason"] == "maintenance" and nodes["ast2"]["channels"] == 10
    assert [n["node"] for n in snapshot["nodes"]] == ["ast1", "ast2"]  # by weight


def test_once_shows_a_node_that_never_answers_as_unknown():
    with AgentsProcess("ast1:0.5:100") as agents:
        result = watch("--once", "--timeout", "1", *agent_flags(agents), "--agent", "ghost=sip:127.0.0.1:9")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("sipstatus watch  policy water-fill  2 nodes, 1 taking calls")
    ghost = next(line for line in lines if " ghost " in line)
    assert ghost.startswith("!") and "UNKNOWN" in ghost and " 0 " not in ghost
    assert CLEAR not in result.stdout  # not a terminal: no escape codes


def test_live_json_stream_shows_a_node_drained_half_way():
    with AgentsProcess("ast1:0.5:100", "ast2:0.5:100") as agents:
        proc = subprocess.Popen([sys.executable, "-m", "sipstatus.cli", "watch", "--json", "--interval",
                                 "0.1", "--policy", "headroom", *agent_flags(agents)],
                                cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            stream = Lines(proc.stdout)

            def until(predicate, what):
                for _ in range(300):
                    nodes = by_node(json.loads(stream.next()))
                    if predicate(nodes):
                        return nodes
                raise AssertionError(f"never saw {what}; last: {stream.seen[-1]}")

            both = until(lambda n: all(n[x]["state"] == "active" for x in ("ast1", "ast2")), "both active")
            assert both["ast2"]["weight"] == 50
            agents.command("set ast2 state=draining")
            drained = until(lambda n: n["ast2"]["state"] == "draining", "ast2 draining")
            assert drained["ast2"]["weight"] == 0 and drained["ast1"]["weight"] == 50
            # Every snapshot on the way was whole: never a node missing or a weight made up.
            for line in stream.seen:
                nodes = by_node(json.loads(line))
                assert set(nodes) == {"ast1", "ast2"}
                assert all((n["weight"] is None) == (n["state"] == "unknown") for n in nodes.values())
        finally:
            proc.terminate()
            proc.wait(10)
    assert proc.returncode == 0, proc.stderr.read()


def test_watch_takes_publish_from_any_node_when_listening():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "sipstatus.cli", "watch", "--json", "--interval", "0.1",
                             "--listen", f"udp:127.0.0.1:{port}"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        stream = Lines(proc.stdout)
        assert json.loads(stream.next())["nodes"] == []
        body = encode(status_for("ast5", capacity=0.4))
        publish = (f"PUBLISH sip:load-status@127.0.0.1:{port} SIP/2.0\r\n"
                   f"Via: SIP/2.0/UDP 127.0.0.1:9;branch=z9hG4bKpub1;rport\r\nMax-Forwards: 70\r\n"
                   f"From: <sip:agent@127.0.0.1>;tag=a1\r\nTo: <sip:load-status@127.0.0.1>\r\n"
                   f"Call-ID: pub1\r\nCSeq: 1 PUBLISH\r\nEvent: load-status\r\nExpires: 600\r\n"
                   f"Content-Type: {MEDIA_TYPE}\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.1", 0))
            s.settimeout(5)
            s.sendto(publish, ("127.0.0.1", port))
            answer = s.recv(4096)
        assert answer.startswith(b"SIP/2.0 200")
        for _ in range(100):
            nodes = by_node(json.loads(stream.next()))
            if "ast5" in nodes:
                break
        assert nodes["ast5"]["state"] == "active" and nodes["ast5"]["source"] == "publish"
    finally:
        proc.terminate()
        proc.wait(10)


def readme_watch_example() -> list[str]:
    """The README's `sipstatus watch ... --once --json` line, as arguments."""
    readme = (ROOT / "README.md").read_text()
    (line,) = [x for x in readme.splitlines() if x.startswith("sipstatus watch ") and "--once --json" in x]
    return shlex.split(line.split("#")[0])[2:]


def test_the_readme_watch_example_works_against_a_default_configured_agent(tmp_path):
    from agent.config import host_node_name
    from tests.support.agents import AgentProcess

    async def main():
        port = free_port()
        # Nothing configured but where it listens (the default, port 5070, may be taken here).
        async with AgentProcess(tmp_path, {}, "--listen", f"udp:127.0.0.1:{port}"):
            args = [a.replace("sip:192.0.2.21:5070", f"sip:127.0.0.1:{port}") for a in readme_watch_example()]
            return await asyncio.to_thread(watch, *args, "--timeout", "20")

    result = asyncio.run(main())
    assert result.returncode == 0, result.stderr
    (node,) = json.loads(result.stdout)["nodes"]
    # Named by what the agent reports: this host's name (agent.node unset).
    assert node["node"] == host_node_name() and node["state"] != "unknown" and node["link"] == "active"
    assert result.stderr == ""


def test_a_name_the_agent_does_not_report_is_explained_not_refused(tmp_path):
    from tests.support.agents import AgentProcess

    async def main():
        port = free_port()
        async with AgentProcess(tmp_path, {"agent": {"node": "host-7"}}, "--listen", f"udp:127.0.0.1:{port}"):
            return await asyncio.to_thread(watch, "--once", "--json", f"--agent=ast1=sip:127.0.0.1:{port}")

    result = asyncio.run(main())
    assert result.returncode == 0, result.stderr
    (node,) = json.loads(result.stdout)["nodes"]
    assert node["node"] == "ast1" and node["state"] == "unknown"
    assert node["link"].startswith("the agent calls itself 'host-7', not 'ast1': name it host-7 here ")
    assert "agent.node = \"ast1\"" in node["link"]
    assert "Its reports are not used until the names match" in result.stderr and "400" not in result.stderr


def test_watch_without_agents_or_listen_names_what_is_missing():
    result = watch("--once")
    assert result.returncode == 2
    assert "--agent: nothing to watch" in result.stderr


def test_watch_rejects_a_bad_agent_flag_naming_it():
    result = watch("--once", "--agent", "ast1=http://x")
    assert result.returncode == 2
    assert "--agent: agent URI 'http://x': must be a sip: or sips: URI" in result.stderr


# -- the rendering -------------------------------------------------------------------------------


def rows():
    active = node_row(NodeView("ast1", status_for("ast1", capacity=0.6), 9.0, True), 60, 60, 10.0)
    draining = node_row(NodeView("ast2", status_for("ast2", state="draining"), 9.0, True), 0, 0, 10.0)
    stale = node_row(NodeView("ast3", status_for("ast3", capacity=0.9), 0.0, False), 0, 0, 20.0)
    unknown = node_row(NodeView("ast4", None, None, False), None, 0, 20.0)
    return [unknown, stale, draining, active]


def test_rows_sort_by_weight_with_unknown_last():
    assert [r.node for r in sort_rows(rows())] == ["ast1", "ast2", "ast3", "ast4"]


def test_states_that_take_no_calls_are_in_capitals():
    assert [state_text(r) for r in sort_rows(rows())] == ["active", "DRAINING", "STALE(active)", "UNKNOWN"]


def test_table_marks_nodes_that_take_no_calls_and_shows_unknown_as_question_marks():
    table = render_table(rows(), policy="headroom", clock=0).splitlines()
    assert table[1].split() == ["NODE", "STATE", "CAP", "WEIGHT", "CPU", "CHANNELS", "CALLS/LIMIT", "MOS",
                                "P95", "AGE", "LINK"]
    assert table[2].split()[:9] == ["ast1", "active", "0.60", "60", "40%", "10", "5/100", "4.30", "3.2ms"]
    assert all(line.startswith("!") for line in table[3:])
    assert table[5].split()[1:] == ["ast4", "UNKNOWN", "?", "?", "?", "?", "?", "?", "?", "?"]


def test_colour_only_when_asked():
    assert "\x1b[" not in render_table(rows(), policy="headroom")
    coloured = render_table(rows(), policy="headroom", colour=True).splitlines()
    assert coloured[2].startswith("\x1b[32m") and coloured[3].startswith("\x1b[33m")


def test_json_rows_keep_unknown_as_null():
    nodes = json.loads(render_json(rows(), policy="headroom", clock=1.0))["nodes"]
    assert nodes[-1] == {"node": "ast4", "state": "unknown", "reported": None, "reason": None,
                         "capacity": None, "weight": None, "pushed": 0, "cpu": None, "channels": None,
                         "calls": None, "limit": None, "mos": None, "p95": None, "age": None, "validity": None,
                         "source": None, "link": ""}
