"""SIP and SIPS URIs (RFC 3261 section 19.1 and the grammar in section 25.1).

``parse_uri`` returns a :class:`SipUri` for the ``sip`` and ``sips`` schemes
and an :class:`AbsoluteUri` (scheme + opaque text) for any other scheme, so a
Request-URI such as ``nobodyKnowsThisScheme:totallyopaquecontent`` parses
and the layer above can answer 416 (RFC 4475 section 3.3.2).

Components are stored unescaped (``%41`` -> ``A``, once: ``%2541`` -> ``%41``);
``str()`` escapes them again with the character sets of section 25.1.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from urllib.parse import unquote_to_bytes

from .errors import bad_request

# RFC 3261 section 25.1 character classes, used to escape on output.
_ALNUM = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
_UNRESERVED = frozenset(_ALNUM + "-_.!~*'()")
_USER_SAFE = _UNRESERVED | frozenset("&=+$,;?/")
_PASSWORD_SAFE = _UNRESERVED | frozenset("&=+$,")
_PARAM_SAFE = _UNRESERVED | frozenset("[]/:&+$")
_HEADER_SAFE = _UNRESERVED | frozenset("[]/?:+$")

_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*")
# hostname / IPv4address. '_' is not in the grammar but occurs in the wild
# (Docker and Kubernetes service names); accepting it costs nothing.
_HOSTNAME = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_.\-]*)")
_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")
# Characters that never appear unescaped in any URI we accept: they delimit
# URIs inside header fields (RFC 3261 section 25.1, RFC 4475 sections
# 3.1.2.7, 3.1.2.8 and 3.1.2.14).
_URI_FORBIDDEN = re.compile(r"[\x00-\x20<>\"\x7f]")


def unescape(text: str) -> str:
    """Undo %HH escapes once (RFC 3261 section 19.1.2); NUL octets are kept."""
    if "%" not in text:
        return text
    if _BAD_ESCAPE.search(text):
        raise bad_request(f"bad % escape in URI component {text!r}")
    # The text came from bytes by surrogateescape: back to those bytes before
    # unquoting (unquote_to_bytes would encode a str strictly and fail).
    raw = unquote_to_bytes(text.encode("utf-8", "surrogateescape"))
    return raw.decode("utf-8", "surrogateescape")


def escape(text: str, safe: frozenset[str]) -> str:
    """Escape every character of ``text`` outside ``safe`` as %HH (UTF-8)."""
    if all(c in safe for c in text):
        return text
    out = []
    for c in text:
        if c in safe:
            out.append(c)
        else:
            out.extend(f"%{b:02X}" for b in c.encode("utf-8", "surrogateescape"))
    return "".join(out)


@dataclass(frozen=True)
class AbsoluteUri:
    """A URI of a scheme other than sip/sips, kept opaque (RFC 3261 section 19)."""

    scheme: str
    opaque: str

    def __str__(self) -> str:
        return f"{self.scheme}:{self.opaque}"


@dataclass(frozen=True)
class SipUri:
    """A ``sip:`` or ``sips:`` URI with its components unescaped.

    ``params`` maps lower-cased parameter names to values (``None`` for a
    flag such as ``lr``); ``headers`` is the ordered ``?name=value`` list.
    """

    host: str
    user: str | None = None
    password: str | None = None
    port: int | None = None
    params: dict[str, str | None] = field(default_factory=dict)
    headers: tuple[tuple[str, str], ...] = ()
    scheme: str = "sip"

    @property
    def transport(self) -> str | None:
        """The ``transport`` URI parameter, lower-cased, if any."""
        value = self.params.get("transport")
        return value.lower() if value else None

    @property
    def lr(self) -> bool:
        """True for a loose router's URI (RFC 3261 section 19.1.1)."""
        return "lr" in self.params

    @property
    def hostport(self) -> str:
        return self.host if self.port is None else f"{self.host}:{self.port}"

    def with_params(self, **params: str | None) -> SipUri:
        """A copy with ``params`` added or replaced."""
        merged = dict(self.params)
        merged.update(params)
        return SipUri(self.host, self.user, self.password, self.port, merged,
                      self.headers, self.scheme)

    def __str__(self) -> str:
        parts = [self.scheme, ":"]
        if self.user is not None:
            parts.append(escape(self.user, _USER_SAFE))
            if self.password is not None:
                parts.append(":" + escape(self.password, _PASSWORD_SAFE))
            parts.append("@")
        parts.append(self.hostport)
        for name, value in self.params.items():
            parts.append(";" + escape(name, _PARAM_SAFE))
            if value is not None:
                parts.append("=" + escape(value, _PARAM_SAFE))
        if self.headers:
            parts.append("?")
            parts.append("&".join(
                escape(n, _HEADER_SAFE) + "=" + escape(v, _HEADER_SAFE)
                for n, v in self.headers
            ))
        return "".join(parts)


Uri = SipUri | AbsoluteUri


def parse_host(text: str) -> str:
    """Check a host (hostname, IPv4 address or IPv6 reference) and return it."""
    if text.startswith("["):
        if not text.endswith("]"):
            raise bad_request(f"unterminated IPv6 reference {text!r}")
        try:
            ipaddress.IPv6Address(text[1:-1])
        except ValueError:
            raise bad_request(f"bad IPv6 reference {text!r}") from None
        return text
    if not _HOSTNAME.fullmatch(text):
        raise bad_request(f"bad host {text!r}")
    return text


def parse_port(text: str) -> int:
    """A port number, 0-65535 (RFC 3261 section 25.1: port = 1*DIGIT)."""
    if not text.isascii() or not text.isdigit() or len(text) > 5:
        raise bad_request(f"bad port {text!r}")
    port = int(text)
    if port > 65535:
        raise bad_request(f"port {port} out of range")
    return port


def split_hostport(text: str) -> tuple[str, int | None]:
    """Split ``host[:port]`` (IPv6 references in brackets)."""
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise bad_request(f"unterminated IPv6 reference {text!r}")
        host, rest = text[: end + 1], text[end + 1 :]
        if not rest:
            return parse_host(host), None
        if rest[0] != ":":
            raise bad_request(f"junk after IPv6 reference {text!r}")
        return parse_host(host), parse_port(rest[1:])
    host, colon, port = text.partition(":")
    return parse_host(host), (parse_port(port) if colon else None)


def parse_uri(text: str) -> Uri:
    """Parse a URI as it appears in a Request-URI or between ``<`` and ``>``."""
    if _URI_FORBIDDEN.search(text):
        raise bad_request(f"whitespace or delimiter inside URI {text!r}")
    scheme, colon, rest = text.partition(":")
    if not colon or not _SCHEME.fullmatch(scheme):
        raise bad_request(f"no URI scheme in {text!r}")
    lowered = scheme.lower()
    if lowered != "sip" and lowered != "sips":
        if not rest:
            raise bad_request(f"empty {scheme} URI")
        return AbsoluteUri(scheme, rest)
    return _parse_sip_uri(lowered, rest, text)


def _parse_sip_uri(scheme: str, rest: str, text: str) -> SipUri:
    # '@' cannot appear unescaped after the userinfo (section 25.1), but ';',
    # '?' and ':' can appear inside the user part (RFC 4475 3.1.1.2, 3.1.1.9),
    # so the userinfo is found first.
    user = password = None
    at = rest.find("@")
    if at >= 0:
        userinfo, rest = rest[:at], rest[at + 1 :]
        if "@" in rest:
            raise bad_request(f"more than one '@' in URI {text!r}")
        name, colon, secret = userinfo.partition(":")
        if not name:
            raise bad_request(f"empty user in URI {text!r}")
        user = unescape(name)
        password = unescape(secret) if colon else None
    headers: tuple[tuple[str, str], ...] = ()
    q = rest.find("?")
    if q >= 0:
        headers = _parse_uri_headers(rest[q + 1 :], text)
        rest = rest[:q]
    hostport, _, param_text = rest.partition(";")
    host, port = split_hostport(hostport)
    params: dict[str, str | None] = {}
    if param_text:
        for item in param_text.split(";"):
            name, eq, value = item.partition("=")
            if not name:
                raise bad_request(f"empty URI parameter in {text!r}")
            params[unescape(name).lower()] = unescape(value) if eq else None
    return SipUri(host, user, password, port, params, headers, scheme)


def _parse_uri_headers(text: str, uri: str) -> tuple[tuple[str, str], ...]:
    out = []
    for item in text.split("&"):
        name, eq, value = item.partition("=")
        if not name or not eq:
            raise bad_request(f"bad URI header {item!r} in {uri!r}")
        out.append((unescape(name), unescape(value)))
    return tuple(out)
