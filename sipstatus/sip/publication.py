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
    SendRequest,
    SendResponse,
    refresh_delay,
)
from .transaction import Destination

# The least time between two PUBLISHes carrying bodies: the default rate
# ceiling of the package (2/s), as for NOTIFY.
DEFAULT_MIN_INTERVAL = 0.5
# load-status 5.7: after a 500 or 503 without Retry-After (and other server
# errors) wait 5 s, doubling up to 60 s while it repeats; after a refusal
# (400, 403, 404, 415, 489, credentials refused, ...) no sooner than 60 s,
# doubling up to 600 s. Waits are stretched by up to a fifth at random, never
# shortened, so that agents that failed together do not retry together.
SERVER_ERROR_RETRY = 5.0
SERVER_ERROR_RETRY_MAX = 60.0
REFUSED_RETRY = 60.0
REFUSED_RETRY_MAX = 600.0
JITTER = 0.2
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
    """A PUBLISH failed. ``retry_at``: when the publisher tries again; None
    after no response at all (Timer F): at the next ``publish()``, the
    heartbeat (load-status 5.7), or never for a failed removal."""

    publisher: Publisher
    status: int
    reason: str
    retry_at: float | None


@dataclass(frozen=True, slots=True)
class Unpublished:
    """Our state is removed (or was never there)."""

    publisher: Publisher


PublisherEvent = Published | PublicationFailed | Unpublished
PublisherOutput = SendRequest | SendResponse | PublisherEvent

# Publisher request kinds.
INITIAL, MODIFY, REFRESH, REMOVE = "initial", "modify", "refresh", "remove"


class Publisher:
    """Publishes one event state at ``target`` (RFC 3903 section 4).

    ``destination``: where PUBLISH goes (None: resolve ``target`` per RFC
    3263).  ``authorize`` answers 401/407 (``DigestClient.authorize``; it
    gives up after one refused try per challenge).
    """

    __slots__ = (
        "target", "package", "content_type", "local_uri", "destination", "authorize",
        "expires", "min_interval", "random", "backoff_base", "backoff_max", "refused_base",
        "refused_max", "call_id",
        "local_tag", "cseq", "etag", "expires_at", "body", "dirty", "removing", "pending",
        "pending_kind", "last_sent", "send_at", "refresh_at", "retry_at", "failures", "key",
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
        expires: int = DEFAULT_EXPIRES,
        min_interval: float = DEFAULT_MIN_INTERVAL,
        ids: IdGenerator | None = None,
        random: Callable[[], float] = _random.random,
        backoff_base: float = SERVER_ERROR_RETRY,
        backoff_max: float = SERVER_ERROR_RETRY_MAX,
        refused_base: float = REFUSED_RETRY,
        refused_max: float = REFUSED_RETRY_MAX,
        key: object = None,
    ) -> None:
        ids = ids or IdGenerator()
        self.target = target
        self.package = package
        self.content_type = content_type
        self.local_uri = local_uri
        self.destination = destination
        self.authorize = authorize
        self.expires = expires
        self.min_interval = min_interval
        self.random = random
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.refused_base = refused_base
        self.refused_max = refused_max
        self.key = key
        # One Call-ID and a rising CSeq for all our PUBLISHes, as for
        # REGISTER (RFC 3903 leaves it open; it eases reading traces).
        self.call_id = ids.call_id()
        self.local_tag = ids.tag()
        self.cseq = 0
        self.etag: str | None = None
        self.expires_at: float | None = None
        self.body: bytes | None = None
        self.dirty = False  # body not yet published
        self.removing = False
        self.pending: Request | None = None
        self.pending_kind: str | None = None
        self.last_sent: float | None = None
        self.send_at: float | None = None
        self.refresh_at: float | None = None
        self.retry_at: float | None = None
        self.failures = 0

    def __repr__(self) -> str:
        return f"<Publisher {self.target} etag={self.etag}>"

    # -- the application's side -----------------------------------------------------------

    def publish(self, body: bytes, now: float) -> list[PublisherOutput]:
        """Publish ``body`` (initial or modify), as soon as the ceiling allows."""
        self.body = body
        self.dirty = True
        self.removing = False
        out: list[PublisherOutput] = []
        self._service(now, out)
        return out

    def remove(self, now: float) -> list[PublisherOutput]:
        """Remove our state (Expires: 0); nothing more is published after."""
        self.removing = True
        self.dirty = False
        self.retry_at = self.send_at = self.refresh_at = None
        out: list[PublisherOutput] = []
        if self.etag is None and self.pending is None:
            out.append(Unpublished(self))
            return out
        self._service(now, out)
        return out

    # -- sending -------------------------------------------------------------------------------

    def _request(self, kind: str, now: float) -> SendRequest:
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
            assert self.body is not None
            body = self.body
            headers.append(("Content-Type", self.content_type))
            self.dirty = False
            self.last_sent = now
        request = Request("PUBLISH", self.target, headers, body)
        self.pending, self.pending_kind = request, kind
        self.send_at = self.refresh_at = None
        return SendRequest(request, self.destination)

    def _service(self, now: float, out: list[PublisherOutput]) -> None:
        """Send what is due now, if nothing is in flight."""
        if self.pending is not None:
            return
        if self.expires_at is not None and now >= self.expires_at:
            # Our state is gone at the compositor: the tag is worthless.
            self.etag = self.expires_at = self.refresh_at = None
            self.dirty = self.dirty or (self.body is not None and not self.removing)
        if self.removing:
            if self.etag is not None:
                out.append(self._request(REMOVE, now))
            return
        if self.retry_at is not None:
            return  # backing off
        if self.dirty and self.body is not None:
            earliest = -1.0 if self.last_sent is None else self.last_sent + self.min_interval
            if now >= earliest:
                out.append(self._request(INITIAL if self.etag is None else MODIFY, now))
            else:
                self.send_at = earliest
            return
        if self.refresh_at is not None and now >= self.refresh_at and self.etag is not None:
            out.append(self._request(REFRESH, now))

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
            # RFC 3903 section 4.4: the compositor does not know our tag.
            self.etag = self.expires_at = self.refresh_at = None
            if kind == REMOVE:
                out.append(Unpublished(self))
            elif self.body is not None:
                self.dirty = True
                self.last_sent = None  # starting over is not a rate question
        elif not self._retry(request, response, out):
            self._failed(response, kind, now, out)
        self._service(now, out)
        return out

    def _succeeded(self, response: Response, kind: str | None, now: float,
                   out: list[PublisherOutput]) -> None:
        self.failures = 0
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
            self.dirty = self.body is not None
            return
        self.etag = etag
        self.expires_at = now + expires
        self.refresh_at = now + refresh_delay(expires)
        out.append(Published(self, etag, expires))

    def _retry(self, request: Request, response: Response, out: list[PublisherOutput]) -> bool:
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
            self.expires = minimum
            retry = Request(request.method, request.uri, list(request.headers), request.body)
            retry.set_header("Expires", str(minimum))
            retry.set_header("CSeq", f"{self.cseq + 1} PUBLISH")
        else:
            return False
        cseq = retry.cseq
        assert cseq is not None
        self.cseq = cseq.number
        retry.remove_header("Via")
        self.pending, self.pending_kind = retry, self._kind_of(retry)
        out.append(SendRequest(retry, self.destination))
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
        if kind == REMOVE:
            self.etag = self.expires_at = None
            out.append(PublicationFailed(self, response.status, response.reason or "", None))
            out.append(Unpublished(self))
            return
        status = response.status
        if kind in (INITIAL, MODIFY):
            self.dirty = status != 408
            if status == 408:
                # No response (Timer F): the newest body goes with the next
                # publish(), the heartbeat (load-status 5.7), not at once.
                self.retry_at = None
                out.append(PublicationFailed(self, status, response.reason or "", None))
                return
        elif kind == REFRESH:
            self.refresh_at = now  # due again after the wait
        self.failures += 1
        try:
            retry_after = response.retry_after
        except SipError:
            retry_after = None
        if status >= 500 and retry_after is not None:
            wait = float(retry_after.seconds)
        else:
            base, cap = ((self.backoff_base, self.backoff_max) if 500 <= status < 600
                         else (self.refused_base, self.refused_max))
            wait = min(cap, base * 2 ** min(self.failures - 1, 30))
            wait *= 1 + JITTER * (1 - self.random())
        self.retry_at = now + wait
        out.append(PublicationFailed(self, status, response.reason or "", self.retry_at))

    # -- timers --------------------------------------------------------------------------------

    def next_timer(self) -> float | None:
        if self.pending is not None:
            return None  # the transaction layer reports the outcome
        times = [t for t in (self.send_at, self.refresh_at, self.retry_at) if t is not None]
        if self.retry_at is not None:
            times = [self.retry_at]
        return min(times) if times else None

    def handle_timer(self, now: float) -> list[PublisherOutput]:
        out: list[PublisherOutput] = []
        if self.retry_at is not None and now >= self.retry_at:
            self.retry_at = None
        if self.send_at is not None and now >= self.send_at:
            self.send_at = None
        self._service(now, out)
        if self.pending is None and self.refresh_at is not None and now >= self.refresh_at:
            self.refresh_at = None  # nothing to refresh (no tag): forget it
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
#: naming member and rule) to refuse the body.
Classifier = Callable[[Request, bytes], tuple[str, object]]


def _by_request_uri(request: Request, body: bytes) -> tuple[str, object]:
    return request.uri, body


class Compositor:
    """The event state compositor of one package (RFC 3903 section 6)."""

    def __init__(
        self,
        package: str,
        content_type: str,
        *,
        other_packages: Iterable[str] = (),
        authorize: Authorizer | None = None,
        classify: Classifier = _by_request_uri,
        default_expires: int = DEFAULT_EXPIRES,
        min_expires: int = MIN_EXPIRES,
        max_expires: int = MAX_EXPIRES,
        max_publications: int = 10_000,
        busy_retry_after: int = 30,
        random: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self.package = package.lower()
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
        self.by_etag: dict[str, Publication] = {}
        self.by_key: dict[str, Publication] = {}
        self._heap: list[tuple[float, int, Publication]] = []
        self._seq = itertools.count()

    def handle_request(self, request: Request, source: Destination,
                       now: float) -> list[CompositorOutput] | None:
        if request.method != "PUBLISH":
            return None
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
            etag = self.random(ETAG_OCTETS).hex()
            if etag not in self.by_etag:
                return etag

    def _publish(self, request: Request, source: Destination, now: float,
                 out: list[CompositorOutput]) -> None:
        # RFC 3903 section 6, steps in order.
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
        expires = request.expires
        if expires is None:
            expires = self.default_expires
        elif 0 < expires < self.min_expires:
            raise SipError(423, "publication too brief", [("Min-Expires", str(self.min_expires))])
        expires = min(expires, self.max_expires)
        if request.body and request.content_type != self.content_type:
            raise SipError(415, f"media type {request.content_type!r} not supported",
                           [("Accept", self.content_type)])
        if_match = request.sip_if_match
        if if_match is None:
            self._initial(request, source, expires, now, out)
            return
        publication = self.by_etag.get(if_match)
        if publication is None:
            raise SipError(412, "unknown entity tag")  # section 6, step 4
        if expires == 0:
            self._drop(publication, "removed", out)
            out.insert(0, SendResponse(make_response(request, 200, headers=[("Expires", "0")])))
            return
        if request.body:
            key, value = self.classify(request, request.body)
            self._drop(publication, None if key == publication.key else "replaced", out)
            self._store(request, key, value, source, expires, now, out)
            return
        # A refresh: a new tag, the same state (section 6, step 5).
        del self.by_etag[publication.etag]
        publication.etag = self._new_etag()
        self.by_etag[publication.etag] = publication
        self._expire_at(publication, now + expires)
        out.append(self._ok(request, publication.etag, expires))
        out.append(PublicationRefreshed(publication.key, publication.etag, expires))

    def _initial(self, request: Request, source: Destination, expires: int, now: float,
                 out: list[CompositorOutput]) -> None:
        if not request.body:
            raise bad_request("initial PUBLISH without a body")  # section 6, step 3
        if expires == 0:
            raise bad_request("Expires: 0 without SIP-If-Match")
        key, value = self.classify(request, request.body)
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
