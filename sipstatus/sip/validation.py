"""Checks that run just above the parser (RFC 3261 sections 8.1.3.3 and 8.2).

``parse_message`` only answers "is this a SIP message?".  Whether a UAS can
act on a request (method, mandatory headers, URI scheme, extensions, body
type) or a UAC should look at a response depends on the element, so those
checks live here, each raising :class:`SipError` with the status to answer.
"""

from __future__ import annotations

from collections.abc import Iterable

from .errors import SipError, bad_request
from .message import KNOWN_METHODS, Request, Response
from .uri import SipUri

# RFC 3261 section 8.1.1: every request carries these (Max-Forwards too, but
# RFC 2543 peers omit it and a UAS loses nothing by tolerating that, RFC
# 4475 section 3.4.1).
MANDATORY_HEADERS = ("To", "From", "CSeq", "Call-ID", "Via")
# Section 7.3.1: fields that are not lists must appear at most once.
SINGLE_VALUED = ("To", "From", "CSeq", "Call-ID", "Max-Forwards", "Content-Type", "Expires")

# What the sipstatus UAS implements (agent and watcher alike).
SIPSTATUS_METHODS = frozenset({"SUBSCRIBE", "NOTIFY", "PUBLISH", "OPTIONS"})


def _check_structure(message: Request | Response) -> None:
    for name in MANDATORY_HEADERS:
        if message.header(name) is None:
            raise bad_request(f"missing {name} header")
    for name in SINGLE_VALUED:
        if len(message.header_all(name)) > 1:
            raise bad_request(f"more than one {name} header")


def check_request(
    request: Request,
    *,
    methods: Iterable[str] = SIPSTATUS_METHODS,
    schemes: Iterable[str] = ("sip", "sips"),
    supported: Iterable[str] = (),
    accept: Iterable[str] | None = None,
) -> None:
    """Raise :class:`SipError` unless a UAS can act on ``request``.

    The order follows RFC 3261 section 8.2, after making sure the request
    is one (mandatory and single-valued headers, 400):

    - 8.2.1 method: a method the stack knows but the UAS does not serve is
      405, one it does not know at all is 501; both carry ``Allow``;
    - CSeq method equals the request method (400, RFC 4475 3.1.2.17);
    - 8.2.2.1 Request-URI scheme not in ``schemes``: 416;
    - 8.2.2.3 Require tags not in ``supported``: 420 with ``Unsupported``
      (never for ACK or CANCEL);
    - 8.2.3 body whose Content-Type is not in ``accept`` (when given):
      415 with ``Accept``.

    An ACK is never answered (section 17.2.1): a TU drops an ACK that
    fails these checks instead of responding.
    """
    _check_structure(request)
    allowed = sorted(set(methods))
    if request.method not in allowed:
        status = 405 if request.method in KNOWN_METHODS else 501
        raise SipError(status, f"method {request.method} not supported",
                       [("Allow", ", ".join(allowed))])
    cseq = request.cseq
    assert cseq is not None  # _check_structure
    if cseq.method != request.method:
        raise bad_request("CSeq method does not match the request method")
    scheme = _scheme(request)
    if scheme not in {s.lower() for s in schemes}:
        raise SipError(416, f"URI scheme {scheme!r} not supported")
    if request.method not in ("ACK", "CANCEL"):
        unsupported = [tag for tag in request.require if tag not in set(supported)]
        if unsupported:
            raise SipError(420, "unsupported extension required",
                           [("Unsupported", ", ".join(unsupported))])
    if accept is not None and request.body:
        types = [t.lower() for t in accept]
        content_type = request.content_type
        if content_type not in types:
            raise SipError(415, f"media type {content_type!r} not supported",
                           [("Accept", ", ".join(types))])


def _scheme(request: Request) -> str:
    uri = request.request_uri
    return uri.scheme if isinstance(uri, SipUri) else uri.scheme.lower()


def check_max_forwards(request: Request) -> None:
    """A forwarding element's hop check: Max-Forwards 0 is 483 (section 16.3).

    A UAS does not apply it: it processes a request with Max-Forwards 0
    normally (RFC 4475 section 3.3.11).
    """
    if request.max_forwards == 0:
        raise SipError(483, "Max-Forwards exhausted")


def validate_response(response: Response) -> None:
    """Raise :class:`SipError` if a UAC must discard ``response``.

    Section 8.1.3.3: a response with more than one Via value was misrouted
    (RFC 4475 3.3.10's broadcast Via is one); mandatory headers must be
    present and single-valued ones single.  The status is meaningless for a
    response (nobody is answered): the caller drops the message.
    """
    _check_structure(response)
    if len(response.vias) != 1:
        raise bad_request("response with more than one Via value")
