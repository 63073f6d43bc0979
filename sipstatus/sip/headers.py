"""Header field names and the structured header values the core needs.

Names: compact forms (RFC 3261 section 7.3.3 and the IANA registry) map to
their long form, and known names get one canonical spelling, so ``i:`` and
``call-id:`` both become ``Call-ID``.  Unknown names are kept as received.

Values are stored as text; the parsers here turn them into values on demand
and raise :class:`SipError` (400) when the text does not follow the grammar
of RFC 3261 section 25.1.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from .errors import SipError, bad_request
from .uri import AbsoluteUri, SipUri, Uri, parse_uri, split_hostport

# RFC 3261 section 7.3.3 (i m f t v l c k s e), RFC 6665 (o u), RFC 3515 (r),
# RFC 3892 (b), RFC 4028 (x), RFC 8224 (y), RFC 3841 (a j d).
COMPACT_FORMS = {
    "i": "Call-ID", "m": "Contact", "f": "From", "t": "To", "v": "Via",
    "l": "Content-Length", "c": "Content-Type", "k": "Supported", "s": "Subject",
    "e": "Content-Encoding", "o": "Event", "u": "Allow-Events", "r": "Refer-To",
    "b": "Referred-By", "x": "Session-Expires", "y": "Identity",
    "a": "Accept-Contact", "j": "Reject-Contact", "d": "Request-Disposition",
}

_LONG_NAMES = [
    "Accept", "Accept-Contact", "Accept-Encoding", "Accept-Language", "Alert-Info",
    "Allow", "Allow-Events", "Authentication-Info", "Authorization", "Call-ID",
    "Call-Info", "Contact", "Content-Disposition", "Content-Encoding",
    "Content-Language", "Content-Length", "Content-Type", "CSeq", "Date",
    "Error-Info", "Event", "Expires", "From", "Identity", "In-Reply-To",
    "Max-Forwards", "MIME-Version", "Min-Expires", "Organization", "Path",
    "Priority", "Proxy-Authenticate", "Proxy-Authorization", "Proxy-Require",
    "Reason", "Record-Route", "Refer-To", "Referred-By", "Reject-Contact",
    "Reply-To", "Request-Disposition", "Require", "Retry-After", "Route",
    "Server", "Session-Expires", "SIP-ETag", "SIP-If-Match", "Subject",
    "Subscription-State", "Supported", "Timestamp", "To", "Unsupported",
    "User-Agent", "Via", "Warning", "WWW-Authenticate",
]

_CANONICAL = {name.lower(): name for name in _LONG_NAMES}
_CANONICAL.update(COMPACT_FORMS)

# Headers whose grammar is a comma-separated list (RFC 3261 section 7.3.1):
# only these are split on commas; any other value may hold commas of its
# own (Date, WWW-Authenticate, unknown headers).
LIST_HEADERS = frozenset({
    "Accept", "Accept-Encoding", "Accept-Language", "Alert-Info", "Allow",
    "Allow-Events", "Call-Info", "Contact", "Content-Encoding", "Content-Language",
    "Error-Info", "In-Reply-To", "Path", "Proxy-Require", "Record-Route",
    "Require", "Route", "Supported", "Unsupported", "Via", "Warning",
})

_TOKEN = re.compile(r"[A-Za-z0-9\-.!%*_+`'~]+")
_DIGITS = re.compile(r"[0-9]+")

# RFC 3261 section 25.1: delta-seconds and CSeq numbers are 32-bit.
MAX_UINT32 = 2**32 - 1


def canonical_name(name: str) -> str:
    """The canonical spelling of a header name (``i`` -> ``Call-ID``)."""
    return _CANONICAL.get(name.lower(), name)


def is_token(text: str) -> bool:
    """True if ``text`` is an RFC 3261 token (method, parameter name, ...)."""
    return _TOKEN.fullmatch(text) is not None


def parse_uint32(text: str, what: str) -> int:
    """A decimal 0..2**32-1, as CSeq numbers and delta-seconds must be."""
    text = text.strip()
    if not _DIGITS.fullmatch(text):
        raise bad_request(f"{what} is not a number: {text!r}")
    # Leading zeros are legal ("0009"); bound the digits before int().
    if len(text.lstrip("0")) > 10 or int(text) > MAX_UINT32:
        raise bad_request(f"{what} is larger than 2**32-1")
    return int(text)


# -- lexing ---------------------------------------------------------------


def _skip_quoted(text: str, start: int) -> int:
    """Index just after the quoted string starting at ``text[start] == '"'``."""
    i = start + 1
    n = len(text)
    while i < n:
        c = text[i]
        if c == '"':
            return i + 1
        i += 2 if c == "\\" else 1
    raise bad_request("unterminated quoted string")


def unquote(text: str) -> str:
    """The content of a quoted-string, quoted-pairs resolved (section 25.1)."""
    if len(text) < 2 or text[0] != '"' or _skip_quoted(text, 0) != len(text):
        raise bad_request(f"bad quoted string {text!r}")
    body = text[1:-1]
    if "\\" not in body:
        return body
    out = []
    i = 0
    while i < len(body):
        if body[i] == "\\":
            i += 1
        out.append(body[i])
        i += 1
    return "".join(out)


def quote(text: str) -> str:
    """``text`` as a quoted-string."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def split_outside(text: str, sep: str, *, angle: bool = False) -> list[str]:
    """Split on ``sep`` outside quoted strings (and ``<...>`` if ``angle``)."""
    if '"' not in text and not (angle and "<" in text):
        return text.split(sep)
    parts = []
    start = i = 0
    n = len(text)
    while i < n:
        c = text[i]
        if c == '"':
            i = _skip_quoted(text, i)
            continue
        if angle and c == "<":
            end = text.find(">", i)
            if end < 0:
                raise bad_request(f"unbalanced '<' in {text!r}")
            i = end + 1
            continue
        if c == sep:
            parts.append(text[start:i])
            start = i + 1
        i += 1
    parts.append(text[start:])
    return parts


def split_list(value: str, name: str = "header") -> list[str]:
    """The elements of a comma-separated header value (RFC 3261 section 7.3.1).

    An empty element (``a,,b``) is an error (RFC 4475 section 3.1.2.1); an
    empty value is an empty list.
    """
    if not value.strip():
        return []
    items = [item.strip() for item in split_outside(value, ",", angle=True)]
    if "" in items:
        raise bad_request(f"empty element in {name} list")
    return items


def parse_params(text: str, what: str = "header") -> dict[str, str | None]:
    """``;name[=value]`` parameters; names lower-cased, values kept as sent.

    Quoted values keep their quotes (use :func:`unquote`); a flag parameter
    maps to ``None``.  LWS around ``;`` and ``=`` is allowed (section 25.1).
    """
    text = text.strip()
    if not text:
        return {}
    if text[0] != ";":
        raise bad_request(f"junk before parameters in {what}: {text!r}")
    params: dict[str, str | None] = {}
    for item in split_outside(text[1:], ";"):
        name, eq, value = item.partition("=")
        name = name.strip()
        if not name:
            raise bad_request(f"empty parameter in {what}")
        if not _TOKEN.fullmatch(name):
            raise bad_request(f"bad parameter name {name!r} in {what}")
        if eq:
            value = value.strip()
            if not value:
                raise bad_request(f"empty value for parameter {name!r} in {what}")
            if value[0] == '"':
                unquote(value)  # validates
            params[name.lower()] = value
        else:
            params[name.lower()] = None
    return params


def format_params(params: dict[str, str | None]) -> str:
    return "".join(f";{k}" if v is None else f";{k}={v}" for k, v in params.items())


def param_value(params: dict[str, str | None], name: str) -> str | None:
    """A parameter's value with quotes removed, or None if absent/flag."""
    value = params.get(name)
    if value is None:
        return None
    return unquote(value) if value[:1] == '"' else value


# -- name-addr / addr-spec ------------------------------------------------


@dataclass(frozen=True)
class NameAddr:
    """``[display-name] <uri> *(;param)`` or ``addr-spec *(;param)``.

    Used for From, To, Contact, Route, Record-Route (RFC 3261 section 20).
    ``params`` are the header parameters (``tag``, ``expires``, ``q``...),
    never the URI's own parameters.
    """

    uri: Uri
    display_name: str | None = None
    params: dict[str, str | None] = field(default_factory=dict)

    @property
    def tag(self) -> str | None:
        return self.params.get("tag")

    @property
    def expires(self) -> int | None:
        """The ``expires`` parameter of a Contact (0..2**32-1), if any."""
        value = self.params.get("expires")
        return None if value is None else parse_uint32(value, "Contact expires")

    def with_params(self, **params: str | None) -> NameAddr:
        merged = dict(self.params)
        merged.update(params)
        return NameAddr(self.uri, self.display_name, merged)

    def __str__(self) -> str:
        if self.display_name is not None:
            head = f"{quote(self.display_name)} <{self.uri}>"
        else:
            head = f"<{self.uri}>"
        return head + format_params(self.params)


def parse_name_addr(value: str, what: str = "header") -> NameAddr:
    """Parse one name-addr or addr-spec with its header parameters."""
    text = value.strip()
    if text.startswith('"'):
        end = _skip_quoted(text, 0)
        display: str | None = unquote(text[:end])
        rest = text[end:].lstrip()
        if not rest.startswith("<"):
            raise bad_request(f"quoted display name without <URI> in {what}")
        return _angle_form(display, rest, what)
    lt = text.find("<")
    if lt >= 0 and '"' not in text[:lt]:
        words = text[:lt].split()
        for word in words:
            if not _TOKEN.fullmatch(word):
                raise bad_request(f"display name in {what} must be tokens or quoted")
        return _angle_form(" ".join(words) if words else None, text[lt:], what)
    # addr-spec: a bare URI cannot contain ',', '?' or ';' of its own: a ';'
    # starts header parameters (RFC 3261 section 20, RFC 4475 3.3.12).
    uri_text, semi, param_text = text.partition(";")
    uri_text = uri_text.strip()
    if "?" in uri_text or "," in uri_text:
        raise bad_request(f"URI with '?' or ',' must be enclosed in <> in {what}")
    uri = parse_uri(uri_text)
    return NameAddr(uri, None, parse_params(semi + param_text, what))


def _angle_form(display: str | None, rest: str, what: str) -> NameAddr:
    end = rest.find(">")
    if end < 0:
        raise bad_request(f"unclosed '<' in {what}")
    uri = parse_uri(rest[1:end])
    return NameAddr(uri, display, parse_params(rest[end + 1 :], what))


def parse_name_addr_list(value: str, what: str = "header") -> list[NameAddr]:
    return [parse_name_addr(item, what) for item in split_list(value, what)]


# -- Via ------------------------------------------------------------------


@dataclass(frozen=True)
class Via:
    """One Via value (RFC 3261 section 20.42)."""

    transport: str
    host: str
    port: int | None = None
    params: dict[str, str | None] = field(default_factory=dict)

    @property
    def branch(self) -> str | None:
        return self.params.get("branch")

    @property
    def received(self) -> str | None:
        return self.params.get("received")

    @property
    def maddr(self) -> str | None:
        return self.params.get("maddr")

    @property
    def rport(self) -> int | None:
        """The filled-in ``rport`` (RFC 3581), None if absent or a bare flag."""
        value = self.params.get("rport")
        return None if value is None else int(value)

    @property
    def ttl(self) -> int | None:
        value = self.params.get("ttl")
        return None if value is None else int(value)

    @property
    def sent_by(self) -> tuple[str, int | None]:
        return self.host.lower(), self.port

    def __str__(self) -> str:
        port = "" if self.port is None else f":{self.port}"
        return f"SIP/2.0/{self.transport} {self.host}{port}{format_params(self.params)}"


def parse_via(value: str) -> Via:
    """Parse one via-parm: ``SIP / 2.0 / UDP host:port ;params``."""
    pieces = value.split("/", 2)
    if len(pieces) != 3:
        raise bad_request("Via without sent-protocol")
    name, version, rest = pieces[0].strip(), pieces[1].strip(), pieces[2].lstrip()
    if name.upper() != "SIP" or version != "2.0":
        raise bad_request(f"Via protocol {name}/{version} is not SIP/2.0")
    space = 0
    while space < len(rest) and rest[space] not in " \t;":
        space += 1
    transport = rest[:space]
    if not _TOKEN.fullmatch(transport):
        raise bad_request("Via without transport")
    sent_by, semi, param_text = rest[space:].partition(";")
    sent_by = sent_by.strip()
    if not sent_by:
        raise bad_request("Via without sent-by")
    if "[" not in sent_by and ":" in sent_by:
        host_text, _, port_text = sent_by.partition(":")
        sent_by = host_text.strip() + ":" + port_text.strip()
    host, port = split_hostport(sent_by)
    params = parse_params(semi + param_text, "Via")
    ttl = params.get("ttl")
    if ttl is not None and (not _DIGITS.fullmatch(ttl) or int(ttl) > 255):
        raise bad_request(f"bad Via ttl {ttl!r}")
    rport = params.get("rport")
    if rport is not None and (not _DIGITS.fullmatch(rport) or int(rport) > 65535):
        raise bad_request(f"bad Via rport {rport!r}")
    return Via(transport.upper(), host, port, params)


def parse_via_list(value: str) -> list[Via]:
    return [parse_via(item) for item in split_list(value, "Via")]


# -- CSeq -----------------------------------------------------------------


@dataclass(frozen=True)
class CSeq:
    """``CSeq: number method`` (RFC 3261 section 20.16)."""

    number: int
    method: str

    def __str__(self) -> str:
        return f"{self.number} {self.method}"


def parse_cseq(value: str) -> CSeq:
    parts = value.split()
    if len(parts) != 2:
        raise bad_request("CSeq must be a number and a method")
    if not _TOKEN.fullmatch(parts[1]):
        raise bad_request("bad CSeq method")
    return CSeq(parse_uint32(parts[0], "CSeq number"), parts[1])


# -- event packages (RFC 6665) and friends -----------------------------------


@dataclass(frozen=True)
class EventHeader:
    """``Event: package[.template] *(;param)`` (RFC 6665 section 8.2.1).

    ``package`` is kept as written: RFC 6665 section 8.2.1 compares the
    event type octet by octet (spec 4.1), so ``LOAD-STATUS`` is another
    package; ``id`` is the ``id`` parameter.
    """

    package: str
    params: dict[str, str | None] = field(default_factory=dict)

    @property
    def id(self) -> str | None:
        return self.params.get("id")

    def __str__(self) -> str:
        return self.package + format_params(self.params)


def parse_event(value: str) -> EventHeader:
    package, semi, rest = value.partition(";")
    package = package.strip()
    if not _TOKEN.fullmatch(package):
        raise bad_request(f"bad event package {package!r}")
    return EventHeader(package, parse_params(semi + rest, "Event"))


@dataclass(frozen=True)
class SubscriptionState:
    """``Subscription-State: active|pending|terminated *(;param)`` (RFC 6665 8.2.3)."""

    state: str
    params: dict[str, str | None] = field(default_factory=dict)

    @property
    def expires(self) -> int | None:
        value = self.params.get("expires")
        return None if value is None else parse_uint32(value, "expires")

    @property
    def reason(self) -> str | None:
        value = self.params.get("reason")
        return None if value is None else value.lower()

    @property
    def retry_after(self) -> int | None:
        value = self.params.get("retry-after")
        return None if value is None else parse_uint32(value, "retry-after")

    def __str__(self) -> str:
        return self.state + format_params(self.params)


def parse_subscription_state(value: str) -> SubscriptionState:
    state, semi, rest = value.partition(";")
    state = state.strip()
    if not _TOKEN.fullmatch(state):
        raise bad_request(f"bad subscription state {state!r}")
    return SubscriptionState(state.lower(), parse_params(semi + rest, "Subscription-State"))


@dataclass(frozen=True)
class RetryAfter:
    """``Retry-After: delta-seconds [comment] *(;param)`` (RFC 3261 20.33)."""

    seconds: int
    params: dict[str, str | None] = field(default_factory=dict)

    @property
    def duration(self) -> int | None:
        value = self.params.get("duration")
        return None if value is None else parse_uint32(value, "duration")


def parse_retry_after(value: str) -> RetryAfter:
    text = value.strip()
    end = 0
    while end < len(text) and text[end].isdigit():
        end += 1
    seconds = parse_uint32(text[:end], "Retry-After")
    rest = text[end:].lstrip()
    if rest.startswith("("):
        close = rest.find(")")  # comments do not nest in practice
        if close < 0:
            raise bad_request("unterminated comment in Retry-After")
        rest = rest[close + 1 :]
    return RetryAfter(seconds, parse_params(rest, "Retry-After"))


def parse_token_list(value: str, what: str) -> list[str]:
    """A comma-separated list of tokens (Allow, Require, Supported, Allow-Events)."""
    items = split_list(value, what)
    for item in items:
        if not _TOKEN.fullmatch(item):
            raise bad_request(f"bad token {item!r} in {what}")
    return items


def parse_media_type(value: str) -> tuple[str, dict[str, str | None]]:
    """``type/subtype *(;param)``, type lower-cased (RFC 3261 section 20.15)."""
    media, semi, rest = value.partition(";")
    kind, slash, sub = media.strip().partition("/")
    kind, sub = kind.strip(), sub.strip()
    if not slash or not _TOKEN.fullmatch(kind) or not _TOKEN.fullmatch(sub):
        raise bad_request(f"bad media type {media.strip()!r}")
    return f"{kind}/{sub}".lower(), parse_params(semi + rest, "Content-Type")


__all__ = [
    "AbsoluteUri", "CSeq", "COMPACT_FORMS", "EventHeader", "LIST_HEADERS", "MAX_UINT32",
    "NameAddr", "RetryAfter", "SipError", "SipUri", "SubscriptionState", "Via",
    "canonical_name", "format_params", "is_token", "param_value", "parse_cseq",
    "parse_event", "parse_media_type", "parse_name_addr", "parse_name_addr_list",
    "parse_params", "parse_retry_after", "parse_subscription_state", "parse_token_list",
    "parse_uint32", "parse_via", "parse_via_list", "quote", "split_list", "unquote",
]
