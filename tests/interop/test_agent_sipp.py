"""SIPp against the running agent, over UDP and TCP.

- tests/sipp/agent/subscriber.xml: SIPp as a proxy subscribing with
  `Event: load-status;max-rate=1`, refreshing in the dialog, unsubscribing
  (its checks are in the scenario). Meanwhile the fake Asterisk changes every
  250 ms, faster than the ceiling: the NOTIFYs' spacing is read from SIPp's
  own message trace (-trace_msg timestamps) and must never be below 1 s,
  except for the NOTIFY that answers a SUBSCRIBE and the final one, which
  the ceiling does not delay but the absolute limit of 100 ms does (spec 8.1,
  8.6).
- tests/sipp/agent/compositor.xml: SIPp as the compositor the agent
  publishes to: a 401 (MD5), a 412 (the agent starts over with an initial
  PUBLISH with its body), a 423 with Min-Expires (the agent retries with that
  Expires and keeps it), heartbeats with the latest entity tag, and the
  removal when the agent stops.

What SIPp cannot express is said in the scenarios: it cannot compare two
arrival times (hence the trace), and its [authentication] answers only the
first challenge, which from the agent is SHA-256 (RFC 8760 order), an
algorithm SIPp 3.6.1 refuses ("authentication must use MD5 or AKAv1-MD5"):
digest subscription is tested with the library's DigestClient instead
(test_agent_service_faults).
"""

from __future__ import annotations

import asyncio
import re
import signal
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pytest

from tests.support.agents import AgentProcess, ChannelEvents, agent_config, fake_asterisk
from tests.support.ports import free_port
from tests.support.sipp import SIPP, run_sipp

pytestmark = [pytest.mark.interop, pytest.mark.slow,
              pytest.mark.skipif(SIPP is None, reason="sipp (Debian sip-tester) not installed")]

CEILING = 1.0  # max-rate=1
ABSOLUTE = 0.1  # spec 8.1: 100 ms between two NOTIFYs of a subscription, whatever the cause
#: Arrival times measure the sender's spacing up to scheduling noise on this host.
SLACK = 0.05


def run(coro, timeout: float = 180.0):
    return asyncio.run(asyncio.wait_for(coro, timeout))


@dataclass
class Traced:
    at: float  # seconds since the epoch, SIPp's clock
    direction: str  # "received" or "sent"
    text: str

    @property
    def start(self) -> str:
        return self.text.split("\n", 1)[0].strip()

    def header(self, name: str) -> str | None:
        match = re.search(rf"^{name}:\s*(.*?)\s*$", self.text, re.M | re.I)
        return match.group(1) if match else None


def read_trace(path: Path) -> list[Traced]:
    """The messages of a SIPp -trace_msg file, with SIPp's timestamps."""
    text = path.read_text(errors="replace")
    out = []
    for stamp, direction, body in re.findall(
            r"^-{47} (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+)\n(?:UDP|TCP) message (received|sent)[^\n]*\n\n(.*?)(?=^-{47}|\Z)",
            text, re.M | re.S):
        at = datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S.%f").timestamp()
        out.append(Traced(at, direction, body))
    return out


def notify_spacing(trace: list[Traced]) -> list[tuple[float, str]]:
    """(gap since the previous NOTIFY, kind) for every received NOTIFY but the
    first; kind is "immediate" for the first NOTIFY after a 200 to SUBSCRIBE,
    "final" for a terminated one, else "paced"."""
    out = []
    previous: float | None = None
    answered_subscribe = False
    for message in trace:
        if message.direction != "received":
            continue
        if message.start.startswith("SIP/2.0 200") and "SUBSCRIBE" in (message.header("CSeq") or ""):
            answered_subscribe = True
        elif message.start.startswith("NOTIFY"):
            state = message.header("Subscription-State") or ""
            kind = "final" if state.startswith("terminated") else "immediate" if answered_subscribe else "paced"
            answered_subscribe = False
            if previous is not None:
                out.append((message.at - previous, kind))
            previous = message.at
    return out


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_sipp_subscribes_with_max_rate_refreshes_and_unsubscribes(transport, tmp_path):
    async def main():
        channel = ChannelEvents.recorded()
        async with fake_asterisk() as ami:
            port = free_port()
            # validity 15: heartbeats only every 5 s; the NOTIFYs SIPp counts
            # come from the changes, at the ceiling.
            config = agent_config(ami.port, agent={"validity": 15}, scoring={"unknown_capacity": 1.0})
            async with AgentProcess(tmp_path, config, "--listen", f"udp:127.0.0.1:{port}",
                                    "--listen", f"tcp:127.0.0.1:{port}") as agent:
                await agent.wait_measured()

                async def churn():
                    while True:
                        for event in (channel.newchannel, channel.hangup):
                            await ami.emit(event)
                            await asyncio.sleep(0.25)

                changes = asyncio.ensure_future(churn())
                try:
                    result = await run_sipp(
                        "agent/subscriber.xml", "-t", "u1" if transport == "udp" else "t1",
                        "-i", "127.0.0.1", "-p", str(free_port()), "-m", "1", "-timeout", "90s",
                        "-trace_msg", "-message_file", str(tmp_path / "messages.log"),
                        tmp=tmp_path, remote=f"127.0.0.1:{port}", timeout=120)
                finally:
                    changes.cancel()
                await agent.wait_log(r"ended: unsubscribed", timeout=10)
                return result, read_trace(tmp_path / "messages.log")

    result, trace = run(main())
    assert result.returncode == 0, result.explain()
    spacing = notify_spacing(trace)
    paced = [gap for gap, kind in spacing if kind == "paced"]
    assert len(paced) >= 10, spacing
    assert min(paced) >= CEILING - SLACK, spacing
    # The changes came 4 a second: the NOTIFYs went at the ceiling, not at the 5 s heartbeat.
    assert sorted(paced)[len(paced) // 2] < 2.5, spacing
    assert {kind for _, kind in spacing} == {"paced", "immediate", "final"}
    assert all(gap >= ABSOLUTE - SLACK for gap, _ in spacing), spacing


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_sipp_compositor_challenges_then_412_then_423_and_the_agent_follows(transport, tmp_path):
    async def main():
        async with fake_asterisk() as ami:
            sipp_port = free_port()
            config = agent_config(ami.port, agent={"validity": 3}, scoring={"unknown_capacity": 1.0},
                                  notifier={"listen": []}, publisher={"username": "agent", "password": "secret"})
            compositor = asyncio.ensure_future(run_sipp(
                "agent/compositor.xml", "-t", "u1" if transport == "udp" else "t1", "-i", "127.0.0.1",
                "-p", str(sipp_port), "-m", "1", "-timeout", "60s",
                "-trace_msg", "-message_file", str(tmp_path / "messages.log"), tmp=tmp_path, timeout=90))
            try:
                await asyncio.sleep(0.5)  # SIPp binds its port (FIELD-NOTES: check it holds it)
                target = f"sip:load-status@127.0.0.1:{sipp_port}" + (";transport=tcp" if transport == "tcp" else "")
                async with AgentProcess(tmp_path, config, "--publish", target) as agent:
                    await agent.wait_log(r"\(etag etag3, 1200 s\)", timeout=30)
                    # two heartbeats with etag3, then stop: the removal ends SIPp's call
                    await agent.wait_log(r"\(etag etag3, 1200 s\)", timeout=10,
                                         start=agent.lines.index(agent.find_log(r"etag etag3")[0]) + 1)
                    agent.signal(signal.SIGTERM)
                    code = await agent.wait(20)
                    result = await compositor
                    return code, result, agent.lines, read_trace(tmp_path / "messages.log")
            finally:
                if not compositor.done():
                    compositor.cancel()

    code, result, lines, trace = run(main())
    assert result.returncode == 0, result.explain()
    assert code == 0
    assert any("publication at" in line and "removed" in line for line in lines)
    publishes = [m for m in trace if m.direction == "received" and m.start.startswith("PUBLISH")]
    # One Call-ID and a CSeq that grows by one for the whole publication (spec 5.1).
    assert len({m.header("Call-ID") for m in publishes}) == 1
    cseqs = [int((m.header("CSeq") or "0").split()[0]) for m in publishes]
    assert cseqs == list(range(cseqs[0], cseqs[0] + len(cseqs)))
