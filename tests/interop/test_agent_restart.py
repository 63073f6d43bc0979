"""Restarting a real `sipstatus-agent run` process (what `systemctl restart`
and a package upgrade do): the stopping agent tells its subscribers to come
back within seconds (spec 4.7.4), and the new process can start while the
old one is still sending its final NOTIFYs.

The subscriber here is a bare UDP socket that SUBSCRIBEs by hand and never
answers the final NOTIFY, so the stopping agent holds its port for its
whole wait (agent.service.STOP_WAIT); the test also freezes it there
(SIGSTOP) for a while, as a busy host would, so that the new process
certainly starts before the old one has let go of its port.
"""

from __future__ import annotations

import os
import secrets
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import HOST, SIPP_SCENARIOS
from tests.support.agents import Agent
from tests.support.fake_ami import FakeAmis, Scenario
from tests.support.kamailio import have_tools
from tests.support.sip import Response, SipClient, parse_response
from tests.support.sipp import SippNode

pytestmark = [pytest.mark.interop,
              pytest.mark.skipif(not have_tools(), reason="needs Debian package sip-tester (SIPp) and iproute2")]

UAS = SIPP_SCENARIOS / "e2e" / "uas.xml"


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[Agent]:
    """A running agent whose Asterisk is a fake AMI and a SIPp UAS."""
    amis = FakeAmis()
    node = SippNode("ast1", tmp_path, scenario=UAS)
    node.start()
    agent = Agent("ast1", tmp_path, ami_port=amis.serve(Scenario(answers={"CoreShowChannels": "coreshowchannels"})),
                  probe=node.uri, max_calls=20)
    try:
        agent.start()
        yield agent
    finally:
        agent.stop()
        node.stop()
        amis.close()


def subscribe(agent: Agent) -> SipClient:
    """A subscription from a socket that answers nothing; returns it once
    the agent accepted it and sent its first NOTIFY."""
    client = SipClient(agent.port)
    data = client.build("SUBSCRIBE", [("Event", "load-status"), ("Expires", "600"),
                                      ("Accept", "application/load-status+json"),
                                      ("Contact", f"<sip:watcher@{HOST}:{client.port}>")],
                        ruri=agent.uri)
    assert client.send(data).status == 200
    assert next_notify(client, 10).header("subscription-state").startswith("active")
    return client


def next_notify(client: SipClient, timeout: float) -> Response:
    """The next NOTIFY (as a Response-shaped record, status 0). Every NOTIFY
    but a final one is answered 200: the agent holds its final NOTIFY until
    the one before is answered (spec 4.7.2), and waits for the final's
    answer in vain."""
    deadline = time.monotonic() + timeout
    while True:
        client.sock.settimeout(max(0.01, deadline - time.monotonic()))
        data, source = client.sock.recvfrom(65535)
        if not data.startswith(b"NOTIFY "):
            continue
        head, _, _ = data.partition(b"\r\n\r\n")
        notify = parse_response(b"SIP/2.0 0 NOTIFY\r\n" + head.split(b"\r\n", 1)[1] + b"\r\n\r\n")
        if not notify.header("subscription-state").startswith("terminated"):
            copied = [line for line in head.split(b"\r\n")[1:]
                      if line.split(b":", 1)[0].strip().lower() in (b"via", b"from", b"to", b"call-id", b"cseq")]
            client.sock.sendto(b"\r\n".join([b"SIP/2.0 200 OK", *copied, b"Content-Length: 0", b"", b""]), source)
        return notify


def final_notify(client: SipClient, timeout: float = 10.0) -> Response:
    deadline = time.monotonic() + timeout
    while True:
        notify = next_notify(client, deadline - time.monotonic())
        if notify.header("subscription-state").startswith("terminated"):
            return notify


def test_a_stopping_agent_asks_its_subscribers_back_within_seconds(agent: Agent) -> None:
    client = subscribe(agent)
    try:
        os.killpg(agent.proc.pid, signal.SIGTERM)
        state = final_notify(client).header("subscription-state")
        params = dict(p.split("=", 1) for p in state.split(";")[1:])
        assert params["reason"] == "probation"
        assert int(params["retry-after"]) <= 5, state
    finally:
        client.close()


def test_an_agent_restarted_at_once_starts_while_the_old_one_finishes(agent: Agent) -> None:
    client = subscribe(agent)
    try:
        old = agent.proc
        assert old is not None
        instance = agent.status()["instance"]
        os.killpg(old.pid, signal.SIGTERM)
        final_notify(client)  # the old process is in its final wait now
        # Frozen there (as on a busy host) until the new one has started.
        os.kill(old.pid, signal.SIGSTOP)
        thaw = threading.Timer(3.0, os.kill, (old.pid, signal.SIGCONT))
        thaw.start()
        try:
            agent.start()
        finally:
            thaw.join()
        old.wait(10)
        # The new process serves, under a new instance, on the same port.
        deadline = time.monotonic() + 10
        while agent.status()["instance"] == instance:
            assert time.monotonic() < deadline, agent.log_tail()
            time.sleep(0.1)
        assert agent.proc is not None and agent.proc.poll() is None, agent.log_tail()
        again = SipClient(agent.port)
        try:
            reply = again.send(again.build("SUBSCRIBE", [("Event", "load-status"), ("Expires", "600"),
                                                         ("Contact", f"<sip:w@{HOST}:{again.port}>")],
                                           ruri=agent.uri, call_id=secrets.token_hex(6)))
            assert reply.status == 200
        finally:
            again.close()
    finally:
        client.close()
