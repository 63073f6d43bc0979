"""A Notifier on a fake clock as the tests drive it: SUBSCRIBEs from a
proxy, the NOTIFYs it sends answered or not, its timers fired up to a time.
"""

from __future__ import annotations

import random

from sipstatus.sip import Request, make_response
from sipstatus.sip.identifiers import IdGenerator
from sipstatus.sip.notifier import Notifier
from sipstatus.sip.transaction import Destination
from sipstatus.sip.transaction_user import SendRequest, SendResponse

TYPE = "application/load-status+json"
PROXY = Destination("UDP", "192.0.2.10", 5060)
PROXY_TCP = Destination("TCP", "192.0.2.10", 40123)
OTHER = Destination("UDP", "192.0.2.11", 5060)


def subscribe(*, call_id="c1", from_tag="w1", to_tag=None, cseq=1, expires: int | None = 600,
              event="load-status", contact="sip:watcher@192.0.2.10:5060",
              from_uri="sip:watcher@proxy.example", extra=()) -> Request:
    to = "<sip:agent@192.0.2.1>" + (f";tag={to_tag}" if to_tag else "")
    headers = [
        ("Via", f"SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK{call_id}{cseq}"),
        ("Max-Forwards", "70"),
        ("From", f"<{from_uri}>;tag={from_tag}"),
        ("To", to),
        ("Call-ID", call_id),
        ("CSeq", f"{cseq} SUBSCRIBE"),
        ("Contact", f"<{contact}>"),
    ]
    if event is not None:
        headers.append(("Event", event))
    if expires is not None:
        headers.append(("Expires", str(expires)))
    headers.extend(extra)
    return Request("SUBSCRIBE", "sip:agent@192.0.2.1", headers)


def notifier(**kw) -> Notifier:
    kw.setdefault("ids", IdGenerator(random.Random(1).randbytes))
    return Notifier("load-status", TYPE, "sip:agent@192.0.2.1:5060", **kw)


def responses(out) -> list:
    return [o.response for o in out if isinstance(o, SendResponse)]


def notifies(out) -> list[SendRequest]:
    return [o for o in out if isinstance(o, SendRequest)]


def events(out, kind) -> list:
    return [o for o in out if isinstance(o, kind)]


def state_of(send: SendRequest) -> str:
    return send.request.header("Subscription-State") or ""


def established(n: Notifier, now=0.0, **kw):
    """Subscribe and answer the first NOTIFY; returns (to_tag, first NOTIFY)."""
    out = n.handle_request(subscribe(**kw), PROXY, now)
    (ok,) = responses(out)
    (first,) = notifies(out)
    n.handle_response(make_response(first.request, 200), first.request, now)
    return ok.to_addr.tag, first


def ok(n: Notifier, send: SendRequest, now: float):
    return n.handle_response(make_response(send.request, 200), send.request, now)


def drive(n: Notifier, until: float, answer: bool = True) -> list[tuple[float, object]]:
    """Fire timers up to ``until``, answering NOTIFYs 200 at once."""
    seen = []
    while (when := n.next_timer()) is not None and when <= until:
        for o in n.handle_timer(when):
            seen.append((when, o))
            if answer and isinstance(o, SendRequest):
                ok(n, o, when)
    return seen
