"""Locating SIP servers (RFC 3263 section 4): a SIP URI to an ordered list of targets.

NAPTR -> SRV -> A/AAAA through dnspython's asyncio resolver.  A numeric
host skips DNS, an explicit port skips NAPTR and SRV, an explicit
``transport`` skips NAPTR.  Default ports: 5060, 5061 for TLS.  The caller
tries the targets in order, moving on after a transport error, a timeout or
a 503 (section 4.3).
"""

from __future__ import annotations

import asyncio
import ipaddress
import random as _random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import dns.asyncresolver
import dns.exception
import dns.resolver

from ..sip.transaction import DEFAULT_SIP_PORT, DEFAULT_SIPS_PORT, Destination
from ..sip.uri import SipUri

# RFC 3263 section 4.1 NAPTR services and the SRV prefixes of each transport.
NAPTR_SERVICES = {"SIP+D2U": "UDP", "SIP+D2T": "TCP", "SIPS+D2T": "TLS"}
SRV_PREFIX = {"UDP": "_sip._udp.", "TCP": "_sip._tcp.", "TLS": "_sips._tcp."}


@dataclass(frozen=True, slots=True)
class Target:
    """Where to send, and the domain a TLS certificate must match (RFC 5922)."""

    destination: Destination
    name: str


def _default_port(transport: str) -> int:
    return DEFAULT_SIPS_PORT if transport == "TLS" else DEFAULT_SIP_PORT


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


def order_srv(records: Sequence[tuple[int, int, int, str]],
              random: Callable[[], float] = _random.random) -> list[tuple[int, str]]:
    """RFC 2782: by priority, then weighted random order within a priority.

    ``records`` are (priority, weight, port, target); the result is (port,
    target).  A single target "." means the service is not offered.
    """
    if len(records) == 1 and records[0][3] in (".", ""):
        return []
    out: list[tuple[int, str]] = []
    for priority in sorted({r[0] for r in records}):
        group = [r for r in records if r[0] == priority]
        # Zero-weight records first, as RFC 2782 asks, so they have a small chance.
        group.sort(key=lambda r: r[1] != 0)
        while group:
            total = sum(r[1] for r in group)
            pick = random() * total
            running = 0
            chosen = group[-1]
            for record in group:
                running += record[1]
                if running >= pick and (record[1] > 0 or total == 0):
                    chosen = record
                    break
            group.remove(chosen)
            out.append((chosen[2], chosen[3]))
    return out


class Resolver:
    """RFC 3263 resolution with dnspython (``dns``: the resolver to ask;
    tests point one at a DNS server of their own)."""

    def __init__(
        self,
        dns_resolver: dns.asyncresolver.Resolver | None = None,
        *,
        transports: Sequence[str] = ("UDP", "TCP", "TLS"),
        prefer_ipv6: bool = False,
        random: Callable[[], float] = _random.random,
    ) -> None:
        self.dns = dns_resolver or dns.asyncresolver.Resolver()
        self.transports = [t.upper() for t in transports]
        self.prefer_ipv6 = prefer_ipv6
        self.random = random

    async def _query(self, name: str, rdtype: str) -> list:
        try:
            answer = await self.dns.resolve(name, rdtype, search=False)
        except (dns.exception.DNSException, OSError):
            return []  # NXDOMAIN, no answer, no server, timeout: no records
        return list(answer)

    async def addresses(self, host: str) -> list[str]:
        """A and AAAA of ``host``, IPv4 first unless ``prefer_ipv6``."""
        v4, v6 = await asyncio.gather(self._query(host, "A"), self._query(host, "AAAA"))
        first, second = (v6, v4) if self.prefer_ipv6 else (v4, v6)
        return [r.address for r in first] + [r.address for r in second]

    async def resolve(self, uri: SipUri) -> list[Target]:
        host = (uri.params.get("maddr") or uri.host).strip("[]")
        sips = uri.scheme == "sips"
        transport = uri.transport.upper() if uri.transport else None
        if sips:
            transport = "TLS"  # RFC 3263 section 4.1: sips means TLS over TCP
        if transport is not None and transport not in self.transports:
            return []
        if _is_ip(host):
            chosen = transport or "UDP"
            return [Target(Destination(chosen, host, uri.port or _default_port(chosen)), host)]
        if uri.port is not None:
            chosen = transport or "UDP"
            return await self._hosts([(uri.port, host)], chosen, host)
        if transport is None:
            targets = await self._naptr(host, sips)
            if targets is not None:
                return targets
            candidates = ["TLS"] if sips else self.transports
        else:
            candidates = [transport]
        for chosen in candidates:
            srv = await self._srv(host, chosen)
            if srv:
                return srv
        chosen = transport or ("TLS" if sips else "UDP")
        return await self._hosts([(_default_port(chosen), host)], chosen, host)

    async def _naptr(self, host: str, sips: bool) -> list[Target] | None:
        """Targets from NAPTR records; None if the domain has none (fall back to SRV)."""
        records = await self._query(host, "NAPTR")
        if not records:
            return None
        usable = []
        for r in records:
            service = r.service.decode("ascii", "replace").upper()
            transport = NAPTR_SERVICES.get(service)
            if transport is None or transport not in self.transports:
                continue
            if sips and transport != "TLS":
                continue
            if r.flags.decode("ascii", "replace").lower() != "s":
                continue  # only terminal SRV rewrites are used for SIP
            usable.append((r.order, r.preference, transport, r.replacement.to_text()))
        if not usable:
            return None
        out: list[Target] = []
        for _, _, transport, name in sorted(usable):
            out.extend(await self._srv_records(name, transport, host))
        return _unique(out)

    async def _srv(self, host: str, transport: str) -> list[Target]:
        name = SRV_PREFIX[transport] + host.rstrip(".") + "."
        return await self._srv_records(name, transport, host)

    async def _srv_records(self, name: str, transport: str, domain: str) -> list[Target]:
        records = await self._query(name, "SRV")
        ordered = order_srv([(r.priority, r.weight, r.port, r.target.to_text())
                             for r in records], self.random)
        return await self._hosts(ordered, transport, domain)

    async def _hosts(self, hosts: Sequence[tuple[int, str]], transport: str,
                     domain: str) -> list[Target]:
        out: list[Target] = []
        for port, host in hosts:
            host = host.rstrip(".")
            addresses = [host] if _is_ip(host) else await self.addresses(host)
            out.extend(Target(Destination(transport, a, port), domain.rstrip("."))
                       for a in addresses)
        return _unique(out)


def _unique(targets: list[Target]) -> list[Target]:
    seen: set[Destination] = set()
    out = []
    for t in targets:
        if t.destination not in seen:
            seen.add(t.destination)
            out.append(t)
    return out
