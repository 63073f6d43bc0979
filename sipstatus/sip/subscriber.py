"""The subscriber of an event package (RFC 6665 section 4.1), sans-I/O.

:class:`Subscriber` holds one subscription to one resource: initial
SUBSCRIBE, refreshes, NOTIFY handling, re-subscription with backoff.  Its
states and the moves between them are :class:`SubscriberState` and
:data:`TRANSITIONS`.  :class:`SubscriberPool` runs hundreds of them with one
timer heap.  The rules of the load-status package (spec/load-status.md
sections 4.3-4.4, 4.8 and 4.15) are the defaults.

A transaction user (see :mod:`sipstatus.sip.transaction_user`): requests,
responses and the time in; SendRequest, SendResponse and events out.  The
events name the subscriber by value (:class:`ClientId`).
"""

from __future__ import annotations

import enum
import ipaddress
import os
import random as _random
from collections.abc import Callable
from dataclasses import dataclass, field

from .dialog import Dialog, dialog_as_uac, dialog_as_uas
from .errors import SipError, bad_request
from .identifiers import IdGenerator
from .message import Request, Response, error_response, make_response
from .timers import TimerHeap
from .transaction import DEFAULT_SIP_PORT, DEFAULT_SIPS_PORT, T1, Destination
from .transaction_user import (
    DEFAULT_EXPIRES,
    MAX_FORWARDS,
    ClientAuthorizer,
    ClientId,
    SendRequest,
    SendResponse,
    doubling,
    format_rate,
    in_dialog_request,
    refresh_delay,
    retry_after_seconds,
    retry_request,
    tag_of,
)
from .uri import SipUri, parse_uri

# RFC 6665 section 4.1.2.4: a subscriber that gets a 2xx but no NOTIFY within
# 64*T1 considers the subscription failed.
NOTIFY_WAIT = 64 * T1

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


def backoff(failures: int, random: Callable[[], float], base: float = BACKOFF_BASE,
            cap: float = BACKOFF_MAX) -> float:
    """The wait after ``failures`` consecutive failures (1, 2, ...)."""
    ceiling = doubling(failures, base, cap)
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

    subscriber: ClientId
    expires: int


@dataclass(frozen=True, slots=True)
class NotificationReceived:
    """A NOTIFY with a valid body (``value`` is what ``decode`` returned;
    None when the NOTIFY had no body)."""

    subscriber: ClientId
    state: str  # active, pending, terminated
    body: bytes
    value: object


@dataclass(frozen=True, slots=True)
class NotificationRejected:
    """A NOTIFY whose body did not decode; answered 400 with ``reason``."""

    subscriber: ClientId
    reason: str


@dataclass(frozen=True, slots=True)
class SubscriptionEnded:
    """The subscription is gone.  ``retry_at`` is when a new one will be
    tried, None if never (given up, rejected, or stopped).  ``reason``: the
    terminated NOTIFY's reason code, ``notify-refused`` (we answered a
    NOTIFY with an error: ``status``), ``refresh-rejected`` (481),
    ``expired``, ``unsubscribed``, or the reason phrase of a refusal."""

    subscriber: ClientId
    reason: str
    status: int | None
    retry_at: float | None


SubscriberEvent = Subscribed | NotificationReceived | NotificationRejected | SubscriptionEnded
SubscriberOutput = SendRequest | SendResponse | SubscriberEvent


class SubscriberState(enum.Enum):
    IDLE = "idle"  # not started
    SUBSCRIBING = "subscribing"  # initial SUBSCRIBE in flight, no dialog yet
    ACTIVE = "active"  # dialog up (2xx or NOTIFY seen); refreshes in flight stay here
    UNSUBSCRIBING = "unsubscribing"  # SUBSCRIBE with Expires: 0 sent
    WAITING = "waiting"  # backing off before a new subscription
    STOPPED = "stopped"  # stopped, rejected, or given up: nothing more happens


IDLE, SUBSCRIBING, ACTIVE, UNSUBSCRIBING, WAITING, STOPPED = SubscriberState

#: The moves a subscriber makes (staying put is none).  A new subscription
#: (SUBSCRIBING) may follow any state: a start after a stop, a retry after a
#: wait, the notifier's 481 or ``deactivated``, a silent expiry.  Only the initial SUBSCRIBE's 2xx or first NOTIFY makes one
#: ACTIVE; only an ACTIVE one unsubscribes (it needs the dialog).
TRANSITIONS: dict[SubscriberState, frozenset[SubscriberState]] = {
    IDLE: frozenset({SUBSCRIBING, STOPPED}),
    SUBSCRIBING: frozenset({ACTIVE, WAITING, STOPPED}),
    ACTIVE: frozenset({SUBSCRIBING, UNSUBSCRIBING, WAITING, STOPPED}),
    UNSUBSCRIBING: frozenset({SUBSCRIBING, STOPPED}),
    WAITING: frozenset({SUBSCRIBING, STOPPED}),
    STOPPED: frozenset({SUBSCRIBING}),
}


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
        self.state: SubscriberState = IDLE
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
        return f"<Subscriber {self.target} {self.state.value}>"

    @property
    def id(self) -> ClientId:
        """This subscriber as its events name it."""
        return ClientId(self.key, self.target, self.config.package)

    def _enter(self, state: SubscriberState) -> None:
        """The one place the state changes: a move not in TRANSITIONS is a bug."""
        if state is not self.state and state not in TRANSITIONS[self.state]:
            raise RuntimeError(f"subscriber {self.target}: no move from {self.state.value} "
                               f"to {state.value}")
        self.state = state

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
            self._enter(STOPPED)
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
        self._enter(SUBSCRIBING)
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

    def _in_dialog(self, expires: int, now: float,
                   state: SubscriberState | None = None) -> SendRequest:
        assert self.dialog is not None
        config = self.config
        request = in_dialog_request(self.dialog, "SUBSCRIBE", [
            ("Event", config.event(self.event_id)), ("Expires", str(expires)),
            ("Accept", config.accept)], contact=f"<{config.contact}>")
        self.pending = request
        self.refresh_at = None
        if state is not None:
            self._enter(state)
            self.expires_at = None  # unsubscribing: nothing to refresh or expire
        return SendRequest(request, self._next_hop(request))

    def _next_hop(self, request: Request) -> Destination | None:
        """Out of dialog: the configured destination; in a dialog: the route
        set or remote target when numeric, else None (resolve)."""
        if tag_of(request.header("To")) is None:
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
        elif tag_of(request.header("To")) is None:
            self._initial_answered(response, request, now, out)
        elif self.state == ACTIVE:
            self._refresh_answered(response, request, now, out)
        return out

    def _retry_with(self, request: Request, response: Response, now: float,
                    out: list[SubscriberOutput]) -> bool:
        """401/407 with credentials, or 423 with the notifier's Min-Expires."""
        retry = retry_request(request, response, self.config.authorize, request.expires or 0)
        if retry is None:
            return False
        if response.status == 423:
            self.expires = retry.expires  # the notifier's Min-Expires
        cseq = retry.cseq
        assert cseq is not None
        if self.dialog is not None and tag_of(retry.header("To")) is not None:
            self.dialog.local_cseq = cseq.number
        else:
            self.local_cseq = cseq.number
            if self.last_state is None:
                self.notify_deadline = now + NOTIFY_WAIT  # Timer N for the new SUBSCRIBE
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
            self._enter(ACTIVE)
            self._schedule_refresh(expires, now)
            if announce:
                out.append(Subscribed(self.id, expires))
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
            out.append(SubscriptionEnded(self.id, "refresh-rejected", 481, now))
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
        self._enter(STOPPED)
        self.refresh_at = self.notify_deadline = self.retry_at = self.expires_at = None
        self.pending = None
        out.append(SubscriptionEnded(self.id, reason, status, None))

    @staticmethod
    def _is_refusal(status: int) -> bool:
        """Spec 4.15: refused (credentials refused included), not failed."""
        return status in REFUSALS or status in (401, 407) or (
            400 <= status < 500 and status not in (408, 423, 480, 481, 486, 491))

    def _refusal_wait(self) -> float:
        base, cap = REFUSAL_WAIT
        wait = doubling(self.failures, base, cap)
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
            retry_after = retry_after_seconds(response)
            if retry_after is not None:
                wait = max(wait, float(retry_after))
        self._resubscribe_later(now, wait, reason or "failed", status, out)

    def _resubscribe_later(self, now: float, wait: float, reason: str, status: int | None,
                           out: list[SubscriberOutput]) -> None:
        self._enter(WAITING)
        self.refresh_at = self.notify_deadline = self.expires_at = None
        self.retry_at = now + wait
        self.pending = None
        out.append(SubscriptionEnded(self.id, reason, status, self.retry_at))

    def _schedule_refresh(self, expires: int, now: float) -> None:
        self.expires_at = now + expires
        self.refresh_at = now + refresh_delay(expires) if expires > 0 else None

    # -- NOTIFY (RFC 6665 section 4.1.3) ---------------------------------------------

    def matches(self, request: Request) -> bool:
        """Whether ``request`` belongs to this subscription's dialog."""
        if request.call_id != self.call_id or self.state in (IDLE, WAITING, STOPPED):
            return False
        if tag_of(request.header("To")) != self.local_tag:
            return False
        if self.dialog is not None and tag_of(request.header("From")) != self.dialog.remote_tag:
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
            self._enter(ACTIVE)
        else:
            # RFC 3261 section 12.2.2: CSeq order (500) and target refresh.
            self.dialog.receive_request(request)
        self.notify_deadline = None
        self.last_state = state.state
        self.bad_notifies = 0
        out.append(SendResponse(make_response(request, 200)))
        out.append(NotificationReceived(self.id, state.state, request.body, value))
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
                out.append(Subscribed(self.id, expires))

    def _refused(self, request: Request, error: SipError, now: float,
                 out: list[SubscriberOutput]) -> None:
        """We answered a NOTIFY of our dialog with an error: the notifier ends
        the subscription on it (spec 4.7.3), so do we; a new one no sooner
        than 30 s, doubling up to 600 s while NOTIFYs keep failing (4.8)."""
        out.append(SendResponse(error_response(request, error)))
        out.append(NotificationRejected(self.id, error.reason))
        if self.state in (UNSUBSCRIBING, STOPPED) or self.stopping:
            self._finish("unsubscribed", error.status, out)
            return
        self.bad_notifies += 1
        wait = doubling(self.bad_notifies, BAD_NOTIFY_WAIT, self.config.backoff_max)
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
            out.append(SubscriptionEnded(self.id, reason, None, now))
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
                out.append(SubscriptionEnded(self.id, "expired", None, now))
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


def next_hop_destination(request: Request, default_transport: str = "UDP") -> Destination | None:
    """Where ``request`` goes without DNS: its first Route or Request-URI, if numeric."""
    routes = request.routes
    uri = routes[0].uri if routes else request.request_uri
    if not isinstance(uri, SipUri):
        return None
    return direct_destination(uri, default_transport)


class SubscriberPool:
    """Many :class:`Subscriber` objects behind one transaction-user interface.

    NOTIFYs and responses are routed by Call-ID (a dict look-up), timers by
    one heap, so a watcher of hundreds of nodes costs one small object each.
    """

    def __init__(self) -> None:
        self.subscribers: set[Subscriber] = set()
        self._by_call_id: dict[str, Subscriber] = {}
        self._call_ids: dict[Subscriber, str] = {}  # the Call-ID each is indexed by
        self._timers: TimerHeap[Subscriber] = TimerHeap()

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
        self._timers.cancel(subscriber)
        call_id = self._call_ids.pop(subscriber, "")
        if self._by_call_id.get(call_id) is subscriber:
            del self._by_call_id[call_id]

    def _after(self, sub: Subscriber, out: list[SubscriberOutput]) -> list[SubscriberOutput]:
        if sub not in self.subscribers:
            return out
        old_call_id = self._call_ids.get(sub, "")
        if old_call_id != sub.call_id:
            if self._by_call_id.get(old_call_id) is sub:
                del self._by_call_id[old_call_id]
            if sub.call_id:
                self._by_call_id[sub.call_id] = sub
        self._call_ids[sub] = sub.call_id
        self._timers.set(sub, sub.next_timer())
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
        return self._timers.next_time()

    def handle_timer(self, now: float) -> list[SubscriberOutput]:
        out: list[SubscriberOutput] = []
        while (due := self._timers.pop(now)) is not None:
            _, sub = due
            out.extend(self._after(sub, sub.handle_timer(now)))
        return out
