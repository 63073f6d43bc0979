"""SIP requests and responses: values, parsing and serialising (RFC 3261 section 7).

A message is a start line, an ordered list of ``(name, value)`` header fields
and a body of bytes.  Names are canonical (compact forms expanded, RFC 3261
section 7.3.3), values are unfolded text (section 7.3.1).  Content-Length is
framing, not content: the parser checks it and drops it, and serialising
always writes it from ``len(body)`` (section 20.14).

``parse_message`` reads one message from a datagram; ``StreamFramer`` cuts a
TCP/TLS byte stream into messages by their Content-Length (section 18.3).
Both raise :class:`SipError`, whose ``status`` is what a server answers.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from .errors import SipError, bad_request
from .headers import (
    LIST_HEADERS,
    CSeq,
    EventHeader,
    NameAddr,
    RetryAfter,
    SubscriptionState,
    Via,
    canonical_name,
    is_token,
    parse_cseq,
    parse_event,
    parse_media_type,
    parse_name_addr,
    parse_name_addr_list,
    parse_retry_after,
    parse_subscription_state,
    parse_token_list,
    parse_uint32,
    parse_via_list,
    split_list,
)
from .uri import SipUri, Uri, parse_uri

# -- limits -------------------------------------------------------------------
# A datagram cannot exceed the largest UDP payload; Kamailio's BUF_SIZE is
# 65535 for the same reason.  RFC 3261 section 18.1.1 keeps requests under
# 1300 bytes when it can, so real messages are far below this.
MAX_DATAGRAM_SIZE = 65_535
# Start line plus header fields of one message on a stream.  h11 and node.js
# cap HTTP headers at 16 KiB; SIP messages carry more Via/Record-Route than
# HTTP does, and RFC 4475's longreq.dat alone is 3.5 KB, so allow 32 KiB.
MAX_HEADER_BYTES = 32 * 1024
# Header fields per message (after unfolding).  Apache's LimitRequestFields
# is 100; longreq.dat has 34 Via fields alone, so 256 leaves ample room.
MAX_HEADER_COUNT = 256
# One (unfolded) header line.  Apache's LimitRequestFieldSize is 8190.
MAX_LINE_LENGTH = 8 * 1024
# Body of one message on a stream.  load-status bodies are ~500 bytes; a
# peer announcing more than a UDP datagram could carry is not one of ours,
# and waiting for its body would pin that much memory per connection.
MAX_STREAM_CONTENT_LENGTH = 64 * 1024

SIP_VERSION = "SIP/2.0"

# Methods this stack knows the meaning of (RFC 3261, 3262, 3311, 3428, 3515,
# 3903, 6086, 6665).  Knowing is not supporting: see validation.check_request.
KNOWN_METHODS = frozenset({
    "ACK", "BYE", "CANCEL", "INFO", "INVITE", "MESSAGE", "NOTIFY", "OPTIONS",
    "PRACK", "PUBLISH", "REFER", "REGISTER", "SUBSCRIBE", "UPDATE",
})

# RFC 3261 section 21 plus the codes the event packages use.
REASON_PHRASES = {
    100: "Trying", 180: "Ringing", 181: "Call Is Being Forwarded", 182: "Queued",
    183: "Session Progress", 200: "OK", 202: "Accepted", 204: "No Notification",
    300: "Multiple Choices", 301: "Moved Permanently", 302: "Moved Temporarily",
    305: "Use Proxy", 380: "Alternative Service", 400: "Bad Request",
    401: "Unauthorized", 402: "Payment Required", 403: "Forbidden", 404: "Not Found",
    405: "Method Not Allowed", 406: "Not Acceptable",
    407: "Proxy Authentication Required", 408: "Request Timeout", 410: "Gone",
    412: "Conditional Request Failed", 413: "Request Entity Too Large",
    414: "Request-URI Too Long", 415: "Unsupported Media Type",
    416: "Unsupported URI Scheme", 420: "Bad Extension", 421: "Extension Required",
    423: "Interval Too Brief", 429: "Provide Referrer Identity",
    480: "Temporarily Unavailable", 481: "Call/Transaction Does Not Exist",
    482: "Loop Detected", 483: "Too Many Hops", 484: "Address Incomplete",
    485: "Ambiguous", 486: "Busy Here", 487: "Request Terminated",
    488: "Not Acceptable Here", 489: "Bad Event", 491: "Request Pending",
    493: "Undecipherable", 500: "Server Internal Error", 501: "Not Implemented",
    502: "Bad Gateway", 503: "Service Unavailable", 504: "Server Time-out",
    505: "Version Not Supported", 513: "Message Too Large", 600: "Busy Everywhere",
    603: "Decline", 604: "Does Not Exist Anywhere", 606: "Not Acceptable",
}

# Folding: CRLF followed by whitespace is one SP (section 7.3.1).  Spaces
# before the CRLF stay and are stripped or ignored as LWS later; matching
# them here ("[ \t]*\r\n") would make the search quadratic in a run of
# spaces, a cheap denial of service.
_FOLD = re.compile(r"\r\n[ \t]+")


def _too_large(what: str) -> SipError:
    return SipError(513, what)


# -- message values -------------------------------------------------------------


def _normalise_headers(headers: Iterable[tuple[str, object]]) -> list[tuple[str, str]]:
    out = []
    for name, value in headers:
        name = canonical_name(name)
        if name == "Content-Length":
            continue  # derived from the body when serialising
        out.append((name, str(value).strip()))
    return out


class Message:
    """What requests and responses share: header access and serialising.

    Lookups are case-insensitive and compact-form-aware:
    ``msg.header("i")``, ``msg.header("call-id")`` and
    ``msg.header("Call-ID")`` find the same field.
    """

    headers: list[tuple[str, str]]
    body: bytes

    # -- raw access ------------------------------------------------------------

    def header(self, name: str, default: str | None = None) -> str | None:
        """The value of the first field called ``name``, or ``default``."""
        key = canonical_name(name)
        low = key.lower()
        for n, v in self.headers:
            if n == key or n.lower() == low:
                return v
        return default

    def header_all(self, name: str) -> list[str]:
        """Values of every field called ``name``, in order, not split."""
        key = canonical_name(name)
        low = key.lower()
        return [v for n, v in self.headers if n == key or n.lower() == low]

    def header_values(self, name: str) -> list[str]:
        """Every value of ``name``; list headers (Via, Contact...) split on commas."""
        key = canonical_name(name)
        fields = self.header_all(key)
        if key not in LIST_HEADERS:
            return fields
        out: list[str] = []
        for value in fields:
            out.extend(split_list(value, key))
        return out

    def has_header(self, name: str) -> bool:
        return self.header(name) is not None

    def add_header(self, name: str, value: object) -> None:
        """Append a field (after any existing ones)."""
        self.headers.extend(_normalise_headers([(name, value)]))

    def prepend_header(self, name: str, value: object) -> None:
        """Insert a field before all others (a new top Via, Record-Route)."""
        self.headers[:0] = _normalise_headers([(name, value)])

    def set_header(self, name: str, value: object) -> None:
        """Replace every field called ``name`` by one, where the first one was."""
        new = _normalise_headers([(name, value)])
        if not new:
            return
        key = new[0][0].lower()
        for i, (n, _) in enumerate(self.headers):
            if n.lower() == key:
                self.headers[i] = new[0]
                self.headers[i + 1 :] = [h for h in self.headers[i + 1 :] if h[0].lower() != key]
                return
        self.headers.append(new[0])

    def remove_header(self, name: str) -> int:
        """Remove every field called ``name``; returns how many were removed."""
        key = canonical_name(name).lower()
        before = len(self.headers)
        self.headers[:] = [h for h in self.headers if h[0].lower() != key]
        return before - len(self.headers)

    # -- structured access (RFC 3261 section 20) ----------------------------------

    @property
    def call_id(self) -> str | None:
        return self.header("Call-ID")

    @property
    def cseq(self) -> CSeq | None:
        value = self.header("CSeq")
        return None if value is None else parse_cseq(value)

    @property
    def from_addr(self) -> NameAddr | None:
        value = self.header("From")
        return None if value is None else parse_name_addr(value, "From")

    @property
    def to_addr(self) -> NameAddr | None:
        value = self.header("To")
        return None if value is None else parse_name_addr(value, "To")

    @property
    def vias(self) -> list[Via]:
        out: list[Via] = []
        for value in self.header_all("Via"):
            out.extend(parse_via_list(value))
        return out

    @property
    def top_via(self) -> Via | None:
        value = self.header("Via")
        if value is None:
            return None
        vias = parse_via_list(value)
        if not vias:
            raise bad_request("empty Via header field")  # Via = 1#via-parm
        return vias[0]

    @property
    def contacts(self) -> list[NameAddr]:
        """Contact values (a REGISTER's ``*`` wildcard is skipped: it is no address)."""
        out: list[NameAddr] = []
        for value in self.header_all("Contact"):
            if value.strip() != "*":
                out.extend(parse_name_addr_list(value, "Contact"))
        return out

    @property
    def routes(self) -> list[NameAddr]:
        return [na for v in self.header_all("Route") for na in parse_name_addr_list(v, "Route")]

    @property
    def record_routes(self) -> list[NameAddr]:
        return [
            na
            for v in self.header_all("Record-Route")
            for na in parse_name_addr_list(v, "Record-Route")
        ]

    @property
    def max_forwards(self) -> int | None:
        value = self.header("Max-Forwards")
        return None if value is None else parse_max_forwards(value)

    @property
    def expires(self) -> int | None:
        value = self.header("Expires")
        return None if value is None else parse_uint32(value, "Expires")

    @property
    def min_expires(self) -> int | None:
        value = self.header("Min-Expires")
        return None if value is None else parse_uint32(value, "Min-Expires")

    @property
    def event(self) -> EventHeader | None:
        value = self.header("Event")
        return None if value is None else parse_event(value)

    @property
    def subscription_state(self) -> SubscriptionState | None:
        value = self.header("Subscription-State")
        return None if value is None else parse_subscription_state(value)

    @property
    def allow_events(self) -> list[str]:
        return [t.lower() for v in self.header_all("Allow-Events")
                for t in parse_token_list(v, "Allow-Events")]

    @property
    def allow(self) -> list[str]:
        return [t for v in self.header_all("Allow") for t in parse_token_list(v, "Allow")]

    @property
    def require(self) -> list[str]:
        return [t for v in self.header_all("Require") for t in parse_token_list(v, "Require")]

    @property
    def proxy_require(self) -> list[str]:
        return [t for v in self.header_all("Proxy-Require")
                for t in parse_token_list(v, "Proxy-Require")]

    @property
    def supported(self) -> list[str]:
        return [t for v in self.header_all("Supported") for t in parse_token_list(v, "Supported")]

    @property
    def sip_etag(self) -> str | None:
        """RFC 3903 section 11.3.1 entity-tag (a token)."""
        return _entity_tag(self.header("SIP-ETag"), "SIP-ETag")

    @property
    def sip_if_match(self) -> str | None:
        """RFC 3903 section 11.3.2 entity-tag (a token)."""
        return _entity_tag(self.header("SIP-If-Match"), "SIP-If-Match")

    @property
    def retry_after(self) -> RetryAfter | None:
        value = self.header("Retry-After")
        return None if value is None else parse_retry_after(value)

    @property
    def content_type(self) -> str | None:
        """The media type ``type/subtype``, lower-cased, without parameters."""
        value = self.header("Content-Type")
        return None if value is None else parse_media_type(value)[0]

    @property
    def content_length(self) -> int:
        return len(self.body)

    # -- serialising ---------------------------------------------------------------

    def start_line(self) -> str:
        raise NotImplementedError

    def to_bytes(self) -> bytes:
        """The message as sent: CRLF line ends, Content-Length from the body."""
        lines = [self.start_line()]
        lines.extend(f"{n}: {v}" for n, v in self.headers if n != "Content-Length")
        lines.append(f"Content-Length: {len(self.body)}")
        text = "\r\n".join(lines) + "\r\n\r\n"
        # A CR or LF inside a value would end the field early (header injection).
        if text.count("\n") != len(lines) + 1 or text.count("\r") != len(lines) + 1:
            raise ValueError("CR or LF inside a header value or start line")
        return text.encode("utf-8", "surrogateescape") + self.body

    def __bytes__(self) -> bytes:
        return self.to_bytes()


def _entity_tag(value: str | None, what: str) -> str | None:
    if value is None:
        return None
    if not is_token(value):
        raise bad_request(f"bad {what} {value!r}")
    return value


def parse_max_forwards(value: str) -> int:
    """Max-Forwards, 0-255 (RFC 3261 section 20.22)."""
    text = value.strip()
    if not text.isascii() or not text.isdigit():
        raise bad_request(f"Max-Forwards is not a number: {text!r}")
    if len(text.lstrip("0")) > 3 or int(text) > 255:
        raise bad_request("Max-Forwards is larger than 255")
    return int(text)


@dataclass(eq=True)
class Request(Message):
    """A SIP request.  ``uri`` is kept as text; ``request_uri`` parses it."""

    method: str
    uri: str
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""

    def __post_init__(self) -> None:
        self.uri = str(self.uri)
        self.headers = _normalise_headers(self.headers)

    @property
    def request_uri(self) -> Uri:
        return parse_uri(self.uri)

    def start_line(self) -> str:
        return f"{self.method} {self.uri} {SIP_VERSION}"


@dataclass(eq=True)
class Response(Message):
    """A SIP response; ``reason`` defaults to the RFC 3261 phrase for ``status``."""

    status: int
    reason: str | None = None
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""

    def __post_init__(self) -> None:
        if self.reason is None:
            self.reason = REASON_PHRASES.get(self.status, "Unknown")
        self.headers = _normalise_headers(self.headers)

    def start_line(self) -> str:
        return f"{SIP_VERSION} {self.status} {self.reason}"


# -- parsing --------------------------------------------------------------------


def _parse_request_line(line: str) -> tuple[str, str]:
    # RFC 3261 section 25.1: Method SP Request-URI SP SIP-Version, exactly one
    # SP each (RFC 4475 3.1.2.8-3.1.2.10 are rejected here).
    parts = line.split(" ")
    if len(parts) != 3:
        raise bad_request("Request-Line must be 'Method SP Request-URI SP SIP/2.0'")
    method, uri, version = parts
    _check_version(version)
    if not is_token(method):
        raise bad_request(f"bad method {method!r}")
    parsed = parse_uri(uri)
    if isinstance(parsed, SipUri) and parsed.headers:
        # RFC 3261 section 19.1.1 table: headers are not allowed in a
        # Request-URI (RFC 4475 3.1.2.11).
        raise bad_request("Request-URI must not carry headers")
    return method, uri


def _check_version(version: str) -> None:
    if version.upper() == SIP_VERSION:
        return
    name, slash, number = version.partition("/")
    major, dot, minor = number.partition(".")
    if name.upper() == "SIP" and slash and dot and major.isdigit() and minor.isdigit():
        raise SipError(505, f"SIP version {number} not supported")  # section 21.5.7
    raise bad_request(f"bad SIP version {version!r}")


def _parse_status_line(line: str) -> tuple[int, str]:
    version, _, rest = line.partition(" ")
    _check_version(version)
    code, _, reason = rest.partition(" ")
    # Status-Code = 3DIGIT, 100-699 (section 7.2, RFC 4475 3.1.2.19).
    if len(code) != 3 or not code.isascii() or not code.isdigit() or code[0] not in "123456":
        raise bad_request(f"bad status code {code[:16]!r}")
    return int(code), reason


def _check_call_id(value: str) -> None:
    # callid = word [ "@" word ]: no whitespace (section 25.1).
    if not value or any(c in value for c in " \t"):
        raise bad_request("bad Call-ID")


def _check_contact(value: str) -> None:
    if value.strip() != "*":
        parse_name_addr_list(value, "Contact")


# Headers whose syntax the core itself relies on are checked while parsing;
# the others are parsed (and may raise) when first read.
_CHECKED_ON_PARSE: dict[str, Callable[[str], object]] = {
    "Via": parse_via_list,
    "From": lambda v: parse_name_addr(v, "From"),
    "To": lambda v: parse_name_addr(v, "To"),
    "Call-ID": _check_call_id,
    "CSeq": parse_cseq,
    "Max-Forwards": parse_max_forwards,
    "Contact": _check_contact,
    "Route": lambda v: parse_name_addr_list(v, "Route"),
    "Record-Route": lambda v: parse_name_addr_list(v, "Record-Route"),
}


def _parse_content_length(value: str) -> int:
    text = value.strip()
    if not text.isascii() or not text.isdigit():
        # RFC 4475 3.1.2.3: a negative Content-Length leaves no framing.
        raise bad_request(f"bad Content-Length {text[:16]!r}")
    if len(text.lstrip("0")) > 10:
        raise SipError(413, "Content-Length too large")
    return int(text)


def _split_head(head: str) -> tuple[str, list[tuple[str, str]], int | None]:
    """Start line, header fields, and Content-Length (None if absent)."""
    if "\r\n " in head or "\r\n\t" in head:
        head = _FOLD.sub(" ", head)  # section 7.3.1: folding LWS is one SP
    crlf = head.count("\r\n")
    if head.count("\r") != crlf or head.count("\n") != crlf:
        raise bad_request("bare CR or LF in header section")
    lines = head.split("\r\n")
    if len(lines) > MAX_HEADER_COUNT + 1:
        raise _too_large(f"more than {MAX_HEADER_COUNT} header fields")
    headers: list[tuple[str, str]] = []
    content_length: int | None = None
    for line in lines[1:]:
        if len(line) > MAX_LINE_LENGTH:
            raise _too_large(f"header line longer than {MAX_LINE_LENGTH} bytes")
        colon = line.find(":")
        if colon <= 0:
            raise bad_request("header line without 'name:'")
        raw = line[:colon].rstrip(" \t")  # HCOLON allows LWS before ':'
        name = canonical_name(raw)
        if name is raw and not is_token(raw):
            raise bad_request("bad header name")
        value = line[colon + 1 :].strip(" \t")
        if name == "Content-Length":
            if content_length is not None:
                # RFC 4475 3.3.9: two Content-Length values, no framing.
                raise bad_request("more than one Content-Length")
            content_length = _parse_content_length(value)
            continue
        headers.append((name, value))
    if len(lines[0]) > MAX_LINE_LENGTH:
        raise _too_large("start line too long")
    return lines[0], headers, content_length


def _build(start: str, headers: list[tuple[str, str]], body: bytes) -> Request | Response:
    # The start line first: a SIP/7.0 message is a 505 whatever its headers.
    message: Request | Response
    if start[:4].upper() == "SIP/":
        status, reason = _parse_status_line(start)
        message = Response.__new__(Response)
        message.status, message.reason = status, reason
    else:
        method, uri = _parse_request_line(start)
        message = Request.__new__(Request)
        message.method, message.uri = method, uri
    for name, value in headers:
        check = _CHECKED_ON_PARSE.get(name)
        if check is not None:
            check(value)
    message.headers, message.body = headers, body
    return message


def parse_message(data: bytes) -> Request | Response:
    """Parse one message received as a datagram (RFC 3261 sections 7 and 18.3).

    The body is framed by Content-Length; octets after it are ignored (RFC
    4475 3.1.1.8).  Without Content-Length the body is the rest of the
    datagram.  A datagram that ends right after a header line's CRLF ends
    the header section (RFC 4475 baddn.dat as archived).
    """
    if len(data) > MAX_DATAGRAM_SIZE:
        raise _too_large("datagram larger than 65535 bytes")
    start = 0
    while data.startswith(b"\r\n", start):  # section 7.5: ignore leading CRLF
        start += 2
    end = data.find(b"\r\n\r\n", start)
    if end >= 0:
        head_end, body_start = end, end + 4
    elif data.endswith(b"\r\n") and len(data) > start:
        head_end = body_start = len(data) - 2
    else:
        raise bad_request("header section not terminated by CRLF")
    if head_end == start:
        raise bad_request("empty message")
    head = data[start:head_end].decode("utf-8", "surrogateescape")
    start_line, headers, content_length = _split_head(head)
    if content_length is None:
        body = data[body_start:]
    else:
        body = data[body_start : body_start + content_length]
        if len(body) < content_length:
            # RFC 4475 3.1.2.2: over UDP, a short body is an error.
            raise bad_request("Content-Length larger than the message")
    return _build(start_line, headers, body)


class StreamFramer:
    """Cuts a stream (TCP, TLS) into messages by Content-Length (section 18.3).

    ``feed(data)`` returns the complete messages (as bytes, ready for
    :func:`parse_message`) found so far and keeps the rest.  CRLFs before a
    start line are skipped (section 7.5); a CRLFCRLF there is an RFC 5626
    keep-alive ping and is counted in ``pings`` (the transport answers CRLF).
    A missing Content-Length counts as 0.

    When ``feed`` raises :class:`SipError` (no framing: bad or duplicate
    Content-Length, endless headers, oversized body) the stream cannot be
    resynchronised: the transport answers if it can and closes the connection.
    """

    def __init__(
        self,
        max_header_bytes: int = MAX_HEADER_BYTES,
        max_content_length: int = MAX_STREAM_CONTENT_LENGTH,
    ) -> None:
        self.max_header_bytes = max_header_bytes
        self.max_content_length = max_content_length
        self.pings = 0
        self._buffer = bytearray()
        self._scan_from = 0
        self._need: int | None = None  # total length of the current message
        self._error: SipError | None = None

    @property
    def buffered(self) -> int:
        """Octets received but not yet returned as a message."""
        return len(self._buffer)

    @property
    def partial(self) -> bool:
        """Whether a message has begun and not yet ended (octets other than
        the CR and LF allowed between messages are buffered)."""
        return bool(self._buffer.strip(b"\r\n"))

    def feed(self, data: bytes) -> list[bytes]:
        if self._error is not None:
            raise self._error
        self._buffer += data
        try:
            return self._frame()
        except SipError as error:
            self._error = error
            raise

    def _frame(self) -> list[bytes]:
        buf = self._buffer
        out: list[bytes] = []
        while True:
            if self._need is None:
                while buf[:2] == b"\r\n":
                    if buf[:4] == b"\r\n\r\n":
                        self.pings += 1
                        del buf[:4]
                    elif len(buf) < 4 and b"\r\n\r\n".startswith(bytes(buf)):
                        return out  # maybe the start of a ping
                    else:
                        del buf[:2]
                end = buf.find(b"\r\n\r\n", self._scan_from)
                if end < 0:
                    if len(buf) > self.max_header_bytes:
                        raise _too_large(f"header section over {self.max_header_bytes} bytes")
                    self._scan_from = max(0, len(buf) - 3)
                    return out
                if end + 4 > self.max_header_bytes:
                    raise _too_large(f"header section over {self.max_header_bytes} bytes")
                self._scan_from = 0
                head = bytes(buf[:end]).decode("utf-8", "surrogateescape")
                length = _split_head(head)[2] or 0
                if length > self.max_content_length:
                    raise SipError(413, f"Content-Length over {self.max_content_length}")
                self._need = end + 4 + length
            if len(buf) < self._need:
                return out
            out.append(bytes(buf[: self._need]))
            del buf[: self._need]
            self._need = None


# -- responses ------------------------------------------------------------------


def stateless_tag(request: Request) -> str:
    """A To tag that is the same for every retransmission of ``request``.

    RFC 3261 section 8.2.7: a stateless UAS must give retransmissions the
    same tag, so it is derived from the request's identity.
    """
    from_addr = request.from_addr
    via = request.top_via
    seed = "|".join([
        request.call_id or "",
        (from_addr.tag or "") if from_addr else "",
        (via.branch or "") if via else "",
        request.header("CSeq") or "",
    ])
    return hashlib.sha256(seed.encode("utf-8", "surrogateescape")).hexdigest()[:16]


def make_response(
    request: Request,
    status: int,
    reason: str | None = None,
    *,
    to_tag: str | None = None,
    headers: Iterable[tuple[str, str]] = (),
    body: bytes = b"",
    record_route: bool = False,
) -> Response:
    """A response to ``request`` per RFC 3261 section 8.2.6.

    Via (all, in order), From, Call-ID and CSeq are copied; To is copied and,
    unless it already has one or this is a 100, gets ``to_tag`` (or a tag
    derived from the request, see :func:`stateless_tag`).  ``record_route``
    copies Record-Route, as a dialog-creating response does (section 12.1.1).
    """
    out: list[tuple[str, str]] = [("Via", v) for v in request.header_all("Via")]
    if record_route:
        out.extend(("Record-Route", v) for v in request.header_all("Record-Route"))
    from_value = request.header("From")
    if from_value is not None:
        out.append(("From", from_value))
    to_value = request.header("To")
    if to_value is not None:
        if status != 100 and "tag" not in parse_name_addr(to_value, "To").params:
            to_value = f"{to_value};tag={to_tag or stateless_tag(request)}"
        out.append(("To", to_value))
    for name in ("Call-ID", "CSeq"):
        value = request.header(name)
        if value is not None:
            out.append((name, value))
    if status == 100 and request.header("Timestamp") is not None:
        out.append(("Timestamp", request.header("Timestamp") or ""))  # section 8.2.6.1
    out.extend(headers)
    return Response(status, reason, out, body)


def error_response(request: Request, error: SipError) -> Response:
    """The response that answers ``request`` for ``error`` (with its headers)."""
    return make_response(request, error.status, error.reason, headers=error.headers)


_ADDRESSING = ("Via", "From", "To", "Call-ID", "CSeq")


def salvage_error_response(data: bytes, error: SipError) -> Response | None:
    """A stateless answer to a request that failed to parse, if one can be built.

    RFC 3261 section 8.2.6 needs Via, From, To, Call-ID and CSeq copied; they
    are read here without parsing their values, so a request with, say, a
    bad Contact still gets its 400.  Responses and ACKs are never answered;
    None when the request cannot be addressed.
    """
    head = data[:MAX_HEADER_BYTES].split(b"\r\n\r\n", 1)[0].decode("utf-8", "surrogateescape")
    lines = _FOLD.sub(" ", head).split("\r\n")
    method = lines[0].split(" ", 1)[0]
    if not is_token(method) or method.upper().startswith("SIP/") or method == "ACK":
        return None
    fields: dict[str, list[str]] = {}
    for line in lines[1 : MAX_HEADER_COUNT + 1]:
        name, colon, value = line.partition(":")
        name = canonical_name(name.strip(" \t"))
        if colon and name in _ADDRESSING:
            fields.setdefault(name, []).append(value.strip(" \t"))
    if any(name not in fields for name in _ADDRESSING):
        return None
    headers = [("Via", v) for v in fields["Via"]]
    to_value = fields["To"][0]
    if ";tag=" not in to_value.replace(" ", "").lower():
        seed = "|".join(v for name in _ADDRESSING for v in fields[name])
        tag = hashlib.sha256(seed.encode("utf-8", "surrogateescape")).hexdigest()[:16]
        to_value = f"{to_value};tag={tag}"
    headers += [("From", fields["From"][0]), ("To", to_value),
                ("Call-ID", fields["Call-ID"][0]), ("CSeq", fields["CSeq"][0])]
    headers += error.headers
    if any("\r" in v or "\n" in v for _, v in headers):
        return None
    return Response(error.status, error.reason, headers)
