"""The publisher of an event state (the EPA of RFC 3903), sans-I/O.

:class:`Publisher` keeps one event state published at one resource: an
initial PUBLISH with the body, refreshes with SIP-If-Match and no body before
expiry, modifications with SIP-If-Match and the new body, removal with
Expires: 0.  A 412 means the compositor lost our entity tag: start over with
an initial PUBLISH.  One PUBLISH at a time (RFC 3903 section 4.1); bodies
given meanwhile coalesce, the latest wins.  The rules of the load-status
package (spec/load-status.md sections 5 and 8.7) are the defaults.

A transaction user (see :mod:`sipstatus.sip.transaction_user`): responses
and the time in; SendRequest and events out.  The events name the publisher
by value (:class:`ClientId`).
"""

from __future__ import annotations

import math
import random as _random
from collections.abc import Callable
from dataclasses import dataclass

from .errors import SipError
from .identifiers import IdGenerator
from .message import Request, Response
from .transaction import Destination
from .transaction_user import (
    DEFAULT_EXPIRES,
    MAX_FORWARDS,
    ClientAuthorizer,
    ClientId,
    Producer,
    SendRequest,
    SendResponse,
    doubling,
    refresh_delay,
    retry_after_seconds,
    retry_request,
)

# Spec 8.7: PUBLISHes carrying bodies start at least C apart (default 0.2 s),
# and any two at least 100 ms apart (8.1).
DEFAULT_CEILING = 0.2
ABSOLUTE_INTERVAL = 0.1


@dataclass(frozen=True, slots=True)
class Published:
    """The compositor holds our state under ``etag`` for ``expires`` s."""

    publisher: ClientId
    etag: str
    expires: int


@dataclass(frozen=True, slots=True)
class PublicationFailed:
    """A PUBLISH failed (log ``status`` and ``reason``: a 400's phrase names the
    member and rule, spec 5.7); the next try is at ``retry_at``."""

    publisher: ClientId
    status: int
    reason: str
    retry_at: float | None
    removing: bool = False  # the publisher was removing its state


@dataclass(frozen=True, slots=True)
class Unpublished:
    """Our state is removed (or was never there: `existed` False)."""

    publisher: ClientId
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

    @property
    def id(self) -> ClientId:
        """This publisher as its events name it."""
        return ClientId(self.key, self.target, self.package)

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
            out.append(Unpublished(self.id, existed=False))
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
                out.append(Unpublished(self.id))
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
            out.append(Unpublished(self.id))
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
        out.append(Published(self.id, etag, expires))

    def _retry(self, request: Request, response: Response, out: list[PublisherOutput]) -> bool:
        """401/407 with credentials, 423 with Min-Expires: the same PUBLISH again."""
        retry = retry_request(request, response, self.authorize, self.expires)
        if retry is None:
            return False
        if response.status == 423:
            self.expires = retry.expires  # the compositor's Min-Expires (spec 5.3)
        cseq = retry.cseq
        assert cseq is not None
        self.cseq = cseq.number
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
            out.append(PublicationFailed(self.id, status, response.reason or "", None,
                                         self.removing))
            out.append(Unpublished(self.id))
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
            wait = doubling(self.failures, base, cap)
            wait *= 1 + JITTER * (1 - self.random())
            retry_after = retry_after_seconds(response)
            if retry_after is not None:
                # Spec 5.7: the longer of Retry-After and the doubling, so a
                # compositor that always says "Retry-After: 5" still sees
                # the waits grow (5, 10, 20 ... 60 s).
                wait = max(wait, float(retry_after))
        self.retry_at = now + wait
        out.append(PublicationFailed(self.id, status, response.reason or "", self.retry_at,
                                     self.removing))

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
