"""A proxy's subscriber in a few lines, for tests/agent/test_agent_netns.py.

    python -m tests.support.netns_subscriber --agent 192.0.2.11:5070,192.0.2.10 ... [--count N]

Listens on udp:0.0.0.0 and subscribes to every agent (HOST:PORT) with the
library (SubscriberPool + SipService), giving as Contact its own address on
that agent's network (after the comma),
waits until each has sent N NOTIFYs, unsubscribes, and prints one JSON line
per SIP message it received (as the wire carried it: start line, source,
top Via, Contact, Subscription-State, the body's node and seq), then
"done". Exit 0 when every agent delivered, 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence

from sipstatus import codec
from sipstatus.net.endpoint import Endpoint
from sipstatus.net.service import SipService
from sipstatus.sip import Request, SipError, parse_message
from sipstatus.sip.subscription import (
    NotificationReceived,
    Subscriber,
    SubscriberConfig,
    SubscriberPool,
)
from sipstatus.sip.transaction import Destination


class RecordingService(SipService):
    """A SipService that also prints what arrives, before handling it."""

    def _receive(self, data: bytes, source: Destination) -> None:
        try:
            message = parse_message(data)
        except SipError:
            message = None
        if message is not None:
            body = None
            if message.body:
                status = codec.decode(message.body)
                body = {"node": status.node, "seq": status.seq, "state": status.state.value}
            print(json.dumps({
                "start": message.start_line(), "source": [source.host, source.port],
                "method": message.method if isinstance(message, Request) else None,
                "via": message.header("Via"), "contact": message.header("Contact"),
                "call_id": message.call_id, "state": message.header("Subscription-State"), "body": body,
            }), flush=True)
        super()._receive(data, source)


async def main(agents: Sequence[str], count: int, timeout: float) -> int:
    targets = dict(a.split(",", 1) for a in agents)
    received: dict[str, int] = {a: 0 for a in targets}
    done = asyncio.Event()

    def on_event(event: object) -> None:
        if isinstance(event, NotificationReceived) and event.state == "active":
            received[event.subscriber.key] += 1
            if all(n >= count for n in received.values()):
                done.set()

    pool = SubscriberPool()
    service = RecordingService(Endpoint([pool]), on_event=on_event)
    _, port = await service.listen("UDP", "0.0.0.0", 0)
    subscribers = []
    for agent, own in targets.items():
        config = SubscriberConfig(package="load-status", accept=codec.MEDIA_TYPE, local_uri=f"sip:proxy@{own}",
                                  contact=f"sip:proxy@{own}:{port}", decode=codec.decode)
        host, _, agent_port = agent.rpartition(":")
        subscriber = Subscriber(f"sip:load-status@{agent}", config, key=agent,
                                destination=Destination("UDP", host, int(agent_port)))
        subscribers.append(subscriber)
        service.submit(pool, pool.add(subscriber, service.now()))
    try:
        await asyncio.wait_for(done.wait(), timeout)
        ok = True
    except TimeoutError:
        ok = False
    for subscriber in subscribers:
        service.submit(pool, pool.stop(subscriber, service.now()))
    await asyncio.sleep(0.5)  # the unsubscribes and their final NOTIFYs
    await service.close()
    print(json.dumps({"done": received}), flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--agent", action="append", required=True, help="HOST:PORT,OWN-ADDRESS")
    parser.add_argument("--count", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=30.0)
    args = parser.parse_args()
    sys.exit(asyncio.run(main(args.agent, args.count, args.timeout)))
