"""SIPp as a load-status watcher against our Notifier, over UDP and TCP.

The scenario (tests/sipp/subscriber.xml) subscribes, answers the first
NOTIFY, refreshes in the dialog, answers the refresh NOTIFY, unsubscribes
and answers the final terminated NOTIFY; its regexp checks fail SIPp's exit
status if a header or body is not what the package requires.  The notifier
side checks what it saw: created, refreshed, ended by unsubscribe.

What SIPp cannot express, and where it is tested instead: the timing of
NOTIFYs (ceiling, heartbeat, 100 ms limit: a scenario has a fixed sequence
of messages, so the heartbeat is set long here; see the fake-clock and
hypothesis tests), a variable number of NOTIFYs between two requests, and
TLS (not in Debian's build; tests/unit/test_net_service.py runs our own TLS
client and server).
"""

from __future__ import annotations

import asyncio

import pytest

from sipstatus.net import Endpoint, SipService
from sipstatus.sip.subscription import (
    Notifier,
    SubscriptionCreated,
    SubscriptionRefreshed,
    SubscriptionTerminated,
)
from tests.support.ports import free_port
from tests.support.sipp import SIPP, run_sipp

pytestmark = [pytest.mark.interop,
              pytest.mark.skipif(SIPP is None, reason="sipp (Debian sip-tester) not installed")]

TYPE = "application/load-status+json"


async def notifier_against_sipp(transport: str, tmp_path):
    events: list[object] = []
    port = free_port()
    contact = f"sip:agent@127.0.0.1:{port}" + ("" if transport == "UDP" else ";transport=tcp")
    # A long heartbeat keeps heartbeat NOTIFYs out of SIPp's fixed sequence.
    notifier = Notifier("load-status", TYPE, contact, heartbeat=30.0)
    endpoint = Endpoint([notifier], allow_events=["load-status"])

    def on_event(event):
        events.append(event)
        if isinstance(event, SubscriptionCreated):
            # Not significant: it rides on the next NOTIFY, the refresh's.
            service.submit(notifier, notifier.state_changed(b'{"seq":2}', service.now(),
                                                             significant=False))

    service = SipService(endpoint, on_event=on_event)
    await service.listen(transport, "127.0.0.1", port)
    notifier.state_changed(b'{"seq":1}', service.now())
    try:
        result = await run_sipp(
            "subscriber.xml", "-t", "u1" if transport == "UDP" else "t1",
            "-i", "127.0.0.1", "-p", str(free_port()), "-m", "1", "-timeout", "20s",
            tmp=tmp_path, remote=f"127.0.0.1:{port}")
        await asyncio.sleep(0.2)  # the last 200 reaches the notifier
    finally:
        await service.close()
    return result, events, endpoint


@pytest.mark.parametrize("transport", ["UDP", "TCP"])
def test_sipp_subscribes_refreshes_and_unsubscribes(transport, tmp_path):
    result, events, endpoint = asyncio.run(notifier_against_sipp(transport, tmp_path))
    assert result.returncode == 0, result.explain()
    kinds = [type(e) for e in events]
    assert kinds.count(SubscriptionCreated) == 1
    refreshed = [e for e in events if isinstance(e, SubscriptionRefreshed)]
    assert [e.expires for e in refreshed] == [300]
    (ended,) = [e for e in events if isinstance(e, SubscriptionTerminated)]
    assert ended.reason == "unsubscribed"
    assert endpoint.internal_errors == 0 and endpoint.malformed == 0
