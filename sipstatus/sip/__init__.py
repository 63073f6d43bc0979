"""A sans-I/O SIP core: bytes and a clock in, bytes and events out.

Nothing here opens a socket, sleeps or reads the wall clock: times are
floats passed in as ``now``.  Errors are one exception, :class:`SipError`,
whose ``status`` is the response code a server answers with.

Public API
----------
errors
    ``SipError(status, reason, headers=())`` -- the one exception.
message
    ``Request(method, uri, headers, body)``, ``Response(status, reason,
    headers, body)`` -- mutable message values; ``header()``,
    ``header_all()``, ``header_values()``, ``add_header()``,
    ``prepend_header()``, ``set_header()``, ``remove_header()``; typed
    properties (``call_id``, ``cseq``, ``from_addr``, ``to_addr``, ``vias``,
    ``top_via``, ``contacts``, ``routes``, ``record_routes``,
    ``max_forwards``, ``expires``, ``min_expires``, ``event``,
    ``subscription_state``, ``allow_events``, ``sip_etag``,
    ``sip_if_match``, ``retry_after``, ``content_type``...); ``to_bytes()``.
    ``parse_message(data)`` -- one datagram to a Request or Response.
    ``StreamFramer`` -- cuts a TCP/TLS stream into messages.
    ``make_response(request, status, ...)`` -- RFC 3261 section 8.2.6.
    ``error_response(request, error)`` -- the answer to a SipError.
    Limits: ``MAX_DATAGRAM_SIZE``, ``MAX_HEADER_BYTES``,
    ``MAX_HEADER_COUNT``, ``MAX_LINE_LENGTH``, ``MAX_STREAM_CONTENT_LENGTH``.
headers
    ``NameAddr``, ``Via``, ``CSeq``, ``EventHeader``, ``SubscriptionState``,
    ``RetryAfter`` values and their ``parse_*`` functions.
uri
    ``SipUri``, ``AbsoluteUri``, ``parse_uri``.
"""

from .errors import SipError
from .headers import (
    CSeq,
    EventHeader,
    NameAddr,
    RetryAfter,
    SubscriptionState,
    Via,
    parse_event,
    parse_name_addr,
    parse_subscription_state,
    parse_via,
)
from .message import (
    Message,
    Request,
    Response,
    StreamFramer,
    error_response,
    make_response,
    parse_message,
)
from .uri import AbsoluteUri, SipUri, parse_uri

__all__ = [
    "AbsoluteUri", "CSeq", "EventHeader", "Message", "NameAddr", "Request", "Response",
    "RetryAfter", "SipError", "SipUri", "StreamFramer", "SubscriptionState", "Via",
    "error_response", "make_response", "parse_event", "parse_message", "parse_name_addr",
    "parse_subscription_state", "parse_uri", "parse_via",
]
