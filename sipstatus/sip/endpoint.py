"""One SIP element: the transaction layer plus its transaction users, sans-I/O.

:class:`Endpoint` is what the asyncio shell drives.  It takes bytes from the
transports (``receive``), outputs of the transaction users (``submit``),
resolved targets (``targets_resolved``), transport failures
(``transport_error``) and the time (``handle_timer``), and returns
:class:`Transmit` (bytes for a transport), :class:`Resolve` (find the
targets of a URI, RFC 3263) and the transaction users' events for the
application.  No exception escapes: a request that the users cannot handle
gets an error response, an internal error a 500, and the counters say what
happened.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from . import transaction
from .errors import SipError
from .headers import Via
from .message import Request, Response, error_response, make_response
from .transaction import Destination, TransactionLayer, client_key
from .transaction_user import SendRequest, SendResponse
from .uri import SipUri
from .validation import SIPSTATUS_METHODS, check_request

log = logging.getLogger(__name__)

# A flood of bad messages must not flood the log (2,000 datagrams once wrote
# 1.1 MB of tracebacks): one line per bad message, at most this many lines
# per window, then one line saying how many more there were.
BAD_MESSAGE_LOG_BURST = 10
BAD_MESSAGE_LOG_WINDOW = 60.0

# RFC 3261 section 18.1.1 (spec 4.14): a request larger than this, with the
# path MTU unknown, goes over a congestion-controlled transport, not UDP.
UDP_REQUEST_LIMIT = 1300


class TransactionUser(Protocol):
    """What the endpoint needs of a notifier, subscriber pool, publisher..."""

    def handle_request(self, request: Request, source: Destination,
                       now: float) -> list | None: ...

    def handle_response(self, response: Response, request: Request, now: float) -> list: ...

    def next_timer(self) -> float | None: ...

    def handle_timer(self, now: float) -> list: ...


@dataclass(frozen=True, slots=True)
class Transmit:
    """Transport: send ``data`` to ``destination``."""

    data: bytes
    destination: Destination
    message: Request | Response


@dataclass(frozen=True, slots=True)
class Resolve:
    """I/O layer: find the targets of ``uri`` (RFC 3263), then call
    ``Endpoint.targets_resolved(token, targets, now)``."""

    token: int
    uri: SipUri


class LogLimit:
    """At most ``burst`` lines per ``window`` seconds of the caller's clock;
    the first line after a window that dropped some says how many."""

    def __init__(self, burst: int = BAD_MESSAGE_LOG_BURST,
                 window: float = BAD_MESSAGE_LOG_WINDOW) -> None:
        self.burst = burst
        self.window = window
        self._start = -window
        self._lines = 0
        self.suppressed = 0  # in the current window
        self.suppressed_total = 0

    def log(self, logger: logging.Logger, level: int, now: float, message: str,
            *args: object) -> None:
        if now - self._start >= self.window:
            if self.suppressed:
                logger.log(level, "%d more such lines left out in the last %.0f s",
                           self.suppressed, now - self._start)
            self._start, self._lines, self.suppressed = now, 0, 0
        if self._lines < self.burst:
            self._lines += 1
            logger.log(level, message, *args)
        else:
            self.suppressed += 1
            self.suppressed_total += 1


def describe_failure(error: BaseException) -> str:
    """One line for an unexpected exception: its type, text and where it was
    raised (file:line), in place of a traceback."""
    frame = None
    tb = error.__traceback__
    while tb is not None:
        frame, tb = tb, tb.tb_next
    where = "" if frame is None else \
        f" at {frame.tb_frame.f_code.co_filename.rsplit('/', 1)[-1]}:{frame.tb_lineno}"
    return f"{type(error).__name__}: {error}{where}"


@dataclass(slots=True, eq=False)
class _Client:
    tu: TransactionUser
    request: Request
    targets: list[Destination] = field(default_factory=list)  # not yet tried


class Endpoint:
    """The transaction layer and the transaction users of one element.

    ``local`` maps a transport name (UDP, TCP, TLS) to the host and port our
    Via sent-by carries for it.  ``allow_events`` is what a SUBSCRIBE or
    PUBLISH for an unknown package is told (489).
    """

    def __init__(
        self,
        users: Iterable[TransactionUser] = (),
        *,
        local: dict[str, tuple[str, int]] | None = None,
        transactions: TransactionLayer | None = None,
        methods: Iterable[str] = SIPSTATUS_METHODS,
        allow_events: Sequence[str] = (),
    ) -> None:
        self.users: list[TransactionUser] = list(users)
        self.local: dict[str, tuple[str, int]] = dict(local or {})
        #: ``local_for(transport, peer_host)``: our host in a request to that
        #: peer, or None for ``local``'s. The I/O layer sets it for wildcard
        #: listeners: a multi-homed host is known by another address on each
        #: network, and a Via naming the wrong one (or 0.0.0.0) misleads.
        self.local_for: Callable[[str, str], str | None] | None = None
        self.transactions = transactions or TransactionLayer()
        self.methods = frozenset(methods)
        self.allow_events = list(allow_events)
        self._clients: dict[tuple[str, str], _Client] = {}
        self._resolving: dict[int, tuple[TransactionUser, Request]] = {}
        self._tokens = itertools.count(1)
        self.internal_errors = 0
        self.unhandled_requests = 0
        self.bad_message_log = LogLimit()

    # -- counters --------------------------------------------------------------------------

    @property
    def stray_responses(self) -> int:
        return self.transactions.stray_responses

    @property
    def malformed(self) -> int:
        return self.transactions.malformed

    @property
    def outstanding(self) -> int:
        """Requests we sent that await a final response (or their targets)."""
        return len(self._clients) + len(self._resolving)

    # -- input -------------------------------------------------------------------------------

    def receive(self, data: bytes, source: Destination, now: float) -> list[object]:
        """One datagram, or one message framed from a stream.

        A message that does not parse is answered (or dropped) by the
        transaction layer and logged in one line, rate-limited; so is a
        failure of ours on it, never with a traceback.
        """
        malformed = self.transactions.malformed
        try:
            events = self.transactions.receive_datagram(data, source, now)
        except Exception as error:  # noqa: BLE001 - the process keeps serving
            self.internal_errors += 1
            self.bad_message_log.log(log, logging.ERROR, now, "internal error on a message from %s: %s",
                                     source, describe_failure(error))
            return []
        if self.transactions.malformed > malformed:
            self.bad_message_log.log(log, logging.WARNING, now, "bad message from %s: %s",
                                     source, self.transactions.last_malformed)
        return self._transaction_events(events, now)

    def submit(self, user: TransactionUser, outputs: Iterable[object], now: float) -> list[object]:
        """Outputs of ``user`` (from an application call): send what is to be sent."""
        out: list[object] = []
        for item in outputs:
            try:
                if isinstance(item, SendRequest):
                    self._send_request(user, item, now, out)
                elif isinstance(item, SendResponse):
                    out.extend(self._transmits(self.transactions.send_response(item.response, now)))
                else:
                    out.append(item)  # an event for the application
            except Exception as error:  # noqa: BLE001
                self.internal_errors += 1
                self.bad_message_log.log(log, logging.ERROR, now, "could not send a %s: %s",
                                         type(item).__name__, describe_failure(error))
        return out

    def targets_resolved(self, token: int, targets: Sequence[Destination],
                         now: float) -> list[object]:
        pending = self._resolving.pop(token, None)
        if pending is None:
            return []
        user, request = pending
        if not targets:
            # RFC 3263 section 4.3 / RFC 3261 8.1.2: no target is a 503.
            return self._answer(user, make_response(request, 503, "no targets for the next hop"),
                                request, now)
        out: list[object] = []
        self._start(_Client(user, request, list(targets[1:])), targets[0], now, out)
        return out

    def transport_error(self, message: Request | Response, now: float) -> list[object]:
        """The transport could not send ``message``."""
        events = self.transactions.report_transport_error(message, now)
        return self._transaction_events(events, now)

    # -- timers ------------------------------------------------------------------------------

    def next_timer(self) -> float | None:
        times = [t for t in [self.transactions.next_timer(),
                             *(u.next_timer() for u in self.users)] if t is not None]
        return min(times) if times else None

    def handle_timer(self, now: float) -> list[object]:
        out = self._transaction_events(self.transactions.handle_timer(now), now)
        for user in self.users:
            when = user.next_timer()
            if when is not None and when <= now:
                try:
                    outputs = user.handle_timer(now)
                except Exception:  # noqa: BLE001
                    log.exception("timer of %r failed", user)
                    self.internal_errors += 1
                    continue
                out.extend(self.submit(user, outputs, now))
        return out

    # -- requests we send ------------------------------------------------------------------------

    def _send_request(self, user: TransactionUser, item: SendRequest, now: float,
                      out: list[object]) -> None:
        request = item.request
        if item.destination is not None:
            self._start(_Client(user, request), item.destination, now, out)
            return
        routes = request.routes
        uri = routes[0].uri if routes else request.request_uri
        if not isinstance(uri, SipUri):
            out.extend(self._answer(user, make_response(request, 416), request, now))
            return
        token = next(self._tokens)
        self._resolving[token] = (user, request)
        out.append(Resolve(token, uri))

    def _via(self, destination: Destination) -> str:
        transport = destination.transport.upper()
        host, port = self.local.get(transport) or self.local.get("UDP") or ("invalid", 5060)
        if self.local_for is not None:
            host = self.local_for(transport, destination.host) or host
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        # RFC 3581: ask for rport so responses come back through NAT.
        return str(Via(transport, host, port, {"rport": None}))

    def _start(self, client: _Client, destination: Destination, now: float,
               out: list[object]) -> None:
        request = client.request
        request.remove_header("Via")  # ours alone: stamped for this transport
        request.prepend_header("Via", self._via(destination))
        if destination.transport.upper() == "UDP" \
                and len(request.to_bytes()) + len(";branch=z9hG4bK") + 32 > UDP_REQUEST_LIMIT:
            destination = Destination("TCP", destination.host, destination.port)
            request.remove_header("Via")
            request.prepend_header("Via", self._via(destination))
        try:
            events = self.transactions.send_request(request, destination, now)
        except ValueError as error:
            self.internal_errors += 1
            self.bad_message_log.log(log, logging.ERROR, now, "could not start a transaction for %s: %s",
                                     request.method, describe_failure(error))
            return
        self._clients[client_key(request)] = client
        out.extend(self._transaction_events(events, now))

    def _failover(self, key: tuple[str, str], now: float) -> list[object] | None:
        """Try the next target after a timeout, transport error or 503
        (RFC 3263 section 4.3); None when no target is left."""
        client = self._clients.get(key)
        if client is None or not client.targets:
            return None
        del self._clients[key]
        out: list[object] = []
        self._start(client, client.targets.pop(0), now, out)
        return out

    # -- what the transaction layer says ---------------------------------------------------------

    def _transmits(self, events: Iterable[object]) -> list[object]:
        return [Transmit(e.data, e.destination, e.message) for e in events
                if isinstance(e, transaction.SendMessage)]

    def _transaction_events(self, events: Iterable[object], now: float) -> list[object]:
        out: list[object] = []
        for event in events:
            if isinstance(event, transaction.SendMessage):
                out.append(Transmit(event.data, event.destination, event.message))
            elif isinstance(event, transaction.RequestReceived):
                out.extend(self._request(event.request, event.source, now))
            elif isinstance(event, transaction.ResponseReceived):
                out.extend(self._response(event.response, event.request, now))
            elif isinstance(event, transaction.TransactionTimeout | transaction.TransportError):
                status = 408 if isinstance(event, transaction.TransactionTimeout) else 503
                key = client_key(event.request)
                again = self._failover(key, now)
                if again is not None:
                    out.extend(again)
                    continue
                client = self._clients.pop(key, None)
                if client is not None:
                    # RFC 3261 sections 8.1.3.1 and 8.1.2: as a 408 / 503.
                    reason = "no response" if status == 408 else "transport error"
                    response = make_response(event.request, status, reason)
                    out.extend(self._answer(client.tu, response, event.request, now))
        return out

    def _response(self, response: Response, request: Request, now: float) -> list[object]:
        if response.status < 200:
            return []
        key = client_key(request)
        if response.status == 503:
            again = self._failover(key, now)
            if again is not None:
                return again
        client = self._clients.pop(key, None)
        if client is None:
            return []
        return self._answer(client.tu, response, client.request, now)

    def _answer(self, user: TransactionUser, response: Response, request: Request,
                now: float) -> list[object]:
        try:
            outputs = user.handle_response(response, request, now)
        except Exception as error:  # noqa: BLE001
            self.internal_errors += 1
            self.bad_message_log.log(log, logging.ERROR, now, "%r failed on a %d: %s", user,
                                     response.status, describe_failure(error))
            return []
        return self.submit(user, outputs, now)

    # -- requests we receive -------------------------------------------------------------------------

    def _request(self, request: Request, source: Destination, now: float) -> list[object]:
        if request.method == "ACK":
            return []  # no 2xx of ours is ever ACKed (no INVITE); nothing to answer
        try:
            check_request(request, methods=self.methods)
            if request.method == "OPTIONS":
                return self._reply(make_response(request, 200, headers=self._capabilities()), now)
            for user in self.users:
                outputs = user.handle_request(request, source, now)
                if outputs is not None:
                    return self.submit(user, outputs, now)
            self.unhandled_requests += 1
            if request.method == "NOTIFY":
                # RFC 6665 section 4.1.3: a NOTIFY for no subscription of ours.
                raise SipError(481, "no such subscription")
            if request.method in ("SUBSCRIBE", "PUBLISH"):
                raise SipError(489, "event package not supported",
                               [("Allow-Events", ", ".join(self.allow_events))]
                               if self.allow_events else [])
            raise SipError(405, f"{request.method} not handled here",
                           [("Allow", ", ".join(sorted(self.methods)))])
        except SipError as error:
            return self._reply(error_response(request, error), now)
        except Exception as error:  # noqa: BLE001
            self.internal_errors += 1
            self.bad_message_log.log(log, logging.ERROR, now, "internal error on a %s from %s: %s",
                                     request.method, source, describe_failure(error))
            return self._reply(make_response(request, 500, "internal error"), now)

    def _reply(self, response: Response, now: float) -> list[object]:
        try:
            return self._transmits(self.transactions.send_response(response, now))
        except ValueError:
            return []  # already answered

    def _capabilities(self) -> list[tuple[str, str]]:
        headers = [("Allow", ", ".join(sorted(self.methods)))]
        if self.allow_events:
            headers.append(("Allow-Events", ", ".join(self.allow_events)))
        return headers
