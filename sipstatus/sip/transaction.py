"""Non-INVITE client and server transactions (RFC 3261 section 17), sans-I/O.

A :class:`TransactionLayer` is fed received messages (``receive``,
``receive_datagram``), requests and responses from the TU
(``send_request``, ``send_response``) and the time (``handle_timer``), and
answers each call with a list of events: :class:`SendMessage` for the
transport, :class:`RequestReceived`, :class:`ResponseReceived`,
:class:`TransactionTimeout` and :class:`TransportError` for the TU.  It asks
to be woken at ``next_timer()``.  It never reads a clock: ``now`` is always
passed in, so a test can drive timers E, F, J and K in microseconds.

INVITE transactions (timers A-D, G-I) are not implemented: an INVITE is
handed to the TU like any request so that it can be rejected (405), and the
ACK for that rejection is absorbed.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from .errors import SipError
from .headers import Via, split_list
from .identifiers import MAGIC_COOKIE, IdGenerator
from .message import (
    Request,
    Response,
    make_response,
    parse_message,
    salvage_error_response,
)
from .timers import TimerHeap

# RFC 3261 section 17.1.1.1 / table 4.
T1 = 0.5  # RTT estimate
T2 = 4.0  # maximum retransmit interval for non-INVITE requests
T4 = 5.0  # maximum time a message remains in the network
# The timers of non-INVITE transactions: E and F (client), J (server), K (client).
TIMER_NAMES = ("E", "F", "J", "K")
DEFAULT_SIP_PORT = 5060  # section 19.1.2; 5061 for TLS
DEFAULT_SIPS_PORT = 5061

# Section 18: reliable transports get no retransmissions and zero K/J.
RELIABLE_TRANSPORTS = frozenset({"TCP", "TLS", "SCTP", "TLS-SCTP", "WS", "WSS"})


def is_reliable(transport: str) -> bool:
    return transport.upper() in RELIABLE_TRANSPORTS


@dataclass(frozen=True)
class Destination:
    """Where a message goes or came from: transport and address."""

    transport: str
    host: str
    port: int

    @property
    def reliable(self) -> bool:
        return is_reliable(self.transport)


# -- events -------------------------------------------------------------------------


@dataclass(frozen=True)
class SendMessage:
    """Transport: send ``data`` (the serialised ``message``) to ``destination``."""

    data: bytes
    destination: Destination
    message: Request | Response


@dataclass(frozen=True)
class RequestReceived:
    """TU: a new request (not a retransmission); answer with send_response()."""

    request: Request
    source: Destination


@dataclass(frozen=True)
class ResponseReceived:
    """TU: a response to ``request`` (provisional or the final one)."""

    response: Response
    request: Request


@dataclass(frozen=True)
class TransactionTimeout:
    """TU: timer F fired, no final response to ``request`` (section 17.1.2.2)."""

    request: Request


@dataclass(frozen=True)
class TransportError:
    """TU: the transport could not deliver a message of this transaction."""

    request: Request


Event = SendMessage | RequestReceived | ResponseReceived | TransactionTimeout | TransportError


class State(enum.Enum):
    TRYING = "Trying"
    PROCEEDING = "Proceeding"
    COMPLETED = "Completed"
    TERMINATED = "Terminated"


# -- matching (sections 17.1.3 and 17.2.3) ------------------------------------------------

ClientKey = tuple[str, str]
ServerKey = tuple[object, ...]


def client_key(message: Request | Response) -> ClientKey:
    """Branch of the top Via and CSeq method (section 17.1.3)."""
    via, cseq = message.top_via, message.cseq
    if via is None or cseq is None or not via.branch:
        raise SipError(400, "no Via branch or CSeq to match a transaction")
    return via.branch, cseq.method


def server_key(message: Request | Response) -> ServerKey:
    """Section 17.2.3: branch, sent-by and method (ACK matches INVITE).

    A branch without the magic cookie is an RFC 2543 peer's: such requests
    are matched by Call-ID, From tag, CSeq and top Via sent-by instead.  The
    Request-URI and To tag of section 17.2.3's list are left out because a
    response, which must find the same transaction, carries neither.
    """
    via, cseq = message.top_via, message.cseq
    if via is None or cseq is None:
        raise SipError(400, "no Via or CSeq to match a transaction")
    method = "INVITE" if cseq.method == "ACK" else cseq.method
    if via.branch and via.branch.startswith(MAGIC_COOKIE):
        return ("3261", via.branch, via.sent_by, method)
    from_addr = message.from_addr
    return ("2543", message.call_id, from_addr.tag if from_addr else None,
            cseq.number, method, via.sent_by)


# -- transactions --------------------------------------------------------------------


@dataclass(eq=False)
class _Transaction:
    request: Request
    reliable: bool
    state: State = State.TRYING


@dataclass(eq=False)
class ClientTransaction(_Transaction):
    """Section 17.1.2: non-INVITE client transaction."""

    key: ClientKey = ("", "")
    destination: Destination = Destination("UDP", "", 0)
    data: bytes = b""
    interval: float = T1  # current timer E interval


@dataclass(eq=False)
class ServerTransaction(_Transaction):
    """Section 17.2.2: non-INVITE server transaction."""

    key: ServerKey = ()
    source: Destination = Destination("UDP", "", 0)
    last_response: SendMessage | None = None


class TransactionLayer:
    """All transactions of one SIP element; see the module docstring.

    ``stray_responses`` counts responses that matched no client transaction
    (section 17.1.3: dropped); ``malformed`` counts received datagrams that
    did not parse (``last_malformed`` says why the latest one did not);
    ``retransmissions_absorbed`` counts requests and responses recognised
    as retransmissions.
    """

    def __init__(
        self,
        *,
        ids: IdGenerator | None = None,
        t1: float = T1,
        t2: float = T2,
        t4: float = T4,
    ) -> None:
        self.ids = ids or IdGenerator()
        self.t1, self.t2, self.t4 = t1, t2, t4
        self.clients: dict[ClientKey, ClientTransaction] = {}
        self.servers: dict[ServerKey, ServerTransaction] = {}
        self.stray_responses = 0
        self.malformed = 0
        self.last_malformed: str | None = None
        self.retransmissions_absorbed = 0
        self._timers: TimerHeap[tuple[_Transaction, str]] = TimerHeap()

    # -- timers ------------------------------------------------------------------------

    def _set_timer(self, txn: _Transaction, name: str, when: float) -> None:
        self._timers.set((txn, name), when)

    def _cancel_timers(self, txn: _Transaction, *names: str) -> None:
        """Stop ``names`` (all timers if none)."""
        for name in names or TIMER_NAMES:
            self._timers.cancel((txn, name))

    def next_timer(self) -> float | None:
        """When ``handle_timer`` must next be called (None: no timer runs)."""
        return self._timers.next_time()

    def handle_timer(self, now: float) -> list[Event]:
        """Fire every timer due at ``now``."""
        events: list[Event] = []
        while (due := self._timers.pop(now)) is not None:
            when, (txn, name) = due
            if isinstance(txn, ClientTransaction):
                self._client_timer(txn, name, when, events)
            else:
                assert isinstance(txn, ServerTransaction)
                self._server_timer(txn, name)
        return events

    def _terminate(self, txn: _Transaction) -> None:
        self._cancel_timers(txn)
        txn.state = State.TERMINATED
        if isinstance(txn, ClientTransaction):
            self.clients.pop(txn.key, None)
        elif isinstance(txn, ServerTransaction):
            self.servers.pop(txn.key, None)

    # -- client side (section 17.1.2) ----------------------------------------------------------

    def send_request(self, request: Request, destination: Destination, now: float) -> list[Event]:
        """Start a client transaction for a non-INVITE ``request``.

        The request needs a top Via; if it has no branch, one is added.
        """
        if request.method in ("INVITE", "ACK"):
            raise ValueError("INVITE transactions are not implemented")
        via = request.top_via
        if via is None:
            raise ValueError("request without Via")
        if not via.branch:
            _replace_top_via(request, Via(via.transport, via.host, via.port,
                                          {**via.params, "branch": self.ids.branch()}))
        key = client_key(request)
        if key in self.clients:
            raise ValueError(f"a client transaction with branch {key[0]} exists")
        txn = ClientTransaction(request, destination.reliable, key=key,
                                destination=destination, data=request.to_bytes(),
                                interval=self.t1)
        self.clients[key] = txn
        if not txn.reliable:
            self._set_timer(txn, "E", now + self.t1)
        self._set_timer(txn, "F", now + 64 * self.t1)
        return [SendMessage(txn.data, destination, request)]

    def _client_timer(self, txn: ClientTransaction, name: str, when: float,
                      events: list[Event]) -> None:
        if name == "E":
            # 17.1.2.2: retransmit; in Trying double the interval up to T2,
            # in Proceeding retransmit every T2.
            events.append(SendMessage(txn.data, txn.destination, txn.request))
            if txn.state is State.TRYING:
                txn.interval = min(2 * txn.interval, self.t2)
            else:
                txn.interval = self.t2
            self._set_timer(txn, "E", when + txn.interval)
        elif name == "F":
            self._terminate(txn)
            events.append(TransactionTimeout(txn.request))
        elif name == "K":
            self._terminate(txn)

    def _receive_response(self, response: Response, now: float) -> list[Event]:
        try:
            key = client_key(response)
        except SipError:
            self.stray_responses += 1
            return []
        txn = self.clients.get(key)
        if txn is None or txn.request.top_via.sent_by != response.top_via.sent_by:
            self.stray_responses += 1
            return []
        if txn.state is State.COMPLETED:
            self.retransmissions_absorbed += 1
            return []
        if response.status < 200:
            if txn.state is State.TRYING:
                txn.state = State.PROCEEDING
            return [ResponseReceived(response, txn.request)]
        txn.state = State.COMPLETED
        self._cancel_timers(txn, "E", "F")
        if txn.reliable:
            self._terminate(txn)  # timer K is zero on reliable transports
        else:
            self._set_timer(txn, "K", now + self.t4)
        return [ResponseReceived(response, txn.request)]

    # -- server side (section 17.2.2) ----------------------------------------------------------

    def receive(self, message: Request | Response, source: Destination, now: float) -> list[Event]:
        """A parsed message arrived from ``source``."""
        if isinstance(message, Response):
            return self._receive_response(message, now)
        return self._receive_request(message, source, now)

    def receive_datagram(self, data: bytes, source: Destination, now: float) -> list[Event]:
        """Parse and receive one datagram (or one framed stream message).

        A request that does not parse is answered statelessly with the
        error's status when enough of it can be read (section 8.2.7 style),
        and dropped otherwise; a response that does not parse is dropped.
        """
        try:
            message = parse_message(data)
            return self.receive(message, source, now)
        except SipError as error:
            # From the parser, or from a header field read lazily while
            # matching (a bad Via or CSeq): the same stateless answer.
            self.malformed += 1
            self.last_malformed = error.reason
            reply = salvage_error_response(data, error)
            if reply is None:
                return []
            return [SendMessage(reply.to_bytes(), source, reply)]

    def _receive_request(self, request: Request, source: Destination, now: float) -> list[Event]:
        via = request.top_via
        if via is None or request.cseq is None:
            self.malformed += 1
            self.last_malformed = "no Via" if via is None else "no CSeq"
            return []
        _stamp_via(request, source)
        if via.branch == MAGIC_COOKIE:
            # RFC 4475 3.2.1: a branch that is only the cookie identifies
            # nothing; reject it statelessly rather than match on it.
            reply = make_response(request, 400, "Via branch is only the magic cookie")
            return [SendMessage(reply.to_bytes(), _response_destination(request, source), reply)]
        key = server_key(request)
        txn = self.servers.get(key)
        if txn is not None:
            if request.method == "ACK":
                return []  # the ACK of our final (non-2xx) answer to an INVITE
            self.retransmissions_absorbed += 1
            if txn.last_response is not None and txn.state in (State.PROCEEDING, State.COMPLETED):
                return [txn.last_response]
            return []
        if request.method == "ACK":
            # An ACK matching no transaction belongs to a 2xx: the TU's.
            return [RequestReceived(request, source)]
        txn = ServerTransaction(request, source.reliable, key=key, source=source)
        self.servers[key] = txn
        return [RequestReceived(request, source)]

    def send_response(self, response: Response, now: float) -> list[Event]:
        """Send the TU's ``response`` through the matching server transaction."""
        key = server_key(response)
        txn = self.servers.get(key)
        if txn is None or txn.state is State.TERMINATED:
            raise ValueError("no server transaction for this response")
        if txn.state is State.COMPLETED:
            raise ValueError("a final response was already sent")
        send = SendMessage(response.to_bytes(),
                           _response_destination(txn.request, txn.source), response)
        txn.last_response = send
        if response.status < 200:
            txn.state = State.PROCEEDING
        else:
            txn.state = State.COMPLETED
            if txn.reliable:
                self._terminate(txn)  # timer J is zero on reliable transports
            else:
                self._set_timer(txn, "J", now + 64 * self.t1)
        return [send]

    def _server_timer(self, txn: ServerTransaction, name: str) -> None:
        if name == "J":
            self._terminate(txn)

    # -- transport failures (sections 17.1.4, 17.2.4) ------------------------------------------

    def report_transport_error(self, message: Request | Response, now: float) -> list[Event]:
        """The transport failed to send ``message`` (a SendMessage's message)."""
        try:
            if isinstance(message, Request):
                txn: _Transaction | None = self.clients.get(client_key(message))
            else:
                txn = self.servers.get(server_key(message))
        except SipError:
            return []
        if txn is None or txn.state is State.TERMINATED:
            return []
        self._terminate(txn)
        return [TransportError(txn.request)]

    def state_of(self, message: Request | Response, *, server: bool) -> State:
        """The state of the transaction ``message`` belongs to (for tests, tools)."""
        txn = (self.servers.get(server_key(message)) if server
               else self.clients.get(client_key(message)))
        return State.TERMINATED if txn is None else txn.state


def _stamp_via(request: Request, source: Destination) -> None:
    """Section 18.2.1 and RFC 3581: record where the request really came from."""
    via = request.top_via
    assert via is not None
    params = dict(via.params)
    if via.host.strip("[]").lower() != source.host.strip("[]").lower():
        params["received"] = source.host
    if "rport" in params and params["rport"] is None:
        params["rport"] = str(source.port)
    if params != via.params:
        _replace_top_via(request, Via(via.transport, via.host, via.port, params))


def _replace_top_via(request: Request, via: Via) -> None:
    for i, (name, value) in enumerate(request.headers):
        if name == "Via":
            rest = split_list(value, "Via")[1:]
            request.headers[i] = ("Via", ", ".join([str(via), *rest]))
            return


def _response_destination(request: Request, source: Destination) -> Destination:
    """Section 18.2.2 with RFC 3581: where responses to ``request`` go."""
    if source.reliable:
        return source  # the connection the request came on
    via = request.top_via
    assert via is not None
    if via.maddr:
        return Destination(source.transport, via.maddr, via.port or DEFAULT_SIP_PORT)
    if via.params.get("rport"):
        return Destination(source.transport, source.host, source.port)
    host = via.received or via.host
    return Destination(source.transport, host, via.port or DEFAULT_SIP_PORT)
