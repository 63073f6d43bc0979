"""The kit's SIP side: one UDP socket, requests built by hand, blocking waits.

A conformance test must be able to send what a correct peer never would
(a package name in capitals, a stale entity tag, a body that breaks one
rule), so the kit builds each message itself and does not go through the
library's state machines.  It runs one scenario at a time, so a blocking
socket with timeouts is all it needs.

Client transactions retransmit over UDP as RFC 3261 section 17.1.2 says
(from T1 = 0.5 s, doubling to T2 = 4 s) until a final response or the
deadline.  Requests that arrive are answered by ``policy`` (200 by
default) and kept in ``inbox``; a retransmission gets the same answer
again and is not kept twice.
"""

from __future__ import annotations

import secrets
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

from ..sip import Request, Response, SipError, make_response, parse_message

T1, T2 = 0.5, 4.0
#: ``policy(request) -> (status, extra header fields)`` for a received request.
Policy = Callable[[Request], tuple[int, list[tuple[str, str]]]]


@dataclass
class Received:
    """A request that reached the kit, when, from where, and what it got."""

    request: Request
    at: float
    source: tuple[str, int]
    status: int
    to_tag: str | None = None  # of the kit's answer


def answer_200(request: Request) -> tuple[int, list[tuple[str, str]]]:
    return 200, []


def new_tag() -> str:
    return secrets.token_hex(4)


def new_call_id(host: str) -> str:
    return f"{secrets.token_hex(8)}@{host}"


class Peer:
    """A SIP-over-UDP endpoint on ``host`` (a free port unless ``port``)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        self.sock.bind((host, port))
        self.host, self.port = self.sock.getsockname()[:2]
        self.policy: Policy = answer_200
        self.inbox: list[Received] = []
        self._answers: dict[tuple[str, str, str], bytes] = {}  # branch, call-id, cseq
        self._responses: list[tuple[Response, float]] = []
        self.last: tuple[bytes, tuple[str, int], str] = (b"", ("", 0), "")

    def close(self) -> None:
        self.sock.close()

    @property
    def hostport(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    # -- receiving -------------------------------------------------------------------

    def _receive(self, until: float) -> bool:
        """Take one datagram (answering a request); False when ``until`` passed."""
        left = until - time.monotonic()
        if left <= 0:
            return False
        self.sock.settimeout(left)
        try:
            data, source = self.sock.recvfrom(65535)
        except TimeoutError:
            return False
        try:
            message = parse_message(data)
        except SipError:
            return True  # not SIP: a conformance peer only records, never crashes
        now = time.monotonic()
        if isinstance(message, Response):
            self._responses.append((message, now))
            return True
        via = message.top_via
        key = (via.branch or "" if via else "", message.call_id or "", message.header("CSeq") or "")
        if key in self._answers:
            self.sock.sendto(self._answers[key], source)
            return True
        status, headers = self.policy(message)
        response = make_response(message, status, headers=headers,
                                 to_tag=new_tag() if message.to_addr and
                                 not message.to_addr.tag else None)
        wire = response.to_bytes()
        self._answers[key] = wire
        self.sock.sendto(wire, source)
        to_tag = response.to_addr.tag if response.to_addr is not None else None
        self.inbox.append(Received(message, now, source[:2], status, to_tag))
        return True

    def wait_request(self, match: Callable[[Received], bool], timeout: float,
                     after: int = 0) -> Received | None:
        """The first request in ``inbox[after:]`` that ``match``es, waiting up to ``timeout``."""
        until = time.monotonic() + timeout
        while True:
            for item in self.inbox[after:]:
                if match(item):
                    return item
            if not self._receive(until):
                for item in self.inbox[after:]:
                    if match(item):
                        return item
                return None

    def idle(self, seconds: float) -> None:
        """Answer whatever arrives for ``seconds``."""
        until = time.monotonic() + seconds
        while self._receive(until):
            pass

    # -- sending ---------------------------------------------------------------------

    def send_request(self, request: Request, target: tuple[str, int],
                     timeout: float = 8.0) -> Response | None:
        """Send ``request`` (a new Via branch) and return its final response, or None."""
        branch = "z9hG4bK" + secrets.token_hex(8)
        request.remove_header("Via")
        request.prepend_header("Via", f"SIP/2.0/UDP {self.hostport};rport;branch={branch}")
        self.last = (request.to_bytes(), target, branch)
        return self._transact(*self.last, timeout)

    def retransmit_last(self, timeout: float = 8.0) -> Response | None:
        """The last request again, byte for byte (a UDP retransmission)."""
        return self._transact(*self.last, timeout)

    def _transact(self, wire: bytes, target: tuple[str, int], branch: str,
                  timeout: float) -> Response | None:
        start = time.monotonic()
        deadline = start + timeout
        interval = T1
        resend_at = start + interval
        self.sock.sendto(wire, target)
        while True:
            for i, (response, _) in enumerate(self._responses):
                via = response.top_via
                if via is not None and via.branch == branch and response.status >= 200:
                    del self._responses[i]
                    return response
            now = time.monotonic()
            if now >= deadline:
                return None
            if now >= resend_at:
                self.sock.sendto(wire, target)
                interval = min(interval * 2, T2)
                resend_at = now + interval
            self._receive(min(resend_at, deadline))
