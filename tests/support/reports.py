"""Many reports at once, as a stress source for a proxy: `stream_reports`
PUBLISHes paced reports for several nodes (far above an agent's ceiling of
10/s); `simulate_agents` runs many publishing agents in one process with the
library's Publisher, each from its own loopback address.
"""

from __future__ import annotations

import asyncio
import math
import secrets
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from sipstatus.net import Endpoint, SipService
from sipstatus.sip.publication import PublicationFailed, Published
from sipstatus.sip.publication import Publisher as LibraryPublisher
from sipstatus.sip.transaction import Destination
from sipstatus.status import State
from tests.support import HOST
from tests.support.sip import MEDIA_TYPE, Response, body, parse_response


@dataclass
class StreamStats:
    """What `stream_reports` sent and got back, per node."""

    sent: Counter[str] = field(default_factory=Counter)
    answered: dict[str, Counter[int]] = field(default_factory=dict)
    timeouts: Counter[str] = field(default_factory=Counter)
    retransmissions: Counter[str] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)
    #: The weight (0 unless active) of each node's last report answered 200.
    last_weight: dict[str, int] = field(default_factory=dict)
    #: (node, start, end) of the periods a node reported `draining`, epoch seconds.
    drains: list[tuple[str, float, float]] = field(default_factory=list)
    duration: float = 0.0

    def ok(self, node: str) -> int:
        return self.answered.get(node, Counter())[200]

    def latency(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else math.nan


class _ReportSocket(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.replies: asyncio.Queue[Response] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        reply = parse_response(data)
        if reply.status >= 200:
            self.replies.put_nowait(reply)


Schedule = Callable[[str, int, float], tuple[State, int]]


async def stream_reports(proxy_port: int, nodes: Sequence[str], *, rate: float, duration: float,
                         schedule: Schedule, validity: int = 3, timeout: float = 0.5,
                         retries: int = 3) -> StreamStats:
    """PUBLISH `rate` reports per second for each of `nodes` for `duration`
    seconds, each from its own UDP socket, as an agent would but faster:
    one PUBLISH at a time per node (RFC 3903 4.1), a modification with
    SIP-If-Match after the first, a fresh seq each time. `schedule(node, k,
    elapsed)` gives the state and weight of the k-th report. A PUBLISH
    unanswered after `timeout` s is sent again (the same bytes: Kamailio's
    transaction answers a retransmission with the same reply). Reports are
    paced to the schedule; a node that falls behind sends at once until it
    has caught up."""
    loop = asyncio.get_running_loop()
    stats = StreamStats()
    start = time.time()
    t0 = loop.time()

    async def one(node: str) -> None:
        transport, proto = await loop.create_datagram_endpoint(_ReportSocket, local_addr=(HOST, 0))
        port = transport.get_extra_info("sockname")[1]
        instance = secrets.token_hex(4)
        tag = secrets.token_hex(4)
        call_id = f"{secrets.token_hex(8)}@{HOST}"
        etag: str | None = None
        answered = stats.answered.setdefault(node, Counter())
        drain_from: float | None = None
        k = 0
        try:
            while True:
                due = t0 + k / rate
                now = loop.time()
                if due - t0 >= duration:
                    break
                if due > now:
                    await asyncio.sleep(due - now)
                state, weight = schedule(node, k, loop.time() - t0)
                if state is State.DRAINING and drain_from is None:
                    drain_from = time.time()
                elif state is not State.DRAINING and drain_from is not None:
                    stats.drains.append((node, drain_from, time.time()))
                    drain_from = None
                k += 1
                payload = body(node, weight if state is State.ACTIVE else None, state=state, instance=instance,
                               seq=k, validity=validity)
                headers = [f"PUBLISH sip:load-status@{HOST}:{proxy_port} SIP/2.0",
                           f"Via: SIP/2.0/UDP {HOST}:{port};branch=z9hG4bK{secrets.token_hex(8)};rport",
                           "Max-Forwards: 70", f"From: <sip:{node}@{HOST}>;tag={tag}",
                           f"To: <sip:{node}@{HOST}>", f"Call-ID: {call_id}", f"CSeq: {k} PUBLISH",
                           "Event: load-status", "Expires: 600", f"Content-Type: {MEDIA_TYPE}"]
                if etag is not None:
                    headers.append(f"SIP-If-Match: {etag}")
                headers.append(f"Content-Length: {len(payload)}")
                data = ("\r\n".join(headers) + "\r\n\r\n").encode() + payload
                sent_at = loop.time()
                reply = None
                for attempt in range(retries + 1):
                    if attempt:
                        stats.retransmissions[node] += 1
                    transport.sendto(data, (HOST, proxy_port))
                    if attempt == 0:
                        stats.sent[node] += 1
                    try:
                        while True:
                            reply = await asyncio.wait_for(proto.replies.get(), timeout)
                            if reply.header("cseq") == f"{k} PUBLISH":
                                break
                        break
                    except TimeoutError:
                        reply = None
                if reply is None:
                    stats.timeouts[node] += 1
                    etag = None  # the outcome is unknown: start a new publication
                    continue
                stats.latencies.append(loop.time() - sent_at)
                answered[reply.status] += 1
                if reply.status == 200:
                    etag = reply.header("sip-etag")
                    stats.last_weight[node] = weight if state is State.ACTIVE else 0
                elif reply.status == 412:
                    etag = None
        finally:
            if drain_from is not None:
                stats.drains.append((node, drain_from, time.time()))
            transport.close()

    await asyncio.gather(*(one(node) for node in nodes))
    stats.duration = time.time() - start
    return stats


@dataclass
class SimulationStats:
    """What `simulate_agents` saw: reports answered 200 (`Published`),
    failed PUBLISHes, and each node's weight in its last answered report."""

    published: int = 0
    failed: int = 0
    failures: Counter[str] = field(default_factory=Counter)
    final: dict[str, int] = field(default_factory=dict)
    elapsed: float = 0.0
    #: Seconds from the final weights' PUBLISHes to the last one answered.
    settle: float = 0.0


async def simulate_agents(proxy_port: int, names: Sequence[str], *, duration: float, change_every: float,
                          final: Mapping[str, int], validity: int = 6,
                          hosts: Sequence[str] | None = None) -> SimulationStats:
    """Agents for `names`, each a `sipstatus.sip.publication.Publisher` in its
    own `SipService` bound to its own address (127.0.0.10 to .209, then
    127.0.1.10 ..., unless `hosts`), publishing to the proxy as the agent does: a fresh body per
    PUBLISH (`produce`), a heartbeat every validity / 3, at most 10 PUBLISH
    per second (the spec's ceiling). Every `change_every` seconds for
    `duration` seconds each node's weight moves by a significant step (spec
    8.3: 5 or more) and is published; then every node publishes its `final`
    weight, and the call returns once each has been answered."""
    loop = asyncio.get_running_loop()
    stats = SimulationStats()
    target = f"sip:load-status@{HOST}:{proxy_port}"
    destination = Destination("UDP", HOST, proxy_port)
    weights = {name: 50 for name in names}
    sent_weight: dict[str, int] = {}
    services: list[tuple[SipService, LibraryPublisher]] = []

    def on_event(event: object) -> None:
        if isinstance(event, Published):
            stats.published += 1
        elif isinstance(event, PublicationFailed):
            stats.failed += 1
            stats.failures[f"{event.status} {event.reason}"] += 1

    def producer(name: str) -> Callable[[float], bytes]:
        instance = secrets.token_hex(4)
        seq = 0

        def produce(now: float) -> bytes:
            nonlocal seq
            seq += 1
            sent_weight[name] = weights[name]
            return body(name, weights[name], instance=instance, seq=seq, validity=validity)

        return produce

    hosts = list(hosts) if hosts is not None else [f"127.0.{i // 200}.{10 + i % 200}" for i in range(len(names))]
    started = time.monotonic()
    try:
        for name, host in zip(names, hosts, strict=True):
            publisher = LibraryPublisher(target, "load-status", MEDIA_TYPE, f"sip:{name}@{host}",
                                         destination=destination, produce=producer(name),
                                         heartbeat=validity / 3, min_interval=0.1, key=name)
            service = SipService(Endpoint([publisher], allow_events=["load-status"]), on_event=on_event)
            await service.listen("UDP", host, 0)
            services.append((service, publisher))
            service.submit(publisher, publisher.publish(None, service.now()))
        rng = secrets.SystemRandom()
        end = loop.time() + duration
        while loop.time() < end:
            await asyncio.sleep(change_every)
            for service, publisher in services:
                name = publisher.key
                assert isinstance(name, str)
                # A significant step (5 to 30) up or down, reflected at 1 and 100.
                step = rng.choice((-1, 1)) * rng.randint(5, 30)
                moved = weights[name] + step
                weights[name] = moved if 1 <= moved <= 100 else weights[name] - step
                service.submit(publisher, publisher.publish(None, service.now()))
        weights.update(final)
        settle_from = loop.time()
        for service, publisher in services:
            service.submit(publisher, publisher.publish(None, service.now()))
        deadline = loop.time() + 30
        while any(p.pending is not None or p.dirty or p.queued is not None for _, p in services):
            if loop.time() > deadline:
                break
            await asyncio.sleep(0.01)
        stats.settle = loop.time() - settle_from
        stats.final = {name: sent_weight[name] for name in names if name in sent_weight}
    finally:
        stats.elapsed = time.monotonic() - started
        for service, _ in services:
            await service.close()
    return stats
