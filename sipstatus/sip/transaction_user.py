"""What the transaction users have in common (RFC 3261 section 5), sans-I/O.

The notifier, the subscriber (and its pool), the publisher and the
compositor are transaction users: they are fed requests
(``handle_request``), the final responses to the requests they sent
(``handle_response``; a transaction timeout arrives as a 408 and a transport
failure as a 503, RFC 3261 sections 8.1.3.1 and 8.1.2) and the time
(``handle_timer``, when ``next_timer()`` says); they return
:class:`SendRequest` / :class:`SendResponse` outputs, which go through the
non-INVITE transaction layer, and events for the application.  They never
read a clock or touch a socket.

This module holds their vocabulary (outputs, hooks, the identity their
events carry), the defaults of the load-status package they share (spec
section 8) and the rules written once for all of them: which event package
a request is for (489), how long a subscription or publication is granted
(423), and the retry of a request answered 401, 407 or 423.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from .dialog import Dialog
from .errors import SipError
from .headers import EventHeader, parse_name_addr
from .message import Request, Response
from .transaction import T1, Destination

# -- defaults (the load-status package, spec section 8) ------------------------------

DEFAULT_EXPIRES = 600  # spec 4.4, 5.3: without Expires
MIN_EXPIRES = 60  # spec 4.4, 5.3: below this, 423 with Min-Expires
MAX_EXPIRES = 3600  # spec 4.4, 5.3: never granted longer
MAX_FORWARDS = "70"
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


# -- outputs --------------------------------------------------------------------------


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


@dataclass(frozen=True, slots=True)
class ClientId:
    """Which subscriber or publisher an event is about, as values: the
    application's ``key`` for it, the ``target`` resource's URI and the
    event ``package``.  (The object itself stays with the application.)"""

    key: object
    target: str
    package: str


# -- hooks ----------------------------------------------------------------------------

#: ``authorize(request, source, now)`` returns None to accept, or the SipError
#: to answer with: 403, or 401/407 whose headers carry the challenge.
Authorizer = Callable[[Request, Destination, float], SipError | None]
#: ``authorize(request, challenge)`` turns a request answered 401/407 into the
#: retry with credentials, or None to give up (``DigestClient.authorize``).
ClientAuthorizer = Callable[[Request, Response], Request | None]
#: ``produce(now)`` returns a freshly produced body (a new seq each call).
Producer = Callable[[float], bytes | None]


# -- rules of every transaction user -------------------------------------------------


def tag_of(value: str | None) -> str | None:
    """The tag of a From or To value."""
    return None if value is None else parse_name_addr(value).tag


def in_dialog_request(dialog: Dialog, method: str, headers: list[tuple[str, str]],
                      body: bytes = b"", contact: str | None = None) -> Request:
    """An in-dialog request without Via: the sender adds the Via of the
    transport it picks (resolution may change it, RFC 3263)."""
    request = dialog.create_request(method, via="SIP/2.0/UDP invalid", headers=headers,
                                    body=body, contact=contact)
    request.remove_header("Via")
    return request


def format_rate(value: float) -> str:
    """A rate as Event and Subscription-State carry it: at most three
    decimals, no trailing zeros (spec 4.7.1)."""
    return f"{value:.3f}".rstrip("0").rstrip(".")


def event_for(request: Request, package: str, other_packages: Iterable[str]) -> EventHeader:
    """The Event of a SUBSCRIBE or PUBLISH for ``package``; 489 naming every
    package served (``Allow-Events``, RFC 6665 section 8.3.2) otherwise."""
    event = request.event
    if event is None or event.package != package:
        packages = ", ".join([package, *other_packages])
        what = f"{request.method} without Event" if event is None else \
            f"event package {event.package!r} not supported"
        raise SipError(489, what, [("Allow-Events", packages)])
    return event


def granted_expires(request: Request, default: int, minimum: int, maximum: int) -> int:
    """How long a SUBSCRIBE or PUBLISH is granted (spec 4.4, 5.3): ``default``
    without Expires, 423 with Min-Expires below ``minimum`` (0 excepted: an
    end), never more than ``maximum``."""
    expires = request.expires
    if expires is None:
        expires = default
    elif 0 < expires < minimum:
        raise SipError(423, "Interval Too Brief", [("Min-Expires", str(minimum))])
    return min(expires, maximum)


def handles(request: Request, method: str, other_packages: Iterable[str]) -> bool:
    """Whether ``request`` is for a user serving ``method``: that method, and
    no Event naming a package another user of the endpoint serves."""
    if request.method != method:
        return False
    event = request.event
    return event is None or event.package not in other_packages


def retry_after_seconds(response: Response) -> int | None:
    """The seconds of a response's Retry-After; None without one, or when it
    does not parse (it is then ignored)."""
    try:
        retry_after = response.retry_after
    except SipError:
        return None
    return None if retry_after is None else retry_after.seconds


def doubling(failures: int, first: float, last: float) -> float:
    """A wait after ``failures`` failures in a row (1, 2, ...): ``first``,
    doubling with each further one, at most ``last``."""
    return min(last, first * 2 ** min(failures - 1, 30))


def retry_request(request: Request, response: Response, authorize: ClientAuthorizer | None,
                  asked: int) -> Request | None:
    """``request`` again after ``response``, or None to give up.

    A 401/407 is retried with credentials when ``authorize`` gives them
    (RFC 3261 section 22.2); a 423 with the Min-Expires asked for when it
    is longer than ``asked`` (RFC 6665 section 4.1.2.1, RFC 3903 section
    4.2), with CSeq + 1.  The retry has no Via: the sender adds its own.
    """
    if response.status in (401, 407) and authorize is not None:
        retry = authorize(request, response)
        if retry is None:
            return None
    elif response.status == 423:
        try:
            minimum = response.min_expires
        except SipError:
            return None
        if minimum is None or minimum <= asked:
            return None
        retry = Request(request.method, request.uri, list(request.headers), request.body)
        retry.set_header("Expires", str(minimum))
        cseq = retry.cseq
        assert cseq is not None
        retry.set_header("CSeq", f"{cseq.number + 1} {request.method}")
    else:
        return None
    retry.remove_header("Via")
    return retry
