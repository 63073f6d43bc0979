"""Random sequences of requests, responses and timer firings (hypothesis).

Whatever happens, the state machines never raise, never ask to be woken in
the past, and the notifier keeps its promises: NOTIFYs of one subscription
are never closer than its rate ceiling allows, never further apart than its
heartbeat while the subscriber answers, one at a time, CSeq rising.
"""

from __future__ import annotations

import random

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sipstatus.sip import Request, make_response
from sipstatus.sip.identifiers import IdGenerator
from sipstatus.sip.subscription import (
    SendRequest,
    SendResponse,
    Subscriber,
    SubscriberConfig,
    SubscriptionTerminated,
)
from sipstatus.sip.transaction import Destination

TYPE = "application/load-status+json"
SOURCES = [Destination("UDP", "192.0.2.10", 5060), Destination("TCP", "192.0.2.11", 40000)]
EPS = 1e-9

notifier_ops = st.lists(st.one_of(
    st.tuples(st.just("subscribe"), st.integers(0, 2), st.sampled_from([None, 0, 30, 60, 600]),
              st.sampled_from(["", ";max-rate=1", ";min-rate=1", ";max-rate=50",
                               ";adaptive-min-rate=0.5", ";min-rate=0.1;max-rate=5"])),
    st.tuples(st.just("refresh"), st.integers(0, 5), st.sampled_from([0, 10, 60, 300])),
    st.tuples(st.just("change"), st.booleans()),
    st.tuples(st.just("answer"), st.integers(0, 5), st.sampled_from([200, 200, 200, 481, 408, 500])),
    st.tuples(st.just("wait"), st.floats(0, 12, allow_nan=False)),
    st.tuples(st.just("terminate"), st.integers(0, 5)),
), max_size=60)


def _subscribe(i: int, expires, rate: str, call: int) -> Request:
    headers = [
        ("Via", f"SIP/2.0/UDP 192.0.2.10;branch=z9hG4bK{call}"),
        ("From", f"<sip:w{i}@example>;tag=f{call}"), ("To", "<sip:agent@192.0.2.1>"),
        ("Call-ID", f"call{call}"), ("CSeq", "1 SUBSCRIBE"),
        ("Contact", f"<sip:w{i}@192.0.2.10>"), ("Event", "load-status" + rate),
    ]
    if expires is not None:
        headers.append(("Expires", str(expires)))
    return Request("SUBSCRIBE", "sip:agent@192.0.2.1", headers)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(notifier_ops)
def test_notifier_keeps_rates_order_and_timers_under_any_sequence(ops):
    from sipstatus.sip.subscription import Notifier

    n = Notifier("load-status", TYPE, "sip:agent@192.0.2.1",
                 ids=IdGenerator(random.Random(0).randbytes))
    now = 0.0
    calls = 0
    inflight: dict[str, list[SendRequest]] = {}  # call-id -> unanswered NOTIFYs
    last: dict[str, float] = {}  # call-id -> start of the last NOTIFY
    cseqs: dict[str, int] = {}
    dialogs: list[tuple[str, str, int, int]] = []  # call-id, to-tag, source index, cseq
    ended: set[str] = set()
    finals: set[str] = set()
    owed: set[str] = set()  # dialogs whose next NOTIFY answers a SUBSCRIBE (skips C)

    def check(outs):
        for o in outs:
            if isinstance(o, SubscriptionTerminated):
                ended.add(o.id.call_id)
            if not isinstance(o, SendRequest):
                continue
            req = o.request
            cid = req.call_id
            number = req.cseq.number
            assert number > cseqs.get(cid, 0)
            cseqs[cid] = number
            assert cid not in finals, "a NOTIFY after the final one"
            assert not inflight.get(cid), "two NOTIFYs in flight"
            final = (req.header("Subscription-State") or "").startswith("terminated")
            if cid in last:
                assert now - last[cid] >= 0.1 - EPS  # spec 8.1, final ones included
                if not final and cid not in owed:
                    sub = n.subscriptions[(cid, req.from_addr.tag)]
                    assert now - last[cid] >= sub.rates.ceiling - EPS  # spec 8.4
            last[cid] = now
            owed.discard(cid)
            if final:
                finals.add(cid)
            else:
                inflight.setdefault(cid, []).append(o)

    for op in ops:
        kind = op[0]
        if kind == "subscribe":
            calls += 1
            _, who, expires, rate = op
            req = _subscribe(who, expires, rate, calls)
            source = SOURCES[who % 2]
            out = n.handle_request(req, source, now)
            check(out)
            for o in out:
                if isinstance(o, SendResponse) and o.response.status == 200 and expires != 0:
                    dialogs.append((req.call_id, o.response.to_addr.tag, who, 1))
        elif kind == "refresh" and dialogs:
            _, index, expires = op
            cid, tag, who, cseq = dialogs[index % len(dialogs)]
            dialogs[index % len(dialogs)] = (cid, tag, who, cseq + 1)
            req = _subscribe(who, expires, "", 0)
            req.set_header("Call-ID", cid)
            req.set_header("From", f"<sip:w{who}@example>;tag=f{cid[4:]}")
            req.set_header("To", f"<sip:agent@192.0.2.1>;tag={tag}")
            req.set_header("CSeq", f"{cseq + 1} SUBSCRIBE")
            out = n.handle_request(req, SOURCES[who % 2], now)
            if any(isinstance(o, SendResponse) and o.response.status == 200 for o in out):
                owed.add(cid)
            check(out)
        elif kind == "change":
            check(n.state_changed(b"{}", now, op[1]))
        elif kind == "answer" and inflight:
            cid = sorted(inflight)[op[1] % len(inflight)]
            if inflight[cid]:
                send = inflight[cid].pop(0)
                check(n.handle_response(make_response(send.request, op[2]), send.request, now))
        elif kind == "wait":
            end = now + op[1]
            while (when := n.next_timer()) is not None and when <= end:
                assert when >= now - EPS, "timer in the past"
                now = max(now, when)
                # Heartbeat promise: an answered subscription is never silent
                # for longer than its heartbeat.
                for (cid, _), sub in n.subscriptions.items():
                    if cid in last and not inflight.get(cid) and sub.in_flight is None:
                        assert now - last[cid] <= sub.rates.heartbeat + EPS
                check(n.handle_timer(now))
                nxt = n.next_timer()
                assert nxt is None or nxt > now, "handled time returned again"
            now = end
            for (cid, _), sub in n.subscriptions.items():
                if cid in last and not inflight.get(cid) and sub.in_flight is None:
                    assert now - last[cid] <= sub.rates.heartbeat + EPS
        elif kind == "terminate" and n.subscriptions:
            sub = list(n.subscriptions.values())[op[1] % len(n.subscriptions)]
            check(n.terminate(sub.id, "deactivated", now))
        # The books balance: per-source counts match what is held, and an
        # ended subscription is never held.
        counts: dict[str, int] = {}
        for (cid, _), sub in n.subscriptions.items():
            assert cid not in ended
            counts[sub.source.host] = counts.get(sub.source.host, 0) + 1
        assert counts == n._per_source


subscriber_ops = st.lists(st.one_of(
    st.tuples(st.just("respond"), st.sampled_from([200, 202, 401, 403, 408, 423, 481, 489, 500, 503])),
    st.tuples(st.just("notify"), st.sampled_from([
        "active;expires=600", "active;expires=60", "pending", "terminated;reason=timeout",
        "terminated;reason=deactivated", "terminated;reason=probation;retry-after=5",
        "terminated;reason=rejected", "terminated", "terminated;reason=giveup"]),
        st.sampled_from([b"", b'{"seq":1}', b"junk"]), st.integers(-1, 3)),
    st.tuples(st.just("wait"), st.floats(0, 700, allow_nan=False)),
    st.tuples(st.just("stop"),),
    st.tuples(st.just("start"),),
), max_size=40)


def _decode(body: bytes) -> object:
    if body != b'{"seq":1}':
        raise ValueError("body: not JSON (rule: syntax)")
    return 1


@settings(max_examples=300, deadline=None)
@given(subscriber_ops)
def test_subscriber_survives_any_sequence_and_never_wakes_in_the_past(ops):
    config = SubscriberConfig("load-status", TYPE, "sip:w@192.0.2.10", "sip:w@192.0.2.10",
                              decode=_decode, ids=IdGenerator(random.Random(1).randbytes),
                              random=random.Random(2).random,
                              authorize=lambda req, resp: None)
    sub = Subscriber("sip:agent@192.0.2.1", config, destination=SOURCES[0])
    now = 0.0
    notify_cseq = 0
    outs = sub.start(now)

    for op in ops:
        kind = op[0]
        if kind == "respond" and sub.pending is not None:
            req = sub.pending
            headers = [("Contact", "<sip:agent@192.0.2.1>"), ("Expires", "600"),
                       ("Min-Expires", "900")]
            outs = sub.handle_response(make_response(req, op[1], to_tag="t1", headers=headers),
                                       req, now)
        elif kind == "notify" and sub.call_id:
            notify_cseq += op[3]
            req = Request("NOTIFY", "sip:w@192.0.2.10", [
                ("Via", "SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKq"),
                ("From", "<sip:agent@192.0.2.1>;tag=t1"),
                ("To", f"<sip:w@192.0.2.10>;tag={sub.local_tag}"),
                ("Call-ID", sub.call_id), ("CSeq", f"{max(notify_cseq, 0)} NOTIFY"),
                ("Contact", "<sip:agent@192.0.2.1>"), ("Event", "load-status"),
                ("Subscription-State", op[1]), ("Content-Type", TYPE)], op[2])
            outs = sub.handle_request(req, SOURCES[0], now) or []
            for o in outs:
                if isinstance(o, SendResponse):
                    o.response.to_bytes()  # reason phrases serialise
        elif kind == "wait":
            end = now + op[1]
            while (when := sub.next_timer()) is not None and when <= end:
                assert when >= now - EPS
                now = max(now, when)
                outs = sub.handle_timer(now)
                nxt = sub.next_timer()
                assert nxt is None or nxt > now
            now = end
        elif kind == "stop":
            outs = sub.stop(now)
        elif kind == "start" and sub.state == "stopped":
            outs = sub.start(now)
        for o in outs:
            if isinstance(o, SendRequest):
                # Every request sent is the one whose answer is awaited.
                assert o.request.method == "SUBSCRIBE" and sub.pending is o.request
