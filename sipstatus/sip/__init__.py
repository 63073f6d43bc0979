"""A sans-I/O SIP core: bytes and a clock in, bytes and events out.

Nothing here opens a socket, sleeps or reads the wall clock: times are
floats passed in as ``now``.  Errors are one exception, :class:`SipError`,
whose ``status`` is the response code a server answers with (and whose
``headers`` that response must carry).

Public API
----------
errors
    ``SipError(status, reason, headers=())`` -- the one exception.
message
    ``Request(method, uri, headers, body)``, ``Response(status, reason,
    headers, body)`` -- mutable message values.  Header access is
    case-insensitive and compact-form-aware: ``header()``, ``header_all()``,
    ``header_values()`` (list headers split on commas), ``add_header()``,
    ``prepend_header()``, ``set_header()``, ``remove_header()``; typed
    properties ``call_id``, ``cseq``, ``from_addr``, ``to_addr``, ``vias``,
    ``top_via``, ``contacts``, ``routes``, ``record_routes``,
    ``max_forwards``, ``expires``, ``min_expires``, ``event``,
    ``subscription_state``, ``allow_events``, ``allow``, ``require``,
    ``proxy_require``, ``supported``, ``sip_etag``, ``sip_if_match``,
    ``retry_after``, ``content_type``, ``request_uri``; ``to_bytes()``
    (CRLF, Content-Length from the body).
    ``parse_message(data)`` -- one datagram to a Request or Response.
    ``StreamFramer`` -- cuts a TCP/TLS stream into messages (``feed``).
    ``make_response(request, status, ...)`` -- RFC 3261 section 8.2.6.
    ``error_response(request, error)`` -- the answer to a SipError.
    ``salvage_error_response(data, error)`` -- stateless answer to a
    request that did not parse.
    Limits: ``MAX_DATAGRAM_SIZE``, ``MAX_HEADER_BYTES``,
    ``MAX_HEADER_COUNT``, ``MAX_LINE_LENGTH``, ``MAX_STREAM_CONTENT_LENGTH``.
headers
    Values ``NameAddr``, ``Via``, ``CSeq``, ``EventHeader``,
    ``SubscriptionState``, ``RetryAfter`` and their ``parse_*`` functions;
    ``canonical_name``, ``split_list``, ``parse_params``, ``quote``,
    ``unquote``.
uri
    ``SipUri`` (components unescaped; ``str()`` escapes), ``AbsoluteUri``
    (other schemes, opaque), ``parse_uri``.
validation
    ``check_request(request, methods=..., schemes=..., supported=...,
    accept=...)`` -- the UAS checks of RFC 3261 section 8.2 (400, 405,
    501, 416, 420, 415); ``check_max_forwards`` (483, forwarding elements);
    ``validate_response`` (UAC: discard misrouted or incomplete responses).
transaction
    ``TransactionLayer`` -- non-INVITE client and server transactions:
    ``send_request(request, destination, now)``, ``send_response(response,
    now)``, ``receive(message, source, now)``, ``receive_datagram(data,
    source, now)``, ``report_transport_error(message, now)``,
    ``next_timer()``, ``handle_timer(now)``; counters ``stray_responses``,
    ``malformed``, ``retransmissions_absorbed``.  Events ``SendMessage``,
    ``RequestReceived``, ``ResponseReceived``, ``TransactionTimeout``,
    ``TransportError``; ``Destination(transport, host, port)``; timer
    constants ``T1``, ``T2``, ``T4``.
identifiers
    ``IdGenerator(random)`` -- ``branch()``, ``tag()``, ``call_id()``.
digest
    ``DigestClient(username, password).authorize(request, response)`` --
    the retry with credentials, or None to give up; ``DigestServer(realm,
    secret).challenge(now)`` / ``.verify(request, now, password_for)``;
    ``digest_response``, ``Challenge``, ``parse_auth``.
dialog
    ``Dialog`` (``create_request``, ``receive_request``, ``next_hop``),
    ``dialog_as_uac``, ``dialog_as_uas``, ``dialog_id_of``.
timers
    ``TimerHeap`` -- one deadline per key, earliest first (``set``,
    ``cancel``, ``next_time``, ``pop``); the transaction layer and every
    transaction user keep their timers in one.

Transaction users (each ``handle_request``, ``handle_response``,
``next_timer``, ``handle_timer``; outputs and events, never I/O):

transaction_user
    What they share: ``SendRequest``, ``SendResponse``, ``ClientId`` (the
    subscriber or publisher an event names), the hooks ``Authorizer``,
    ``ClientAuthorizer``, ``Producer``; the 489, 423 and 401/407/423-retry
    rules; the expiry defaults of spec section 8.
notifier
    ``Notifier`` (RFC 6665 section 4.2, RFC 6446 rates) and its events.
subscriber
    ``Subscriber`` (RFC 6665 section 4.1; states ``SubscriberState`` and
    their ``TRANSITIONS``), ``SubscriberPool``, ``SubscriberConfig`` and the
    events.
publisher
    ``Publisher`` (the EPA of RFC 3903) and its events.
compositor
    ``Compositor`` (the ESC of RFC 3903) and its events.
endpoint
    ``Endpoint`` -- the transaction layer and the transaction users of one
    element, driven by the asyncio shell (``sipstatus.net.SipService``).
"""

from .dialog import Dialog, dialog_as_uac, dialog_as_uas, dialog_id_of
from .digest import Challenge, DigestClient, DigestServer
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
from .identifiers import IdGenerator
from .message import (
    Message,
    Request,
    Response,
    StreamFramer,
    error_response,
    make_response,
    parse_message,
    salvage_error_response,
)
from .transaction import (
    Destination,
    RequestReceived,
    ResponseReceived,
    SendMessage,
    TransactionLayer,
    TransactionTimeout,
    TransportError,
)
from .uri import AbsoluteUri, SipUri, parse_uri
from .validation import check_max_forwards, check_request, validate_response

__all__ = [
    "AbsoluteUri", "CSeq", "Challenge", "Destination", "Dialog", "DigestClient",
    "DigestServer", "EventHeader", "IdGenerator", "Message", "NameAddr", "Request",
    "RequestReceived", "Response", "ResponseReceived", "RetryAfter", "SendMessage", "SipError",
    "SipUri", "StreamFramer", "SubscriptionState", "TransactionLayer", "TransactionTimeout",
    "TransportError", "Via", "check_max_forwards", "check_request", "dialog_as_uac",
    "dialog_as_uas", "dialog_id_of", "error_response", "make_response", "parse_event",
    "parse_message", "parse_name_addr", "parse_subscription_state", "parse_uri", "parse_via",
    "salvage_error_response", "validate_response",
]
