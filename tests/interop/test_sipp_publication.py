"""SIPp as a load-status compositor against our Publisher, over UDP and TCP.

The scenario (tests/sipp/compositor.xml) challenges the first PUBLISH with a
401 (MD5: SIPp's ``verifyauth`` supports nothing else), verifies the
credentials of the second, grants 3 s with entity tag ``etag1``, answers the
refresh 412, and expects the publisher to start over with an initial
PUBLISH (no SIP-If-Match, the body again), which gets ``etag2``.

SIPp cannot express a second challenge after the 412 with the same nonce
check, nor a SHA-256 challenge; digest beyond MD5 is covered by the core's
unit tests.
"""

from __future__ import annotations

import asyncio

import pytest

from sipstatus.net import Endpoint, SipService
from sipstatus.sip.digest import DigestClient
from sipstatus.sip.publication import PublicationFailed, Published, Publisher
from sipstatus.sip.transaction import Destination
from tests.support.ports import free_port
from tests.support.sipp import SIPP, run_sipp

pytestmark = [pytest.mark.interop,
              pytest.mark.skipif(SIPP is None, reason="sipp (Debian sip-tester) not installed")]

TYPE = "application/load-status+json"


async def publisher_against_sipp(transport: str, tmp_path):
    sipp_port = free_port()
    events: list[object] = []
    done = asyncio.Event()
    sipp = asyncio.ensure_future(run_sipp(
        "compositor.xml", "-t", "u1" if transport == "UDP" else "t1", "-i", "127.0.0.1",
        "-p", str(sipp_port), "-m", "1", "-timeout", "20s", tmp=tmp_path))
    await asyncio.sleep(0.5)  # SIPp binds its port

    pub = Publisher(f"sip:node1@127.0.0.1:{sipp_port}", "load-status", TYPE,
                    "sip:agent@127.0.0.1",
                    destination=Destination(transport, "127.0.0.1", sipp_port),
                    authorize=DigestClient("agent", "secret").authorize)

    def on_event(event):
        events.append(event)
        if isinstance(event, Published) and event.etag == "etag2":
            done.set()

    service = SipService(Endpoint([pub]), on_event=on_event)
    await service.listen(transport, "127.0.0.1", free_port())
    try:
        service.submit(pub, pub.publish(b'{"seq":1}', service.now()))
        await asyncio.wait_for(done.wait(), 20)
        result = await sipp
    finally:
        await service.close()
        if not sipp.done():
            sipp.cancel()
    return result, events


@pytest.mark.parametrize("transport", ["UDP", "TCP"])
def test_sipp_challenges_grants_then_412_and_the_publisher_starts_over(transport, tmp_path):
    result, events = asyncio.run(publisher_against_sipp(transport, tmp_path))
    assert result.returncode == 0, result.explain()
    assert [(e.etag, e.expires) for e in events if isinstance(e, Published)] == [
        ("etag1", 3), ("etag2", 600)]
    assert not [e for e in events if isinstance(e, PublicationFailed)]
