"""A DNS server on 127.0.0.1 answering from a zone held in the test, and a
Resolver pointed at it: no real DNS server is ever asked.
"""

from __future__ import annotations

import asyncio
import contextlib

import dns.asyncresolver
import dns.message
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

from sipstatus.net import Resolver


class ZoneServer(asyncio.DatagramProtocol):
    """Answers queries from ``zone``: {(name, type): [rdata text, ...]}."""

    def __init__(self, zone: dict[tuple[str, str], list[str]]) -> None:
        self.zone = {(n.lower().rstrip(".") + ".", t): v for (n, t), v in zone.items()}
        self.names = {n for n, _ in self.zone}
        self.queries: list[tuple[str, str]] = []

    def connection_made(self, transport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:
        query = dns.message.from_wire(data)
        response = dns.message.make_response(query)
        question = query.question[0]
        name = question.name.to_text().lower()
        rdtype = dns.rdatatype.to_text(question.rdtype)
        self.queries.append((name, rdtype))
        texts = self.zone.get((name, rdtype))
        if texts:
            response.answer.append(dns.rrset.from_text(name, 60, dns.rdataclass.IN, rdtype, *texts))
        elif name not in self.names:
            response.set_rcode(dns.rcode.NXDOMAIN)
        self.transport.sendto(response.to_wire(), addr)


@contextlib.asynccontextmanager
async def dns_server(zone):
    loop = asyncio.get_running_loop()
    transport, server = await loop.create_datagram_endpoint(
        lambda: ZoneServer(zone), local_addr=("127.0.0.1", 0))
    port = transport.get_extra_info("sockname")[1]
    res = dns.asyncresolver.Resolver(configure=False)
    res.nameservers = ["127.0.0.1"]
    res.port = port
    res.lifetime = 2.0
    try:
        yield Resolver(res, random=lambda: 0.0), server
    finally:
        transport.close()
