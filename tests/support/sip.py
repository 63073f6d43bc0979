"""SIP by hand over UDP, as a proxy's peers send it: `SipClient` sends PUBLISH,
NOTIFY and OPTIONS built from strings and returns the final response;
`Publisher` keeps the entity tag and the agent's instance and seq, like the
agent's publisher does; `body` is a valid load-status body from the
library's own encoder.
"""

from __future__ import annotations

import secrets
import socket
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from sipstatus.codec import encode
from sipstatus.status import LoadStatus, State
from tests.support import HOST

MEDIA_TYPE = "application/load-status+json"


@dataclass
class Response:
    status: int
    reason: str
    headers: dict[str, list[str]]
    raw: bytes

    def header(self, name: str) -> str | None:
        values = self.headers.get(name.lower())
        return values[0] if values else None

    def __str__(self) -> str:
        return f"{self.status} {self.reason}"


def parse_response(data: bytes) -> Response:
    head = data.split(b"\r\n\r\n", 1)[0].decode("utf-8", "replace")
    lines = head.split("\r\n")
    _, status, *reason = lines[0].split(" ", 2)
    headers: dict[str, list[str]] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers.setdefault(name.strip().lower(), []).append(value.strip())
    return Response(int(status), reason[0] if reason else "", headers, data)


class SipClient:
    """A UDP socket on 127.0.0.1 that sends requests to one proxy and waits
    for their final responses (no retransmission: loopback loses nothing)."""

    def __init__(self, proxy_port: int) -> None:
        self.proxy = (HOST, proxy_port)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((HOST, 0))
        self.port = self.sock.getsockname()[1]
        self._cseq = 0

    def close(self) -> None:
        self.sock.close()

    def request(
        self,
        method: str,
        headers: Mapping[str, str] | Iterable[tuple[str, str]] = (),
        body: bytes = b"",
        *,
        call_id: str | None = None,
        from_tag: str | None = None,
        to_tag: str | None = None,
        ruri: str | None = None,
    ) -> tuple[bytes, Response]:
        """Send one request; return its bytes and the final response."""
        data = self.build(method, headers, body, call_id=call_id, from_tag=from_tag, to_tag=to_tag, ruri=ruri)
        return data, self.send(data)

    def build(
        self,
        method: str,
        headers: Mapping[str, str] | Iterable[tuple[str, str]] = (),
        body: bytes = b"",
        *,
        call_id: str | None = None,
        from_tag: str | None = None,
        to_tag: str | None = None,
        ruri: str | None = None,
    ) -> bytes:
        self._cseq += 1
        host, port = self.proxy
        ruri = ruri or f"sip:{host}:{port}"
        to = f"<sip:load-status@{host}:{port}>" + (f";tag={to_tag}" if to_tag else "")
        lines = [
            f"{method} {ruri} SIP/2.0",
            f"Via: SIP/2.0/UDP {HOST}:{self.port};branch=z9hG4bK{secrets.token_hex(8)};rport",
            "Max-Forwards: 70",
            f"From: <sip:agent@{HOST}:{self.port}>;tag={from_tag or secrets.token_hex(4)}",
            f"To: {to}",
            f"Call-ID: {call_id or secrets.token_hex(8) + '@' + HOST}",
            f"CSeq: {self._cseq} {method}",
        ]
        items = headers.items() if isinstance(headers, Mapping) else headers
        lines += [f"{name}: {value}" for name, value in items]
        lines.append(f"Content-Length: {len(body)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + body

    def send(self, data: bytes, timeout: float = 5.0) -> Response:
        self.sock.sendto(data, self.proxy)
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no final response from the proxy")
            self.sock.settimeout(left)
            reply = parse_response(self.sock.recv(65535))
            if reply.status >= 200:
                return reply

    def options(self, timeout: float = 0.2) -> Response:
        return self.send(self.build("OPTIONS"), timeout)


def body(
    node: str,
    weight: int | None = None,
    *,
    state: State = State.ACTIVE,
    instance: str = "test1",
    seq: int = 1,
    validity: int = 60,
    limit: int | None = None,
) -> bytes:
    """A valid load-status body from the library's own encoder: an active
    node with `weight` (capacity weight/100), or another state (weight 0)."""
    from sipstatus.status import Asterisk

    capacity = 0.0 if weight is None else weight / 100
    asterisk = Asterisk(limit=limit) if limit is not None else None
    return encode(LoadStatus(node, instance, seq, validity, state, capacity, asterisk=asterisk))


@dataclass
class Publisher:
    """One node's publication at the proxy, as the agent keeps it: the entity
    tag of the last 200, and its own instance and seq."""

    client: SipClient
    node: str
    instance: str = field(default_factory=lambda: secrets.token_hex(4))
    seq: int = 0
    etag: str | None = None
    expires: int = 600

    def publish(self, payload: bytes | None, *, expires: int | None = None, if_match: str | None = None) -> Response:
        headers = [("Event", "load-status"), ("Expires", str(self.expires if expires is None else expires))]
        tag = if_match if if_match is not None else self.etag
        if tag is not None:
            headers.append(("SIP-If-Match", tag))
        if payload:
            headers.append(("Content-Type", MEDIA_TYPE))
        _, reply = self.client.request("PUBLISH", headers, payload or b"")
        if reply.status == 200:
            self.etag = reply.header("SIP-ETag")
        return reply

    def report(self, weight: int | None = None, *, state: State = State.ACTIVE, validity: int = 60, limit: int | None = None) -> Response:
        self.seq += 1
        return self.publish(body(self.node, weight, state=state, instance=self.instance, seq=self.seq, validity=validity, limit=limit))
