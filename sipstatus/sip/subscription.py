"""SIP-specific event notification (RFC 6665) with rate control (RFC 6446), sans-I/O.

Two state machines, generic over the event package and its body, with the
rules of the load-status package (spec/load-status.md sections 4 and 8) as
defaults:

- :class:`Notifier` answers SUBSCRIBE requests for one package, keeps the
  subscriptions (dialogs) and sends NOTIFY requests, one outstanding at a
  time per subscription: a full state at once, a new state as soon as each
  subscription's ceiling allows (changes in between coalesce: the newest
  body goes), a heartbeat at least every heartbeat interval, and a final
  NOTIFY when a subscription ends.  Every NOTIFY carries a freshly produced
  body (the ``produce`` hook), never a copy (spec 4.7.2).
- :class:`Subscriber` holds one subscription to one resource: initial
  SUBSCRIBE, refreshes, NOTIFY handling, re-subscription with backoff.
  :class:`SubscriberPool` runs hundreds of them with one timer heap.

Both are *transaction users* (RFC 3261 section 5): they are fed requests
(``handle_request``), the final responses to the requests they sent
(``handle_response``; a transaction timeout arrives as a 408 and a transport
failure as a 503, RFC 3261 sections 8.1.3.1 and 8.1.2) and the time
(``handle_timer``); they return :class:`SendRequest` / :class:`SendResponse`
outputs, which go through the non-INVITE transaction layer, and events for
the application.  They never read a clock or touch a socket.
"""

from __future__ import annotations

import heapq
import ipaddress
import itertools
import math
import os
import random as _random
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from .dialog import Dialog, dialog_as_uac, dialog_as_uas
from .errors import SipError, bad_request
from .headers import parse_media_type, parse_name_addr
from .identifiers import IdGenerator
from .message import Request, Response, error_response, make_response
from .transaction import DEFAULT_SIP_PORT, DEFAULT_SIPS_PORT, T1, Destination
from .uri import SipUri, parse_uri

# -- defaults (the load-status package, spec section 8) ------------------------------

DEFAULT_EXPIRES = 600  # spec 4.4: without Expires
MIN_EXPIRES = 60  # spec 4.4: below this, 423 with Min-Expires
MAX_EXPIRES = 3600  # spec 4.4: never granted longer
DEFAULT_MAX_RATE = 5.0  # spec 8.2: ceiling without max-rate (0.2 s apart)
MAX_RATE_LIMIT = 10.0  # spec 8.1: 100 ms between NOTIFYs, whatever is asked
DEFAULT_HEARTBEAT = 5.0  # spec 8.2: validity (15 s) / 3
# Spec 8.2: the highest min-rate (and adaptive-min-rate) honoured.  The agent
# measures about once a second; a faster floor would only repeat the same
# measurements under new seq values.
MAX_MIN_RATE = 1.0
MAX_SUBSCRIPTIONS = 256  # spec 4.6.2 caps and their Retry-After
MAX_PER_SOURCE = 16
BUSY_RETRY_AFTER = 60
# RFC 6665 section 4.1.2.4: a subscriber that gets a 2xx but no NOTIFY within
# 64*T1 considers the subscription failed.
NOTIFY_WAIT = 64 * T1
MAX_FORWARDS = "70"

# -- outputs shared by the transaction users ------------------------------------------


@dataclass(frozen=True, slots=True)
class SendRequest:
    """Send ``request`` in a new client transaction.

    ``destination`` is where to send it; None means: resolve the next hop
    (the first Route, else the Request-URI) per RFC 3263.  The sender adds
    the top Via; a timeout comes back as a 408, a transport error as a 503.
    """

    request: Request
    destination: Destination | None = None


@dataclass(frozen=True, slots=True)
class SendResponse:
    """Answer a received request through its server transaction."""

    response: Response


# -- notifier events ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SubscriptionId:
    """A subscription: its dialog as the notifier sees it (RFC 3261 section 12)
    (one subscription per dialog here)."""

    call_id: str
    local_tag: str
    remote_tag: str

    def __str__(self) -> str:
        return f"{self.call_id};local={self.local_tag};remote={self.remote_tag}"


@dataclass(frozen=True, slots=True)
class SubscriptionCreated:
    id: SubscriptionId
    subscriber: str  # the From URI
    source: Destination
    expires: int
    event_id: str | None


@dataclass(frozen=True, slots=True)
class SubscriptionRefreshed:
    id: SubscriptionId
    expires: int


@dataclass(frozen=True, slots=True)
class SubscriptionTerminated:
    """A subscription ended.

    ``reason``: ``timeout`` (not refreshed), ``unsubscribed`` (Expires: 0),
    ``replaced`` (a new SUBSCRIBE from the same watcher, spec 4.6.3),
    ``notify-rejected`` (a NOTIFY was answered 481), ``notify-timeout`` (408
    or no answer), ``notify-failed`` (another error without Retry-After,
    spec 4.7.3; ``status`` says which), ``deauthorized`` (:meth:`Notifier.drop`),
    or the reason given to :meth:`Notifier.terminate`.
    """

    id: SubscriptionId
    reason: str
    status: int | None = None


@dataclass(frozen=True, slots=True)
class SubscriptionRejected:
    """A SUBSCRIBE was refused (for logs: who asked and why)."""

    source: Destination
    status: int
    reason: str


@dataclass(frozen=True, slots=True)
class NotifyFailed:
    """A NOTIFY got an error response (for the log, spec 4.7.3: the reason
    phrase of a 400 names the member and rule).  Whether the subscription
    goes on is told by a SubscriptionTerminated that may follow."""

    id: SubscriptionId
    status: int
    reason: str


NotifierEvent = (SubscriptionCreated | SubscriptionRefreshed | SubscriptionTerminated
                 | SubscriptionRejected | NotifyFailed)
NotifierOutput = SendRequest | SendResponse | NotifierEvent

#: ``authorize(request, source, now)`` returns None to accept, or the SipError
#: to answer with: 403, or 401/407 whose headers carry the challenge.
Authorizer = Callable[[Request, Destination, float], SipError | None]
#: ``authorize(request, challenge)`` turns a request answered 401/407 into the
#: retry with credentials, or None to give up (``DigestClient.authorize``).
ClientAuthorizer = Callable[[Request, Response], Request | None]
#: ``produce(now)`` returns a freshly produced body (a new seq each call).
Producer = Callable[[float], bytes | None]


# -- small helpers --------------------------------------------------------------------


def accepts(accept_values: list[str], media_type: str) -> bool:
    """Whether Accept values admit ``media_type`` (RFC 3261 section 20.1).

    Ranges ``type/*`` and ``*/*`` match; ``q=0`` excludes.  An empty Accept
    admits nothing.
    """
    kind = media_type.split("/", 1)[0]
    for value in accept_values:
        try:
            mtype, params = parse_media_type(value)
        except SipError:
            continue
        q = params.get("q")
        try:
            if q is not None and float(q) <= 0:
                continue
        except ValueError:
            continue
        if mtype in (media_type, f"{kind}/*", "*/*"):
            return True
    return False


def _tag_of(value: str | None) -> str | None:
    return None if value is None else parse_name_addr(value).tag


def direct_destination(uri: SipUri, default_transport: str = "UDP") -> Destination | None:
    """The destination of a URI whose host is an IP address, else None (needs DNS).

    RFC 3263 section 4: a numeric host skips NAPTR/SRV; the port defaults to
    5060 (5061 for TLS) and the transport to the ``transport`` parameter,
    TLS for sips, else ``default_transport``.
    """
    host = uri.params.get("maddr") or uri.host
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None
    if uri.scheme == "sips":
        transport = "TLS"
    else:
        transport = (uri.transport or default_transport).upper()
    port = uri.port or (DEFAULT_SIPS_PORT if transport == "TLS" else DEFAULT_SIP_PORT)
    return Destination(transport, host.strip("[]"), port)


def _in_dialog(dialog: Dialog, method: str, headers: list[tuple[str, str]],
               body: bytes = b"", contact: str | None = None) -> Request:
    """An in-dialog request without Via: the sender adds the Via of the
    transport it picks (resolution may change it, RFC 3263)."""
    request = dialog.create_request(method, via="SIP/2.0/UDP invalid", headers=headers,
                                    body=body, contact=contact)
    request.remove_header("Via")
    return request


def next_hop_destination(request: Request, default_transport: str = "UDP") -> Destination | None:
    """Where ``request`` goes without DNS: its first Route or Request-URI, if numeric."""
    routes = request.routes
    uri = routes[0].uri if routes else request.request_uri
    if not isinstance(uri, SipUri):
        return None
    return direct_destination(uri, default_transport)


# -- notifier -------------------------------------------------------------------------

# Spec 4.7.4: NOTIFYs that carry the state: every active one, and the final
# one after an unsubscribe or expiry (timeout) or when the agent stops
# (probation, noresource: state down).  Other endings carry none.
FINAL_WITH_BODY = frozenset({None, "timeout", "probation", "noresource"})

_DECIMAL = re.compile(r"[0-9]+(?:\.[0-9]+)?")


def _rate_parameter(value: str | None, name: str) -> float | None:
    """An RFC 6446 rate: digits, optionally a dot and digits, above 0 (spec 4.2.2)."""
    if value is None:
        return None
    if not _DECIMAL.fullmatch(value) or float(value) <= 0:
        raise bad_request(f"Invalid {name}")
    return float(value)


def format_rate(value: float) -> str:
    """A rate as Subscription-State carries it: at most three decimals, no
    trailing zeros (spec 4.7.1)."""
    return f"{value:.3f}".rstrip("0").rstrip(".")


@dataclass(frozen=True, slots=True)
class Rates:
    """The rates applied to one subscription (spec 8.2)."""

    ceiling: float  # C: seconds between NOTIFYs, at least
    heartbeat: float  # H: seconds between NOTIFYs, at most
    adaptive_min_rate: float | None  # RFC 6446 adaptive floor, if asked
    echo: str  # Subscription-State parameters: the applied values


@dataclass(slots=True, eq=False)
class Subscription:
    """One subscription held by a :class:`Notifier` (a dialog plus rate state)."""

    id: SubscriptionId
    dialog: Dialog
    subscriber: str  # the From URI, for the application
    source: Destination
    contact: str
    event: str  # the Event value our NOTIFYs carry
    event_id: str | None
    replace_key: tuple[str, str, str, str, str | None]
    expires_at: float
    started_at: float
    rates: Rates
    sent: int = 0  # NOTIFYs sent (RFC 6446 adaptive-min-rate counts them)
    last_sent: float | None = None  # start of the last NOTIFY transaction
    sent_version: int = -1
    owed: bool = True  # an immediate NOTIFY is owed to a SUBSCRIBE (spec 4.6.4)
    subscribes: int = 1  # SUBSCRIBEs accepted on it (the initial one, then refreshes)
    in_flight: int | None = None  # CSeq of the NOTIFY awaiting its final response
    paused_until: float = -math.inf  # a Retry-After in a NOTIFY response (4.7.3)
    ending: tuple[str, int | None] | None = None  # final NOTIFY owed: reason, retry-after
    timer: float | None = None

    def destination(self) -> Destination:
        """Where NOTIFYs go: the source address, port and transport of the
        SUBSCRIBE that created or last refreshed the subscription, whatever
        its Contact and Record-Route name (spec 4.6.2).  Those shape the
        NOTIFY (Request-URI, Route) but never aim it: a SUBSCRIBE naming a
        third party's address would otherwise reflect NOTIFYs at it.  Over
        TCP and TLS the source is the subscriber's connection, the only way
        back through NAT."""
        return self.source


class Notifier:
    """The notifier of one event package (RFC 6665 section 4.2, spec 4.6-4.7).

    ``contact`` is our Contact URI, or a function of the transport a
    SUBSCRIBE arrived on giving it.  ``produce(now)`` (or ``body_source()``)
    makes a fresh body for each NOTIFY; without it the body last given to
    :meth:`state_changed` is sent.  ``authorize`` decides on every SUBSCRIBE that would create,
    refresh or replace a subscription (see :data:`Authorizer`);
    ``notify_authorize`` answers a 401/407 to a NOTIFY.  Caps:
    ``max_subscriptions`` in total and ``max_per_source`` per source
    address; beyond them a new subscription gets 503 with ``Retry-After:
    busy_retry_after``.

    Rates (spec 8.2): NOTIFYs of one subscription start at least C apart
    (``1/max_rate`` without the subscriber's ``max-rate``; never under
    ``1/max_rate_limit``) and at most H apart (``heartbeat``, shortened by
    the subscriber's ``min-rate``, at most ``max_min_rate``, never under C).  The immediate NOTIFY
    after a SUBSCRIBE and the final NOTIFY skip C but not the 100 ms
    absolute limit; there is never more than one NOTIFY outstanding.
    """

    def __init__(
        self,
        package: str,
        content_type: str,
        contact: str | Callable[[Destination], str],
        *,
        produce: Producer | None = None,
        other_packages: Iterable[str] = (),
        authorize: Authorizer | None = None,
        notify_authorize: ClientAuthorizer | None = None,
        default_expires: int = DEFAULT_EXPIRES,
        min_expires: int = MIN_EXPIRES,
        max_expires: int = MAX_EXPIRES,
        max_subscriptions: int = MAX_SUBSCRIPTIONS,
        max_per_source: int = MAX_PER_SOURCE,
        busy_retry_after: int = BUSY_RETRY_AFTER,
        heartbeat: float = DEFAULT_HEARTBEAT,
        max_rate: float = DEFAULT_MAX_RATE,
        max_rate_limit: float = MAX_RATE_LIMIT,
        lowest_max_rate: float | None = None,
        max_min_rate: float = MAX_MIN_RATE,
        ids: IdGenerator | None = None,
        body_source: Callable[[], bytes | None] | None = None,
        produce_for: Callable[[Subscription, float], tuple[bytes, bool]] | None = None,
    ) -> None:
        if not 0 < max_rate <= max_rate_limit:
            raise ValueError("need 0 < max_rate <= max_rate_limit")
        if heartbeat < 1 / max_rate:
            raise ValueError("heartbeat shorter than the interval of the rate ceiling")
        if body_source is not None and produce is None:
            # The agent's spelling: a renderer that needs no clock.
            produce = lambda now: body_source()  # noqa: E731
        self.package = package.lower()
        self.content_type = content_type.lower()
        self._contact = contact
        self.produce = produce
        #: A body per subscription (a package whose bodies differ between
        #: subscribers, such as load-affinity's deltas): (body, more); with
        #: more, the next NOTIFY goes as soon as the answer and the 100 ms
        #: of spec 8.1 allow (the pages of a full set), as the immediate
        #: NOTIFY of spec 4.6.4 does.
        self.produce_for = produce_for
        #: Packages other transaction users of the same endpoint serve: a
        #: SUBSCRIBE for one of them is left to them (and Allow-Events names them).
        self.other_packages = [p.lower() for p in other_packages]
        self.authorize = authorize
        self.notify_authorize = notify_authorize
        self.default_expires = default_expires
        self.min_expires = min_expires
        self.max_expires = max_expires
        self.max_subscriptions = max_subscriptions
        self.max_per_source = max_per_source
        self.busy_retry_after = busy_retry_after
        self.heartbeat = heartbeat
        self.max_rate = max_rate
        self.max_rate_limit = max_rate_limit
        self.max_min_rate = min(max_min_rate, max_rate_limit)  # spec 8.2
        # Spec 8.2: the lowest max-rate honoured (3/validity; by default the
        # heartbeat's rate); a subscriber's lower max-rate is raised to it.
        self.lowest_max_rate = min(max_rate_limit, lowest_max_rate if lowest_max_rate is not None
                                   else 1 / heartbeat)
        self.ids = ids or IdGenerator()
        self.subscriptions: dict[tuple[str, str], Subscription] = {}  # (call_id, local_tag)
        self._closing: dict[tuple[str, str], Subscription] = {}  # final NOTIFY not yet sent
        self._by_watcher: dict[tuple[str, str, str, str, str | None], Subscription] = {}
        self._per_source: dict[str, int] = {}
        self._body: bytes | None = None
        self._version = 0  # bumped by every state change
        self._urgent = -1  # the latest version that must go out at once
        self._heap: list[tuple[float, int, Subscription]] = []
        self._seq = itertools.count()

    @property
    def absolute_interval(self) -> float:
        """The least time between two NOTIFYs of a subscription (spec 8.1)."""
        return 1 / self.max_rate_limit

    # -- the application's side -------------------------------------------------------

    @property
    def body(self) -> bytes | None:
        return self._body

    def state_changed(self, body: bytes | None, now: float,
                      significant: bool = True) -> list[NotifierOutput]:
        """The state changed (``body``: the new body, or None when ``produce``
        makes them).  A significant change goes to every subscriber as soon as
        its ceiling allows; an insignificant one rides on the next NOTIFY
        (heartbeat or significant).  Either way the newest body is sent."""
        if body is not None:
            self._body = body
        self._version += 1
        if significant:
            self._urgent = self._version
        out: list[NotifierOutput] = []
        for sub in list(self.subscriptions.values()):
            self._service(sub, now, out)
        return out

    def terminate(self, id: SubscriptionId, reason: str, now: float,
                  retry_after: int | None = None) -> list[NotifierOutput]:
        """End a subscription with a final NOTIFY (spec 4.7.4: ``probation``
        with ``retry_after`` for a restart, ``noresource`` for good; RFC 6665
        ``deactivated``, ``rejected``, ``timeout``, ``giveup``, ``invariant``).
        The final NOTIFY carries a fresh body: set the state first (``down``)."""
        sub = self.subscriptions.get((id.call_id, id.local_tag))
        if sub is None:
            return []
        out: list[NotifierOutput] = []
        self._end(sub, reason, now, out, retry_after=retry_after)
        return out

    def terminate_all(self, reason: str, now: float,
                      retry_after: int | None = None) -> list[NotifierOutput]:
        """End every subscription (an agent stopping: spec 4.7.4)."""
        out: list[NotifierOutput] = []
        for sub in list(self.subscriptions.values()):
            self._end(sub, reason, now, out, retry_after=retry_after)
        return out

    def drop(self, id: SubscriptionId, reason: str = "deauthorized") -> list[NotifierOutput]:
        """End a subscription without a NOTIFY (authorization withdrawn, 4.6.2
        and 4.7.4); its next refresh gets 481."""
        sub = self.subscriptions.get((id.call_id, id.local_tag))
        out: list[NotifierOutput] = []
        if sub is not None:
            self._remove(sub, reason, out)
        return out

    def get(self, id: SubscriptionId) -> Subscription | None:
        return self.subscriptions.get((id.call_id, id.local_tag))

    @property
    def closing(self) -> int:
        """Subscriptions ended whose final NOTIFY waits (for the one outstanding)."""
        return len(self._closing)

    # -- transaction user ---------------------------------------------------------------

    def handle_request(self, request: Request, source: Destination,
                       now: float) -> list[NotifierOutput] | None:
        """A SUBSCRIBE for us; None for requests this notifier does not handle."""
        if request.method != "SUBSCRIBE":
            return None
        event = request.event
        if event is not None and event.package in self.other_packages:
            return None  # another notifier of the endpoint serves it
        out: list[NotifierOutput] = []
        try:
            self._subscribe(request, source, now, out)
        except SipError as error:
            out.insert(0, SendResponse(error_response(request, error)))
            out.append(SubscriptionRejected(source, error.status, error.reason))
        return out

    def handle_response(self, response: Response, request: Request,
                        now: float) -> list[NotifierOutput]:
        """The final response to one of our NOTIFYs (408/503 for timeouts and
        transport errors), acted on as spec 4.7.3 says."""
        if response.status < 200 or request.method != "NOTIFY":
            return []
        key = (request.call_id or "", _tag_of(request.header("From")) or "")
        sub = self.subscriptions.get(key) or self._closing.get(key)
        cseq = request.cseq
        if sub is None or cseq is None or sub.in_flight != cseq.number:
            return []  # the final NOTIFY of an ended subscription, or stale
        sub.in_flight = None
        out: list[NotifierOutput] = []
        status = response.status
        if status >= 300:
            out.append(NotifyFailed(sub.id, status, response.reason or ""))
        if status < 300:
            pass
        elif status in (481, 408):
            # 481: the subscriber knows no such subscription; 408 (or Timer
            # F): it is gone.  Either way, no further NOTIFY.
            self._forget(sub, "notify-rejected" if status == 481 else "notify-timeout",
                         out, status)
            return out
        elif status in (401, 407) and self.notify_authorize is not None \
                and sub.ending is None and self._resend_with_credentials(sub, request,
                                                                           response, now, out):
            return out
        else:
            try:
                retry_after = response.retry_after
            except SipError:
                retry_after = None
            if retry_after is None:
                # A failed NOTIFY ends the subscription (RFC 6665 4.2.2).
                self._forget(sub, "notify-failed", out, status)
                return out
            sub.paused_until = now + retry_after.seconds  # not a failure
        if sub.ending is not None:
            self._service_final(sub, now, out)
        else:
            self._service(sub, now, out)
        return out

    def next_timer(self) -> float | None:
        heap = self._heap
        while heap and heap[0][2].timer != heap[0][0]:
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    def handle_timer(self, now: float) -> list[NotifierOutput]:
        out: list[NotifierOutput] = []
        heap = self._heap
        while heap and heap[0][0] <= now:
            when, _, sub = heapq.heappop(heap)
            if sub.timer != when:
                continue
            sub.timer = None
            if sub.ending is not None:
                self._service_final(sub, now, out)
            elif now >= sub.expires_at:
                self._end(sub, "timeout", now, out)  # not refreshed in time
            else:
                self._service(sub, now, out)
        return out

    # -- SUBSCRIBE (spec 4.6) -----------------------------------------------------------

    def _subscribe(self, request: Request, source: Destination, now: float,
                   out: list[NotifierOutput]) -> None:
        # Spec 4.6.1: the order of checks.
        event = request.event
        if event is None or event.package != self.package:
            packages = ", ".join([self.package, *self.other_packages])
            what = "SUBSCRIBE without Event" if event is None else \
                f"event package {event.package!r} not supported"
            raise SipError(489, what, [("Allow-Events", packages)])
        to_tag = _tag_of(request.header("To"))
        sub: Subscription | None = None
        if to_tag is not None:
            sub = self.subscriptions.get((request.call_id or "", to_tag))
            if sub is None or _tag_of(request.header("From")) != sub.id.remote_tag \
                    or event.id != sub.event_id:
                raise SipError(481, "no such subscription")
        if self.authorize is not None:
            refusal = self.authorize(request, source, now)
            if refusal is not None:
                raise refusal
        rates = self._rates(event.params)
        expires = request.expires
        if expires is None:
            expires = self.default_expires
        elif 0 < expires < self.min_expires:
            raise SipError(423, "Interval Too Brief", [("Min-Expires", str(self.min_expires))])
        expires = min(expires, self.max_expires)
        if request.header("Accept") is not None \
                and not accepts(request.header_values("Accept"), self.content_type):
            raise SipError(406, "Not Acceptable", [("Accept", self.content_type)])
        if sub is not None:
            self._refresh(sub, request, source, expires, rates, now, out)
        else:
            self._create(request, source, event.id, expires, rates, now, out)

    def _rates(self, params: dict[str, str | None]) -> Rates:
        """The applied rates of spec 8.2 from the Event parameters."""
        max_rate = _rate_parameter(params.get("max-rate"), "max-rate")
        min_rate = _rate_parameter(params.get("min-rate"), "min-rate")
        adaptive = _rate_parameter(params.get("adaptive-min-rate"), "adaptive-min-rate")
        echo = ""
        if max_rate is not None:
            # Between 3/validity (slower would let the node go stale) and 10/s.
            max_rate = min(max(max_rate, self.lowest_max_rate), self.max_rate_limit)
            ceiling = 1 / max_rate
            echo += f";max-rate={format_rate(max_rate)}"
        else:
            ceiling = 1 / self.max_rate
        ceiling = max(ceiling, self.absolute_interval)
        heartbeat = self.heartbeat
        if min_rate is not None:
            min_rate = min(min_rate, self.max_min_rate)
            if max_rate is not None:
                min_rate = min(min_rate, max_rate)
            heartbeat = min(heartbeat, 1 / min_rate)
            echo += f";min-rate={format_rate(min_rate)}"
        if adaptive is not None:
            adaptive = min(adaptive, self.max_min_rate)
            if max_rate is not None:
                adaptive = min(adaptive, max_rate)
            echo += f";adaptive-min-rate={format_rate(adaptive)}"
        return Rates(ceiling, max(heartbeat, ceiling), adaptive, echo)

    def _contact_for(self, source: Destination) -> str:
        contact = self._contact
        return contact(source) if callable(contact) else contact

    def _ok(self, request: Request, expires: int, contact: str,
            to_tag: str | None = None) -> SendResponse:
        # Spec 4.1 (SHOULD), RFC 6665 section 3.3.7: every package we serve.
        headers = [("Expires", str(expires)), ("Contact", f"<{contact}>"),
                   ("Allow-Events", ", ".join([self.package, *self.other_packages]))]
        return SendResponse(make_response(request, 200, to_tag=to_tag, headers=headers,
                                          record_route=to_tag is not None))

    def _create(self, request: Request, source: Destination, event_id: str | None,
                expires: int, rates: Rates, now: float, out: list[NotifierOutput]) -> None:
        from_addr = request.from_addr
        assert from_addr is not None  # validation.check_request
        if not from_addr.tag:
            raise bad_request("SUBSCRIBE without From tag")
        contacts = request.contacts
        if len(contacts) != 1:
            # RFC 6665 section 8.2.1 / RFC 3261 12.1.2: exactly one Contact.
            raise bad_request("SUBSCRIBE must carry exactly one Contact")
        # Spec 4.6.3: From URI, Contact URI, Event id, source address and
        # transport name the watcher; the source port does not.
        replace_key = (source.transport.upper(), source.host.lower(), str(from_addr.uri),
                       str(contacts[0].uri), event_id)
        replaced = self._by_watcher.get(replace_key)
        if replaced is None and expires > 0:
            if len(self.subscriptions) >= self.max_subscriptions:
                raise SipError(503, "too many subscriptions",
                               [("Retry-After", str(self.busy_retry_after))])
            if self._per_source.get(source.host.lower(), 0) >= self.max_per_source:
                raise SipError(503, "too many subscriptions from this address",
                               [("Retry-After", str(self.busy_retry_after))])
        local_tag = self.ids.tag()
        contact = self._contact_for(source)
        out.append(self._ok(request, expires, contact, to_tag=local_tag))
        if replaced is not None:
            # The old subscription goes without a final NOTIFY (spec 4.6.3).
            self._remove(replaced, "unsubscribed" if expires == 0 else "replaced", out)
        # RFC 3261 section 12.1.1: the UAS's route set is Record-Route in order.
        dialog = dialog_as_uas(request, local_tag)
        sub = Subscription(
            id=SubscriptionId(dialog.call_id, local_tag, dialog.remote_tag), dialog=dialog,
            subscriber=str(from_addr.uri), source=source, contact=contact,
            event=self.package + (f";id={event_id}" if event_id is not None else ""),
            event_id=event_id, replace_key=replace_key, expires_at=now + expires,
            started_at=now, rates=rates)
        if expires == 0:
            # Spec 4.6.5: a poll; one NOTIFY with the state, terminated.
            out.append(self._notify(sub, now, terminated="timeout"))
            return
        self.subscriptions[(dialog.call_id, local_tag)] = sub
        self._by_watcher[replace_key] = sub
        host = source.host.lower()
        self._per_source[host] = self._per_source.get(host, 0) + 1
        out.append(SubscriptionCreated(sub.id, sub.subscriber, source, expires, event_id))
        self._service(sub, now, out)

    def _refresh(self, sub: Subscription, request: Request, source: Destination, expires: int,
                 rates: Rates, now: float, out: list[NotifierOutput]) -> None:
        # RFC 3261 section 12.2.2 (CSeq order, 500) and the target refresh
        # of RFC 6665 section 4.1.2.2.
        sub.dialog.receive_request(request)
        # Spec 4.6.2: NOTIFYs follow the latest authorized SUBSCRIBE's source
        # (a watcher that reconnected, or whose NAT binding changed).
        self._move(sub, source)
        out.append(self._ok(request, expires, sub.contact))
        sub.rates = rates  # RFC 6446: a refresh may change the rates
        if expires == 0:
            # Spec 4.6.5: unsubscribe; the final NOTIFY has the state.
            self._end(sub, "timeout", now, out, event_reason="unsubscribed")
            return
        sub.expires_at = now + expires
        sub.owed = True  # spec 4.6.4: a refresh gets an immediate NOTIFY
        sub.subscribes += 1
        out.append(SubscriptionRefreshed(sub.id, expires))
        self._service(sub, now, out)

    # -- sending NOTIFY (spec 4.7.2, 8.4-8.6) ---------------------------------------------

    def _next_notify(self, sub: Subscription) -> float:
        """When this subscription's next NOTIFY is due (ignoring one in flight)."""
        if sub.last_sent is None:
            return -math.inf
        if sub.owed:
            # The immediate NOTIFY: not delayed by C, only by the 100 ms
            # limit and a Retry-After (spec 8.6).
            return max(sub.last_sent + self.absolute_interval, sub.paused_until)
        rates = sub.rates
        earliest = max(sub.last_sent + rates.ceiling, sub.paused_until)
        if self._urgent > sub.sent_version:
            return earliest
        due = sub.last_sent + rates.heartbeat
        if rates.adaptive_min_rate is not None:
            # RFC 6446 adaptive minimum rate, as implemented here: keep the
            # average rate since the subscription began at or above
            # adaptive-min-rate, so a burst of changes earns quiet time
            # later; the heartbeat still bounds every gap (spec 8.5).
            due = min(due, sub.started_at + sub.sent / rates.adaptive_min_rate)
        return max(due, earliest)

    def _service(self, sub: Subscription, now: float, out: list[NotifierOutput]) -> None:
        """Send a NOTIFY if one is due now, and set the subscription's timer."""
        if sub.in_flight is None and self._next_notify(sub) <= now:
            out.append(self._notify(sub, now))
        when = sub.expires_at
        if sub.in_flight is None:
            when = min(when, self._next_notify(sub))
        self._set_timer(sub, when)

    def _set_timer(self, sub: Subscription, when: float | None) -> None:
        if sub.timer != when:
            sub.timer = when
            if when is not None:
                heapq.heappush(self._heap, (when, next(self._seq), sub))

    def _fresh_body(self, now: float) -> bytes | None:
        if self.produce is not None:
            body = self.produce(now)
            if body is not None:
                return body
        return self._body

    def _notify(self, sub: Subscription, now: float, terminated: str | None = None,
                retry_after: int | None = None) -> SendRequest:
        if terminated is None:
            # Never more than is left (floor); the tolerance absorbs float
            # noise of large clock values (now + 600 - now != 600).
            remaining = max(0, int(sub.expires_at - now + 1e-6))
            state = f"active;expires={remaining}{sub.rates.echo}"
        else:
            state = f"terminated;reason={terminated}"
            if retry_after is not None:
                state += f";retry-after={retry_after}"
        extra = [("Event", sub.event), ("Subscription-State", state)]
        body = b""
        more = False
        if terminated is None and self.produce_for is not None:
            body, more = self.produce_for(sub, now)
        elif terminated in FINAL_WITH_BODY:
            body = self._fresh_body(now) or b""
        if body:
            extra.append(("Content-Type", self.content_type))
        request = _in_dialog(sub.dialog, "NOTIFY", extra, body, f"<{sub.contact}>")
        sub.in_flight = sub.dialog.local_cseq
        sub.sent += 1
        sub.last_sent = now
        sub.sent_version = self._version
        sub.owed = more
        return SendRequest(request, sub.destination())

    def _resend_with_credentials(self, sub: Subscription, request: Request,
                                 response: Response, now: float,
                                 out: list[NotifierOutput]) -> bool:
        """Spec 4.7.3: a challenged NOTIFY goes again, with credentials and
        the newest body (a new NOTIFY carrying the retry's credentials)."""
        assert self.notify_authorize is not None
        retry = self.notify_authorize(request, response)
        if retry is None:
            return False
        send = self._notify(sub, now)
        for name in ("Authorization", "Proxy-Authorization"):
            for value in retry.header_all(name):
                send.request.add_header(name, value)
        out.append(send)
        self._set_timer(sub, sub.expires_at)
        return True

    # -- ending (spec 4.7.4) -----------------------------------------------------------------

    def _end(self, sub: Subscription, reason: str, now: float, out: list[NotifierOutput],
             retry_after: int | None = None, event_reason: str | None = None) -> None:
        """End with a final NOTIFY, sent when the outstanding one is answered."""
        self._remove(sub, event_reason or reason, out)
        sub.ending = (reason, retry_after)
        self._closing[(sub.id.call_id, sub.id.local_tag)] = sub
        self._service_final(sub, now, out)

    def _service_final(self, sub: Subscription, now: float, out: list[NotifierOutput]) -> None:
        assert sub.ending is not None
        if sub.in_flight is not None:
            self._set_timer(sub, None)  # its response (or Timer F) comes first
            return
        earliest = -math.inf if sub.last_sent is None else sub.last_sent + self.absolute_interval
        if now < earliest:
            self._set_timer(sub, earliest)
            return
        reason, retry_after = sub.ending
        out.append(self._notify(sub, now, terminated=reason, retry_after=retry_after))
        self._closing.pop((sub.id.call_id, sub.id.local_tag), None)
        self._set_timer(sub, None)

    def _forget(self, sub: Subscription, reason: str, out: list[NotifierOutput],
                status: int | None) -> None:
        """Gone without a (further) NOTIFY: 481, timeout, a failed NOTIFY."""
        if self._closing.pop((sub.id.call_id, sub.id.local_tag), None) is None:
            self._remove(sub, reason, out, status)
        self._set_timer(sub, None)

    def _move(self, sub: Subscription, source: Destination) -> None:
        old, new = sub.source.host.lower(), source.host.lower()
        if old != new:
            self._per_source[new] = self._per_source.get(new, 0) + 1
            left = self._per_source.get(old, 1) - 1
            if left > 0:
                self._per_source[old] = left
            else:
                self._per_source.pop(old, None)
        sub.source = source

    def _remove(self, sub: Subscription, reason: str, out: list[NotifierOutput],
                status: int | None = None) -> None:
        if self.subscriptions.pop((sub.id.call_id, sub.id.local_tag), None) is None:
            return
        if self._by_watcher.get(sub.replace_key) is sub:
            del self._by_watcher[sub.replace_key]
        host = sub.source.host.lower()
        left = self._per_source.get(host, 1) - 1
        if left > 0:
            self._per_source[host] = left
        else:
            self._per_source.pop(host, None)
        self._set_timer(sub, None)
        out.append(SubscriptionTerminated(sub.id, reason, status))


# -- subscriber -----------------------------------------------------------------------

#: ``decode(body) returns the application's value or raises ValueError whose
#: text (member and rule) becomes the reason phrase of the 400.
Decoder = Callable[[bytes], object]

# Spec 4.15: final responses to a SUBSCRIBE that refuse it (RFC 3261 section
# 21: the same request will not succeed; RFC 6665 section 4.1.2.2 ends a
# refreshed subscription on most of them).  A subscriber configured with the
# node tries a new SUBSCRIBE later, slowly: an operator who fixes the agent
# gets the node back without restarting the proxy.  Other 4xx codes count as
# refusals too, except those with their own rule (401/407, 408, 423, 481)
# and 480/486, which say "busy now".
REFUSALS = frozenset({400, 403, 404, 405, 406, 410, 413, 414, 415, 416, 420, 421, 484,
                      489, 501, 603, 604, 606})
REFUSAL_WAIT = (60.0, 600.0)  # spec 4.15: no sooner than 60 s, doubling up to 600 s
# Refusal waits are stretched by up to a fifth at random, never shortened, so
# that proxies refused together do not come back together.
REFUSAL_JITTER = 0.2
# RFC 6665 section 4.1.3: what a terminated NOTIFY's reason asks of us.
RESUBSCRIBE_AT_ONCE = frozenset({"deactivated", "timeout"})
RESUBSCRIBE_LATER = frozenset({"probation", "giveup"})
NEVER_RESUBSCRIBE = frozenset({"rejected", "noresource", "invariant"})
# Re-subscription backoff: base * 2**failures, capped, randomised to 50-100 %
# (the shape of RFC 5626 section 4.5) so that hundreds of watchers that lost
# the same node do not come back in step.  From 2 s, so that a node restart
# is seen within seconds; up to the 600 s of spec 4.7.4.
BACKOFF_BASE = 2.0
BACKOFF_MAX = 600.0
# Spec 4.8: after answering a NOTIFY with an error (a bad body), the
# subscription is over; a new one no sooner than 30 s, doubling up to 600 s
# while the bodies keep failing.  Spec 4.7.4: probation without retry-after
# means 30 s.
BAD_NOTIFY_WAIT = 30.0
PROBATION_WAIT = 30.0
# A subscription ended by the notifier sooner than this after it began is
# treated as a failure (backoff), even for reasons that ask for an
# immediate re-subscription: a notifier that accepts and at once
# deactivates must not draw SUBSCRIBEs at network speed.
MIN_LIFETIME = 30.0
# Spec 4.4: refresh when the time left falls to the larger of a fifth of
# the duration and 32 s (64*T1, the longest a non-INVITE transaction
# takes): an unanswered refresh is known while the subscription stands.
REFRESH_MARGIN = 64 * T1


def refresh_delay(expires: float) -> float:
    """Seconds after a grant of ``expires`` s at which to refresh (480 of 600,
    28 of 60); half the duration for the very short ones no notifier of this
    package grants."""
    delay = expires - max(expires / 5, REFRESH_MARGIN)
    return delay if delay >= expires / 4 else expires / 2


def backoff(failures: int, random: Callable[[], float], base: float = BACKOFF_BASE,
            cap: float = BACKOFF_MAX) -> float:
    """The wait after ``failures`` consecutive failures (1, 2, ...)."""
    ceiling = min(cap, base * 2 ** min(failures - 1, 30))
    return ceiling * (0.5 + 0.5 * random())


@dataclass(frozen=True)
class SubscriberConfig:
    """What every subscription of one watcher has in common (shared, not copied).

    ``local_uri`` is our From, ``contact`` our Contact URI, ``route`` a
    preloaded route set (an outbound proxy), ``accept`` the body type.
    """

    package: str
    accept: str
    local_uri: str
    contact: str
    require_body: bool = True  # spec 4.5: every active/pending NOTIFY has a body
    expires: int = DEFAULT_EXPIRES
    min_rate: float | None = None
    max_rate: float | None = None
    adaptive_min_rate: float | None = None
    decode: Decoder | None = None
    authorize: ClientAuthorizer | None = None
    route: tuple[str, ...] = ()
    backoff_base: float = BACKOFF_BASE
    backoff_max: float = BACKOFF_MAX
    random: Callable[[], float] = field(default=_random.random)
    ids: IdGenerator = field(default_factory=lambda: IdGenerator(os.urandom))

    def event(self, event_id: str | None) -> str:
        value = self.package
        if event_id is not None:
            value += f";id={event_id}"
        for name, rate in (("min-rate", self.min_rate), ("max-rate", self.max_rate),
                           ("adaptive-min-rate", self.adaptive_min_rate)):
            if rate is not None:
                value += f";{name}={format_rate(rate)}"
        return value


@dataclass(frozen=True, slots=True)
class Subscribed:
    """The notifier accepted the subscription (2xx or a first NOTIFY)."""

    subscriber: Subscriber
    expires: int


@dataclass(frozen=True, slots=True)
class NotificationReceived:
    """A NOTIFY with a valid body (``value`` is what ``decode`` returned;
    None when the NOTIFY had no body)."""

    subscriber: Subscriber
    state: str  # active, pending, terminated
    body: bytes
    value: object


@dataclass(frozen=True, slots=True)
class NotificationRejected:
    """A NOTIFY whose body did not decode; answered 400 with ``reason``."""

    subscriber: Subscriber
    reason: str


@dataclass(frozen=True, slots=True)
class SubscriptionEnded:
    """The subscription is gone.  ``retry_at`` is when a new one will be
    tried, None if never (given up, rejected, or stopped).  ``reason``: the
    terminated NOTIFY's reason code, ``notify-refused`` (we answered a
    NOTIFY with an error: ``status``), ``refresh-rejected`` (481),
    ``expired``, ``unsubscribed``, or the reason phrase of a refusal."""

    subscriber: Subscriber
    reason: str
    status: int | None
    retry_at: float | None


SubscriberEvent = Subscribed | NotificationReceived | NotificationRejected | SubscriptionEnded
SubscriberOutput = SendRequest | SendResponse | SubscriberEvent

# Subscriber states.
IDLE = "idle"
SUBSCRIBING = "subscribing"  # initial SUBSCRIBE in flight, no dialog yet
ACTIVE = "active"  # dialog up (2xx or NOTIFY seen); refreshes in flight stay here
UNSUBSCRIBING = "unsubscribing"
WAITING = "waiting"  # backing off before a new subscription
STOPPED = "stopped"  # stopped, rejected, or given up: nothing more happens


def _safe_reason(text: str, limit: int = 200) -> str:
    """A reason phrase: one line of printable text."""
    cleaned = "".join(c if c.isprintable() else " " for c in text).strip()
    return cleaned[:limit] or "Bad Request"


def body_reason(package: str, error: Exception) -> str:
    """Spec 6.6: ``Invalid <package> body: <member> (<rule>)``.

    ``error`` names them in ``member`` and ``rule`` attributes (the codec's
    StatusError does); otherwise its text stands in for both.
    """
    member, rule = getattr(error, "member", None), getattr(error, "rule", None)
    what = f"{member or 'body'} ({rule})" if rule else str(error)
    return _safe_reason(f"Invalid {package} body: {what}")


def _warning(host: str, detail: str) -> tuple[str, str]:
    """Spec 6.6: ``Warning: 399 <host> "<detail>"``, escaped, at most 200 characters."""
    text = _safe_reason(detail)[:200].replace("\\", "\\\\").replace('"', '\\"')
    return ("Warning", f'399 {host} "{text}"')


class Subscriber:
    """One subscription to one resource (RFC 6665 section 4.1).

    ``target`` is the resource's URI (the Request-URI); ``destination`` where
    to send out-of-dialog requests (None: resolve per RFC 3263); ``key``
    is the application's name for it; ``check(value)`` may refuse a decoded
    body by raising ValueError with ``member``/``rule`` (spec 4.8 step 6:
    ``node (subscription)`` for a body about another node).  Call
    :meth:`start`, then feed it the NOTIFYs of its dialog, the responses to
    its requests and the time.
    """

    __slots__ = (
        "target", "config", "destination", "key", "event_id", "check", "state", "expires",
        "call_id", "local_tag", "local_cseq", "dialog", "expires_at", "refresh_at",
        "notify_deadline", "retry_at", "failures", "bad_notifies", "pending", "stopping",
        "last_state", "since",
    )

    def __init__(self, target: str, config: SubscriberConfig, *,
                 destination: Destination | None = None, key: object = None,
                 event_id: str | None = None,
                 check: Callable[[object], None] | None = None) -> None:
        self.target = target
        self.check = check
        self.config = config
        self.destination = destination
        self.key = key
        self.event_id = event_id
        self.state = IDLE
        self.expires = config.expires
        self.call_id = ""
        self.local_tag = ""
        self.local_cseq = 0  # of the initial SUBSCRIBE, before there is a dialog
        self.dialog: Dialog | None = None
        self.expires_at: float | None = None
        self.refresh_at: float | None = None
        self.notify_deadline: float | None = None
        self.retry_at: float | None = None
        self.failures = 0
        self.bad_notifies = 0  # NOTIFYs refused in a row (spec 4.8 backoff)
        self.pending: Request | None = None  # our request awaiting its final response
        self.stopping = False
        self.last_state: str | None = None
        self.since = 0.0  # when the current subscription was started

    def __repr__(self) -> str:
        return f"<Subscriber {self.target} {self.state}>"

    # -- the application's side ----------------------------------------------------------

    def start(self, now: float) -> list[SubscriberOutput]:
        """Send the initial SUBSCRIBE (again, after a stop)."""
        self.stopping = False
        return [self._subscribe_anew(now)]

    def stop(self, now: float) -> list[SubscriberOutput]:
        """Unsubscribe (Expires: 0) if a subscription stands; stop retrying."""
        self.stopping = True
        self.retry_at = self.refresh_at = None
        if self.state == ACTIVE and self.pending is None:
            return [self._in_dialog(0, now, UNSUBSCRIBING)]
        if self.state in (IDLE, WAITING):
            self.state = STOPPED
        return []  # SUBSCRIBING or a refresh in flight: unsubscribe on its 2xx

    def refresh(self, now: float) -> list[SubscriberOutput]:
        """Refresh the subscription now, in its dialog (a package whose
        notifier answers every SUBSCRIBE with its full state: load-affinity
        after a gap, spec/load-affinity.md section 5). Nothing while a
        request of ours is in flight or no dialog stands."""
        if self.state != ACTIVE or self.pending is not None or self.dialog is None or self.stopping:
            return []
        return [self._in_dialog(self.expires, now)]

    # -- requests ---------------------------------------------------------------------------

    def _subscribe_anew(self, now: float) -> SendRequest:
        ids = self.config.ids
        self.call_id = ids.call_id()
        self.local_tag = ids.tag()
        self.dialog = None
        self.expires_at = self.refresh_at = self.notify_deadline = self.retry_at = None
        self.local_cseq = 1
        self.last_state = None
        self.since = now
        # Timer N (RFC 6665 4.1.2.4, spec 4.8): from sending until the first NOTIFY.
        self.notify_deadline = now + NOTIFY_WAIT
        self.state = SUBSCRIBING
        config = self.config
        headers = [("Route", r) for r in config.route]
        headers += [
            ("Max-Forwards", MAX_FORWARDS), ("From", f"<{config.local_uri}>;tag={self.local_tag}"),
            ("To", f"<{self.target}>"), ("Call-ID", self.call_id),
            ("CSeq", f"{self.local_cseq} SUBSCRIBE"), ("Contact", f"<{config.contact}>"),
            ("Event", config.event(self.event_id)), ("Expires", str(self.expires)),
            ("Accept", config.accept), ("Allow", "NOTIFY"),
        ]
        request = Request("SUBSCRIBE", self.target, headers)
        self.pending = request
        return SendRequest(request, self.destination)

    def _in_dialog(self, expires: int, now: float, state: str | None = None) -> SendRequest:
        assert self.dialog is not None
        config = self.config
        request = _in_dialog(self.dialog, "SUBSCRIBE", [
            ("Event", config.event(self.event_id)), ("Expires", str(expires)),
            ("Accept", config.accept)], contact=f"<{config.contact}>")
        self.pending = request
        self.refresh_at = None
        if state is not None:
            self.state = state
            self.expires_at = None  # unsubscribing: nothing to refresh or expire
        return SendRequest(request, self._next_hop(request))

    def _next_hop(self, request: Request) -> Destination | None:
        """Out of dialog: the configured destination; in a dialog: the route
        set or remote target when numeric, else None (resolve)."""
        if _tag_of(request.header("To")) is None:
            return self.destination
        return next_hop_destination(request, self.destination.transport
                                    if self.destination else "UDP")

    # -- responses ----------------------------------------------------------------------------

    def handle_response(self, response: Response, request: Request,
                        now: float) -> list[SubscriberOutput]:
        if response.status < 200 or request is not self.pending:
            return []
        self.pending = None
        out: list[SubscriberOutput] = []
        if request.expires == 0:
            if not self._retry_with(request, response, now, out):
                self._unsubscribed(response, now, out)
        elif _tag_of(request.header("To")) is None:
            self._initial_answered(response, request, now, out)
        elif self.state == ACTIVE:
            self._refresh_answered(response, request, now, out)
        return out

    def _retry_with(self, request: Request, response: Response, now: float,
                    out: list[SubscriberOutput]) -> bool:
        """401/407 with credentials, or 423 with the notifier's Min-Expires."""
        if response.status in (401, 407) and self.config.authorize is not None:
            retry = self.config.authorize(request, response)
            if retry is None:
                return False
        elif response.status == 423:
            try:
                minimum = response.min_expires
            except SipError:
                return False
            if minimum is None or minimum <= (request.expires or 0):
                return False
            self.expires = minimum
            retry = _copy_request(request)
            retry.set_header("Expires", str(minimum))
            cseq = retry.cseq
            assert cseq is not None
            retry.set_header("CSeq", f"{cseq.number + 1} SUBSCRIBE")
        else:
            return False
        cseq = retry.cseq
        assert cseq is not None
        if self.dialog is not None and _tag_of(retry.header("To")) is not None:
            self.dialog.local_cseq = cseq.number
        else:
            self.local_cseq = cseq.number
            if self.last_state is None:
                self.notify_deadline = now + NOTIFY_WAIT  # Timer N for the new SUBSCRIBE
        retry.remove_header("Via")
        self.pending = retry
        out.append(SendRequest(retry, self._next_hop(retry)))
        return True

    def _granted(self, response: Response, now: float) -> int:
        try:
            expires = response.expires
        except SipError:
            expires = None
        if expires is None:
            expires = self.expires  # RFC 6665 4.2.1.1 requires it; be lenient
        return expires

    def _initial_answered(self, response: Response, request: Request, now: float,
                          out: list[SubscriberOutput]) -> None:
        status = response.status
        if 200 <= status < 300:
            expires = self._granted(response, now)
            self.failures = 0
            announce = self.expires_at is None
            if self.dialog is None:
                # The dialog comes from the 2xx (RFC 3261 section 12.1.2);
                # Timer N runs on until the first NOTIFY.
                self.dialog = _uac_dialog(request, response, self.target)
            self.state = ACTIVE
            self._schedule_refresh(expires, now)
            if announce:
                out.append(Subscribed(self, expires))
            if self.stopping:
                out.append(self._in_dialog(0, now, UNSUBSCRIBING))
            return
        if self._retry_with(request, response, now, out):
            return
        self._failed(status, response.reason or "", now, out, response)

    def _refresh_answered(self, response: Response, request: Request, now: float,
                          out: list[SubscriberOutput]) -> None:
        status = response.status
        if 200 <= status < 300:
            self.failures = 0
            self._schedule_refresh(self._granted(response, now), now)
            if self.stopping:
                out.append(self._in_dialog(0, now, UNSUBSCRIBING))
            return
        if status == 481:
            # RFC 6665 section 4.1.2.2: the subscription is gone; a new one at once.
            out.append(SubscriptionEnded(self, "refresh-rejected", 481, now))
            out.append(self._subscribe_anew(now))
            return
        if self._retry_with(request, response, now, out):
            return
        if self._is_refusal(status):
            # Spec 4.15: the refresh is refused: the subscription is over (RFC
            # 6665 4.1.2.2); a new one after the refusal wait.
            self.failures += 1
            self._resubscribe_later(now, self._refusal_wait(), response.reason or "refresh refused",
                                    status, out)
            return
        # RFC 6665 section 4.1.2.2: other failures leave the subscription as
        # it was until it expires; try the refresh again before that.  A 480
        # is the exception there: the subscription is over (spec 4.15).
        self.failures += 1
        wait = backoff(self.failures, self.config.random, self.config.backoff_base,
                       self.config.backoff_max)
        assert self.expires_at is not None
        if status != 480 and now + wait < self.expires_at:
            self.refresh_at = now + wait
        else:
            self._resubscribe_later(now, wait, "refresh-failed", status, out)

    def _unsubscribed(self, response: Response, now: float, out: list[SubscriberOutput]) -> None:
        if 200 <= response.status < 300 and self.state == UNSUBSCRIBING:
            # RFC 6665 section 4.1.2.3: a final NOTIFY follows; answer it if
            # it comes, but do not wait for it forever.
            self.notify_deadline = now + NOTIFY_WAIT
            return
        self._finish("unsubscribed", response.status, out)

    def _finish(self, reason: str, status: int | None, out: list[SubscriberOutput]) -> None:
        self.state = STOPPED
        self.refresh_at = self.notify_deadline = self.retry_at = self.expires_at = None
        self.pending = None
        out.append(SubscriptionEnded(self, reason, status, None))

    @staticmethod
    def _is_refusal(status: int) -> bool:
        """Spec 4.15: refused (credentials refused included), not failed."""
        return status in REFUSALS or status in (401, 407) or (
            400 <= status < 500 and status not in (408, 423, 480, 481, 486, 491))

    def _refusal_wait(self) -> float:
        base, cap = REFUSAL_WAIT
        wait = min(cap, base * 2 ** min(self.failures - 1, 30))
        return wait * (1 + REFUSAL_JITTER * (1 - self.config.random()))

    def _failed(self, status: int, reason: str, now: float, out: list[SubscriberOutput],
                response: Response | None = None) -> None:
        if self.stopping:
            self._finish(reason or "refused", status, out)
            return
        self.failures += 1
        if self._is_refusal(status):
            wait = self._refusal_wait()
        else:
            wait = backoff(self.failures, self.config.random, self.config.backoff_base,
                           self.config.backoff_max)
        if response is not None:
            try:
                retry_after = response.retry_after
            except SipError:
                retry_after = None
            if retry_after is not None:
                wait = max(wait, float(retry_after.seconds))
        self._resubscribe_later(now, wait, reason or "failed", status, out)

    def _resubscribe_later(self, now: float, wait: float, reason: str, status: int | None,
                           out: list[SubscriberOutput]) -> None:
        self.state = WAITING
        self.refresh_at = self.notify_deadline = self.expires_at = None
        self.retry_at = now + wait
        self.pending = None
        out.append(SubscriptionEnded(self, reason, status, self.retry_at))

    def _schedule_refresh(self, expires: int, now: float) -> None:
        self.expires_at = now + expires
        self.refresh_at = now + refresh_delay(expires) if expires > 0 else None

    # -- NOTIFY (RFC 6665 section 4.1.3) ---------------------------------------------

    def matches(self, request: Request) -> bool:
        """Whether ``request`` belongs to this subscription's dialog."""
        if request.call_id != self.call_id or self.state in (IDLE, WAITING, STOPPED):
            return False
        if _tag_of(request.header("To")) != self.local_tag:
            return False
        if self.dialog is not None and _tag_of(request.header("From")) != self.dialog.remote_tag:
            return False  # a further dialog of a forked SUBSCRIBE: 481 (spec 4.9)
        try:
            event = request.event
        except SipError:
            return True  # malformed Event: ours to answer (489)
        return event is None or event.id == self.event_id  # RFC 6665 4.4.1

    def handle_request(self, request: Request, source: Destination,
                       now: float) -> list[SubscriberOutput] | None:
        if request.method != "NOTIFY" or not self.matches(request):
            return None
        out: list[SubscriberOutput] = []
        try:
            self._notify(request, now, out)
        except SipError as error:
            self._refused(request, error, now, out)
        return out

    def _notify(self, request: Request, now: float, out: list[SubscriberOutput]) -> None:
        """Spec 4.8: the checks in order, then the state."""
        config = self.config
        package = config.package.lower()
        try:
            event = request.event
        except SipError:
            event = None
        if event is None or event.package != package:
            raise SipError(489, "Bad Event", [("Allow-Events", package)])
        state = request.subscription_state
        if state is None:
            raise bad_request("NOTIFY without Subscription-State")
        if request.body and request.content_type != config.accept.lower():
            raise SipError(415, "Unsupported Media Type", [("Accept", config.accept)])
        if not request.body and config.require_body and state.state != "terminated":
            raise SipError(400, f"Invalid {package} body: body (required)")
        value: object = None
        if request.body and config.decode is not None:
            try:
                value = config.decode(request.body)
                if self.check is not None:
                    self.check(value)
            except ValueError as error:
                raise SipError(400, body_reason(package, error),
                               [_warning(_contact_host(config.contact), str(error))]) from None
        if self.dialog is None:
            # RFC 6665 section 4.1.2.4: the NOTIFY came before the 2xx; it
            # makes the dialog, as for a UAS (RFC 3261 section 12.1.1).
            self.dialog = dialog_as_uas(request, self.local_tag)
            self.dialog.local_cseq = self.local_cseq
            self.state = ACTIVE
        else:
            # RFC 3261 section 12.2.2: CSeq order (500) and target refresh.
            self.dialog.receive_request(request)
        self.notify_deadline = None
        self.last_state = state.state
        self.bad_notifies = 0
        out.append(SendResponse(make_response(request, 200)))
        out.append(NotificationReceived(self, state.state, request.body, value))
        if state.state == "terminated":
            self._terminated(state.reason, state.retry_after, now, out)
            return
        expires = state.expires
        if expires is not None and self.state == ACTIVE and not self.stopping:
            first = self.expires_at is None
            if self.pending is None or first:
                # The notifier may shorten a subscription (RFC 6665 4.1.3).
                self._schedule_refresh(expires, now)
            if first:
                out.append(Subscribed(self, expires))

    def _refused(self, request: Request, error: SipError, now: float,
                 out: list[SubscriberOutput]) -> None:
        """We answered a NOTIFY of our dialog with an error: the notifier ends
        the subscription on it (spec 4.7.3), so do we; a new one no sooner
        than 30 s, doubling up to 600 s while NOTIFYs keep failing (4.8)."""
        out.append(SendResponse(error_response(request, error)))
        out.append(NotificationRejected(self, error.reason))
        if self.state in (UNSUBSCRIBING, STOPPED) or self.stopping:
            self._finish("unsubscribed", error.status, out)
            return
        self.bad_notifies += 1
        wait = min(self.config.backoff_max, BAD_NOTIFY_WAIT * 2 ** min(self.bad_notifies - 1, 30))
        self._resubscribe_later(now, wait, "notify-refused", error.status, out)

    def _terminated(self, reason: str | None, retry_after: int | None, now: float,
                    out: list[SubscriberOutput]) -> None:
        self.pending = None  # a refresh in flight is moot; its answer is ignored
        if self.stopping or self.state == UNSUBSCRIBING:
            self._finish("unsubscribed", None, out)
            return
        reason = reason or "unknown"
        if reason in NEVER_RESUBSCRIBE:
            self._finish(reason, None, out)
            return
        if retry_after is not None:
            wait = float(retry_after)
        elif reason in RESUBSCRIBE_AT_ONCE and now - self.since >= MIN_LIFETIME:
            wait = 0.0
        elif reason == "probation":
            wait = PROBATION_WAIT  # spec 4.7.4: 30 s when retry-after is absent
        else:
            self.failures += 1
            wait = backoff(self.failures, self.config.random, self.config.backoff_base,
                           self.config.backoff_max)
        if wait <= 0:
            out.append(SubscriptionEnded(self, reason, None, now))
            out.append(self._subscribe_anew(now))
        else:
            self._resubscribe_later(now, wait, reason, None, out)

    # -- timers ------------------------------------------------------------------------------

    def next_timer(self) -> float | None:
        times = [t for t in (self.refresh_at, self.notify_deadline, self.retry_at,
                             self.expires_at) if t is not None]
        return min(times) if times else None

    def handle_timer(self, now: float) -> list[SubscriberOutput]:
        """Act on the earliest due deadline; every due deadline is cleared, so
        ``next_timer`` never returns a time already handled."""
        out: list[SubscriberOutput] = []
        if self.retry_at is not None and now >= self.retry_at:
            self.retry_at = None
            if self.state == WAITING and not self.stopping:
                out.append(self._subscribe_anew(now))
                return out
        if self.notify_deadline is not None and now >= self.notify_deadline:
            self.notify_deadline = None
            if self.state == UNSUBSCRIBING:
                self._finish("unsubscribed", None, out)
                return out
            if self.state == ACTIVE and self.last_state is None:
                # Timer N fired: no NOTIFY, no subscription (RFC 6665 4.1.2.4).
                # (Still SUBSCRIBING: the transaction reports its own end.)
                self.pending = None
                self._failed(408, "no NOTIFY (Timer N)", now, out)
                return out
        if self.expires_at is not None and now >= self.expires_at:
            self.expires_at = None
            if self.state == ACTIVE:
                # Neither refreshed nor told: the notifier has forgotten us.
                out.append(SubscriptionEnded(self, "expired", None, now))
                out.append(self._subscribe_anew(now))
                return out
        if self.refresh_at is not None and now >= self.refresh_at:
            self.refresh_at = None
            if self.state == ACTIVE and self.pending is None:
                out.append(self._in_dialog(self.expires, now))
        return out


def _uac_dialog(request: Request, response: Response, target: str) -> Dialog:
    """The dialog of a 2xx (RFC 3261 section 12.1.2); a 2xx without the
    Contact RFC 6665 requires gets the Request-URI as remote target."""
    if len(response.contacts) == 1:
        return dialog_as_uac(request, response)
    fixed = Response(response.status, response.reason, list(response.headers))
    fixed.remove_header("Contact")
    fixed.add_header("Contact", f"<{target}>")
    return dialog_as_uac(request, fixed)


def _contact_host(contact: str) -> str:
    try:
        uri = parse_uri(contact)
    except SipError:
        return "-"
    return uri.hostport if isinstance(uri, SipUri) else "-"


def _copy_request(request: Request) -> Request:
    return Request(request.method, request.uri, list(request.headers), request.body)


class SubscriberPool:
    """Many :class:`Subscriber` objects behind one transaction-user interface.

    NOTIFYs and responses are routed by Call-ID (a dict look-up), timers by
    one heap, so a watcher of hundreds of nodes costs one small object each.
    """

    def __init__(self) -> None:
        self.subscribers: set[Subscriber] = set()
        self._by_call_id: dict[str, Subscriber] = {}
        self._indexed: dict[Subscriber, tuple[str, float | None]] = {}
        self._heap: list[tuple[float, int, Subscriber]] = []
        self._seq = itertools.count()

    def add(self, subscriber: Subscriber, now: float) -> list[SubscriberOutput]:
        self.subscribers.add(subscriber)
        return self._after(subscriber, subscriber.start(now))

    def stop(self, subscriber: Subscriber, now: float) -> list[SubscriberOutput]:
        return self._after(subscriber, subscriber.stop(now))

    def refresh(self, subscriber: Subscriber, now: float) -> list[SubscriberOutput]:
        return self._after(subscriber, subscriber.refresh(now))

    def discard(self, subscriber: Subscriber) -> None:
        """Forget a subscriber at once (no unsubscribe)."""
        self.subscribers.discard(subscriber)
        call_id, _ = self._indexed.pop(subscriber, ("", None))
        if self._by_call_id.get(call_id) is subscriber:
            del self._by_call_id[call_id]

    def _after(self, sub: Subscriber, out: list[SubscriberOutput]) -> list[SubscriberOutput]:
        if sub not in self.subscribers:
            return out
        old_call_id, old_timer = self._indexed.get(sub, ("", None))
        if old_call_id != sub.call_id:
            if self._by_call_id.get(old_call_id) is sub:
                del self._by_call_id[old_call_id]
            if sub.call_id:
                self._by_call_id[sub.call_id] = sub
        when = sub.next_timer()
        self._indexed[sub] = (sub.call_id, when)
        if when is not None and when != old_timer:
            heapq.heappush(self._heap, (when, next(self._seq), sub))
        return out

    def handle_request(self, request: Request, source: Destination,
                       now: float) -> list[SubscriberOutput] | None:
        sub = self._by_call_id.get(request.call_id or "")
        if sub is None:
            return None
        out = sub.handle_request(request, source, now)
        return None if out is None else self._after(sub, out)

    def handle_response(self, response: Response, request: Request,
                        now: float) -> list[SubscriberOutput]:
        sub = self._by_call_id.get(request.call_id or "")
        if sub is None:
            return []
        return self._after(sub, sub.handle_response(response, request, now))

    def next_timer(self) -> float | None:
        heap = self._heap
        while heap:
            when, _, sub = heap[0]
            if sub in self.subscribers and self._indexed.get(sub, ("", None))[1] == when:
                return when
            heapq.heappop(heap)
        return None

    def handle_timer(self, now: float) -> list[SubscriberOutput]:
        out: list[SubscriberOutput] = []
        heap = self._heap
        while heap and heap[0][0] <= now:
            when, _, sub = heapq.heappop(heap)
            if sub not in self.subscribers or self._indexed.get(sub, ("", None))[1] != when:
                continue
            self._indexed[sub] = (sub.call_id, None)
            out.extend(self._after(sub, sub.handle_timer(now)))
        return out
