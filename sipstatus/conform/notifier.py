"""The kit as a subscriber, checking a notifier (spec 4.1-4.7, 7.1, 8)."""

from __future__ import annotations

import time
from dataclasses import dataclass

from ..codec import MEDIA_TYPE
from ..sip import Request, Response
from .common import PACKAGE, header, out_of_dialog, status_of, valid_body
from .peer import Peer, Received, new_tag
from .report import Report

#: How long the first NOTIFY may take after the 200 (spec 4.6.4 says "at
#: once"; this allows for a loaded machine).
FIRST_NOTIFY_WAIT = 5.0
#: How late a heartbeat may arrive and still pass 8.5 (network and load).
HEARTBEAT_SLACK = 2.0


@dataclass
class Subscription:
    """One subscription the kit holds: enough to refresh and match NOTIFYs."""

    call_id: str
    from_tag: str
    from_user: str
    to_tag: str
    remote_target: str
    cseq: int
    granted: int


def _seq_instance(received: Received) -> tuple[int, str] | None:
    value, _ = valid_body(received.request.body)
    return None if value is None else (value.seq, value.instance)  # type: ignore[attr-defined]


class NotifierCheck:
    def __init__(self, peer: Peer, target: tuple[str, int], report: Report) -> None:
        self.peer = peer
        self.target = target
        self.report = report
        host = f"[{target[0]}]" if ":" in target[0] else target[0]
        self.uri = f"sip:{PACKAGE}@{host}:{target[1]}"
        self.users = 0

    def _user(self) -> str:
        self.users += 1
        return f"conform{self.users}"

    def subscribe(self, *, user: str | None = None, event: str = PACKAGE, expires: int | None = 600,
                  extra: list[tuple[str, str]] | None = None,
                  to_tag: str | None = None) -> tuple[Response | None, Request]:
        request = out_of_dialog("SUBSCRIBE", self.uri, self.peer.hostport, event=event,
                                expires=expires, from_user=user or self._user(),
                                extra=[("Accept", MEDIA_TYPE)] if extra is None else extra,
                                to_tag=to_tag, content_type=None)
        return self.peer.send_request(request, self.target), request

    def established(self, response: Response | None, request: Request) -> Subscription | None:
        if response is None or response.status != 200 or response.to_addr is None:
            return None
        contacts = response.contacts
        target = str(contacts[0].uri) if contacts else self.uri
        from_addr = request.from_addr
        assert from_addr is not None and from_addr.tag is not None
        return Subscription(request.call_id or "", from_addr.tag, from_addr.uri.user or "",  # type: ignore[union-attr]
                            response.to_addr.tag or "", target, 1, response.expires or 0)

    def in_dialog(self, sub: Subscription, expires: int) -> Response | None:
        sub.cseq += 1
        host = self.peer.hostport.rsplit(":", 1)[0]
        request = Request("SUBSCRIBE", sub.remote_target, [
            ("Max-Forwards", "70"),
            ("From", f"<sip:{sub.from_user}@{host}>;tag={sub.from_tag}"),
            ("To", f"<{self.uri}>;tag={sub.to_tag}"),
            ("Call-ID", sub.call_id), ("CSeq", f"{sub.cseq} SUBSCRIBE"),
            ("Contact", f"<sip:{sub.from_user}@{self.peer.hostport}>"),
            ("Event", PACKAGE), ("Expires", str(expires)), ("Accept", MEDIA_TYPE)])
        return self.peer.send_request(request, self.target)

    def notify_of(self, call_id: str, timeout: float, after: int = 0) -> Received | None:
        return self.peer.wait_request(
            lambda r: r.request.method == "NOTIFY" and r.request.call_id == call_id, timeout, after)

    def notifies(self, call_id: str) -> list[Received]:
        return [r for r in self.peer.inbox
                if r.request.method == "NOTIFY" and r.request.call_id == call_id]

    # -- the scenario ---------------------------------------------------------------

    def run(self) -> None:
        check = self.report.check
        # 4.6.4, 4.7.1: the subscription and its first NOTIFY.
        response, request = self.subscribe(event=f"{PACKAGE};max-rate=5;min-rate=0.2")
        sub = self.established(response, request)
        if not check("4.6.4", "a SUBSCRIBE gets 200 with Expires (at most as asked) and a Contact",
                     sub is not None and 0 < sub.granted <= 600 and bool(response.contacts),  # type: ignore[union-attr]
                     status_of(response)):
            return
        assert sub is not None
        first = self.notify_of(sub.call_id, FIRST_NOTIFY_WAIT)
        if not check("4.6.4", "the first NOTIFY follows at once", first is not None,
                     f"none within {FIRST_NOTIFY_WAIT:g} s"):
            return
        assert first is not None
        notify = first.request
        state = notify.subscription_state
        check("4.7.1", "the NOTIFY carries Event: load-status and Subscription-State: active;expires",
              notify.header("Event") == PACKAGE and state is not None and state.state == "active"
              and state.expires is not None and state.expires <= sub.granted,
              f"Event: {notify.header('Event')}, Subscription-State: "
              f"{notify.header('Subscription-State')}")
        check("4.7.1", "the applied rates are echoed in Subscription-State (max-rate=5;min-rate=0.2)",
              state is not None and state.params.get("max-rate") == "5"
              and state.params.get("min-rate") == "0.2",
              notify.header("Subscription-State") or "")
        check("4.5", "the NOTIFY body has Content-Type: application/load-status+json",
              notify.content_type == MEDIA_TYPE, notify.content_type or "none")
        first_value, why = valid_body(notify.body)
        check("6", "the NOTIFY body is valid", first_value is not None, why)
        validity = getattr(first_value, "validity", 15)
        # 8.5, 4.7.2, 7.1: a heartbeat within validity/3, a fresh body.
        # (2 s of slack: the kit, or the machine, may be busy.)
        heartbeat = self.notify_of(sub.call_id, validity / 3 + 3.0, after=self.peer.inbox.index(first) + 1)
        check("8.5", f"a heartbeat NOTIFY follows within validity/3 ({validity / 3:g} s)",
              heartbeat is not None and heartbeat.at - first.at <= validity / 3 + HEARTBEAT_SLACK,
              "none" if heartbeat is None else f"after {heartbeat.at - first.at:.1f} s")
        if heartbeat is not None:
            a, b = _seq_instance(first), _seq_instance(heartbeat)
            check("4.7.2", "the heartbeat carries a new body: same instance, greater seq",
                  a is not None and b is not None and b[1] == a[1] and b[0] > a[0], f"{a} then {b}")
        # 4.6.4: a refresh gets 200 and at once a NOTIFY with a greater seq.
        before = len(self.peer.inbox)
        refreshed = self.in_dialog(sub, 600)
        again = self.notify_of(sub.call_id, FIRST_NOTIFY_WAIT, after=before)
        check("4.6.4", "a refresh in the dialog gets 200 and at once a NOTIFY",
              refreshed is not None and refreshed.status == 200 and again is not None,
              f"{status_of(refreshed)}, NOTIFY {'seen' if again else 'not seen'}")
        # 4.1, 4.3, 4.4, 4.2.2, 4.6.1: refusals.
        self.refusals()
        # 8.1, 8.2: bounds on what a subscriber asks.
        response, request = self.subscribe(event=f"{PACKAGE};max-rate=100;min-rate=50")
        bounded = self.established(response, request)
        fast = self.notify_of(bounded.call_id, FIRST_NOTIFY_WAIT) if bounded else None
        state = fast.request.subscription_state if fast else None
        max_rate = float(state.params.get("max-rate") or 0) if state else 0.0
        min_rate = float(state.params.get("min-rate") or 0) if state else 0.0
        check("8.2", "max-rate=100;min-rate=50 is applied at most 10/s, min-rate not above max-rate",
              state is not None and 0 < max_rate <= 10 and 0 < min_rate <= max_rate,
              "no NOTIFY" if fast is None else fast.request.header("Subscription-State") or "")
        if bounded:
            self.in_dialog(bounded, 0)
        # 4.6.3 and 4.7.3 share one wait of a heartbeat interval.
        user = self._user()
        response, request = self.subscribe(user=user)
        old = self.established(response, request)
        response, request = self.subscribe(user=user)
        new = self.established(response, request)
        refused_user = self._user()
        self.peer.policy = lambda r: (481, []) if r.to_addr is not None and \
            getattr(r.to_addr.uri, "user", None) == refused_user else (200, [])
        response, request = self.subscribe(user=refused_user)
        refused = self.established(response, request)
        if old is None or new is None or refused is None:
            check("4.6.3", "three more subscriptions are accepted", False, status_of(response))
            return
        self.notify_of(new.call_id, FIRST_NOTIFY_WAIT)
        first_refused = self.notify_of(refused.call_id, FIRST_NOTIFY_WAIT)
        mark = time.monotonic()
        self.peer.idle(validity / 3 + 1.5)
        self.peer.policy = lambda r: (200, [])
        late_old = [r for r in self.notifies(old.call_id) if r.at > mark]
        check("4.6.3", "an out-of-dialog SUBSCRIBE from the same From and Contact replaces the old "
              "subscription (no NOTIFY on the old dialog after)", not late_old and
              bool(self.notifies(new.call_id)),
              f"{len(late_old)} NOTIFY on the old dialog")
        since = (first_refused.at if first_refused else mark) + 0.5
        late = [r for r in self.notifies(refused.call_id) if r.at > since]
        check("4.7.3", "a NOTIFY answered 481 ends the subscription: no further NOTIFY",
              not late, f"{len(late)} NOTIFY after the 481")
        # 4.6.5: unsubscribing.
        before = len(self.peer.inbox)
        gone = self.in_dialog(new, 0)
        last = self.notify_of(new.call_id, FIRST_NOTIFY_WAIT, after=before)
        state = last.request.subscription_state if last else None
        check("4.6.5", "Expires: 0 gets 200 and a NOTIFY terminated;reason=timeout with a body",
              gone is not None and gone.status == 200 and state is not None
              and state.state == "terminated" and state.reason == "timeout"
              and last is not None and valid_body(last.request.body)[0] is not None,
              f"{status_of(gone)}, {last.request.header('Subscription-State') if last else 'no NOTIFY'}")
        self.in_dialog(sub, 0)

    def refusals(self) -> None:
        check = self.report.check
        for name in ("LOAD-STATUS", "Load-Status"):
            response, _ = self.subscribe(event=name)
            check("4.1", f"Event: {name} (another package, compared case by case) gets 489 "
                  "with Allow-Events: load-status",
                  response is not None and response.status == 489
                  and PACKAGE in response.allow_events, status_of(response))
        response, _ = self.subscribe(event="presence")
        check("4.6.1", "Event: presence gets 489 with Allow-Events: load-status",
              response is not None and response.status == 489 and PACKAGE in response.allow_events,
              status_of(response))
        response, _ = self.subscribe(expires=30)
        check("4.4", "Expires: 30 gets 423 with Min-Expires: 60",
              response is not None and response.status == 423 and response.min_expires == 60,
              f"{status_of(response)} Min-Expires: {header(response, 'Min-Expires')}")
        response, request = self.subscribe(expires=86400)
        long = self.established(response, request)
        check("4.4", "Expires: 86400 is granted at most 3600 s",
              long is not None and 60 <= long.granted <= 3600, status_of(response))
        if long:
            self.notify_of(long.call_id, FIRST_NOTIFY_WAIT)
            self.in_dialog(long, 0)
        for accept in ("application/pidf+xml", f"{MEDIA_TYPE};q=0"):
            response, _ = self.subscribe(extra=[("Accept", accept)])
            check("4.3", f"Accept: {accept} gets 406",
                  response is not None and response.status == 406, status_of(response))
        response, _ = self.subscribe(event=f"{PACKAGE};max-rate=fast")
        check("4.2.2", "max-rate=fast gets 400 naming the parameter",
              response is not None and response.status == 400
              and "max-rate" in (response.reason or ""), status_of(response))
        response, _ = self.subscribe(to_tag=new_tag())
        check("4.6.1", "a SUBSCRIBE in a dialog that does not exist gets 481",
              response is not None and response.status == 481, status_of(response))
