"""Non-INVITE transactions (RFC 3261 sections 17.1.2 and 17.2.2), fake clock."""

from __future__ import annotations

import random

import pytest

from sipstatus.sip import Request, Response, make_response, parse_message
from sipstatus.sip.identifiers import MAGIC_COOKIE, IdGenerator
from sipstatus.sip.transaction import (
    T1,
    T2,
    T4,
    Destination,
    RequestReceived,
    ResponseReceived,
    SendMessage,
    State,
    TransactionLayer,
    TransactionTimeout,
    TransportError,
)

UDP_PEER = Destination("UDP", "192.0.2.10", 5060)
TCP_PEER = Destination("TCP", "192.0.2.10", 5060)


def notify(branch: str = "z9hG4bKabc", sent_by: str = "192.0.2.1:5070",
           transport: str = "UDP", method: str = "NOTIFY", via_params: str = "") -> Request:
    return Request(method, "sip:watcher@192.0.2.10", [
        ("Via", f"SIP/2.0/{transport} {sent_by};branch={branch}{via_params}"),
        ("Max-Forwards", "70"),
        ("From", "<sip:agent@192.0.2.1>;tag=a1"),
        ("To", "<sip:watcher@192.0.2.10>;tag=w1"),
        ("Call-ID", "call-1@192.0.2.1"),
        ("CSeq", f"7 {method}"),
        ("Event", "load-status"),
        ("Subscription-State", "active;expires=600"),
    ], b"{}")


def layer() -> TransactionLayer:
    return TransactionLayer(ids=IdGenerator(random.Random(7).randbytes))


def sends(events) -> list[SendMessage]:
    return [e for e in events if isinstance(e, SendMessage)]


def run_until(tl: TransactionLayer, end: float) -> list[tuple[float, object]]:
    """Fire timers up to ``end``; (time, event) pairs."""
    out = []
    while (when := tl.next_timer()) is not None and when <= end:
        out.extend((when, e) for e in tl.handle_timer(when))
    return out


# -- client transactions ------------------------------------------------------------------


def test_client_sends_the_request_at_once():
    tl = layer()
    request = notify()
    (send,) = tl.send_request(request, UDP_PEER, now=0.0)
    assert send.destination == UDP_PEER
    assert parse_message(send.data) == request
    assert tl.state_of(request, server=False) is State.TRYING


def test_client_timer_e_doubles_from_t1_up_to_t2_in_trying():
    tl = layer()
    tl.send_request(notify(), UDP_PEER, now=0.0)
    times = [t for t, e in run_until(tl, 20.0) if isinstance(e, SendMessage)]
    # intervals 0.5, 1, 2, 4, 4, 4 ... (section 17.1.2.2)
    assert times == [0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5]
    assert T1 == 0.5 and T2 == 4.0


def test_client_timer_f_times_out_at_64_t1():
    tl = layer()
    request = notify()
    tl.send_request(request, UDP_PEER, now=10.0)
    assert not [e for _, e in run_until(tl, 10.0 + 64 * T1 - 0.001)
                if isinstance(e, TransactionTimeout)]
    events = tl.handle_timer(10.0 + 64 * T1)
    assert events == [TransactionTimeout(request)]
    assert tl.state_of(request, server=False) is State.TERMINATED
    assert tl.next_timer() is None


def test_client_retransmits_nothing_over_a_reliable_transport():
    tl = layer()
    request = notify(transport="TCP")
    tl.send_request(request, TCP_PEER, now=0.0)
    events = [e for _, e in run_until(tl, 100.0)]
    assert events == [TransactionTimeout(request)]


def test_client_timer_f_also_runs_over_a_reliable_transport():
    tl = layer()
    tl.send_request(notify(transport="TCP"), TCP_PEER, now=0.0)
    assert tl.next_timer() == 64 * T1


def test_client_provisional_response_moves_to_proceeding_and_reaches_tu():
    tl = layer()
    request = notify()
    tl.send_request(request, UDP_PEER, now=0.0)
    trying = make_response(request, 100)
    assert tl.receive(trying, UDP_PEER, now=0.1) == [ResponseReceived(trying, request)]
    assert tl.state_of(request, server=False) is State.PROCEEDING


def test_client_in_proceeding_retransmits_every_t2():
    tl = layer()
    request = notify()
    tl.send_request(request, UDP_PEER, now=0.0)
    run_until(tl, 0.5)  # first retransmission at 0.5, next due at 1.5
    tl.receive(make_response(request, 100), UDP_PEER, now=0.6)
    times = [t for t, e in run_until(tl, 14.0) if isinstance(e, SendMessage)]
    assert times == [1.5, 5.5, 9.5, 13.5]


def test_client_final_response_moves_to_completed_and_stops_retransmitting():
    tl = layer()
    request = notify()
    tl.send_request(request, UDP_PEER, now=0.0)
    ok = make_response(request, 200)
    assert tl.receive(ok, UDP_PEER, now=0.2) == [ResponseReceived(ok, request)]
    assert tl.state_of(request, server=False) is State.COMPLETED
    assert not [e for _, e in run_until(tl, T4 - 0.01)]


def test_client_timer_k_absorbs_response_retransmissions_then_terminates():
    tl = layer()
    request = notify()
    tl.send_request(request, UDP_PEER, now=0.0)
    ok = make_response(request, 200)
    tl.receive(ok, UDP_PEER, now=1.0)
    assert tl.next_timer() == 1.0 + T4
    assert tl.receive(ok, UDP_PEER, now=2.0) == []
    assert tl.retransmissions_absorbed == 1
    assert tl.handle_timer(1.0 + T4) == []
    assert tl.state_of(request, server=False) is State.TERMINATED
    # after K, a late copy matches nothing
    assert tl.receive(ok, UDP_PEER, now=7.0) == []
    assert tl.stray_responses == 1


def test_answered_client_transactions_are_not_held_for_timer_f():
    # NOTIFYs answered at once, 100 a second for 40 s (the heap's top is
    # always a live timer). Each must be forgotten, request and all, soon
    # after its Timer K (5 s), not kept for Timer F's 32 s: at 600 NOTIFY/s
    # that was ~50 KiB of memory per subscription.
    import gc
    import weakref

    tl = layer()
    requests = []
    for i in range(4000):
        now = i / 100
        request = notify(branch=f"z9hG4bK{i}")
        tl.send_request(request, UDP_PEER, now=now)
        tl.receive(make_response(request, 200), UDP_PEER, now=now)
        requests.append(weakref.ref(request))
        del request
        run_until(tl, now)
    gc.collect()
    old = requests[: 4000 - 100 * int(T4 + 1)]  # answered more than 6 s ago
    held = sum(r() is not None for r in old)
    # Stale timers are allowed up to half the heap (~500 live K timers here).
    assert held <= 600, held


def test_client_timer_k_is_zero_over_a_reliable_transport():
    tl = layer()
    request = notify(transport="TCP")
    tl.send_request(request, TCP_PEER, now=0.0)
    tl.receive(make_response(request, 200), TCP_PEER, now=0.3)
    assert tl.state_of(request, server=False) is State.TERMINATED
    assert tl.next_timer() is None


def test_client_final_response_after_provisional_is_delivered():
    tl = layer()
    request = notify()
    tl.send_request(request, UDP_PEER, now=0.0)
    tl.receive(make_response(request, 100), UDP_PEER, now=0.1)
    busy = make_response(request, 489)
    assert tl.receive(busy, UDP_PEER, now=0.2) == [ResponseReceived(busy, request)]


def test_response_matching_no_transaction_is_dropped_and_counted():
    tl = layer()
    assert tl.receive(make_response(notify(), 200), UDP_PEER, now=0.0) == []
    assert tl.stray_responses == 1


def test_response_with_other_method_in_cseq_does_not_match():
    tl = layer()
    request = notify()
    tl.send_request(request, UDP_PEER, now=0.0)
    other = make_response(notify(method="SUBSCRIBE"), 200)
    assert tl.receive(other, UDP_PEER, now=0.1) == []
    assert tl.stray_responses == 1


def test_response_with_other_sent_by_does_not_match():
    tl = layer()
    tl.send_request(notify(), UDP_PEER, now=0.0)
    other = make_response(notify(sent_by="198.51.100.1:5070"), 200)
    assert tl.receive(other, UDP_PEER, now=0.1) == []
    assert tl.stray_responses == 1


def test_transport_error_terminates_a_client_transaction():
    tl = layer()
    request = notify()
    (send,) = tl.send_request(request, UDP_PEER, now=0.0)
    assert tl.report_transport_error(send.message, now=0.1) == [TransportError(request)]
    assert tl.state_of(request, server=False) is State.TERMINATED
    assert tl.next_timer() is None


def test_send_request_adds_a_branch_when_the_via_has_none():
    tl = layer()
    request = notify()
    request.set_header("Via", "SIP/2.0/UDP 192.0.2.1:5070")
    tl.send_request(request, UDP_PEER, now=0.0)
    assert request.top_via.branch.startswith(MAGIC_COOKIE)
    assert request.headers[0][0] == "Via"


def test_send_request_refuses_invite():
    with pytest.raises(ValueError):
        layer().send_request(notify(method="INVITE"), UDP_PEER, now=0.0)


def test_send_request_refuses_a_duplicate_branch():
    tl = layer()
    tl.send_request(notify(), UDP_PEER, now=0.0)
    with pytest.raises(ValueError):
        tl.send_request(notify(), UDP_PEER, now=0.0)


# -- server transactions ------------------------------------------------------------------


def test_server_passes_a_new_request_to_the_tu():
    tl = layer()
    request = notify()
    (event,) = tl.receive(request, UDP_PEER, now=0.0)
    assert isinstance(event, RequestReceived) and event.source == UDP_PEER
    assert tl.state_of(request, server=True) is State.TRYING


def test_server_absorbs_a_retransmission_in_trying():
    tl = layer()
    tl.receive(notify(), UDP_PEER, now=0.0)
    assert tl.receive(notify(), UDP_PEER, now=0.5) == []
    assert tl.retransmissions_absorbed == 1


def test_server_resends_the_provisional_response_in_proceeding():
    tl = layer()
    (event,) = tl.receive(notify(), UDP_PEER, now=0.0)
    (sent,) = tl.send_response(make_response(event.request, 100), now=0.1)
    assert tl.state_of(event.request, server=True) is State.PROCEEDING
    assert tl.receive(notify(), UDP_PEER, now=0.5) == [sent]


def test_server_final_response_moves_to_completed_and_is_resent_on_retransmission():
    tl = layer()
    (event,) = tl.receive(notify(), UDP_PEER, now=0.0)
    (sent,) = tl.send_response(make_response(event.request, 200), now=0.1)
    assert tl.state_of(event.request, server=True) is State.COMPLETED
    assert tl.receive(notify(), UDP_PEER, now=1.0) == [sent]


def test_server_timer_j_is_64_t1_then_a_copy_is_a_new_request():
    tl = layer()
    (event,) = tl.receive(notify(), UDP_PEER, now=0.0)
    tl.send_response(make_response(event.request, 200), now=1.0)
    assert tl.next_timer() == 1.0 + 64 * T1
    assert tl.handle_timer(1.0 + 64 * T1) == []
    assert tl.state_of(event.request, server=True) is State.TERMINATED
    (again,) = tl.receive(notify(), UDP_PEER, now=40.0)
    assert isinstance(again, RequestReceived)


def test_server_timer_j_is_zero_over_a_reliable_transport():
    tl = layer()
    (event,) = tl.receive(notify(transport="TCP"), TCP_PEER, now=0.0)
    tl.send_response(make_response(event.request, 200), now=0.1)
    assert tl.state_of(event.request, server=True) is State.TERMINATED
    assert tl.next_timer() is None


def test_server_sends_no_retransmissions_of_its_own():
    tl = layer()
    (event,) = tl.receive(notify(), UDP_PEER, now=0.0)
    tl.send_response(make_response(event.request, 200), now=0.0)
    assert [e for _, e in run_until(tl, 100.0)] == []


def test_server_refuses_a_second_final_response():
    tl = layer()
    (event,) = tl.receive(notify(), UDP_PEER, now=0.0)
    tl.send_response(make_response(event.request, 200), now=0.1)
    with pytest.raises(ValueError):
        tl.send_response(make_response(event.request, 500), now=0.2)


def test_server_refuses_a_response_without_transaction():
    with pytest.raises(ValueError):
        layer().send_response(make_response(notify(), 200), now=0.0)


def test_server_transport_error_terminates_and_tells_the_tu():
    tl = layer()
    (event,) = tl.receive(notify(), UDP_PEER, now=0.0)
    (sent,) = tl.send_response(make_response(event.request, 200), now=0.1)
    assert tl.report_transport_error(sent.message, now=0.2) == [TransportError(event.request)]
    assert tl.state_of(event.request, server=True) is State.TERMINATED


def test_server_matches_on_sent_by_as_well_as_branch():
    tl = layer()
    tl.receive(notify(sent_by="192.0.2.1:5070"), UDP_PEER, now=0.0)
    (event,) = tl.receive(notify(sent_by="192.0.2.2:5070"), UDP_PEER, now=0.0)
    assert isinstance(event, RequestReceived)


def test_server_matches_on_method_as_well_as_branch():
    tl = layer()
    tl.receive(notify(), UDP_PEER, now=0.0)
    (event,) = tl.receive(notify(method="SUBSCRIBE"), UDP_PEER, now=0.0)
    assert isinstance(event, RequestReceived)


def test_ack_for_a_rejected_invite_is_absorbed():
    tl = layer()
    (event,) = tl.receive(notify(method="INVITE"), UDP_PEER, now=0.0)
    tl.send_response(make_response(event.request, 405), now=0.1)
    ack = notify(method="ACK")
    assert tl.receive(ack, UDP_PEER, now=0.2) == []


def test_ack_matching_no_transaction_goes_to_the_tu():
    tl = layer()
    (event,) = tl.receive(notify(method="ACK"), UDP_PEER, now=0.0)
    assert isinstance(event, RequestReceived)
    assert not tl.servers


def test_server_adds_received_when_the_source_differs_from_sent_by():
    tl = layer()
    (event,) = tl.receive(notify(sent_by="agent.example.com:5070"), UDP_PEER, now=0.0)
    assert event.request.top_via.received == "192.0.2.10"


def test_server_fills_in_rport():
    tl = layer()
    source = Destination("UDP", "192.0.2.1", 40000)
    (event,) = tl.receive(notify(via_params=";rport"), source, now=0.0)
    assert event.request.top_via.rport == 40000
    (sent,) = tl.send_response(make_response(event.request, 200), now=0.0)
    assert sent.destination == source
    assert parse_message(sent.data).top_via.rport == 40000


def test_server_answers_udp_to_received_address_and_via_port():
    tl = layer()
    source = Destination("UDP", "192.0.2.99", 40000)
    (event,) = tl.receive(notify(sent_by="agent.example.com:5070"), source, now=0.0)
    (sent,) = tl.send_response(make_response(event.request, 200), now=0.0)
    assert sent.destination == Destination("UDP", "192.0.2.99", 5070)


def test_server_answers_udp_to_port_5060_when_via_has_none():
    tl = layer()
    (event,) = tl.receive(notify(sent_by="192.0.2.1"), Destination("UDP", "192.0.2.1", 1234),
                          now=0.0)
    (sent,) = tl.send_response(make_response(event.request, 200), now=0.0)
    assert sent.destination == Destination("UDP", "192.0.2.1", 5060)


def test_server_answers_to_maddr_when_present():
    tl = layer()
    (event,) = tl.receive(notify(via_params=";maddr=239.0.0.1"), UDP_PEER, now=0.0)
    (sent,) = tl.send_response(make_response(event.request, 200), now=0.0)
    assert sent.destination == Destination("UDP", "239.0.0.1", 5070)


def test_server_answers_on_the_connection_over_a_reliable_transport():
    tl = layer()
    source = Destination("TCP", "192.0.2.1", 45678)
    (event,) = tl.receive(notify(transport="TCP"), source, now=0.0)
    (sent,) = tl.send_response(make_response(event.request, 200), now=0.0)
    assert sent.destination == source


def test_branch_that_is_only_the_magic_cookie_gets_a_stateless_400():
    tl = layer()
    (sent,) = tl.receive(notify(branch=MAGIC_COOKIE), UDP_PEER, now=0.0)
    assert isinstance(sent, SendMessage) and sent.message.status == 400
    assert not tl.servers


def test_rfc2543_request_without_branch_is_matched_by_call_id_from_tag_and_cseq():
    tl = layer()
    request = notify()
    request.set_header("Via", "SIP/2.0/UDP 192.0.2.1:5070")
    (event,) = tl.receive(request, UDP_PEER, now=0.0)
    assert isinstance(event, RequestReceived)
    copy = notify()
    copy.set_header("Via", "SIP/2.0/UDP 192.0.2.1:5070")
    assert tl.receive(copy, UDP_PEER, now=0.5) == []
    (sent,) = tl.send_response(make_response(event.request, 200), now=0.6)
    assert tl.receive(copy, UDP_PEER, now=0.7) == [sent]


# -- datagrams -----------------------------------------------------------------------------


def test_unparseable_request_with_addressing_gets_a_stateless_error():
    tl = layer()
    data = notify().to_bytes().replace(b"NOTIFY sip:", b"NOTIFY <sip:", 1)
    (sent,) = tl.receive_datagram(data, UDP_PEER, now=0.0)
    assert sent.destination == UDP_PEER
    response = parse_message(sent.data)
    assert isinstance(response, Response) and response.status == 400
    assert response.call_id == "call-1@192.0.2.1" and response.to_addr.tag == "w1"
    assert tl.malformed == 1


def test_unparseable_request_with_newer_version_gets_505():
    tl = layer()
    data = notify().to_bytes().replace(b"SIP/2.0\r\n", b"SIP/3.0\r\n", 1)
    (sent,) = tl.receive_datagram(data, UDP_PEER, now=0.0)
    assert parse_message(sent.data).status == 505


def test_unparseable_garbage_is_dropped_and_counted():
    tl = layer()
    assert tl.receive_datagram(b"\x00\x01garbage", UDP_PEER, now=0.0) == []
    assert tl.malformed == 1


def test_unparseable_response_is_dropped():
    tl = layer()
    data = make_response(notify(), 200).to_bytes().replace(b"CSeq: 7", b"CSeq: x", 1)
    assert tl.receive_datagram(data, UDP_PEER, now=0.0) == []
    assert tl.malformed == 1


def test_datagram_round_trip_between_two_layers():
    agent, watcher = layer(), layer()
    (send,) = agent.send_request(notify(), UDP_PEER, now=0.0)
    (event,) = watcher.receive_datagram(send.data, Destination("UDP", "192.0.2.1", 5070), 0.0)
    (reply,) = watcher.send_response(make_response(event.request, 200), now=0.0)
    (done,) = agent.receive_datagram(reply.data, UDP_PEER, now=0.01)
    assert isinstance(done, ResponseReceived) and done.response.status == 200


def test_next_timer_is_the_earliest_of_all_transactions():
    tl = layer()
    tl.send_request(notify(branch="z9hG4bK1"), UDP_PEER, now=3.0)
    tl.send_request(notify(branch="z9hG4bK2"), UDP_PEER, now=1.0)
    assert tl.next_timer() == 1.0 + T1
