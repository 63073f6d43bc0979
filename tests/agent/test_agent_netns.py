"""Two agents and a subscriber in three network namespaces, on real interfaces.

    ns "a1": agent 1, 192.0.2.11/24 only            \\
    ns "a2": agent 2, 198.51.100.12/24 only          >- veth pairs to a bridge in ns "br"
    ns "sub": the subscriber, 192.0.2.10/24 and 198.51.100.10/24 /

Each agent listens on udp:0.0.0.0:5070 (a wildcard, as in production) and
trusts both networks; the collectors are off (no Asterisk in the
namespaces), so both report `active`. The subscriber (tests/support/netns_subscriber.py,
the library's SubscriberPool) subscribes to both over the bridge. Every
NOTIFY and 200 must name the agent by the address the subscriber reached it
at, in Via and in Contact: never the wildcard, never loopback. Agent 2's
namespace has no route to anything but its own network, as on an isolated
voice VLAN.

The namespaces (and with them the veths and the bridge) are deleted in a
fixture's finally, whatever happens; names carry the test's pid.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import sys

import pytest

from tests.support.agents import REPO, AgentProcess

pytestmark = [
    pytest.mark.netns, pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0 or shutil.which("ip") is None, reason="needs root and iproute2"),
]

AGENTS = {"a1": "192.0.2.11", "a2": "198.51.100.12"}
SUBSCRIBER = ("192.0.2.10", "198.51.100.10")
PORT = 5070


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


@pytest.fixture
def namespaces():
    prefix = f"ssvc{os.getpid()}"
    names = {role: f"{prefix}{role}" for role in ("br", "a1", "a2", "sub")}
    try:
        for name in names.values():
            ip("netns", "add", name)
        br = names["br"]
        ip("-n", br, "link", "add", "br0", "type", "bridge")
        ip("-n", br, "link", "set", "br0", "up")
        addresses = {"a1": [f"{AGENTS['a1']}/24"], "a2": [f"{AGENTS['a2']}/24"],
                     "sub": [f"{SUBSCRIBER[0]}/24", f"{SUBSCRIBER[1]}/24"]}
        for role, addrs in addresses.items():
            ns = names[role]
            ip("link", "add", "eth0", "netns", ns, "type", "veth", "peer", "name", f"p{role}", "netns", br)
            ip("-n", br, "link", "set", f"p{role}", "master", "br0", "up")
            for addr in addrs:
                ip("-n", ns, "addr", "add", addr, "dev", "eth0")
            ip("-n", ns, "link", "set", "eth0", "up")
            ip("-n", ns, "link", "set", "lo", "up")
        yield names
    finally:
        for name in names.values():
            subprocess.run(["ip", "netns", "del", name], capture_output=True)


def test_two_agents_in_their_namespaces_notify_a_subscriber_with_their_real_addresses(namespaces, tmp_path):
    async def main():
        config = {"agent": {"node": "", "validity": 3}, "collectors": {"enabled": []}}
        agents = []
        try:
            for role in ("a1", "a2"):
                cfg = {**config, "agent": {**config["agent"], "node": f"node-{role}"}}
                agent = AgentProcess(tmp_path, cfg, "--listen", f"udp:0.0.0.0:{PORT}",
                                     "--trust", "192.0.2.0/24", "--trust", "198.51.100.0/24",
                                     name=role, wrap=["ip", "netns", "exec", namespaces[role]])
                agents.append(agent)
                await agent.start()
            subscriber = await asyncio.create_subprocess_exec(
                "ip", "netns", "exec", namespaces["sub"], sys.executable, "-m", "tests.support.netns_subscriber",
                "--agent", f"{AGENTS['a1']}:{PORT},{SUBSCRIBER[0]}", "--agent", f"{AGENTS['a2']}:{PORT},{SUBSCRIBER[1]}",
                "--count", "3", "--timeout", "30", cwd=REPO,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
            out, err = await asyncio.wait_for(subscriber.communicate(), 60)
            for agent in agents:
                agent.signal(15)
                assert await agent.wait(15) == 0
            return subscriber.returncode, out.decode(), err.decode(), [a.log() for a in agents]
        finally:
            for agent in agents:
                await agent.kill()

    code, out, err, logs = asyncio.run(asyncio.wait_for(main(), 120))
    lines = [json.loads(line) for line in out.splitlines()]
    assert code == 0, (out, err, logs)
    for role, address in AGENTS.items():
        from_agent = [m for m in lines if m.get("source") and m["source"][0] == address]
        notifies = [m for m in from_agent if m["method"] == "NOTIFY"]
        assert len([m for m in notifies if (m["state"] or "").startswith("active")]) >= 3, (role, out)
        assert all(m["body"]["node"] == f"node-{role}" for m in notifies if m["body"])
        for message in from_agent:
            if message["method"] == "NOTIFY":  # our Via is the agent's own
                via_host = re.match(r"SIP/2\.0/UDP ([^:;]+):(\d+)", message["via"]).groups()
                assert via_host == (address, str(PORT)), (role, message)
            if message["contact"]:  # NOTIFYs and the 200s to SUBSCRIBE
                assert re.search(rf"@{re.escape(address)}:{PORT}>", message["contact"]), (role, message)
        # the unsubscribe was answered and the final NOTIFY came
        assert any((m["state"] or "").startswith("terminated") for m in notifies), (role, out)
