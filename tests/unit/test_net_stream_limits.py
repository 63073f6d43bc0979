"""Incoming TCP and TLS connections are bounded before anything is authenticated
(issue 17 item 1): caps in all and per source, idle and message timeouts, a
TLS handshake timeout; a refused peer gets a clean close and UDP keeps
answering.  Real sockets on the loopback; deadlines are generous, nothing
asserts speed."""

from __future__ import annotations

import asyncio
import resource
import socket

import pytest

from sipstatus.net import SipService
from sipstatus.net.service import StreamLimits, fit_to_descriptors
from sipstatus.sip.endpoint import Endpoint
from tests.support.pki import client_ctx, server_ctx

WAIT = 20.0
OPTIONS = (b"OPTIONS sip:agent@127.0.0.1 SIP/2.0\r\n"
           b"Via: SIP/2.0/{t} 127.0.0.1:9;rport;branch=z9hG4bK{b}\r\n"
           b"Max-Forwards: 70\r\nFrom: <sip:p@127.0.0.1>;tag=1\r\nTo: <sip:agent@127.0.0.1>\r\n"
           b"Call-ID: {b}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n")


def options(transport: str, branch: str) -> bytes:
    return OPTIONS.replace(b"{t}", transport.encode()).replace(b"{b}", branch.encode())


async def service(transport="TCP", ssl_context=None, **limits) -> tuple[SipService, int]:
    svc = SipService(Endpoint([]), limits=StreamLimits(**limits))
    _, port = await svc.listen(transport, "127.0.0.1", 0, ssl_context=ssl_context)
    return svc, port


async def connect(port: int, source: str = "127.0.0.1"):
    return await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))


async def closed_cleanly(reader: asyncio.StreamReader) -> bool:
    """True when the peer ended with a FIN (EOF), False on a reset."""
    try:
        data = await asyncio.wait_for(reader.read(65536), WAIT)
        while data:
            data = await asyncio.wait_for(reader.read(65536), WAIT)
        return True
    except ConnectionResetError:
        return False


async def ended(reader: asyncio.StreamReader) -> bool:
    """True when the peer ended the connection (FIN or reset) in time."""
    try:
        return await closed_cleanly(reader) in (True, False)
    except TimeoutError:
        return False


async def still_open(reader: asyncio.StreamReader, writer, transport="TCP") -> bool:
    """The connection answers an OPTIONS."""
    writer.write(options(transport, "alive"))
    await writer.drain()
    line = await asyncio.wait_for(reader.readline(), WAIT)
    return line.startswith(b"SIP/2.0 200")


async def until(condition, deadline=WAIT) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline
    while not condition():
        if loop.time() > end:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)


# -- caps ----------------------------------------------------------------------------------------


def test_connections_beyond_the_per_source_cap_are_closed_cleanly():
    async def run():
        svc, port = await service(max_per_source=3)
        try:
            held = [await connect(port) for _ in range(3)]
            await until(lambda: svc.inbound_connections == 3)
            reader, writer = await connect(port)
            assert await closed_cleanly(reader)
            assert svc.refused == 1 and svc.inbound_connections == 3
            assert await still_open(*held[0])
            for _, w in [*held, (reader, writer)]:
                w.close()
        finally:
            await svc.close()

    asyncio.run(run())


def test_the_per_source_cap_leaves_other_sources_room():
    async def run():
        svc, port = await service(max_per_source=2)
        try:
            held = [await connect(port) for _ in range(2)]
            other = await connect(port, source="127.0.0.2")
            assert await still_open(*other)
            assert svc.refused == 0
            for _, w in [*held, other]:
                w.close()
        finally:
            await svc.close()

    asyncio.run(run())


def test_connections_beyond_the_total_cap_are_closed_cleanly():
    async def run():
        svc, port = await service(max_connections=3)
        try:
            held = [await connect(port, source=f"127.0.0.{i + 1}") for i in range(3)]
            await until(lambda: svc.inbound_connections == 3)
            reader, _ = await connect(port, source="127.0.0.9")
            assert await closed_cleanly(reader)
            assert svc.refused == 1
            for _, w in held:
                w.close()
        finally:
            await svc.close()

    asyncio.run(run())


def test_a_connection_is_admitted_again_once_one_closes():
    async def run():
        svc, port = await service(max_connections=1)
        try:
            _, first = await connect(port)
            await until(lambda: svc.inbound_connections == 1)
            first.close()
            await until(lambda: svc.inbound_connections == 0)
            assert await still_open(*await connect(port))
        finally:
            await svc.close()

    asyncio.run(run())


def test_udp_keeps_answering_while_the_connection_cap_is_reached():
    async def run():
        svc = SipService(Endpoint([]), limits=StreamLimits(max_connections=2))
        _, port = await svc.listen("TCP", "127.0.0.1", 0)
        _, udp_port = await svc.listen("UDP", "127.0.0.1", 0)
        try:
            held = [await connect(port) for _ in range(2)]
            refused, _ = await connect(port)
            assert await closed_cleanly(refused)
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                sock.setblocking(False)
                sock.sendto(options("UDP", "udp1"), ("127.0.0.1", udp_port))
                loop = asyncio.get_running_loop()
                answer = await asyncio.wait_for(loop.sock_recv(sock, 65536), WAIT)
            assert answer.startswith(b"SIP/2.0 200")
            for _, w in held:
                w.close()
        finally:
            await svc.close()

    asyncio.run(run())


def test_the_connection_cap_is_lowered_to_fit_the_descriptor_limit(monkeypatch):
    monkeypatch.setattr(resource, "getrlimit", lambda which: (1024, 1024))
    fitted = fit_to_descriptors(StreamLimits(max_connections=5000, max_per_source=5000))
    assert fitted.max_connections == 1024 - 64 and fitted.max_per_source == 1024 - 64


def test_a_cap_within_the_descriptor_limit_is_kept(monkeypatch):
    monkeypatch.setattr(resource, "getrlimit", lambda which: (4096, 4096))
    assert fit_to_descriptors(StreamLimits()) == StreamLimits()


def test_limits_refuse_a_zero_cap():
    with pytest.raises(ValueError, match="at least 1"):
        StreamLimits(max_connections=0)


# -- timeouts ------------------------------------------------------------------------------------


def test_an_idle_connection_is_closed_after_the_idle_timeout():
    async def run():
        svc, port = await service(idle_timeout=0.5)
        try:
            reader, _ = await connect(port)
            assert await closed_cleanly(reader)
            assert svc.timed_out == 1 and svc.inbound_connections == 0
        finally:
            await svc.close()

    asyncio.run(run())


def test_a_connection_in_use_is_not_closed_as_idle():
    async def run():
        svc, port = await service(idle_timeout=1.5)
        try:
            reader, writer = await connect(port)
            for _ in range(4):  # 4 x 0.5 s: longer than the idle timeout in all
                assert await still_open(reader, writer)
                await reader.readuntil(b"\r\n\r\n")
                await asyncio.sleep(0.5)
            assert svc.timed_out == 0
            writer.close()
        finally:
            await svc.close()

    asyncio.run(run())


def test_a_message_left_unfinished_is_cut_off_after_the_message_timeout():
    async def run():
        svc, port = await service(message_timeout=0.5)
        try:
            reader, writer = await connect(port)
            writer.write(options("TCP", "slow")[:40])  # a start line, then nothing
            await writer.drain()
            assert await closed_cleanly(reader)
            assert svc.timed_out == 1
        finally:
            await svc.close()

    asyncio.run(run())


def test_a_message_trickled_slower_than_the_message_timeout_is_cut_off():
    async def run():
        svc, port = await service(message_timeout=1.0)
        try:
            reader, writer = await connect(port)
            data = options("TCP", "trickle")
            for i in range(0, len(data), 10):  # bytes keep coming: not idle
                if reader.at_eof() or writer.is_closing():
                    break
                writer.write(data[i:i + 10])
                await asyncio.sleep(0.2)
            # Cut off: a FIN, or a reset when a chunk was still unread as it
            # closed (Linux answers close() with unread data by RST).
            assert await ended(reader)
            assert svc.timed_out == 1
        finally:
            await svc.close()

    asyncio.run(run())


def test_a_tls_client_that_never_completes_its_handshake_is_closed(pki):
    async def run():
        svc, port = await service("TLS", server_ctx(pki, require_client=False),
                                  handshake_timeout=0.5)
        try:
            reader, _ = await connect(port)  # plain TCP: no ClientHello ever
            assert await ended(reader)
            await until(lambda: svc.inbound_connections == 0)
            assert svc.handshakes_failed == 1
        finally:
            await svc.close()

    asyncio.run(run())


def test_tls_still_answers_under_the_caps(pki):
    async def run():
        svc, port = await service("TLS", server_ctx(pki, require_client=False),
                                  max_per_source=1)
        try:
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", port, ssl=client_ctx(pki, with_cert=False),
                server_hostname="localhost")
            assert await still_open(reader, writer, "TLS")
            second, _ = await connect(port)
            assert await closed_cleanly(second)
            assert svc.refused == 1
            writer.close()
        finally:
            await svc.close()

    asyncio.run(run())


# -- UDP -----------------------------------------------------------------------------------------


def _udp_buffer(svc: SipService) -> int:
    (udp,) = svc._udp.values()
    return udp.get_extra_info("socket").getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)


def test_a_udp_socket_gets_a_receive_buffer_larger_than_the_kernels_default():
    default = int(open("/proc/sys/net/core/rmem_default").read())

    async def run():
        svc = SipService(Endpoint([]), udp_receive_buffer=4 * 1024 * 1024)
        await svc.listen("UDP", "127.0.0.1", 0)
        try:
            return _udp_buffer(svc)
        finally:
            await svc.close()

    assert asyncio.run(run()) > default


def test_a_udp_receive_buffer_of_zero_keeps_the_kernels_default():
    default = int(open("/proc/sys/net/core/rmem_default").read())

    async def run():
        svc = SipService(Endpoint([]), udp_receive_buffer=0)
        await svc.listen("UDP", "127.0.0.1", 0)
        try:
            return _udp_buffer(svc)
        finally:
            await svc.close()

    assert asyncio.run(run()) == default
