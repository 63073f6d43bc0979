"""The endpoint: transaction layer + transaction users, bytes in and out, fake clock."""

from __future__ import annotations

import random

from sipstatus.net import Endpoint, Resolve, Transmit
from sipstatus.sip import parse_message
from sipstatus.sip.identifiers import IdGenerator
from sipstatus.sip.publication import Published, Publisher
from sipstatus.sip.subscription import (
    Notifier,
    SubscriptionCreated,
    SubscriptionTerminated,
)
from sipstatus.sip.transaction import Destination, TransactionLayer

TYPE = "application/load-status+json"
PROXY = Destination("UDP", "192.0.2.10", 5060)
LOCAL = {"UDP": ("192.0.2.1", 5060), "TCP": ("192.0.2.1", 5060)}


def ids(seed=1):
    return IdGenerator(random.Random(seed).randbytes)


def endpoint(*users, **kw) -> Endpoint:
    kw.setdefault("transactions", TransactionLayer(ids=ids(9)))
    return Endpoint(users, local=dict(LOCAL), **kw)


def notifier() -> Notifier:
    return Notifier("load-status", TYPE, "sip:agent@192.0.2.1:5060", ids=ids())


SUBSCRIBE = (
    b"SUBSCRIBE sip:agent@192.0.2.1 SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bKs1;rport\r\n"
    b"Max-Forwards: 70\r\n"
    b"From: <sip:watcher@proxy.example>;tag=w1\r\n"
    b"To: <sip:agent@192.0.2.1>\r\n"
    b"Call-ID: c1\r\n"
    b"CSeq: 1 SUBSCRIBE\r\n"
    b"Contact: <sip:watcher@192.0.2.10:5060>\r\n"
    b"Event: load-status\r\n"
    b"Expires: 600\r\n"
    b"Content-Length: 0\r\n\r\n"
)


def transmits(out) -> list[Transmit]:
    return [o for o in out if isinstance(o, Transmit)]


def messages(out):
    return [parse_message(t.data) for t in transmits(out)]


def reply_to(data: bytes, status: int, reason: str = "OK") -> bytes:
    req = parse_message(data)
    lines = [f"SIP/2.0 {status} {reason}"]
    lines += [f"Via: {v}" for v in req.header_all("Via")]
    lines += [f"From: {req.header('From')}", f"To: {req.header('To')}",
              f"Call-ID: {req.call_id}", f"CSeq: {req.header('CSeq')}", "Content-Length: 0"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def test_subscribe_bytes_give_a_200_and_a_notify_on_the_wire():
    ep = endpoint(notifier())
    out = ep.receive(SUBSCRIBE, PROXY, 0.0)
    ok, notify = messages(out)
    assert ok.status == 200
    assert notify.method == "NOTIFY"
    assert isinstance([o for o in out if isinstance(o, SubscriptionCreated)][0],
                      SubscriptionCreated)


def test_response_goes_back_to_the_source_port_with_rport():
    ep = endpoint(notifier())
    nat = Destination("UDP", "198.51.100.7", 40000)
    out = ep.receive(SUBSCRIBE, nat, 0.0)
    ok = transmits(out)[0]
    assert ok.destination == nat  # RFC 3581: the source, not the Via sent-by
    via = parse_message(ok.data).top_via
    assert via.received == "198.51.100.7" and via.rport == 40000


def test_our_requests_carry_our_via_with_rport_and_a_branch():
    ep = endpoint(notifier())
    notify = transmits(ep.receive(SUBSCRIBE, PROXY, 0.0))[1]
    via = parse_message(notify.data).top_via
    assert (via.transport, via.host, via.port) == ("UDP", "192.0.2.1", 5060)
    assert "rport" in via.params and via.branch.startswith("z9hG4bK")
    assert len(parse_message(notify.data).vias) == 1


def test_unanswered_notify_times_out_through_timer_f_and_ends_the_subscription():
    n = notifier()
    ep = endpoint(n)
    ep.receive(SUBSCRIBE, PROXY, 0.0)
    seen = []
    while (when := ep.next_timer()) is not None and when <= 40.0:
        seen.extend(ep.handle_timer(when))
    retransmitted = [t for t in transmits(seen) if parse_message(t.data).method == "NOTIFY"]
    assert len(retransmitted) >= 5  # timer E kept resending
    ended = [o for o in seen if isinstance(o, SubscriptionTerminated)]
    assert ended and ended[0].reason == "notify-timeout"
    assert not n.subscriptions


def test_notify_answered_481_on_the_wire_ends_the_subscription():
    n = notifier()
    ep = endpoint(n)
    notify = transmits(ep.receive(SUBSCRIBE, PROXY, 0.0))[1]
    out = ep.receive(reply_to(notify.data, 481, "Call/Transaction Does Not Exist"), PROXY, 0.1)
    assert [o.reason for o in out if isinstance(o, SubscriptionTerminated)] == ["notify-rejected"]


def test_transport_error_is_a_503_without_retry_after_and_ends_the_subscription():
    n = notifier()
    ep = endpoint(n)
    notify = transmits(ep.receive(SUBSCRIBE, PROXY, 0.0))[1]
    out = ep.transport_error(notify.message, 0.1)
    (ended,) = [o for o in out if isinstance(o, SubscriptionTerminated)]
    assert (ended.reason, ended.status) == ("notify-failed", 503)  # spec 4.7.3
    assert not n.subscriptions


def test_stray_response_is_dropped_and_counted():
    ep = endpoint(notifier())
    stray = reply_to(SUBSCRIBE, 200)
    assert ep.receive(stray, PROXY, 0.0) == []
    assert ep.stray_responses == 1


def test_garbage_is_dropped_and_counted():
    ep = endpoint(notifier())
    assert ep.receive(b"\x00\xff garbage\r\n\r\n", PROXY, 0.0) == []
    assert ep.malformed == 1


def test_request_that_parses_far_enough_gets_a_400_with_a_reason():
    ep = endpoint(notifier())
    bad = SUBSCRIBE.replace(b"Contact: <sip:watcher@192.0.2.10:5060>", b"Contact: <sip:a b>")
    (resp,) = messages(ep.receive(bad, PROXY, 0.0))
    assert resp.status == 400 and resp.reason


def test_notify_for_no_subscription_gets_481():
    ep = endpoint(notifier())
    notify = SUBSCRIBE.replace(b"SUBSCRIBE", b"NOTIFY").replace(
        b"Expires: 600", b"Subscription-State: active")
    (resp,) = messages(ep.receive(notify, PROXY, 0.0))
    assert resp.status == 481
    assert ep.unhandled_requests == 1


def test_subscribe_nobody_handles_gets_489_with_allow_events():
    ep = endpoint(allow_events=["load-status"])
    (resp,) = messages(ep.receive(SUBSCRIBE, PROXY, 0.0))
    assert resp.status == 489 and resp.allow_events == ["load-status"]


def test_invite_gets_405_with_allow():
    ep = endpoint(notifier())
    invite = SUBSCRIBE.replace(b"SUBSCRIBE", b"INVITE")
    (resp,) = messages(ep.receive(invite, PROXY, 0.0))
    assert resp.status == 405 and "SUBSCRIBE" in resp.header("Allow")


def test_options_gets_200_with_allow_and_allow_events():
    ep = endpoint(notifier(), allow_events=["load-status"])
    options = SUBSCRIBE.replace(b"SUBSCRIBE", b"OPTIONS")
    (resp,) = messages(ep.receive(options, PROXY, 0.0))
    assert resp.status == 200 and resp.allow_events == ["load-status"]


class Broken:
    def handle_request(self, request, source, now):
        raise RuntimeError("bug")

    def handle_response(self, response, request, now):
        return []

    def next_timer(self):
        return None

    def handle_timer(self, now):
        return []


def test_a_bug_in_a_user_is_a_500_and_counted_not_a_crash():
    ep = endpoint(Broken())
    (resp,) = messages(ep.receive(SUBSCRIBE, PROXY, 0.0))
    assert resp.status == 500
    assert ep.internal_errors == 1


def test_retransmitted_subscribe_gets_the_same_200_and_no_second_notify():
    ep = endpoint(notifier())
    first = messages(ep.receive(SUBSCRIBE, PROXY, 0.0))
    again = messages(ep.receive(SUBSCRIBE, PROXY, 0.5))
    assert [m.status for m in again] == [200]
    assert again[0].to_addr.tag == first[0].to_addr.tag


def publisher(destination=None) -> Publisher:
    return Publisher("sip:node1@proxy.example", "load-status", TYPE, "sip:agent@192.0.2.1",
                     destination=destination, ids=ids(2))


def test_request_without_destination_asks_for_resolution_then_sends():
    pub = publisher()
    ep = endpoint(pub)
    (resolve,) = ep.submit(pub, pub.publish(b"{}", 0.0), 0.0)
    assert isinstance(resolve, Resolve) and str(resolve.uri) == "sip:node1@proxy.example"
    out = ep.targets_resolved(resolve.token, [Destination("TCP", "192.0.2.10", 5060)], 0.1)
    (sent,) = transmits(out)
    assert sent.destination.transport == "TCP"
    assert parse_message(sent.data).top_via.transport == "TCP"


def test_no_targets_is_a_503_for_the_user():
    pub = publisher()
    ep = endpoint(pub)
    (resolve,) = ep.submit(pub, pub.publish(b"{}", 0.0), 0.0)
    out = ep.targets_resolved(resolve.token, [], 0.1)
    assert transmits(out) == []
    assert pub.retry_at is not None  # it backs off


def test_failover_to_the_next_target_after_a_transport_error():
    pub = publisher()
    ep = endpoint(pub)
    (resolve,) = ep.submit(pub, pub.publish(b"{}", 0.0), 0.0)
    targets = [Destination("TCP", "192.0.2.10", 5060), Destination("UDP", "192.0.2.20", 5060)]
    (first,) = transmits(ep.targets_resolved(resolve.token, targets, 0.1))
    (second,) = transmits(ep.transport_error(first.message, 0.2))
    assert second.destination == targets[1]
    a, b = parse_message(first.data), parse_message(second.data)
    assert b.top_via.transport == "UDP" and b.top_via.branch != a.top_via.branch
    ep.receive(reply_to(second.data, 200), targets[1], 0.3)
    # The publisher sees the answer to the request it sent (the same object).
    assert pub.pending is None and pub.failures == 0


def test_failover_after_a_503_response():
    pub = publisher()
    ep = endpoint(pub)
    (resolve,) = ep.submit(pub, pub.publish(b"{}", 0.0), 0.0)
    targets = [Destination("UDP", "192.0.2.10", 5060), Destination("UDP", "192.0.2.20", 5060)]
    (first,) = transmits(ep.targets_resolved(resolve.token, targets, 0.1))
    (second,) = transmits(ep.receive(reply_to(first.data, 503, "Busy"), targets[0], 0.2))
    assert second.destination == targets[1]


def test_failover_after_a_timeout():
    pub = publisher()
    ep = endpoint(pub)
    (resolve,) = ep.submit(pub, pub.publish(b"{}", 0.0), 0.0)
    targets = [Destination("UDP", "192.0.2.10", 5060), Destination("UDP", "192.0.2.20", 5060)]
    ep.targets_resolved(resolve.token, targets, 0.0)
    seen = []
    while (when := ep.next_timer()) is not None and when <= 33.0:
        seen.extend(ep.handle_timer(when))
    assert targets[1] in {t.destination for t in transmits(seen)}


def test_publisher_response_reaches_it_through_the_endpoint():
    pub = publisher(PROXY)
    ep = endpoint(pub)
    (sent,) = transmits(ep.submit(pub, pub.publish(b"{}", 0.0), 0.0))
    reply = reply_to(sent.data, 200).replace(b"Content-Length: 0",
                                              b"SIP-ETag: abc\r\nExpires: 600\r\nContent-Length: 0")
    out = ep.receive(reply, PROXY, 0.1)
    assert [o for o in out if isinstance(o, Published)] == [Published(pub, "abc", 600)]


def test_ipv6_via_is_bracketed():
    ep = Endpoint([], local={"UDP": ("2001:db8::1", 5060)})
    assert ep._via(Destination("UDP", "2001:db8::9", 5060)).startswith("SIP/2.0/UDP [2001:db8::1]:5060")


def test_via_names_the_address_the_io_layer_gives_for_each_peer():
    # A multi-homed host on a wildcard listener is known by another address
    # on each network (the I/O layer's routing-table lookup).
    ep = Endpoint([], local={"UDP": ("0.0.0.0", 5070)})
    routes = {"192.0.2.10": "192.0.2.11", "198.51.100.10": "198.51.100.11"}
    ep.local_for = lambda transport, peer: routes.get(peer)
    assert ep._via(Destination("UDP", "192.0.2.10", 5060)).startswith("SIP/2.0/UDP 192.0.2.11:5070;")
    assert ep._via(Destination("UDP", "198.51.100.10", 5060)).startswith("SIP/2.0/UDP 198.51.100.11:5070;")
    assert ep._via(Destination("UDP", "203.0.113.1", 5060)).startswith("SIP/2.0/UDP 0.0.0.0:5070;")  # unknown


def test_request_uri_with_another_scheme_cannot_be_resolved():
    pub = Publisher("tel:+4930123", "load-status", TYPE, "sip:agent@192.0.2.1", ids=ids(3))
    ep = endpoint(pub)
    out = ep.submit(pub, pub.publish(b"{}", 0.0), 0.0)
    assert not [o for o in out if isinstance(o, Resolve | Transmit)]
    assert pub.retry_at is not None  # answered 416 by the endpoint: backing off


def test_a_request_over_1300_bytes_goes_over_tcp_instead_of_udp():
    pub = publisher(PROXY)
    ep = endpoint(pub)
    (sent,) = transmits(ep.submit(pub, pub.publish(b"x" * 1200, 0.0), 0.0))
    assert sent.destination == Destination("TCP", PROXY.host, PROXY.port)
    assert parse_message(sent.data).top_via.transport == "TCP"
    assert len(sent.data) > 1300


def test_a_small_request_stays_on_udp():
    pub = publisher(PROXY)
    ep = endpoint(pub)
    (sent,) = transmits(ep.submit(pub, pub.publish(b"x" * 900, 0.0), 0.0))
    assert sent.destination == PROXY and len(sent.data) <= 1300
