"""The notifier of an event package (RFC 6665 section 4.2) with rate control (RFC 6446), sans-I/O.

:class:`Notifier` answers SUBSCRIBE requests for one package, keeps the
subscriptions (dialogs) and sends NOTIFY requests, one outstanding at a time
per subscription: a full state at once, a new state as soon as each
subscription's ceiling allows (changes in between coalesce: the newest body
goes), a heartbeat at least every heartbeat interval, and a final NOTIFY when
a subscription ends.  Every NOTIFY carries a freshly produced body (the
``produce`` hook), never a copy (spec 4.7.2).  The rules of the load-status
package (spec/load-status.md sections 4 and 8) are the defaults.

A transaction user (see :mod:`sipstatus.sip.transaction_user`): requests,
responses and the time in; SendRequest, SendResponse and events out.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from .dialog import Dialog, dialog_as_uas
from .errors import SipError, bad_request
from .headers import parse_media_type
from .identifiers import IdGenerator
from .message import Request, Response, error_response, make_response
from .timers import TimerHeap
from .transaction import Destination
from .transaction_user import (
    DEFAULT_EXPIRES,
    MAX_EXPIRES,
    MIN_EXPIRES,
    Authorizer,
    ClientAuthorizer,
    Producer,
    SendRequest,
    SendResponse,
    event_for,
    format_rate,
    granted_expires,
    handles,
    in_dialog_request,
    retry_after_seconds,
    tag_of,
)

# -- defaults (the load-status package, spec section 8) ------------------------------

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
        self._timers: TimerHeap[Subscription] = TimerHeap()

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
        if not handles(request, "SUBSCRIBE", self.other_packages):
            return None
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
        key = (request.call_id or "", tag_of(request.header("From")) or "")
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
            retry_after = retry_after_seconds(response)
            if retry_after is None:
                # A failed NOTIFY ends the subscription (RFC 6665 4.2.2).
                self._forget(sub, "notify-failed", out, status)
                return out
            sub.paused_until = now + retry_after  # not a failure
        if sub.ending is not None:
            self._service_final(sub, now, out)
        else:
            self._service(sub, now, out)
        return out

    def next_timer(self) -> float | None:
        return self._timers.next_time()

    def handle_timer(self, now: float) -> list[NotifierOutput]:
        out: list[NotifierOutput] = []
        while (due := self._timers.pop(now)) is not None:
            _, sub = due
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
        event = event_for(request, self.package, self.other_packages)
        to_tag = tag_of(request.header("To"))
        sub: Subscription | None = None
        if to_tag is not None:
            sub = self.subscriptions.get((request.call_id or "", to_tag))
            if sub is None or tag_of(request.header("From")) != sub.id.remote_tag \
                    or event.id != sub.event_id:
                raise SipError(481, "no such subscription")
        if self.authorize is not None:
            refusal = self.authorize(request, source, now)
            if refusal is not None:
                raise refusal
        rates = self._rates(event.params)
        expires = granted_expires(request, self.default_expires, self.min_expires,
                                  self.max_expires)
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
        self._timers.set(sub, when)

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
        request = in_dialog_request(sub.dialog, "NOTIFY", extra, body, f"<{sub.contact}>")
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
