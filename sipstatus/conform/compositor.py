"""The kit as a publisher, checking a compositor (spec 5.3-5.5, 6.6, 7.1)."""

from __future__ import annotations

from ..sip import Response
from .common import BODY_REASON, PACKAGE, body, header, new_instance, out_of_dialog, status_of
from .peer import Peer, new_call_id, new_tag
from .report import Report


class CompositorCheck:
    """``node`` must be one the compositor accepts from the kit (in its pool,
    or auto-join on); ``resource`` is the Request-URI it serves."""

    def __init__(self, peer: Peer, target: tuple[str, int], report: Report, *, node: str,
                 resource: str | None = None) -> None:
        self.peer = peer
        self.target = target
        self.report = report
        self.node = node
        host = f"[{target[0]}]" if ":" in target[0] else target[0]
        self.uri = resource or f"sip:{PACKAGE}@{host}:{target[1]}"
        self.instance = new_instance()
        self.seq = 0
        self.call_id = new_call_id(peer.host)
        self.tag = new_tag()
        self.cseq = 0

    def publish(self, *, payload: bytes | None = None, if_match: str | None = None,
                expires: int | None = 600, event: str = PACKAGE,
                content_type: str = "application/load-status+json",
                fresh: bool = True) -> Response | None:
        """One PUBLISH of the kit's publication; ``fresh``: a new valid body."""
        if payload is None and fresh:
            self.seq += 1
            payload = body(self.node, self.instance, self.seq)
        self.cseq += 1
        extra = [("SIP-If-Match", if_match)] if if_match else []
        request = out_of_dialog("PUBLISH", self.uri, self.peer.hostport, event=event,
                                expires=expires, extra=extra, payload=payload or b"",
                                content_type=content_type, call_id=self.call_id,
                                from_tag=self.tag, from_user="agent", cseq=self.cseq)
        return self.peer.send_request(request, self.target)

    def run(self) -> None:
        check = self.report.check
        first = self.publish()
        tag1 = header(first, "SIP-ETag")
        if not check("5.5", "an initial PUBLISH with a valid body gets 200 with SIP-ETag",
                     first is not None and first.status == 200 and bool(tag1),
                     f"{status_of(first)} (is node {self.node!r} in the pool?)"):
            return
        assert first is not None
        check("5.3", "the granted Expires is between 60 s and the 600 s asked",
              first.expires is not None and 60 <= first.expires <= 600,
              f"Expires: {header(first, 'Expires')}")
        modified = self.publish(if_match=tag1)
        tag2 = header(modified, "SIP-ETag")
        check("5.4", "a modification gets 200 with a new entity tag",
              modified is not None and modified.status == 200 and tag2 not in ("", tag1),
              f"{status_of(modified)} SIP-ETag: {tag2}")
        again = self.peer.retransmit_last()
        check("5.4", "a retransmitted PUBLISH is answered from its transaction (not 412)",
              again is not None and again.status == 200, status_of(again))
        refreshed = self.publish(if_match=tag2, fresh=False)
        tag3 = header(refreshed, "SIP-ETag")
        check("5.4", "a refresh without body gets 200 with a new entity tag",
              refreshed is not None and refreshed.status == 200 and tag3 not in ("", tag1, tag2),
              f"{status_of(refreshed)} SIP-ETag: {tag3}")
        stale = self.publish(if_match=tag1)
        check("5.4", "a replaced entity tag gets 412",
              stale is not None and stale.status == 412, status_of(stale))
        both = self.publish(if_match=tag1, expires=30)
        check("5.5", "a replaced entity tag with Expires: 30 gets 412 (step 5 comes before step 6)",
              both is not None and both.status == 412, status_of(both))
        current = tag3
        brief = self.publish(if_match=current, expires=30)
        check("5.3", "Expires: 30 gets 423 with Min-Expires: 60",
              brief is not None and brief.status == 423 and brief.min_expires == 60,
              f"{status_of(brief)} Min-Expires: {header(brief, 'Min-Expires')}")
        current = header(brief, "SIP-ETag") or current
        wrong_type = self.publish(if_match=current, content_type="text/plain")
        check("5.5", "a body of another Content-Type gets 415",
              wrong_type is not None and wrong_type.status == 415, status_of(wrong_type))
        bare = self.publish(fresh=False)
        check("5.5", "an initial PUBLISH without a body gets 400",
              bare is not None and bare.status == 400, status_of(bare))
        self.seq += 1
        broken = self.publish(if_match=current, payload=body(self.node, self.instance, self.seq,
                                                              state="sleeping"))
        check("5.5", "a body that breaks a rule of section 6 gets 400",
              broken is not None and broken.status == 400, status_of(broken))
        match = BODY_REASON.fullmatch(broken.reason or "") if broken else None
        check("6.6", "its reason phrase is 'Invalid load-status body: state (enum)'",
              match is not None and match.groups() == ("state", "enum"),
              status_of(broken))
        self.seq += 1
        other = self.publish(if_match=current, payload=body("conform-other", self.instance,
                                                             self.seq))
        check("5.5", "a body for another node under this entity tag gets 400",
              other is not None and other.status == 400, status_of(other))
        match = BODY_REASON.fullmatch(other.reason or "") if other else None
        check("6.6", "its reason phrase is 'Invalid load-status body: node (publication)'",
              match is not None and match.groups() == ("node", "publication"), status_of(other))
        for name in ("LOAD-STATUS", "presence"):
            response = self.publish(if_match=current, event=name)
            check("4.1" if name.lower() == PACKAGE else "5.5",
                  f"Event: {name} gets 489 with Allow-Events: load-status",
                  response is not None and response.status == 489
                  and PACKAGE in response.allow_events, status_of(response))
        old = self.publish(if_match=current, payload=body(self.node, self.instance, 1))
        check("5.5", "a valid body older than the last (same instance, lower seq) gets 200",
              old is not None and old.status == 200, status_of(old))
        current = header(old, "SIP-ETag") or current
        removed = self.publish(if_match=current, expires=0, fresh=False)
        check("5.2.4", "Expires: 0 removes the publication with 200",
              removed is not None and removed.status == 200, status_of(removed))
        after = self.publish(if_match=current, fresh=False)
        check("5.4", "the entity tag of a removed publication gets 412",
              after is not None and after.status == 412, status_of(after))
