"""The event state compositor of a package (the ESC of RFC 3903), sans-I/O.

:class:`Compositor` accepts PUBLISH for one package, issues entity tags,
expires publications on its timer and hands bodies to the application.
Which node a body speaks for is the application's call (the ``classify``
hook), so a restarted agent's initial PUBLISH replaces its previous
publication.  The rules of the load-status package (spec/load-status.md
section 5.5) are the defaults.

A transaction user (see :mod:`sipstatus.sip.transaction_user`): requests and
the time in; SendResponse and events out.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from .errors import SipError, bad_request
from .message import Request, Response, error_response, make_response
from .timers import TimerHeap
from .transaction import Destination
from .transaction_user import (
    DEFAULT_EXPIRES,
    MAX_EXPIRES,
    MIN_EXPIRES,
    Authorizer,
    SendResponse,
    event_for,
    granted_expires,
    handles,
)

# Entity tags: 64 random bits are unguessable enough for a tag that is only
# valid together with the publication's Request-URI and lifetime.
ETAG_OCTETS = 8


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
        self._timers: TimerHeap[Publication] = TimerHeap()  # expiry of each

    def handle_request(self, request: Request, source: Destination,
                       now: float) -> list[CompositorOutput] | None:
        if not handles(request, "PUBLISH", self.other_packages):
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
            etag = self.make_etag() if self.make_etag else self.random(ETAG_OCTETS).hex()
            if etag not in self.by_etag:
                return etag

    def _publish(self, request: Request, source: Destination, now: float,
                 out: list[CompositorOutput]) -> None:
        # Spec 5.5: the order of checks (step 1, the stateless rate limit,
        # belongs before the transaction layer and is not here).
        if self.resources is not None and not self.resources(request.uri):
            raise SipError(404, "Not Found")
        event_for(request, self.package, self.other_packages)
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
        expires = granted_expires(request, self.default_expires, self.min_expires,
                                  self.max_expires)
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
        self._timers.set(publication, when)

    def _drop(self, publication: Publication, reason: str | None,
              out: list[CompositorOutput]) -> None:
        if self.by_etag.get(publication.etag) is publication:
            del self.by_etag[publication.etag]
        if self.by_key.get(publication.key) is publication:
            del self.by_key[publication.key]
        self._timers.cancel(publication)
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
        return self._timers.next_time()

    def handle_timer(self, now: float) -> list[CompositorOutput]:
        out: list[CompositorOutput] = []
        while (due := self._timers.pop(now)) is not None:
            self._drop(due[1], "expired", out)
        return out
