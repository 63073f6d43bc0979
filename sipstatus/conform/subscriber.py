"""The kit as a notifier, checking a subscriber (spec 4.3-4.4, 4.7.4, 4.8, 6.6, 7.1).

The subscriber under test is configured to subscribe to the kit's address;
the kit answers, then sends it NOTIFYs good and bad and watches when it
comes back.
"""

from __future__ import annotations

import time

from ..codec import MEDIA_TYPE
from ..sip import Request, Response
from .common import BODY_REASON, PACKAGE, body, new_instance, status_of
from .peer import Peer, Received, new_call_id
from .report import Report

#: Spec 4.8: after a refused NOTIFY body, a new SUBSCRIBE no sooner than this.
BAD_BODY_WAIT = 30.0
PROBATION_RETRY_AFTER = 3


class SubscriberCheck:
    def __init__(self, peer: Peer, report: Report, *, node: str, wait: float) -> None:
        self.peer = peer
        self.report = report
        self.node = node
        self.wait = wait
        self.instance = new_instance()
        self.seq = 0
        self.cseq = 0
        peer.policy = self._answer_subscribe

    @staticmethod
    def _answer_subscribe(request: Request) -> tuple[int, list[tuple[str, str]]]:
        if request.method != "SUBSCRIBE":
            return 405, [("Allow", "SUBSCRIBE")]
        expires = request.expires
        granted = 600 if expires is None else min(expires, 3600)
        return 200, [("Expires", str(granted)), ("Contact", "<sip:load-status@{host}>"),
                     ("Allow-Events", PACKAGE)]

    def subscribe_arrives(self, timeout: float, after: int) -> Received | None:
        return self.peer.wait_request(
            lambda r: r.request.method == "SUBSCRIBE" and r.request.expires != 0, timeout, after)

    def notify(self, sub: Received, state: str, payload: bytes | None,
               *, content_type: str = MEDIA_TYPE, call_id: str | None = None) -> Response | None:
        request = sub.request
        assert request.from_addr is not None and request.to_addr is not None
        self.cseq += 1
        contacts = request.contacts
        target = str(contacts[0].uri) if contacts else str(request.from_addr.uri)
        headers = [
            ("Max-Forwards", "70"),
            ("From", f"<{request.to_addr.uri}>;tag={sub.to_tag}"),
            ("To", request.header("From") or ""),
            ("Call-ID", call_id or request.call_id or ""),
            ("CSeq", f"{self.cseq} NOTIFY"),
            ("Contact", f"<sip:load-status@{self.peer.hostport}>"),
            ("Event", PACKAGE), ("Subscription-State", state),
        ]
        if payload:
            headers.append(("Content-Type", content_type))
        return self.peer.send_request(Request("NOTIFY", target, headers, payload or b""), sub.source)

    def fresh(self, **changes: object) -> bytes:
        self.seq += 1
        return body(self.node, self.instance, self.seq, **changes)

    def run(self) -> None:
        check = self.report.check
        # Fix the Contact of our 200s now that the address is known.
        host = self.peer.hostport
        policy = self._answer_subscribe
        self.peer.policy = lambda r: (lambda s, h: (s, [(n, v.replace("{host}", host))
                                                        for n, v in h]))(*policy(r))
        sub = self.subscribe_arrives(self.wait, 0)
        if not check("4.4", f"a SUBSCRIBE arrives (within {self.wait:g} s)", sub is not None,
                     f"configure the subscriber to subscribe to sip:{host}"):
            return
        assert sub is not None
        request = sub.request
        event = request.event
        check("4.1", "its Event is load-status, exactly", event is not None
              and event.package == PACKAGE, request.header("Event") or "none")
        check("4.4", "it asks for at least 60 s (or for the default)",
              request.expires is None or request.expires >= 60, request.header("Expires") or "")
        check("4.3", "it accepts application/load-status+json (Accept absent or naming it)",
              request.header("Accept") is None
              or any(MEDIA_TYPE in v.lower() for v in request.header_values("Accept")),
              request.header("Accept") or "")
        check("4.6.3", "it carries exactly one Contact and a From tag",
              len(request.contacts) == 1 and bool(request.from_addr and request.from_addr.tag),
              f"{len(request.contacts)} Contact")
        good = self.notify(sub, "active;expires=600", self.fresh())
        check("4.8", "a NOTIFY with a valid body gets 200", good is not None and good.status == 200,
              status_of(good))
        old = self.notify(sub, "active;expires=599", body(self.node, self.instance, 1))
        check("7.1", "a NOTIFY with an old seq is ignored and still gets 200",
              old is not None and old.status == 200, status_of(old))
        stray = self.notify(sub, "active;expires=598", self.fresh(), call_id=new_call_id("conform"))
        check("4.8", "a NOTIFY matching no subscription gets 481",
              stray is not None and stray.status == 481, status_of(stray))
        # 4.7.4: probation with retry-after.
        mark = len(self.peer.inbox)
        ended = self.notify(sub, f"terminated;reason=probation;retry-after={PROBATION_RETRY_AFTER}",
                            self.fresh(state="down", capacity=0, weight=0))
        check("4.7.4", "a final NOTIFY (probation) with a down body gets 200",
              ended is not None and ended.status == 200, status_of(ended))
        sent_at = time.monotonic()
        again = self.subscribe_arrives(PROBATION_RETRY_AFTER + 20.0, mark)
        since = again.at - sent_at if again else 0.0
        check("4.7.4", f"after probation;retry-after={PROBATION_RETRY_AFTER} it subscribes again, "
              "not sooner", again is not None and since >= PROBATION_RETRY_AFTER - 0.2,
              "no new SUBSCRIBE" if again is None else f"after {since:.1f} s")
        if again is None:
            return
        first = self.notify(again, "active;expires=600", self.fresh())
        bad = self.notify(again, "active;expires=600", self.fresh(state="sleeping"))
        check("4.8", "a NOTIFY whose body breaks a rule of section 6 gets 400",
              first is not None and first.status == 200 and bad is not None and bad.status == 400,
              f"{status_of(first)}, then {status_of(bad)}")
        match = BODY_REASON.fullmatch(bad.reason or "") if bad else None
        check("6.6", "its reason phrase is 'Invalid load-status body: state (enum)'",
              match is not None and match.groups() == ("state", "enum"), status_of(bad))
        if bad is None or bad.status != 400:
            return  # the subscription goes on: there is no re-subscription to time
        refused_at = time.monotonic()
        mark = len(self.peer.inbox)
        later = self.subscribe_arrives(BAD_BODY_WAIT + 60.0, mark)
        waited = (later.at - refused_at) if later else 0.0
        check("4.8", f"after answering 400 it subscribes again, no sooner than {BAD_BODY_WAIT:g} s",
              later is not None and waited >= BAD_BODY_WAIT - 0.5,
              "no new SUBSCRIBE" if later is None else f"after {waited:.1f} s")
        if later is None:
            return
        wrong = self.notify(later, "active;expires=600", self.fresh(), content_type="text/plain")
        check("4.8", "a NOTIFY with another Content-Type gets 415",
              wrong is not None and wrong.status == 415, status_of(wrong))
