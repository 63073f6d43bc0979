"""RFC 3263 resolution against a DNS server started on 127.0.0.1 by the test.

No real DNS server is ever asked: dnspython's resolver is pointed at a
small UDP server that answers from a zone held in the test.
"""

from __future__ import annotations

import asyncio

import pytest

from sipstatus.net import order_srv
from sipstatus.sip.transaction import Destination
from sipstatus.sip.uri import parse_uri
from tests.support.dns_zone import dns_server


def resolve(zone, uri: str, **kw):
    async def go():
        async with dns_server(zone) as (resolver, server):
            for name, value in kw.items():
                setattr(resolver, name, value)
            targets = await resolver.resolve(parse_uri(uri))
            return targets, server.queries

    return asyncio.run(go())


ZONE = {
    ("example.net", "NAPTR"): [
        '10 50 "s" "SIPS+D2T" "" _sips._tcp.example.net.',
        '20 50 "s" "SIP+D2T" "" _sip._tcp.example.net.',
        '30 50 "s" "SIP+D2U" "" _sip._udp.example.net.',
    ],
    ("_sips._tcp.example.net", "SRV"): ["0 0 5061 tls1.example.net."],
    ("_sip._tcp.example.net", "SRV"): ["0 0 5060 tcp1.example.net."],
    ("_sip._udp.example.net", "SRV"): ["0 10 5070 udp1.example.net.", "1 0 5080 udp2.example.net."],
    ("tls1.example.net", "A"): ["192.0.2.11"],
    ("tcp1.example.net", "A"): ["192.0.2.12"],
    ("udp1.example.net", "A"): ["192.0.2.13"],
    ("udp1.example.net", "AAAA"): ["2001:db8::13"],
    ("udp2.example.net", "A"): ["192.0.2.14"],
    ("srvonly.example.org", "A"): ["192.0.2.99"],
    ("_sip._tcp.srvonly.example.org", "SRV"): ["5 0 5090 box.example.org."],
    ("box.example.org", "A"): ["192.0.2.40"],
    ("plain.example.com", "A"): ["192.0.2.50", "192.0.2.51"],
    ("plain.example.com", "AAAA"): ["2001:db8::50"],
}


def dests(targets):
    return [t.destination for t in targets]


def test_numeric_host_skips_dns():
    targets, queries = resolve(ZONE, "sip:agent@192.0.2.7")
    assert dests(targets) == [Destination("UDP", "192.0.2.7", 5060)]
    assert queries == []


def test_numeric_ipv6_host_with_transport_and_port():
    targets, queries = resolve(ZONE, "sip:[2001:db8::7]:5070;transport=tcp")
    assert dests(targets) == [Destination("TCP", "2001:db8::7", 5070)]
    assert queries == []


def test_numeric_sips_defaults_to_tls_on_5061():
    targets, _ = resolve(ZONE, "sips:192.0.2.7")
    assert dests(targets) == [Destination("TLS", "192.0.2.7", 5061)]


def test_naptr_order_then_srv_then_addresses():
    targets, queries = resolve(ZONE, "sip:node@example.net")
    assert dests(targets) == [
        Destination("TLS", "192.0.2.11", 5061),
        Destination("TCP", "192.0.2.12", 5060),
        Destination("UDP", "192.0.2.13", 5070),
        Destination("UDP", "2001:db8::13", 5070),
        Destination("UDP", "192.0.2.14", 5080),
    ]
    assert queries[0] == ("example.net.", "NAPTR")
    assert {t.name for t in targets} == {"example.net"}  # what TLS must verify


def test_sips_uses_only_the_tls_naptr():
    targets, _ = resolve(ZONE, "sips:node@example.net")
    assert dests(targets) == [Destination("TLS", "192.0.2.11", 5061)]


def test_unsupported_transports_are_skipped():
    targets, _ = resolve(ZONE, "sip:node@example.net", transports=["UDP"])
    assert {d.transport for d in dests(targets)} == {"UDP"}


def test_without_naptr_srv_is_asked_per_transport():
    targets, queries = resolve(ZONE, "sip:x@srvonly.example.org")
    assert dests(targets) == [Destination("TCP", "192.0.2.40", 5090)]
    assert ("_sip._udp.srvonly.example.org.", "SRV") in queries


def test_without_naptr_and_srv_the_address_on_5060_over_udp():
    targets, _ = resolve(ZONE, "sip:x@plain.example.com")
    found = dests(targets)
    # Addresses of one record set come in no defined order; IPv4 before IPv6.
    assert set(found[:2]) == {Destination("UDP", "192.0.2.50", 5060),
                              Destination("UDP", "192.0.2.51", 5060)}
    assert found[2:] == [Destination("UDP", "2001:db8::50", 5060)]


def test_prefer_ipv6_puts_aaaa_first():
    targets, _ = resolve(ZONE, "sip:x@plain.example.com", prefer_ipv6=True)
    assert dests(targets)[0] == Destination("UDP", "2001:db8::50", 5060)


def test_explicit_port_skips_naptr_and_srv():
    targets, queries = resolve(ZONE, "sip:x@example.net:5999")
    assert queries and all(t in ("A", "AAAA") for _, t in queries)
    assert dests(targets) == []  # example.net has no address records


def test_explicit_transport_skips_naptr_and_asks_its_srv():
    targets, queries = resolve(ZONE, "sip:x@example.net;transport=tcp")
    assert dests(targets) == [Destination("TCP", "192.0.2.12", 5060)]
    assert ("example.net.", "NAPTR") not in queries


def test_unknown_domain_gives_no_targets():
    targets, _ = resolve(ZONE, "sip:x@nowhere.invalid")
    assert targets == []


def test_maddr_overrides_the_host():
    targets, queries = resolve(ZONE, "sip:x@example.net;maddr=192.0.2.77")
    assert dests(targets) == [Destination("UDP", "192.0.2.77", 5060)]
    assert queries == []


def test_srv_priority_orders_and_weight_picks_within_a_priority():
    records = [(1, 0, 1, "c"), (0, 10, 1, "a"), (0, 90, 1, "b")]
    assert order_srv(records, lambda: 0.99) == [(1, "b"), (1, "a"), (1, "c")]
    assert order_srv(records, lambda: 0.0) == [(1, "a"), (1, "b"), (1, "c")]


def test_srv_dot_target_means_no_service():
    assert order_srv([(0, 0, 0, ".")]) == []


@pytest.mark.parametrize("uri", ["sip:x@example.net;transport=sctp"])
def test_transport_we_do_not_support_gives_no_targets(uri):
    targets, queries = resolve(ZONE, uri)
    assert targets == [] and queries == []
