"""A Publisher on a fake clock as the tests drive it: the compositor's
answers, bodies to publish, its timers fired up to a time.
"""

from __future__ import annotations

import random

from sipstatus.sip import Request, make_response
from sipstatus.sip.identifiers import IdGenerator
from sipstatus.sip.publisher import Publisher
from sipstatus.sip.transaction import Destination
from sipstatus.sip.transaction_user import SendRequest

TYPE = "application/load-status+json"
PROXY = Destination("UDP", "192.0.2.10", 5060)
AGENT = Destination("UDP", "192.0.2.1", 5060)


def publisher(**kw) -> Publisher:
    kw.setdefault("ids", IdGenerator(random.Random(4).randbytes))
    kw.setdefault("random", lambda: 1.0)  # no jitter: exact waits
    return Publisher("sip:node1@proxy.example", "load-status", TYPE, "sip:agent@192.0.2.1",
                     destination=PROXY, **kw)


def counter():
    seq = iter(range(1, 100_000))
    return lambda now: f'{{"seq":{next(seq)}}}'.encode()


def sent(out) -> list[Request]:
    return [o.request for o in out if isinstance(o, SendRequest)]


def events(out, kind) -> list:
    return [o for o in out if isinstance(o, kind)]


def ok(req: Request, etag="e1", expires=600):
    return make_response(req, 200, headers=[("SIP-ETag", etag), ("Expires", str(expires))])


def published(pub: Publisher | None = None, body=b"b1", now=0.0):
    pub = pub or publisher()
    (req,) = sent(pub.publish(body, now))
    pub.handle_response(ok(req), req, now)
    return pub


def run(pub, until, answer=None):
    """Fire timers up to ``until``; ``answer(request, when)`` answers what is sent."""
    seen = []
    while (when := pub.next_timer()) is not None and when <= until:
        for o in pub.handle_timer(when):
            seen.append((when, o))
            if answer is not None and isinstance(o, SendRequest):
                seen.extend((when, e) for e in pub.handle_response(answer(o.request, when),
                                                                   o.request, when))
    return seen


def requests_of(seen):
    return [(t, o.request) for t, o in seen if isinstance(o, SendRequest)]
