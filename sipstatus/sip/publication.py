"""Event state publication (RFC 3903), sans-I/O.

- :class:`Publisher` (the EPA) keeps one event state published at one
  resource: an initial PUBLISH with the body, refreshes with SIP-If-Match and
  no body before expiry, modifications with SIP-If-Match and the new body,
  removal with Expires: 0.  A 412 means the compositor lost our entity tag:
  start over with an initial PUBLISH.  One PUBLISH at a time (RFC 3903
  section 4.1); bodies given meanwhile coalesce, the latest wins.
- :class:`Compositor` (the ESC) accepts PUBLISH for one package, issues
  entity tags, expires publications on its timer and hands bodies to the
  application.  Which node a body speaks for is the application's call
  (the ``classify`` hook), so a restarted agent's initial PUBLISH replaces
  its previous publication.

Both are transaction users with the interface of
:mod:`sipstatus.sip.subscription` (``handle_request``, ``handle_response``,
``next_timer``, ``handle_timer``) and the same outputs.
"""

from __future__ import annotations

import heapq
import itertools
import math
import os
import random as _random
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from .errors import SipError, bad_request
from .identifiers import IdGenerator
from .message import Request, Response, error_response, make_response
from .subscription import (
    DEFAULT_EXPIRES,
    MAX_EXPIRES,
    MAX_FORWARDS,
    MIN_EXPIRES,
    Authorizer,
    ClientAuthorizer,
    Producer,
    SendRequest,
    SendResponse,
    refresh_delay,
)
from .transaction import Destination

# Spec 8.7: PUBLISHes carrying bodies start at least C apart (default 0.2 s),
# and any two at least 100 ms apart (8.1).
DEFAULT_CEILING = 0.2
ABSOLUTE_INTERVAL = 0.1
# Entity tags: 64 random bits are unguessable enough for a tag that is only
# valid together with the publication's Request-URI and lifetime.
ETAG_OCTETS = 8


# -- publisher -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Published:
    """The compositor holds our state under ``etag`` for ``expires`` s."""

    publisher: Publisher
    etag: str
    expires: int


@dataclass(frozen=True, slots=True)
class PublicationFailed:
    """A PUBLISH failed (log ``status`` and ``reason``: a 400's phrase names the
    member and rule, spec 5.7); the next try is at ``retry_at``."""

    publisher: Publisher
    status: int
    reason: str
    retry_at: float | None


@dataclass(frozen=True, slots=True)
class Unpublished:
    """Our state is removed (or was never there: `existed` False)."""

    publisher: Publisher
    existed: bool = True


PublisherEvent = Published | PublicationFailed | Unpublished
PublisherOutput = SendRequest | SendResponse | PublisherEvent

# Publisher request kinds (spec 5.2).
INITIAL, MODIFY, REFRESH, REMOVE = "initial", "modify", "refresh", "remove"
# Spec 5.7: waits after failures, doubling while they repeat.
SERVER_ERROR_WAIT = (5.0, 60.0)  # 5xx (Retry-After wins), no response without heartbeat
CLIENT_ERROR_WAIT = (60.0, 600.0)  # 400, 403, 404, 415, 489, refused credentials
# Those waits are stretched by up to a fifth at random, never shortened, so
# that agents that failed together do not retry together.
JITTER = 0.2


class Publisher:
    """Publishes one event state at ``target`` (RFC 3903 section 4, spec 5).

    ``destination``: where PUBLISH goes (None: resolve ``target`` per RFC
    3263).  ``produce(now)`` makes a fresh body for every PUBLISH that
    carries one; with it, ``heartbeat`` H sends a modification whenever H
    passes without a body (spec 5.2.2), and no bodiless refresh is needed.
    Without it the body given to :meth:`publish` is sent, and refreshes keep
    the publication alive.  ``authorize`` answers 401/407
    (``DigestClient.authorize``).  PUBLISH transactions start at least
    ``min_interval`` (the ceiling C) apart when they carry a body, 100 ms
    apart otherwise (spec 8.1, 8.7), one outstanding at a time.
    """

    __slots__ = (
        "target", "package", "content_type", "local_uri", "destination", "authorize",
        "produce", "heartbeat", "expires", "ceiling", "call_id", "local_tag", "cseq", "etag",
        "expires_at", "body", "dirty", "removing", "pending", "pending_kind", "queued",
        "last_start", "last_body", "refresh_at", "retry_at", "failures", "key", "random",
        "granted", "keep_alive",
    )

    def __init__(
        self,
        target: str,
        package: str,
        content_type: str,
        local_uri: str,
        *,
        destination: Destination | None = None,
        authorize: ClientAuthorizer | None = None,
        produce: Producer | None = None,
        heartbeat: float | None = None,
        expires: int = DEFAULT_EXPIRES,
        min_interval: float = DEFAULT_CEILING,
        ids: IdGenerator | None = None,
        key: object = None,
        random: Callable[[], float] = _random.random,
    ) -> None:
        if heartbeat is not None and produce is None:
            raise ValueError("a heartbeat needs a producer of fresh bodies")
        ids = ids or IdGenerator()
        self.target = target
        self.package = package
        self.content_type = content_type
        self.local_uri = local_uri
        self.destination = destination
        self.authorize = authorize
        self.produce = produce
        self.heartbeat = heartbeat
        self.expires = expires
        self.ceiling = max(min_interval, ABSOLUTE_INTERVAL)  # C of spec 8.7
        self.key = key
        self.random = random  # the jitter of the waits after failures
        # Spec 5.1: one Call-ID and From-tag for the publication, CSeq + 1 each.
        self.call_id = ids.call_id()
        self.local_tag = ids.tag()
        self.cseq = 0
        self.etag: str | None = None
        self.expires_at: float | None = None
        self.body: bytes | None = None
        self.dirty = False  # a body is due (a change, or starting over)
        self.removing = False
        self.pending: Request | None = None  # awaiting its final response
        self.pending_kind: str | None = None
        self.queued: Request | None = None  # a retry waiting for the 100 ms limit
        self.last_start: float | None = None  # start of the last PUBLISH transaction
        self.last_body: float | None = None  # start of the last one with a body
        self.refresh_at: float | None = None
        self.retry_at: float | None = None
        self.failures = 0
        self.granted: int | None = None  # the Expires of the last 200
        # Spec 5.7: waiting after a refused body, the publication is kept
        # alive with bodiless refreshes (nothing is sent during a 5xx wait).
        self.keep_alive = False

    def __repr__(self) -> str:
        return f"<Publisher {self.target} etag={self.etag}>"

    # -- the application's side -----------------------------------------------------------

    def publish(self, body: bytes | None, now: float) -> list[PublisherOutput]:
        """A significant change: publish (``body``, or a produced one) as soon
        as the ceiling allows; an initial PUBLISH if we hold no entity tag."""
        if body is not None:
            self.body = body
        self.dirty = True
        self.removing = False
        out: list[PublisherOutput] = []
        self._service(now, out)
        return out

    def remove(self, now: float) -> list[PublisherOutput]:
        """Remove our state (Expires: 0, spec 5.2.4); nothing more is published."""
        self.removing = True
        self.dirty = False
        self.retry_at = self.refresh_at = None
        out: list[PublisherOutput] = []
        if self.etag is None and self.pending is None:
            out.append(Unpublished(self, existed=False))
            return out
        self._service(now, out)
        return out

    # -- sending -------------------------------------------------------------------------------

    def _fresh_body(self, now: float) -> bytes | None:
        if self.produce is not None:
            body = self.produce(now)
            if body is not None:
                self.body = body
        return self.body

    def _request(self, kind: str, now: float) -> Request:
        self.cseq += 1
        expires = 0 if kind == REMOVE else self.expires
        headers = [
            ("Max-Forwards", MAX_FORWARDS),
            ("From", f"<{self.local_uri}>;tag={self.local_tag}"), ("To", f"<{self.target}>"),
            ("Call-ID", self.call_id), ("CSeq", f"{self.cseq} PUBLISH"),
            ("Event", self.package), ("Expires", str(expires)),
        ]
        body = b""
        if kind != INITIAL:
            assert self.etag is not None
            headers.append(("SIP-If-Match", self.etag))
        if kind in (INITIAL, MODIFY):
            body = self._fresh_body(now) or b""
            headers.append(("Content-Type", self.content_type))
            self.dirty = False
        return Request("PUBLISH", self.target, headers, body)

    def _start(self, request: Request, kind: str, now: float,
               out: list[PublisherOutput]) -> None:
        self.pending, self.pending_kind = request, kind
        self.last_start = now
        if request.body:
            self.last_body = now
        self.refresh_at = None
        out.append(SendRequest(request, self.destination))

    def _earliest(self, with_body: bool) -> float:
        if self.last_start is None:
            return -math.inf
        return self.last_start + (self.ceiling if with_body else ABSOLUTE_INTERVAL)

    def _heartbeat_due(self) -> float | None:
        if self.heartbeat is None or self.removing:
            return None
        if self.last_body is None:
            return None if self.body is None and not self.dirty else -math.inf
        return self.last_body + self.heartbeat

    def _service(self, now: float, out: list[PublisherOutput]) -> None:
        """Send what is due now, if nothing is in flight."""
        if self.pending is not None:
            return
        if self.queued is not None:
            if now >= self._earliest(False):
                request, self.queued = self.queued, None
                self._start(request, self._kind_of(request), now, out)
            return
        if self.expires_at is not None and now >= self.expires_at:
            # Our state is gone at the compositor: the tag is worthless.
            self.etag = self.expires_at = self.refresh_at = None
            self.dirty = self.dirty or (self.body is not None or self.produce is not None)
        if self.removing:
            if self.etag is not None and now >= self._earliest(False):
                self._start(self._request(REMOVE, now), REMOVE, now, out)
            return
        if self.retry_at is not None:
            if now < self.retry_at:
                if self.keep_alive and self.refresh_at is not None and now >= self.refresh_at \
                        and self.etag is not None and now >= self._earliest(False):
                    self._start(self._request(REFRESH, now), REFRESH, now, out)
                return
            self.retry_at = None
            self.keep_alive = False
        heartbeat = self._heartbeat_due()
        if heartbeat is not None and now >= heartbeat:
            self.dirty = True
        if self.dirty and (self.body is not None or self.produce is not None):
            if now >= self._earliest(True):
                kind = INITIAL if self.etag is None else MODIFY
                self._start(self._request(kind, now), kind, now, out)
            return
        if self.refresh_at is not None and now >= self.refresh_at and self.etag is not None \
                and now >= self._earliest(False):
            self._start(self._request(REFRESH, now), REFRESH, now, out)

    # -- responses ---------------------------------------------------------------------------

    def handle_request(self, request: Request, source: Destination,
                       now: float) -> list[PublisherOutput] | None:
        return None  # a publisher receives no requests

    def handle_response(self, response: Response, request: Request,
                        now: float) -> list[PublisherOutput]:
        if response.status < 200 or request is not self.pending:
            return []
        kind = self.pending_kind
        self.pending = self.pending_kind = None
        out: list[PublisherOutput] = []
        status = response.status
        if 200 <= status < 300:
            self._succeeded(response, kind, now, out)
        elif status == 412:
            # RFC 3903 section 4.4 and spec 5.4: discard the tag; the next
            # PUBLISH is an initial one with a fresh body.
            self.etag = self.expires_at = self.refresh_at = None
            if kind == REMOVE:
                out.append(Unpublished(self))
            else:
                self.dirty = True
        elif not self._retry(request, response, out):
            self._failed(response, kind, now, out)
        self._service(now, out)
        return out

    def _succeeded(self, response: Response, kind: str | None, now: float,
                   out: list[PublisherOutput]) -> None:
        waiting = self.keep_alive and self.retry_at is not None
        if not waiting:
            self.failures = 0  # a refresh during a wait leaves its doubling alone
        if kind == REMOVE:
            self.etag = self.expires_at = self.refresh_at = None
            out.append(Unpublished(self))
            return
        try:
            etag, expires = response.sip_etag, response.expires
        except SipError:
            etag, expires = None, None
        if expires is None:
            expires = self.expires
        if etag is None:
            # RFC 3903 section 11.3.1 makes SIP-ETag mandatory in a 2xx;
            # without it the state cannot be refreshed: publish anew later.
            self.etag = self.expires_at = None
            self.refresh_at = now + refresh_delay(expires)
            return
        self.etag = etag
        self.expires_at = now + expires
        self.granted = expires
        if self.heartbeat is None or waiting:
            self.refresh_at = now + refresh_delay(expires)
        out.append(Published(self, etag, expires))

    def _retry(self, request: Request, response: Response, out: list[PublisherOutput]) -> bool:
        """401/407 with credentials, 423 with Min-Expires: the same PUBLISH again."""
        if response.status in (401, 407) and self.authorize is not None:
            retry = self.authorize(request, response)
            if retry is None:
                return False
        elif response.status == 423:
            try:
                minimum = response.min_expires
            except SipError:
                return False
            if minimum is None or minimum <= self.expires:
                return False
            self.expires = minimum  # spec 5.3
            retry = Request(request.method, request.uri, list(request.headers), request.body)
            retry.set_header("Expires", str(minimum))
            retry.set_header("CSeq", f"{self.cseq + 1} PUBLISH")
        else:
            return False
        cseq = retry.cseq
        assert cseq is not None
        self.cseq = cseq.number
        retry.remove_header("Via")
        self.queued = retry  # sent by _service, 100 ms after the last start
        return True

    @staticmethod
    def _kind_of(request: Request) -> str:
        if request.expires == 0:
            return REMOVE
        if request.header("SIP-If-Match") is None:
            return INITIAL
        return MODIFY if request.body else REFRESH

    def _failed(self, response: Response, kind: str | None, now: float,
                out: list[PublisherOutput]) -> None:
        status = response.status
        if kind == REMOVE:
            self.etag = self.expires_at = None
            out.append(PublicationFailed(self, status, response.reason or "", None))
            out.append(Unpublished(self))
            return
        if kind in (INITIAL, MODIFY):
            self.dirty = True  # the newest body goes next time
        elif kind == REFRESH:
            self.refresh_at = now
        self.failures += 1
        # Spec 5.7: a refused body (4xx) leaves the publication as it was
        # (RFC 3903 section 6): keep it alive while waiting, on the schedule
        # of its last grant.  A failed refresh, or a 5xx, ends that.
        self.keep_alive = kind == MODIFY and 400 <= status < 500 and status != 408 \
            and self.etag is not None and self.granted is not None
        if self.keep_alive:
            assert self.expires_at is not None and self.granted is not None
            self.refresh_at = self.expires_at - self.granted + refresh_delay(self.granted)
        if status == 408 and self.heartbeat is not None:
            # Spec 5.7: no response: the newest body at the next heartbeat.
            self.dirty = self.dirty or kind == REFRESH
            wait = max(0.0, (self._heartbeat_due() or now) - now)
        else:
            base, cap = CLIENT_ERROR_WAIT if 400 <= status < 500 and status != 408 \
                else SERVER_ERROR_WAIT
            wait = min(cap, base * 2 ** min(self.failures - 1, 30))
            wait *= 1 + JITTER * (1 - self.random())
            try:
                retry_after = response.retry_after
            except SipError:
                retry_after = None
            if retry_after is not None:
                # Spec 5.7: the longer of Retry-After and the doubling, so a
                # compositor that always says "Retry-After: 5" still sees
                # the waits grow (5, 10, 20 ... 60 s).
                wait = max(wait, float(retry_after.seconds))
        self.retry_at = now + wait
        out.append(PublicationFailed(self, status, response.reason or "", self.retry_at))

    # -- timers --------------------------------------------------------------------------------

    def next_timer(self) -> float | None:
        if self.pending is not None:
            return None  # the transaction layer reports the outcome
        if self.queued is not None:
            return self._earliest(False)
        if self.removing:
            return self._earliest(False) if self.etag is not None else None
        times: list[float] = []
        if self.retry_at is not None:
            times.append(self.retry_at)
            if self.keep_alive and self.refresh_at is not None and self.etag is not None:
                times.append(max(self.refresh_at, self._earliest(False)))
        else:
            if self.dirty and (self.body is not None or self.produce is not None):
                times.append(self._earliest(True))
            heartbeat = self._heartbeat_due()
            if heartbeat is not None:
                times.append(max(heartbeat, self._earliest(True)))
            if self.refresh_at is not None:
                times.append(max(self.refresh_at, self._earliest(False)))
        if self.expires_at is not None:
            times.append(self.expires_at)
        return min(times) if times else None

    def handle_timer(self, now: float) -> list[PublisherOutput]:
        out: list[PublisherOutput] = []
        self._service(now, out)
        if self.pending is None and self.refresh_at is not None and now >= self.refresh_at \
                and self.etag is None:
            self.refresh_at = None  # nothing to refresh (no tag): forget it
        if self.pending is None and self.expires_at is not None and now >= self.expires_at:
            self.expires_at = None
        return out


# -- compositor ---------------------------------------------------------------------------


@dataclass(slots=True, eq=False)
class Publication:
    """One publication held by a :class:`Compositor`."""

    key: str
    etag: str
    body: bytes
    value: object
    source: Destination
    expires_at: float


@dataclass(frozen=True, slots=True)
class PublicationReceived:
    """A new state (initial or modify): ``value`` is what ``classify`` made of it."""

    key: str
    etag: str
    body: bytes
    value: object
    source: Destination
    expires: int


@dataclass(frozen=True, slots=True)
class PublicationRefreshed:
    key: str
    etag: str
    expires: int


@dataclass(frozen=True, slots=True)
class PublicationRemoved:
    """``reason``: ``removed`` (Expires: 0), ``expired`` or ``replaced``."""

    key: str
    etag: str
    reason: str


CompositorEvent = PublicationReceived | PublicationRefreshed | PublicationRemoved
CompositorOutput = SendResponse | CompositorEvent

#: ``classify(request, body) -> (key, value)``: which state the body speaks
#: for (the load-status node) and its decoded value; raise SipError (400
#: ``Invalid load-status body: member (rule)``) to refuse the body.
Classifier = Callable[[Request, bytes], tuple[str, object]]
#: ``admit(request, source, key, value, initial) -> SipError | None``: may this
#: publisher publish for ``key``, and (``initial``) may ``key`` join the pool?
#: Spec 5.5 steps 11 and 12: 403 if not.
Admitter = Callable[[Request, Destination, str, object, bool], SipError | None]


def _by_request_uri(request: Request, body: bytes) -> tuple[str, object]:
    return request.uri, body


class Compositor:
    """The event state compositor of one package (RFC 3903 section 6, spec 5.5).

    ``resources(uri)`` says whether a Request-URI is one of ours (else 404);
    ``authorize`` decides on every PUBLISH (401/403); ``classify`` decodes a
    body and names the state it is for (400); ``admit`` binds publishers to
    keys and keys to the pool (403).  One publication per key: an initial
    PUBLISH for a key that has one replaces it.
    """

    def __init__(
        self,
        package: str,
        content_type: str,
        *,
        other_packages: Iterable[str] = (),
        resources: Callable[[str], bool] | None = None,
        authorize: Authorizer | None = None,
        classify: Classifier = _by_request_uri,
        admit: Admitter | None = None,
        default_expires: int = DEFAULT_EXPIRES,
        min_expires: int = MIN_EXPIRES,
        max_expires: int = MAX_EXPIRES,
        max_publications: int = 10_000,
        busy_retry_after: int = 60,
        random: Callable[[int], bytes] = os.urandom,
        make_etag: Callable[[], str] | None = None,
    ) -> None:
        self.package = package.lower()
        self.resources = resources
        self.admit = admit
        self.content_type = content_type.lower()
        self.other_packages = [p.lower() for p in other_packages]
        self.authorize = authorize
        self.classify = classify
        self.default_expires = default_expires
        self.min_expires = min_expires
        self.max_expires = max_expires
        self.max_publications = max_publications
        self.busy_retry_after = busy_retry_after
        self.random = random
        self.make_etag = make_etag  # tags of the application's own (Kamailio's $sruid style)
        self.by_etag: dict[str, Publication] = {}
        self.by_key: dict[str, Publication] = {}
        self._heap: list[tuple[float, int, Publication]] = []
        self._seq = itertools.count()

    def handle_request(self, request: Request, source: Destination,
                       now: float) -> list[CompositorOutput] | None:
        if request.method != "PUBLISH":
            return None
        event = request.event
        if event is not None and event.package in self.other_packages:
            return None  # another compositor of the endpoint serves it
        out: list[CompositorOutput] = []
        try:
            self._publish(request, source, now, out)
        except SipError as error:
            out.insert(0, SendResponse(error_response(request, error)))
        return out

    def handle_response(self, response: Response, request: Request,
                        now: float) -> list[CompositorOutput]:
        return []  # a compositor sends no requests

    def _new_etag(self) -> str:
        while True:
            etag = self.make_etag() if self.make_etag else self.random(ETAG_OCTETS).hex()
            if etag not in self.by_etag:
                return etag

    def _publish(self, request: Request, source: Destination, now: float,
                 out: list[CompositorOutput]) -> None:
        # Spec 5.5: the order of checks (step 1, the stateless rate limit,
        # belongs before the transaction layer and is not here).
        if self.resources is not None and not self.resources(request.uri):
            raise SipError(404, "Not Found")
        event = request.event
        if event is None or event.package != self.package:
            packages = ", ".join([self.package, *self.other_packages])
            what = "PUBLISH without Event" if event is None else \
                f"event package {event.package!r} not supported"
            raise SipError(489, what, [("Allow-Events", packages)])
        if self.authorize is not None:
            refusal = self.authorize(request, source, now)
            if refusal is not None:
                raise refusal
        if len(request.header_all("SIP-If-Match")) > 1:
            raise bad_request("more than one SIP-If-Match")
        if_match = request.sip_if_match  # a list of tags is no token: 400
        publication: Publication | None = None
        if if_match is not None:
            publication = self.by_etag.get(if_match)
            if publication is None:
                raise SipError(412, "Conditional Request Failed")  # RFC 3903 6, step 3
        expires = request.expires
        if expires is None:
            expires = self.default_expires
        elif 0 < expires < self.min_expires:
            raise SipError(423, "Interval Too Brief", [("Min-Expires", str(self.min_expires))])
        expires = min(expires, self.max_expires)
        if request.body and request.content_type != self.content_type:
            raise SipError(415, "Unsupported Media Type", [("Accept", self.content_type)])
        if publication is None:
            self._initial(request, source, expires, now, out)
            return
        if expires == 0:
            self._drop(publication, "removed", out)
            out.insert(0, SendResponse(make_response(request, 200, headers=[("Expires", "0")])))
            return
        if request.body:
            key, value = self.classify(request, request.body)
            if key != publication.key:
                # Spec 5.5 step 10: an entity tag belongs to one key for life.
                raise SipError(400, f"Invalid {self.package} body: node (publication)")
            self._admit(request, source, key, value, initial=False)
            self._drop(publication, None, out)
            self._store(request, key, value, source, expires, now, out)
            return
        # A refresh: a new tag, the same state (RFC 3903 section 6, step 6).
        del self.by_etag[publication.etag]
        publication.etag = self._new_etag()
        self.by_etag[publication.etag] = publication
        self._expire_at(publication, now + expires)
        out.append(self._ok(request, publication.etag, expires))
        out.append(PublicationRefreshed(publication.key, publication.etag, expires))

    def _admit(self, request: Request, source: Destination, key: str, value: object,
               initial: bool) -> None:
        if self.admit is not None:
            refusal = self.admit(request, source, key, value, initial)
            if refusal is not None:
                raise refusal

    def _initial(self, request: Request, source: Destination, expires: int, now: float,
                 out: list[CompositorOutput]) -> None:
        if not request.body:
            raise bad_request("initial PUBLISH without a body")  # spec 5.5 step 8
        if expires == 0:
            raise bad_request("Expires: 0 without SIP-If-Match")
        key, value = self.classify(request, request.body)
        self._admit(request, source, key, value, initial=key not in self.by_key)
        previous = self.by_key.get(key)
        if previous is not None:
            self._drop(previous, "replaced", out)
        elif len(self.by_etag) >= self.max_publications:
            raise SipError(503, "too many publications",
                           [("Retry-After", str(self.busy_retry_after))])
        self._store(request, key, value, source, expires, now, out)

    def _store(self, request: Request, key: str, value: object, source: Destination,
               expires: int, now: float, out: list[CompositorOutput]) -> None:
        etag = self._new_etag()
        publication = Publication(key, etag, request.body, value, source, now + expires)
        other = self.by_key.get(key)
        if other is not None:
            self._drop(other, "replaced", out)
        self.by_etag[etag] = publication
        self.by_key[key] = publication
        self._expire_at(publication, now + expires)
        out.insert(0, self._ok(request, etag, expires))
        out.append(PublicationReceived(key, etag, request.body, value, source, expires))

    @staticmethod
    def _ok(request: Request, etag: str, expires: int) -> SendResponse:
        return SendResponse(make_response(request, 200, headers=[
            ("SIP-ETag", etag), ("Expires", str(expires))]))

    def _expire_at(self, publication: Publication, when: float) -> None:
        publication.expires_at = when
        heapq.heappush(self._heap, (when, next(self._seq), publication))

    def _drop(self, publication: Publication, reason: str | None,
              out: list[CompositorOutput]) -> None:
        if self.by_etag.get(publication.etag) is publication:
            del self.by_etag[publication.etag]
        if self.by_key.get(publication.key) is publication:
            del self.by_key[publication.key]
        publication.expires_at = -1.0  # its heap entries are stale now
        if reason is not None:
            out.append(PublicationRemoved(publication.key, publication.etag, reason))

    def remove(self, key: str) -> list[CompositorOutput]:
        """Forget the publication of ``key`` (the application drops a node)."""
        publication = self.by_key.get(key)
        out: list[CompositorOutput] = []
        if publication is not None:
            self._drop(publication, "removed", out)
        return out

    def next_timer(self) -> float | None:
        heap = self._heap
        while heap and heap[0][2].expires_at != heap[0][0]:
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    def handle_timer(self, now: float) -> list[CompositorOutput]:
        out: list[CompositorOutput] = []
        heap = self._heap
        while heap and heap[0][0] <= now:
            when, _, publication = heapq.heappop(heap)
            if publication.expires_at == when:
                self._drop(publication, "expired", out)
        return out
