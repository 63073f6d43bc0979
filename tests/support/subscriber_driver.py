"""A Subscriber on a fake clock as the tests drive it: the agent's answers
and NOTIFYs, its timers fired up to a time.
"""

from __future__ import annotations

import json
import random

from sipstatus.sip import Request, make_response
from sipstatus.sip.identifiers import IdGenerator
from sipstatus.sip.subscriber import Subscriber, SubscriberConfig
from sipstatus.sip.transaction import Destination
from sipstatus.sip.transaction_user import SendRequest, SendResponse

TYPE = "application/load-status+json"
AGENT = Destination("UDP", "192.0.2.1", 5060)


class BodyError(ValueError):
    """Like the codec's StatusError: names the member and the rule."""

    def __init__(self, member, rule, detail):
        super().__init__(f"{member}: {detail} (rule: {rule})")
        self.member, self.rule = member, rule


def decode(body: bytes) -> dict:
    value = json.loads(body)
    if "seq" not in value:
        raise BodyError("seq", "required", "missing")
    return value


def config(**kw) -> SubscriberConfig:
    kw.setdefault("ids", IdGenerator(random.Random(3).randbytes))
    kw.setdefault("random", lambda: 1.0)  # no jitter: backoff = its ceiling
    kw.setdefault("decode", decode)
    return SubscriberConfig("load-status", TYPE, "sip:watcher@192.0.2.10",
                            "sip:watcher@192.0.2.10:5060", **kw)


def subscriber(**kw) -> Subscriber:
    return Subscriber("sip:agent@192.0.2.1", config(**kw), destination=AGENT)


def sent(out) -> list[Request]:
    return [o.request for o in out if isinstance(o, SendRequest)]


def answers(out) -> list:
    return [o.response for o in out if isinstance(o, SendResponse)]


def events(out, kind) -> list:
    return [o for o in out if isinstance(o, kind)]


def reply(request: Request, status: int, *, to_tag="n1", headers=(), contact=True):
    extra = list(headers)
    if contact and 200 <= status < 300:
        extra.append(("Contact", "<sip:agent@192.0.2.1:5060>"))
    return make_response(request, status, to_tag=to_tag, headers=extra)


def notify(sub: Subscriber, cseq: int, state: str = "active;expires=600",
           body: bytes | None = b'{"seq":1}', *, from_tag="n1", event="load-status",
           content_type=TYPE, extra=()) -> Request:
    headers = [
        ("Via", f"SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKn{cseq}"),
        ("From", f"<sip:agent@192.0.2.1>;tag={from_tag}"),
        ("To", f"<sip:watcher@192.0.2.10>;tag={sub.local_tag}"),
        ("Call-ID", sub.call_id),
        ("CSeq", f"{cseq} NOTIFY"),
        ("Contact", "<sip:agent@192.0.2.1:5060>"),
        ("Event", event),
        ("Subscription-State", state),
    ]
    if body:
        headers.append(("Content-Type", content_type))
    headers.extend(extra)
    return Request("NOTIFY", "sip:watcher@192.0.2.10:5060", headers, body or b"")


def active(sub: Subscriber | None = None, now: float = 0.0, expires: int = 600):
    """Subscribe, get 200 and a first NOTIFY; returns the subscriber."""
    sub = sub or subscriber()
    (req,) = sent(sub.start(now))
    sub.handle_response(reply(req, 200, headers=[("Expires", str(expires))]), req, now)
    sub.handle_request(notify(sub, 1, f"active;expires={expires}"), AGENT, now)
    return sub


def run(sub: Subscriber, until: float) -> list[tuple[float, object]]:
    seen = []
    while (when := sub.next_timer()) is not None and when <= until:
        seen.extend((when, o) for o in sub.handle_timer(when))
    return seen
