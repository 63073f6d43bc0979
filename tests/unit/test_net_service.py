"""The asyncio service over real sockets on the loopback: our notifier and
subscriber (and publisher and compositor) talking UDP, TCP and TLS, and what
hostile bytes do to it."""

from __future__ import annotations

import asyncio
import socket

import pytest

from sipstatus.net import SipService
from sipstatus.sip import SipError
from sipstatus.sip.compositor import Compositor, PublicationReceived
from sipstatus.sip.endpoint import Endpoint
from sipstatus.sip.notifier import Notifier, SubscriptionCreated
from sipstatus.sip.publisher import Publisher
from sipstatus.sip.subscriber import (
    NotificationReceived,
    Subscribed,
    Subscriber,
    SubscriberConfig,
    SubscriberPool,
    SubscriptionEnded,
)
from sipstatus.sip.transaction import Destination
from tests.support.dns_zone import dns_server
from tests.support.pki import client_ctx, server_ctx

TYPE = "application/load-status+json"
WAIT = 10.0


class Node:
    """A service with an event queue."""

    def __init__(self, *users, client_ssl=None, resolver=None):
        self.events: asyncio.Queue = asyncio.Queue()
        self.endpoint = Endpoint(users, allow_events=["load-status"])
        self.service = SipService(self.endpoint, on_event=self.events.put_nowait,
                                  client_ssl=client_ssl, resolver=resolver)

    async def next(self, kind, timeout=WAIT):
        while True:
            event = await asyncio.wait_for(self.events.get(), timeout)
            if isinstance(event, kind):
                return event


async def agent(transport="UDP", host="127.0.0.1", ssl_context=None, authorize=None):
    notifier_holder = []

    def contact(source: Destination) -> str:
        return contact_uri

    notifier = Notifier("load-status", TYPE, contact, authorize=authorize)
    notifier_holder.append(notifier)
    node = Node(notifier)
    bound = await node.service.listen(transport, host, 0, ssl_context=ssl_context)
    scheme = "sips" if transport == "TLS" else "sip"
    hostpart = f"[{bound[0]}]" if ":" in bound[0] else bound[0]
    param = "" if transport in ("UDP", "TLS") else f";transport={transport.lower()}"
    contact_uri = f"{scheme}:agent@{hostpart}:{bound[1]}{param}"
    return node, notifier, Destination(transport, bound[0], bound[1])


async def watcher(target: Destination, transport="UDP", host="127.0.0.1", client_ssl=None,
                  server_ssl=None):
    pool = SubscriberPool()
    node = Node(pool, client_ssl=client_ssl)
    bound = await node.service.listen(transport, host, 0, ssl_context=server_ssl)
    hostpart = f"[{bound[0]}]" if ":" in bound[0] else bound[0]
    config = SubscriberConfig("load-status", TYPE, f"sip:watcher@{hostpart}",
                              f"sip:watcher@{hostpart}:{bound[1]}", decode=lambda b: b)
    thost = f"[{target.host}]" if ":" in target.host else target.host
    sub = Subscriber(f"sip:agent@{thost}:{target.port}", config, destination=target)
    return node, pool, sub


async def subscribe_and_notify(transport, host="127.0.0.1"):
    a, notifier, address = await agent(transport, host)
    w, pool, sub = await watcher(address, transport, host)
    try:
        notifier.state_changed(b'{"seq":1}', a.service.now())
        w.service.submit(pool, pool.add(sub, w.service.now()))
        assert (await w.next(Subscribed)).subscriber == sub.id
        first = await w.next(NotificationReceived)
        assert first.body == b'{"seq":1}'
        created = await a.next(SubscriptionCreated)
        assert created.source.transport == transport
        a.service.submit(notifier, notifier.state_changed(b'{"seq":2}', a.service.now() + 1))
        second = await w.next(NotificationReceived)
        assert second.body == b'{"seq":2}'
    finally:
        await w.service.close()
        await a.service.close()


def test_subscribe_and_notify_over_udp():
    asyncio.run(subscribe_and_notify("UDP"))


def test_subscribe_and_notify_over_tcp():
    asyncio.run(subscribe_and_notify("TCP"))


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback here")
def test_subscribe_and_notify_over_udp_on_ipv6():
    asyncio.run(subscribe_and_notify("UDP", "::1"))


@pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback here")
def test_subscribe_and_notify_over_tcp_on_ipv6():
    asyncio.run(subscribe_and_notify("TCP", "::1"))


# -- hostile input --------------------------------------------------------------------------

SUBSCRIBE = (
    "SUBSCRIBE sip:agent@127.0.0.1 SIP/2.0\r\n"
    "Via: SIP/2.0/{t} 127.0.0.1:9;branch=z9hG4bK{b};rport\r\n"
    "From: <sip:w@127.0.0.1>;tag=w{b}\r\nTo: <sip:agent@127.0.0.1>\r\n"
    "Call-ID: c{b}\r\nCSeq: 1 SUBSCRIBE\r\nContact: <sip:w@127.0.0.1:9>\r\n"
    "Event: load-status\r\nExpires: 600\r\nContent-Length: 0\r\n\r\n")


async def _udp_exchange(address, payloads: list[bytes], expect: int) -> list[bytes]:
    loop = asyncio.get_running_loop()
    got: asyncio.Queue = asyncio.Queue()

    class P(asyncio.DatagramProtocol):
        def datagram_received(self, data, addr):
            got.put_nowait(data)

    transport, _ = await loop.create_datagram_endpoint(P, local_addr=("127.0.0.1", 0))
    try:
        for p in payloads:
            transport.sendto(p, (address.host, address.port))
        return [await asyncio.wait_for(got.get(), WAIT) for _ in range(expect)]
    finally:
        transport.close()


def test_garbage_over_udp_is_dropped_and_the_agent_keeps_serving():
    async def go():
        a, _, address = await agent("UDP")
        try:
            junk = [b"", b"\x00" * 100, b"INVITE\r\n\r\n", bytes(range(256)), b"SIP/2.0 200 OK\r\n\r\n"]
            (reply, *_) = await _udp_exchange(address, junk + [SUBSCRIBE.format(t="UDP", b=1).encode()], 1)
            assert reply.startswith(b"SIP/2.0 200 ")
            assert a.endpoint.malformed >= 3
        finally:
            await a.service.close()

    asyncio.run(go())


def test_bad_request_over_udp_gets_400_with_a_reason():
    async def go():
        a, _, address = await agent("UDP")
        try:
            bad = SUBSCRIBE.format(t="UDP", b=2).replace("CSeq: 1 SUBSCRIBE", "CSeq: x SUBSCRIBE")
            (reply,) = await _udp_exchange(address, [bad.encode()], 1)
            assert reply.startswith(b"SIP/2.0 400 ") and b"CSeq" in reply.split(b"\r\n")[0]
        finally:
            await a.service.close()

    asyncio.run(go())


def test_stray_response_over_udp_is_counted():
    async def go():
        a, _, address = await agent("UDP")
        try:
            stray = (b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 127.0.0.1:1;branch=z9hG4bKzz\r\n"
                     b"From: <sip:a@b>;tag=1\r\nTo: <sip:c@d>;tag=2\r\nCall-ID: x\r\n"
                     b"CSeq: 1 NOTIFY\r\nContent-Length: 0\r\n\r\n")
            (reply,) = await _udp_exchange(address, [stray, SUBSCRIBE.format(t="UDP", b=3).encode()], 1)
            assert reply.startswith(b"SIP/2.0 200 ")
            assert a.endpoint.stray_responses == 1
        finally:
            await a.service.close()

    asyncio.run(go())


async def _tcp(address, data: bytes) -> bytes:
    reader, writer = await asyncio.open_connection(address.host, address.port)
    try:
        writer.write(data)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), WAIT)  # until the server closes
    finally:
        writer.close()


def test_tcp_peer_sending_an_endless_header_is_cut_off():
    async def go():
        a, _, address = await agent("TCP")
        try:
            head = b"SUBSCRIBE sip:agent@127.0.0.1 SIP/2.0\r\n" + b"X-Junk: " + b"a" * 40_000
            assert await _tcp(address, head) == b""
            assert a.service.cut_off == 1
        finally:
            await a.service.close()

    asyncio.run(go())


def test_tcp_peer_announcing_a_huge_body_gets_413_and_is_cut_off():
    async def go():
        a, _, address = await agent("TCP")
        try:
            msg = SUBSCRIBE.format(t="TCP", b=4).replace("Content-Length: 0",
                                                         "Content-Length: 99999999")
            reply = await _tcp(address, msg.encode())
            assert reply.startswith(b"SIP/2.0 413 ")
            assert a.service.cut_off == 1
        finally:
            await a.service.close()

    asyncio.run(go())


def test_tcp_garbage_message_is_dropped_and_the_connection_goes_on():
    async def go():
        a, _, address = await agent("TCP")
        try:
            reader, writer = await asyncio.open_connection(address.host, address.port)
            # Framed (empty header section ends it) but not SIP: dropped, no answer.
            writer.write(b"\xff" * 50 + b"\r\n\r\n" + SUBSCRIBE.format(t="TCP", b=5).encode())
            line = await asyncio.wait_for(reader.readline(), WAIT)
            writer.close()
            assert line.startswith(b"SIP/2.0 200 ")
            assert a.endpoint.malformed == 1
        finally:
            await a.service.close()

    asyncio.run(go())


def test_crlf_keepalive_ping_gets_a_pong():
    async def go():
        a, _, address = await agent("TCP")
        try:
            reader, writer = await asyncio.open_connection(address.host, address.port)
            writer.write(b"\r\n\r\n")
            assert await asyncio.wait_for(reader.readexactly(2), WAIT) == b"\r\n"
            writer.close()
        finally:
            await a.service.close()

    asyncio.run(go())


# -- resolution and failover --------------------------------------------------------------


def test_publisher_resolves_its_target_and_fails_over_to_the_second_address():
    async def go():
        comp = Compositor("load-status", TYPE)
        esc = Node(comp)
        host, port = await esc.service.listen("TCP", "127.0.0.1", 0)
        # A port with nothing listening: the first SRV target refuses the connection.
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            dead = s.getsockname()[1]
        zone = {
            ("_sip._tcp.proxy.test", "SRV"): [f"0 0 {dead} a.proxy.test.", f"1 0 {port} b.proxy.test."],
            ("a.proxy.test", "A"): ["127.0.0.1"],
            ("b.proxy.test", "A"): ["127.0.0.1"],
        }
        async with dns_server(zone) as (resolver, _):
            pub = Publisher("sip:node1@proxy.test", "load-status", TYPE, "sip:agent@127.0.0.1")
            epa = Node(pub, resolver=resolver)
            await epa.service.listen("TCP", "127.0.0.1", 0)
            try:
                epa.service.submit(pub, pub.publish(b'{"seq":1}', epa.service.now()))
                got = await esc.next(PublicationReceived)
                assert got.body == b'{"seq":1}'
                assert epa.service.send_errors == 1  # the refused first target
            finally:
                await epa.service.close()
                await esc.service.close()

    asyncio.run(go())


def test_unresolvable_target_makes_the_subscriber_back_off():
    async def go():
        async with dns_server({}) as (resolver, _):
            pool = SubscriberPool()
            node = Node(pool, resolver=resolver)
            await node.service.listen("UDP", "127.0.0.1", 0)
            config = SubscriberConfig("load-status", TYPE, "sip:w@127.0.0.1", "sip:w@127.0.0.1")
            sub = Subscriber("sip:agent@nowhere.test", config)
            try:
                node.service.submit(pool, pool.add(sub, node.service.now()))
                ended = await node.next(SubscriptionEnded)
                assert ended.status == 503 and ended.retry_at is not None
            finally:
                await node.service.close()

    asyncio.run(go())


# -- TLS ------------------------------------------------------------------------------------------


def test_tls_subscription_with_client_certificate_checked_by_the_authorizer(pki):
    async def go():
        seen_certs = []

        def authorize(request, source, now):
            cert = a.service.peer_certificate(source)
            seen_certs.append(cert)
            names = [v for k, v in (cert or {}).get("subjectAltName", ()) if k == "DNS"]
            return None if "watcher.test" in names else SipError(403, "no client certificate")

        a, notifier, address = await agent("TLS", ssl_context=server_ctx(pki, True),
                                           authorize=authorize)
        w, pool, sub = await watcher(address, "TLS", client_ssl=client_ctx(pki),
                                     server_ssl=server_ctx(pki, False))
        try:
            notifier.state_changed(b'{"seq":1}', a.service.now())
            w.service.submit(pool, pool.add(sub, w.service.now()))
            got = await w.next(NotificationReceived)
            assert got.body == b'{"seq":1}'
            assert seen_certs and seen_certs[0]["subjectAltName"] == (("DNS", "watcher.test"),)
        finally:
            await w.service.close()
            await a.service.close()

    asyncio.run(go())


def test_tls_client_refuses_a_server_it_cannot_verify(pki):
    async def go():
        a, _, address = await agent("TLS", ssl_context=server_ctx(pki, False))
        w, pool, sub = await watcher(address, "TLS", client_ssl=client_ctx(pki, "other.pem"),
                                     server_ssl=server_ctx(pki, False))
        try:
            w.service.submit(pool, pool.add(sub, w.service.now()))
            ended = await w.next(SubscriptionEnded)
            assert ended.status == 503 and ended.retry_at is not None
            assert a.events.empty()
        finally:
            await w.service.close()
            await a.service.close()

    asyncio.run(go())


def test_tls_server_requiring_a_client_certificate_refuses_one_without(pki):
    async def go():
        a, _, address = await agent("TLS", ssl_context=server_ctx(pki, True))
        w, pool, sub = await watcher(address, "TLS", client_ssl=client_ctx(pki, with_cert=False),
                                     server_ssl=server_ctx(pki, False))
        try:
            w.service.submit(pool, pool.add(sub, w.service.now()))
            # TLS 1.3: the client learns of the refusal when the server drops
            # the connection; the SUBSCRIBE's transaction hears of it at once.
            ended = await w.next(SubscriptionEnded)
            assert ended.status == 503 and ended.retry_at is not None
            assert a.events.empty()  # no subscription was made
        finally:
            await w.service.close()
            await a.service.close()

    asyncio.run(go())


def test_a_wildcard_listener_gives_each_peer_the_address_it_is_reached_on():
    async def main():
        service = SipService(Endpoint([]))
        await service.listen("UDP", "0.0.0.0", 0)
        wildcard = (service.local_host("UDP", "127.0.0.2"), service.endpoint.local_for("UDP", "127.0.0.2"))
        await service.close()
        bound = SipService(Endpoint([]))
        await bound.listen("UDP", "127.0.0.1", 0)
        one_address = (bound.local_host("UDP", "127.0.0.2"), bound.endpoint.local_for)
        await bound.close()
        return wildcard, one_address

    wildcard, one_address = asyncio.run(main())
    assert wildcard == ("127.0.0.1", "127.0.0.1")  # the route to 127.0.0.2 leaves from 127.0.0.1
    assert one_address == (None, None)
