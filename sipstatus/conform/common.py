"""What the three scenarios share: targets, bodies, requests and checks of a body."""

from __future__ import annotations

import json
import re
import secrets

from ..codec import MEDIA_TYPE, StatusError, decode
from ..sip import Request, Response, SipError
from ..sip.uri import SipUri, parse_uri
from .peer import new_call_id, new_tag

PACKAGE = "load-status"
#: Spec 6.6: the reason phrase of a 400 for a body.
BODY_REASON = re.compile(r"Invalid load-status body: (\S+) \(([A-Za-z-]+)\)")


def parse_target(target: str) -> tuple[str, int]:
    """``sip:host:port`` (or ``host:port``) as an address; the port defaults to 5060."""
    text = target if target.startswith(("sip:", "sips:")) else f"sip:{target}"
    try:
        uri = parse_uri(text)
    except SipError as error:
        raise ValueError(f"not a SIP URI: {target!r} ({error.reason})") from None
    if not isinstance(uri, SipUri):
        raise ValueError(f"not a SIP URI: {target!r}")
    return uri.host.strip("[]"), uri.port or 5060


def body(node: str, instance: str, seq: int, **changes: object) -> bytes:
    """A valid body (spec 6): active, capacity 0.5, weight 50, validity 15."""
    value: dict[str, object] = {"version": 1, "node": node, "instance": instance, "seq": seq,
                                "validity": 15, "state": "active", "capacity": 0.5, "weight": 50}
    value.update(changes)
    return json.dumps(value, separators=(",", ":")).encode()


def new_instance() -> str:
    return secrets.token_hex(5)


def valid_body(data: bytes) -> tuple[object, str]:
    """(the decoded status, "") or (None, why the body breaks spec 6)."""
    try:
        return decode(data), ""
    except StatusError as error:
        return None, f"{error.member or 'body'} ({error.rule}): {error}"


def out_of_dialog(method: str, uri: str, local: str, *, event: str | None = PACKAGE,
                  expires: int | None = None, extra: list[tuple[str, str]] | None = None,
                  payload: bytes = b"", content_type: str | None = MEDIA_TYPE,
                  call_id: str | None = None, from_tag: str | None = None,
                  from_user: str = "conform", cseq: int = 1, to_tag: str | None = None) -> Request:
    host = local.rsplit(":", 1)[0]
    headers = [
        ("Max-Forwards", "70"),
        ("From", f"<sip:{from_user}@{host}>;tag={from_tag or new_tag()}"),
        ("To", f"<{uri}>" + (f";tag={to_tag}" if to_tag else "")),
        ("Call-ID", call_id or new_call_id(host)),
        ("CSeq", f"{cseq} {method}"),
    ]
    if method == "SUBSCRIBE":
        headers.append(("Contact", f"<sip:{from_user}@{local}>"))
    if event is not None:
        headers.append(("Event", event))
    if expires is not None:
        headers.append(("Expires", str(expires)))
    headers.extend(extra or [])
    if payload and content_type:
        headers.append(("Content-Type", content_type))
    return Request(method, uri, headers, payload)


def status_of(response: Response | None) -> str:
    if response is None:
        return "no response"
    return f"{response.status} {response.reason}"


def header(response: Response | None, name: str) -> str:
    return "" if response is None else (response.header(name) or "")
