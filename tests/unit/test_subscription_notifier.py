"""The notifier side of RFC 6665 with RFC 6446 rate control, on a fake clock."""

from __future__ import annotations

import pytest

from sipstatus.sip import Request, SipError, make_response, parse_message
from sipstatus.sip.notifier import (
    DEFAULT_MAX_RATE,
    NotifyFailed,
    SubscriptionCreated,
    SubscriptionRefreshed,
    SubscriptionRejected,
    SubscriptionTerminated,
    accepts,
)
from sipstatus.sip.transaction import Destination
from sipstatus.sip.transaction_user import SendRequest, SendResponse
from tests.support.notifier_driver import (
    OTHER,
    PROXY,
    PROXY_TCP,
    TYPE,
    drive,
    established,
    events,
    notifier,
    notifies,
    ok,
    responses,
    state_of,
    subscribe,
)

# -- accepting and refusing SUBSCRIBE -------------------------------------------------


def test_subscribe_gets_200_with_expires_to_tag_and_contact():
    out = notifier().handle_request(subscribe(), PROXY, 0.0)
    (resp,) = responses(out)
    assert resp.status == 200
    assert resp.expires == 600
    assert resp.to_addr.tag
    assert str(resp.contacts[0].uri) == "sip:agent@192.0.2.1:5060"


def test_subscribe_without_expires_gets_the_default_600():
    (resp,) = responses(notifier().handle_request(subscribe(expires=None), PROXY, 0.0))
    assert resp.expires == 600


def test_subscribe_longer_than_the_cap_is_shortened_to_3600():
    (resp,) = responses(notifier().handle_request(subscribe(expires=86400), PROXY, 0.0))
    assert resp.expires == 3600


def test_subscribe_below_60_seconds_gets_423_with_min_expires():
    out = notifier().handle_request(subscribe(expires=30), PROXY, 0.0)
    (resp,) = responses(out)
    assert resp.status == 423
    assert resp.min_expires == 60
    assert not notifies(out)
    assert events(out, SubscriptionRejected)[0].status == 423


def test_unknown_event_package_gets_489_with_allow_events():
    n = notifier(other_packages=["presence"])
    (resp,) = responses(n.handle_request(subscribe(event="dialog"), PROXY, 0.0))
    assert resp.status == 489
    assert resp.allow_events == ["load-status", "presence"]


def test_subscribe_without_event_header_gets_489():
    (resp,) = responses(notifier().handle_request(subscribe(event=None), PROXY, 0.0))
    assert resp.status == 489 and resp.allow_events == ["load-status"]


def test_accept_without_our_type_gets_406():
    req = subscribe(extra=[("Accept", "application/pidf+xml")])
    (resp,) = responses(notifier().handle_request(req, PROXY, 0.0))
    assert resp.status == 406
    assert resp.header("Accept") == TYPE


def test_accept_with_a_wildcard_is_accepted():
    req = subscribe(extra=[("Accept", "application/pidf+xml, application/*")])
    (resp,) = responses(notifier().handle_request(req, PROXY, 0.0))
    assert resp.status == 200


def test_accept_range_with_q_zero_excludes_the_type():
    assert not accepts([f"{TYPE};q=0"], TYPE)
    assert accepts(["*/*;q=0.1"], TYPE)


def test_authorizer_refusal_is_the_answer():
    refuse = lambda request, source, now: SipError(403, "not a trusted network")  # noqa: E731
    out = notifier(authorize=refuse).handle_request(subscribe(), PROXY, 0.0)
    (resp,) = responses(out)
    assert (resp.status, resp.reason) == (403, "not a trusted network")
    assert not notifies(out)


def test_authorizer_challenge_carries_its_headers():
    challenge = SipError(401, "Unauthorized", [("WWW-Authenticate", 'Digest realm="x", nonce="n"')])
    n = notifier(authorize=lambda request, source, now: challenge)
    (resp,) = responses(n.handle_request(subscribe(), PROXY, 0.0))
    assert resp.status == 401
    assert resp.header("WWW-Authenticate") == 'Digest realm="x", nonce="n"'


def test_authorizer_sees_request_source_and_time():
    seen = []
    n = notifier(authorize=lambda request, source, now: seen.append((request.method, source, now)))
    n.handle_request(subscribe(), PROXY, 3.0)
    assert seen == [("SUBSCRIBE", PROXY, 3.0)]


def test_total_cap_answers_503_with_retry_after():
    n = notifier(max_subscriptions=1, busy_retry_after=17)
    n.handle_request(subscribe(), PROXY, 0.0)
    (resp,) = responses(n.handle_request(subscribe(call_id="c2", contact="sip:b@192.0.2.11"),
                                         OTHER, 0.0))
    assert resp.status == 503
    assert resp.retry_after.seconds == 17


def test_per_source_cap_answers_503_but_other_sources_still_subscribe():
    n = notifier(max_per_source=1)
    n.handle_request(subscribe(), PROXY, 0.0)
    (second,) = responses(n.handle_request(subscribe(call_id="c2", contact="sip:x@192.0.2.10:5070"),
                                           PROXY, 0.0))
    (third,) = responses(n.handle_request(subscribe(call_id="c3", contact="sip:b@192.0.2.11"),
                                          OTHER, 0.0))
    assert second.status == 503
    assert third.status == 200


def test_subscribe_with_two_contacts_gets_400():
    req = subscribe(extra=[("Contact", "<sip:second@192.0.2.10>")])
    (resp,) = responses(notifier().handle_request(req, PROXY, 0.0))
    assert resp.status == 400


def test_bad_expires_value_gets_400():
    req = subscribe(expires=None, extra=[("Expires", "soon")])
    (resp,) = responses(notifier().handle_request(req, PROXY, 0.0))
    assert resp.status == 400


def test_non_subscribe_requests_are_not_the_notifiers():
    req = subscribe()
    req.method = "PUBLISH"
    assert notifier().handle_request(req, PROXY, 0.0) is None


# -- the dialog and the first NOTIFY ------------------------------------------------


def test_accepted_subscribe_is_followed_by_an_immediate_full_state_notify():
    n = notifier()
    n.state_changed(b'{"x":1}', 0.0)
    out = n.handle_request(subscribe(), PROXY, 1.0)
    assert isinstance(out[0], SendResponse)  # the 200 goes before the NOTIFY
    (send,) = notifies(out)
    req = send.request
    assert req.method == "NOTIFY"
    assert req.body == b'{"x":1}'
    assert req.content_type == TYPE
    assert state_of(send) == "active;expires=600"
    assert req.event.package == "load-status"
    assert events(out, SubscriptionCreated)[0].expires == 600


def test_notify_belongs_to_the_dialog_of_the_200():
    n = notifier()
    out = n.handle_request(subscribe(), PROXY, 0.0)
    (resp,) = responses(out)
    (send,) = notifies(out)
    req = send.request
    assert req.call_id == "c1"
    assert req.to_addr.tag == "w1"
    assert req.from_addr.tag == resp.to_addr.tag
    assert req.uri == "sip:watcher@192.0.2.10:5060"  # the SUBSCRIBE's Contact
    assert send.destination == Destination("UDP", "192.0.2.10", 5060)


def test_notify_follows_the_record_route_of_the_subscribe():
    req = subscribe(extra=[("Record-Route", "<sip:p1.example;lr>, <sip:192.0.2.50;lr>")])
    out = notifier().handle_request(req, PROXY, 0.0)
    (resp,) = responses(out)
    (send,) = notifies(out)
    assert resp.header_values("Record-Route") == ["<sip:p1.example;lr>", "<sip:192.0.2.50;lr>"]
    assert send.request.header_values("Route") == ["<sip:p1.example;lr>", "<sip:192.0.2.50;lr>"]
    assert send.request.uri == "sip:watcher@192.0.2.10:5060"
    assert send.destination == PROXY  # the source, not p1.example (spec 4.6.2)


def test_notify_to_a_strict_router_puts_it_in_the_request_uri():
    req = subscribe(extra=[("Record-Route", "<sip:192.0.2.50>")])
    (send,) = notifies(notifier().handle_request(req, PROXY, 0.0))
    assert send.request.uri == "sip:192.0.2.50"
    assert send.request.header_values("Route") == ["<sip:watcher@192.0.2.10:5060>"]
    assert send.destination == PROXY  # the source, not 192.0.2.50 (spec 4.6.2)


def test_notify_over_tcp_reuses_the_subscribers_connection():
    (send,) = notifies(notifier().handle_request(subscribe(), PROXY_TCP, 0.0))
    assert send.destination == PROXY_TCP


def test_notify_without_a_state_has_no_body():
    (send,) = notifies(notifier().handle_request(subscribe(), PROXY, 0.0))
    assert send.request.body == b""
    assert send.request.content_type is None


def test_notify_cseq_increments_within_the_dialog():
    n = notifier()
    _, first = established(n)
    later = [o for _, o in drive(n, 11.0) if isinstance(o, SendRequest)]
    numbers = [s.request.cseq.number for s in [first, *later]]
    assert numbers == [1, 2, 3]


def test_subscription_created_names_subscriber_source_and_event_id():
    out = notifier().handle_request(subscribe(event="load-status;id=7"), PROXY, 0.0)
    (created,) = events(out, SubscriptionCreated)
    assert (created.subscriber, created.source, created.event_id) == (
        "sip:watcher@proxy.example", PROXY, "7")
    assert notifies(out)[0].request.header("Event") == "load-status;id=7"


def test_fetch_with_expires_0_gets_one_terminated_notify_and_no_subscription():
    n = notifier()
    n.state_changed(b"s", 0.0)
    out = n.handle_request(subscribe(expires=0), PROXY, 0.0)
    (resp,) = responses(out)
    (send,) = notifies(out)
    assert resp.status == 200 and resp.expires == 0
    assert state_of(send) == "terminated;reason=timeout"
    assert send.request.body == b"s"
    assert not n.subscriptions
    assert n.next_timer() is None


# -- refresh and unsubscribe ---------------------------------------------------------


def test_refresh_in_dialog_gets_200_and_a_notify():
    n = notifier()
    tag, _ = established(n)
    out = n.handle_request(subscribe(to_tag=tag, cseq=2, expires=300), PROXY, 10.0)
    (resp,) = responses(out)
    assert resp.status == 200 and resp.expires == 300
    (send,) = notifies(out)
    assert state_of(send) == "active;expires=300"
    (refreshed,) = events(out, SubscriptionRefreshed)
    assert (refreshed.id.local_tag, refreshed.expires) == (tag, 300)


def test_refresh_extends_the_expiry():
    n = notifier()
    tag, _ = established(n)
    n.handle_request(subscribe(to_tag=tag, cseq=2, expires=600), PROXY, 500.0)
    seen = drive(n, 1099.0)
    assert not events([o for _, o in seen], SubscriptionTerminated)
    seen = drive(n, 1100.0)
    assert events([o for _, o in seen], SubscriptionTerminated)[0].reason == "timeout"


def test_refresh_with_an_old_cseq_gets_500():
    n = notifier()
    tag, _ = established(n, cseq=5)
    (resp,) = responses(n.handle_request(subscribe(to_tag=tag, cseq=5), PROXY, 1.0))
    assert resp.status == 500


def test_refresh_for_an_unknown_dialog_gets_481():
    n = notifier()
    established(n)
    (resp,) = responses(n.handle_request(subscribe(to_tag="nosuch", cseq=2), PROXY, 1.0))
    assert resp.status == 481


def test_refresh_with_another_event_id_gets_481():
    n = notifier()
    tag, _ = established(n, event="load-status;id=1")
    req = subscribe(to_tag=tag, cseq=2, event="load-status;id=2")
    (resp,) = responses(n.handle_request(req, PROXY, 1.0))
    assert resp.status == 481


def test_refresh_below_min_expires_gets_423_and_keeps_the_subscription():
    n = notifier()
    tag, _ = established(n)
    (resp,) = responses(n.handle_request(subscribe(to_tag=tag, cseq=2, expires=10), PROXY, 1.0))
    assert resp.status == 423
    assert len(n.subscriptions) == 1


def test_unsubscribe_gets_200_and_a_final_terminated_notify_with_the_state():
    n = notifier()
    n.state_changed(b"last", 0.0)
    tag, _ = established(n)
    out = n.handle_request(subscribe(to_tag=tag, cseq=2, expires=0), PROXY, 3.0)
    (resp,) = responses(out)
    (send,) = notifies(out)
    assert resp.status == 200 and resp.expires == 0
    assert state_of(send) == "terminated;reason=timeout"
    assert send.request.body == b"last"
    assert events(out, SubscriptionTerminated)[0].reason == "unsubscribed"
    assert not n.subscriptions


def test_final_notify_waits_for_the_outstanding_one():
    n = notifier()
    out = n.handle_request(subscribe(), PROXY, 0.0)  # first NOTIFY left unanswered
    tag = responses(out)[0].to_addr.tag
    (first,) = notifies(out)
    out = n.handle_request(subscribe(to_tag=tag, cseq=2, expires=0), PROXY, 0.1)
    assert notifies(out) == [] and n.closing == 1  # spec 4.7.2: one outstanding
    (final,) = notifies(ok(n, first, 0.3))
    assert state_of(final).startswith("terminated")
    assert n.closing == 0 and n.next_timer() is None


def test_final_notify_after_a_timed_out_one_is_not_sent():
    n = notifier()
    out = n.handle_request(subscribe(), PROXY, 0.0)
    tag = responses(out)[0].to_addr.tag
    (first,) = notifies(out)
    n.handle_request(subscribe(to_tag=tag, cseq=2, expires=0), PROXY, 0.1)
    out = n.handle_response(make_response(first.request, 408), first.request, 32.0)
    assert notifies(out) == [] and n.closing == 0


def test_final_notify_keeps_the_100_ms_limit_but_not_the_ceiling():
    n = notifier()
    tag, _ = established(n)  # first NOTIFY at 0.0, answered
    out = n.handle_request(subscribe(to_tag=tag, cseq=2, expires=0), PROXY, 0.05)
    assert notifies(out) == []
    ((when, final),) = [(t, o) for t, o in drive(n, 1.0) if isinstance(o, SendRequest)]
    assert when == pytest.approx(0.1) and state_of(final).startswith("terminated")


# -- expiry and termination ---------------------------------------------------------


def test_subscription_expires_with_a_timeout_notify():
    n = notifier()
    established(n, expires=60)
    seen = drive(n, 60.0)
    final = [o for _, o in seen if isinstance(o, SendRequest)][-1]
    assert state_of(final) == "terminated;reason=timeout"
    (ended,) = events([o for _, o in seen], SubscriptionTerminated)
    assert ended.reason == "timeout"
    assert seen[-1][0] == 60.0
    assert n.next_timer() is None


def test_terminate_sends_the_reason_and_retry_after():
    n = notifier()
    established(n)
    (sid,) = [s.id for s in n.subscriptions.values()]
    out = n.terminate(sid, "probation", 5.0, retry_after=30)
    (send,) = notifies(out)
    assert state_of(send) == "terminated;reason=probation;retry-after=30"
    assert send.request.body == b""
    assert events(out, SubscriptionTerminated)[0].reason == "probation"
    assert n.terminate(sid, "probation", 6.0) == []


def test_terminate_all_ends_every_subscription():
    n = notifier()
    established(n)
    established(n, call_id="c2", from_tag="w2", contact="sip:b@192.0.2.11")
    out = n.terminate_all("deactivated", 1.0)
    assert [state_of(s) for s in notifies(out)] == ["terminated;reason=deactivated"] * 2
    assert not n.subscriptions


def test_notify_answered_481_ends_the_subscription_without_another_notify():
    n = notifier()
    first = notifies(n.handle_request(subscribe(), PROXY, 0.0))[0]
    out = n.handle_response(make_response(first.request, 481), first.request, 0.2)
    assert not notifies(out)
    (ended,) = events(out, SubscriptionTerminated)
    assert (ended.reason, ended.status) == ("notify-rejected", 481)
    assert not n.subscriptions


def test_notify_timing_out_ends_the_subscription():
    n = notifier()
    first = notifies(n.handle_request(subscribe(), PROXY, 0.0))[0]
    out = n.handle_response(make_response(first.request, 408), first.request, 32.0)
    assert events(out, SubscriptionTerminated)[0].reason == "notify-timeout"
    assert not n.subscriptions


@pytest.mark.parametrize("status", [400, 415, 489, 500])
def test_a_failed_notify_is_logged_and_ends_the_subscription_without_another(status):
    n = notifier()
    first = notifies(n.handle_request(subscribe(), PROXY, 0.0))[0]
    resp = make_response(first.request, status, "Invalid load-status body: weight (weight-hint)")
    out = n.handle_response(resp, first.request, 0.1)
    (failed,) = events(out, NotifyFailed)
    assert (failed.status, failed.reason) == (status, resp.reason)
    (ended,) = events(out, SubscriptionTerminated)
    assert (ended.reason, ended.status) == ("notify-failed", status)
    assert notifies(out) == [] and not n.subscriptions


def test_error_with_retry_after_pauses_the_notifies_but_keeps_the_subscription():
    n = notifier()
    first = notifies(n.handle_request(subscribe(), PROXY, 0.0))[0]
    resp = make_response(first.request, 503, headers=[("Retry-After", "20")])
    out = n.handle_response(resp, first.request, 0.1)
    assert events(out, NotifyFailed) and not events(out, SubscriptionTerminated)
    assert notifies(n.state_changed(b"x", 1.0)) == []
    times = [t for t, o in drive(n, 30.0) if isinstance(o, SendRequest)]
    assert times[0] == pytest.approx(20.1)


def test_response_to_a_final_notify_is_ignored():
    n = notifier()
    tag, _ = established(n)
    out = n.handle_request(subscribe(to_tag=tag, cseq=2, expires=0), PROXY, 1.0)
    (final,) = notifies(out)
    assert n.handle_response(make_response(final.request, 481), final.request, 1.1) == []


def test_provisional_responses_to_notify_change_nothing():
    n = notifier()
    first = notifies(n.handle_request(subscribe(), PROXY, 0.0))[0]
    assert n.handle_response(make_response(first.request, 100), first.request, 0.1) == []
    assert next(iter(n.subscriptions.values())).in_flight is not None


# -- replacement (Kamailio uac_req_send re-subscribes in a new dialog) --------------


def test_new_dialog_from_same_watcher_replaces_the_old_without_a_final_notify():
    n = notifier()
    established(n)
    out = n.handle_request(subscribe(call_id="c2", from_tag="w2"), PROXY, 10.0)
    (ended,) = events(out, SubscriptionTerminated)
    assert ended.reason == "replaced" and ended.id.call_id == "c1"
    (send,) = notifies(out)
    assert send.request.call_id == "c2"  # only the new dialog's first NOTIFY
    assert [k[0] for k in n.subscriptions] == ["c2"]


def test_replacement_needs_the_same_contact_event_id_and_source():
    n = notifier()
    established(n)
    n.handle_request(subscribe(call_id="c2", contact="sip:other@192.0.2.10"), PROXY, 1.0)
    n.handle_request(subscribe(call_id="c3", event="load-status;id=2"), PROXY, 1.0)
    n.handle_request(subscribe(call_id="c4"), OTHER, 1.0)
    assert len(n.subscriptions) == 4


def test_replacement_is_allowed_at_the_per_source_cap():
    n = notifier(max_per_source=1)
    established(n)
    (resp,) = responses(n.handle_request(subscribe(call_id="c2", from_tag="w2"), PROXY, 1.0))
    assert resp.status == 200


# -- rates (RFC 6446) ----------------------------------------------------------------


def test_changes_within_the_ceiling_interval_coalesce_and_the_latest_body_wins():
    ceiling = 1 / DEFAULT_MAX_RATE  # no max-rate asked: the default ceiling (8.2)
    n = notifier()
    established(n)
    assert notifies(n.state_changed(b"1", ceiling / 4)) == []
    assert notifies(n.state_changed(b"2", ceiling / 2)) == []
    seen = drive(n, ceiling)
    sent = [o for _, o in seen if isinstance(o, SendRequest)]
    assert [(t, o.request.body) for t, o in seen if isinstance(o, SendRequest)] == [(ceiling, b"2")]
    assert len(sent) == 1


def test_a_change_after_the_interval_goes_out_at_once():
    n = notifier()
    established(n)
    (send,) = notifies(n.state_changed(b"x", 0.7))
    assert send.request.body == b"x"


def test_heartbeat_notify_every_5_seconds_without_changes():
    n = notifier()
    established(n)
    times = [t for t, o in drive(n, 16.0) if isinstance(o, SendRequest)]
    assert times == [5.0, 10.0, 15.0]


def test_insignificant_change_waits_for_the_heartbeat():
    n = notifier()
    established(n)
    assert notifies(n.state_changed(b"minor", 1.0, significant=False)) == []
    seen = [(t, o.request.body) for t, o in drive(n, 5.0) if isinstance(o, SendRequest)]
    assert seen == [(5.0, b"minor")]


def test_max_rate_parameter_sets_the_minimum_interval():
    n = notifier()
    established(n, event="load-status;max-rate=1")
    assert notifies(n.state_changed(b"a", 0.6)) == []
    seen = [t for t, o in drive(n, 1.0) if isinstance(o, SendRequest)]
    assert seen == [1.0]


def test_max_rate_above_the_absolute_limit_is_clamped_to_10_per_second():
    n = notifier()
    _, first = established(n, event="load-status;max-rate=50")
    assert "max-rate=10" in state_of(first)
    assert notifies(n.state_changed(b"a", 0.05)) == []
    assert [t for t, o in drive(n, 0.1) if isinstance(o, SendRequest)] == [0.1]


def test_min_rate_parameter_shortens_the_heartbeat():
    n = notifier()
    _, first = established(n, event="load-status;min-rate=1")
    assert "min-rate=1" in state_of(first)
    assert [t for t, o in drive(n, 3.0) if isinstance(o, SendRequest)] == [1.0, 2.0, 3.0]


def test_min_rate_below_the_heartbeat_floor_does_not_lengthen_it():
    n = notifier()
    _, first = established(n, event="load-status;min-rate=0.01")
    assert state_of(first).endswith(";min-rate=0.01")  # the applied value: as asked
    assert [t for t, o in drive(n, 10.0) if isinstance(o, SendRequest)] == [5.0, 10.0]


def test_min_rate_above_max_rate_is_lowered_to_it():
    n = notifier()
    _, first = established(n, event="load-status;min-rate=3;max-rate=1")
    assert state_of(first).endswith(";max-rate=1;min-rate=1")
    assert [t for t, o in drive(n, 3.0) if isinstance(o, SendRequest)] == [1.0, 2.0, 3.0]


def test_max_rate_below_3_per_validity_is_raised():
    _, first = established(notifier(), event="load-status;max-rate=0.05")
    assert state_of(first).endswith(";max-rate=0.2")


def test_applied_rates_have_at_most_three_decimals_and_no_trailing_zeros():
    _, first = established(notifier(), event="load-status;max-rate=2.50;min-rate=0.33333")
    assert state_of(first) == "active;expires=600;max-rate=2.5;min-rate=0.333"


def test_spec_example_rates_are_applied_as_asked():
    _, first = established(notifier(), event="load-status;max-rate=5;min-rate=0.2")
    assert state_of(first) == "active;expires=600;max-rate=5;min-rate=0.2"


@pytest.mark.parametrize("value", ["0", "0.0", "-1", "fast", "inf", "nan", "1e3", "1.", ".5"])
@pytest.mark.parametrize("name", ["max-rate", "min-rate", "adaptive-min-rate"])
def test_bad_rate_values_get_400_naming_the_parameter(name, value):
    out = notifier().handle_request(subscribe(event=f"load-status;{name}={value}"), PROXY, 0.0)
    (resp,) = responses(out)
    assert (resp.status, resp.reason) == (400, f"Invalid {name}")


def test_adaptive_min_rate_counts_a_burst_as_credit():
    n = notifier(heartbeat=20.0)
    established(n, event="load-status;adaptive-min-rate=0.5")  # average >= 1 per 2 s
    for i in range(1, 6):  # 5 changes, 0.5 s apart: 6 NOTIFYs by t=2.5
        for o in n.state_changed(str(i).encode(), i * 0.5):
            ok(n, o, i * 0.5)
    times = [t for t, o in drive(n, 20.0) if isinstance(o, SendRequest)]
    # 6 sent: the average stays >= 0.5/s until t = 12; then one per 2 s.
    assert times[:3] == [12.0, 14.0, 16.0]


def test_adaptive_min_rate_never_exceeds_the_heartbeat_gap():
    n = notifier()
    established(n, event="load-status;adaptive-min-rate=0.01")
    assert [t for t, o in drive(n, 10.0) if isinstance(o, SendRequest)] == [5.0, 10.0]


def test_no_new_notify_while_one_is_unanswered():
    n = notifier()
    n.handle_request(subscribe(), PROXY, 0.0)  # first NOTIFY in flight
    assert notifies(n.state_changed(b"a", 1.0)) == []
    assert [o for _, o in drive(n, 30.0, answer=False) if isinstance(o, SendRequest)] == []


def test_answer_to_the_notify_releases_the_latest_state():
    n = notifier()
    first = notifies(n.handle_request(subscribe(), PROXY, 0.0))[0]
    n.state_changed(b"new", 0.2)
    out = ok(n, first, 0.6)
    (send,) = notifies(out)
    assert send.request.body == b"new"


def test_refresh_notify_is_not_delayed_by_the_ceiling():
    n = notifier()
    tag, _ = established(n)
    out = n.handle_request(subscribe(to_tag=tag, cseq=2), PROXY, 0.2)
    assert len(notifies(out)) == 1  # spec 8.6: the immediate NOTIFY skips C


def test_refresh_notify_still_keeps_100_ms_from_the_previous():
    n = notifier()
    tag, _ = established(n)
    out = n.handle_request(subscribe(to_tag=tag, cseq=2), PROXY, 0.05)
    assert notifies(out) == []
    assert [t for t, o in drive(n, 0.5) if isinstance(o, SendRequest)] == [pytest.approx(0.1)]


def test_heartbeat_shorter_than_the_ceiling_is_refused():
    with pytest.raises(ValueError):
        notifier(heartbeat=0.1, max_rate=2.0)


def test_notify_serialises_and_parses():
    n = notifier()
    n.state_changed(b'{"a":1}', 0.0)
    (send,) = notifies(n.handle_request(subscribe(), PROXY, 0.0))
    send.request.add_header("Via", "SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKx")
    again = parse_message(send.request.to_bytes())
    assert again.header("Subscription-State") == "active;expires=600"
    assert again.body == b'{"a":1}'


def test_expires_reported_is_exact_at_large_clock_values():
    n = notifier()
    now = 1795452957.026316
    (send,) = notifies(n.handle_request(subscribe(), PROXY, now))
    assert state_of(send) == "active;expires=600"
    n.handle_response(make_response(send.request, 200), send.request, now)
    (later,) = notifies(n.state_changed(b"x", now + 100.4))
    assert state_of(later) == "active;expires=499"  # 499.6 left: never over-stated


def test_refresh_on_a_new_tcp_connection_moves_the_notifies_there():
    n = notifier()
    first_conn = Destination("TCP", "192.0.2.10", 40001)
    out = n.handle_request(subscribe(), first_conn, 0.0)
    tag = responses(out)[0].to_addr.tag
    (note,) = notifies(out)
    assert note.destination == first_conn
    ok(n, note, 0.0)
    second_conn = Destination("TCP", "192.0.2.10", 40002)
    out = n.handle_request(subscribe(to_tag=tag, cseq=2), second_conn, 100.0)
    assert notifies(out)[0].destination == second_conn


# -- spec 4.6.1 order of checks ------------------------------------------------------------


def test_unknown_dialog_is_481_before_authorization():
    seen = []
    n = notifier(authorize=lambda r, s, t: seen.append(1) or SipError(403, "no"))
    (resp,) = responses(n.handle_request(subscribe(to_tag="x", cseq=2), PROXY, 0.0))
    assert resp.status == 481 and seen == []


def test_authorization_comes_before_rates_duration_and_accept():
    refuse = lambda r, s, t: SipError(403, "Forbidden")  # noqa: E731
    req = subscribe(expires=10, event="load-status;max-rate=bad",
                    extra=[("Accept", "text/plain")])
    (resp,) = responses(notifier(authorize=refuse).handle_request(req, PROXY, 0.0))
    assert resp.status == 403


def test_rates_come_before_duration():
    req = subscribe(expires=10, event="load-status;max-rate=bad")
    assert responses(notifier().handle_request(req, PROXY, 0.0))[0].status == 400


def test_duration_comes_before_accept():
    req = subscribe(expires=10, extra=[("Accept", "text/plain")])
    assert responses(notifier().handle_request(req, PROXY, 0.0))[0].status == 423


def test_accept_comes_before_caps():
    n = notifier(max_subscriptions=0)
    req = subscribe(extra=[("Accept", "text/plain")])
    assert responses(n.handle_request(req, PROXY, 0.0))[0].status == 406


def test_the_200_carries_allow_events():
    (resp,) = responses(notifier().handle_request(subscribe(), PROXY, 0.0))
    assert resp.allow_events == ["load-status"]


def test_default_caps_are_16_per_source_and_256_in_all_with_retry_after_60():
    n = notifier()
    assert (n.max_per_source, n.max_subscriptions, n.busy_retry_after) == (16, 256, 60)


def test_refresh_and_unsubscribe_are_never_refused_for_a_cap():
    n = notifier(max_per_source=1)
    tag, _ = established(n)
    n.max_per_source = 0
    (resp,) = responses(n.handle_request(subscribe(to_tag=tag, cseq=2), PROXY, 1.0))
    assert resp.status == 200


def test_replacement_needs_the_same_transport():
    n = notifier()
    established(n)
    tcp = Destination("TCP", PROXY.host, 40000)
    n.handle_request(subscribe(call_id="c2"), tcp, 1.0)
    assert len(n.subscriptions) == 2


# -- fresh bodies (spec 4.7.2) ---------------------------------------------------------------


def counting_producer():
    count = iter(range(1, 10_000))
    return lambda now: f'{{"seq":{next(count)}}}'.encode()


def test_every_notify_carries_a_freshly_produced_body():
    n = notifier(produce=counting_producer())
    _, first = established(n)
    later = [o.request.body for t, o in drive(n, 10.0) if isinstance(o, SendRequest)]
    assert [first.request.body, *later] == [b'{"seq":1}', b'{"seq":2}', b'{"seq":3}']


def test_final_notify_carries_a_fresh_body_for_any_reason():
    n = notifier(produce=counting_producer())
    established(n)
    (sid,) = [s.id for s in n.subscriptions.values()]
    (final,) = notifies(n.terminate(sid, "probation", 1.0, retry_after=30))
    assert state_of(final) == "terminated;reason=probation;retry-after=30"
    assert final.request.body == b'{"seq":2}'


def test_drop_ends_a_subscription_without_a_notify():
    n = notifier()
    established(n)
    (sid,) = [s.id for s in n.subscriptions.values()]
    out = n.drop(sid)
    assert notifies(out) == [] and events(out, SubscriptionTerminated)[0].reason == "deauthorized"
    assert n.next_timer() is None


# -- NOTIFY challenged (spec 4.7.3) -------------------------------------------------------------


def test_challenged_notify_goes_again_with_credentials_and_the_newest_body():
    def authorize(request, response):
        retry = Request(request.method, request.uri, list(request.headers), request.body)
        retry.add_header("Proxy-Authorization", "Digest x")
        return retry

    n = notifier(notify_authorize=authorize, produce=counting_producer())
    first = notifies(n.handle_request(subscribe(), PROXY, 0.0))[0]
    out = n.handle_response(make_response(first.request, 407), first.request, 0.1)
    (again,) = notifies(out)
    assert again.request.header("Proxy-Authorization") == "Digest x"
    assert again.request.body == b'{"seq":2}'
    assert again.request.cseq.number == first.request.cseq.number + 1
    assert not events(out, SubscriptionTerminated)


def test_challenged_notify_without_credentials_ends_the_subscription():
    n = notifier()
    first = notifies(n.handle_request(subscribe(), PROXY, 0.0))[0]
    out = n.handle_response(make_response(first.request, 401), first.request, 0.1)
    assert events(out, SubscriptionTerminated)[0].reason == "notify-failed"


# -- where NOTIFYs go (spec 4.6.2: the source, never a third party) ---------------------------


def test_notify_goes_to_the_source_not_to_a_contact_naming_another_host():
    victim = "sip:victim@203.0.113.9:5060"
    (send,) = notifies(notifier().handle_request(subscribe(contact=victim), PROXY, 0.0))
    assert send.request.uri == victim  # the dialog's remote target, as RFC 3261 says
    assert send.destination == PROXY


def test_notify_goes_to_the_source_port_not_the_contact_port():
    contact = "sip:watcher@192.0.2.10:5999"
    (send,) = notifies(notifier().handle_request(subscribe(contact=contact), PROXY, 0.0))
    assert send.destination == PROXY


def test_notify_goes_to_the_source_not_to_a_record_route_naming_another_host():
    req = subscribe(extra=[("Record-Route", "<sip:203.0.113.9;lr>")])
    (send,) = notifies(notifier().handle_request(req, PROXY, 0.0))
    assert send.request.header_values("Route") == ["<sip:203.0.113.9;lr>"]
    assert send.destination == PROXY


def test_heartbeat_notifies_keep_going_to_the_source():
    n = notifier()
    established(n, 0.0, contact="sip:victim@203.0.113.9:5060")
    later = [o for _, o in drive(n, 16.0) if isinstance(o, SendRequest)]
    assert later and {s.destination for s in later} == {PROXY}


def test_refresh_from_a_new_source_port_moves_the_notifies_there():
    n = notifier()
    to_tag, _ = established(n, 0.0)
    moved = Destination("UDP", PROXY.host, 5999)
    out = n.handle_request(subscribe(to_tag=to_tag, cseq=2), moved, 1.0)
    (send,) = notifies(out)
    assert send.destination == moved


# -- the agent's body_source ---------------------------------------------------------------


def test_a_body_source_renders_every_notify_afresh_heartbeats_included():
    rendered = iter(f"body-{i}".encode() for i in range(100))
    n = notifier(body_source=lambda: next(rendered))
    n.state_changed(b"ignored: the source renders", 0.0)
    _, first = established(n, 0.0)
    later = [o.request.body for _, o in drive(n, 16.0) if isinstance(o, SendRequest)]
    assert [first.request.body, *later] == [b"body-0", b"body-1", b"body-2", b"body-3"]


@pytest.mark.parametrize("reason", ["probation", "noresource"])
def test_a_stopping_notifier_sends_its_last_state_in_the_final_notify(reason):
    n = notifier(body_source=lambda: b'{"state":"down"}')
    established(n, 0.0)
    retry_after = 30 if reason == "probation" else None
    (final,) = notifies(n.terminate_all(reason, 1.0, retry_after=retry_after))
    assert state_of(final).startswith(f"terminated;reason={reason}")
    assert final.request.body == b'{"state":"down"}'
    assert final.request.content_type == TYPE


@pytest.mark.parametrize("reason", ["rejected", "deactivated", "giveup"])
def test_a_final_notify_for_other_reasons_carries_no_body(reason):
    n = notifier(body_source=lambda: b"state")
    established(n, 0.0)
    (final,) = notifies(n.terminate_all(reason, 1.0))
    assert final.request.body == b"" and final.request.content_type is None


# -- ported from agent-service ------------------------------------------------


def test_200_to_subscribe_and_to_a_refresh_carry_allow_events():
    # load-status 4.1 and 4.6.4 (SHOULD), RFC 6665 section 3.3.7.
    n = notifier(other_packages=["presence"])
    (ok,) = responses(n.handle_request(subscribe(), PROXY, 0.0))
    assert ok.allow_events == ["load-status", "presence"]
    out = n.handle_request(subscribe(to_tag=ok.to_addr.tag, cseq=2, expires=300), PROXY, 1.0)
    assert responses(out)[0].allow_events == ["load-status", "presence"]


def test_final_notify_waits_for_the_answer_to_the_notify_in_flight():
    # Spec 4.7.2 and 8.6: one NOTIFY outstanding per subscription, the final
    # one included, so NOTIFYs never overtake each other.
    n = notifier()
    out = n.handle_request(subscribe(), PROXY, 0.0)
    tag = responses(out)[0].to_addr.tag
    (first,) = notifies(out)  # left unanswered for now
    out = n.handle_request(subscribe(to_tag=tag, cseq=2, expires=0), PROXY, 0.2)
    assert [r.status for r in responses(out)] == [200] and notifies(out) == []
    # main's Notifier reports the end at once; the final NOTIFY follows.
    assert events(out, SubscriptionTerminated)[0].reason == "unsubscribed"
    assert n.closing == 1
    out = ok(n, first, 0.3)
    (final,) = notifies(out)
    assert state_of(final) == "terminated;reason=timeout"
    assert not n.subscriptions and n.closing == 0


def test_final_notify_keeps_the_absolute_100_ms_after_the_one_before():
    # Spec 8.1: at least 100 ms between the starts of two NOTIFYs, the final
    # one included; the ceiling (0.5 s here) does not delay it (8.6).
    n = notifier(max_rate=2.0)
    tag, _ = established(n, 0.0)
    out = n.handle_request(subscribe(to_tag=tag, cseq=2, expires=0), PROXY, 0.05)
    assert notifies(out) == []
    seen = drive(n, 1.0)
    assert [(t, state_of(o)) for t, o in seen if isinstance(o, SendRequest)] == [
        (0.1, "terminated;reason=timeout")]


@pytest.mark.parametrize(("status", "reason"), [(481, "notify-rejected"), (408, "notify-timeout")])
def test_no_final_notify_when_the_one_in_flight_fails(status, reason):
    n = notifier()
    first = notifies(n.handle_request(subscribe(), PROXY, 0.0))[0]
    (sid,) = [s.id for s in n.subscriptions.values()]
    assert notifies(n.terminate(sid, "probation", 0.2, retry_after=30)) == []
    out = n.handle_response(make_response(first.request, status), first.request, 0.3)
    assert notifies(out) == []  # the subscriber is gone: no final NOTIFY
    # (main's Notifier reported the end, "probation", at terminate())
    assert not n.subscriptions and n.closing == 0 and n.next_timer() is None


def test_a_refresh_of_an_ending_subscription_gets_481():
    n = notifier()
    out = n.handle_request(subscribe(), PROXY, 0.0)
    tag = responses(out)[0].to_addr.tag
    (sid,) = [s.id for s in n.subscriptions.values()]
    n.terminate(sid, "probation", 0.2)  # waits for the first NOTIFY's answer
    (resp,) = responses(n.handle_request(subscribe(to_tag=tag, cseq=2), PROXY, 0.3))
    assert resp.status == 481


@pytest.mark.parametrize("status", [400, 415, 489, 500, 503])
def test_a_notify_failing_without_retry_after_ends_the_subscription_without_another(status):
    # load-status 4.7.3 (RFC 6665 section 4.2.2 MUST), logged with its reason.
    n = notifier()
    first = notifies(n.handle_request(subscribe(), PROXY, 0.0))[0]
    reply = make_response(first.request, status, "Invalid load-status body: weight (weight-hint)")
    out = n.handle_response(reply, first.request, 0.1)
    (failed,) = events(out, NotifyFailed)
    assert (failed.status, failed.reason) == (status, "Invalid load-status body: weight (weight-hint)")
    assert notifies(out) == []
    assert events(out, SubscriptionTerminated)[0].reason == "notify-failed"
    assert not n.subscriptions and n.next_timer() is None


def test_a_notify_answered_with_retry_after_pauses_the_subscription_until_then():
    # load-status 4.7.3 and 8.6: not a failure; no NOTIFY but the final one before it.
    n = notifier()
    first = notifies(n.handle_request(subscribe(), PROXY, 0.0))[0]
    busy = make_response(first.request, 503, "Busy", headers=[("Retry-After", "12")])
    out = n.handle_response(busy, first.request, 0.1)
    assert events(out, NotifyFailed)[0].status == 503 and len(n.subscriptions) == 1
    n.state_changed(b"news", 1.0)  # significant, but held
    sent = [t for t, o in drive(n, 20.0) if isinstance(o, SendRequest)]
    assert sent[0] == pytest.approx(12.1)
    (sid,) = [s.id for s in n.subscriptions.values()]
    n2 = notifier()
    first = notifies(n2.handle_request(subscribe(), PROXY, 0.0))[0]
    n2.handle_response(busy, first.request, 0.1)
    (sid,) = [s.id for s in n2.subscriptions.values()]
    (final,) = notifies(n2.terminate(sid, "probation", 1.0, retry_after=30))  # the final one is not held
    assert state_of(final).startswith("terminated")


def test_refresh_notify_is_not_delayed_by_the_ceiling_only_by_the_absolute_limit():
    # Spec 4.6.4 and 8.6: the NOTIFY answering a SUBSCRIBE is not delayed by
    # the ceiling (0.5 s here); the 100 ms of 8.1 still hold.
    n = notifier(max_rate=2.0)
    tag, _ = established(n)
    (send,) = notifies(n.handle_request(subscribe(to_tag=tag, cseq=2), PROXY, 0.2))
    assert state_of(send).startswith("active")
    ok(n, send, 0.2)
    out = n.handle_request(subscribe(to_tag=tag, cseq=3), PROXY, 0.25)
    assert notifies(out) == []
    assert [t for t, o in drive(n, 0.5) if isinstance(o, SendRequest)] == [0.30000000000000004]


def test_authorization_comes_before_the_rate_parameters():
    # An unauthorized party learns nothing but the package name (4.6.1).
    n = notifier(authorize=lambda request, source, now: SipError(403, "Forbidden"))
    bad_rate = subscribe(event="load-status;max-rate=fast")
    (resp,) = responses(n.handle_request(bad_rate, PROXY, 0.0))
    assert resp.status == 403


def test_an_unknown_dialog_gets_481_before_authorization():
    n = notifier(authorize=lambda request, source, now: SipError(403, "Forbidden"))
    (resp,) = responses(n.handle_request(subscribe(to_tag="nosuch", cseq=2), PROXY, 0.0))
    assert resp.status == 481


def test_the_duration_is_checked_before_accept():
    n = notifier()
    request = subscribe(expires=30, extra=[("Accept", "text/plain")])
    (resp,) = responses(n.handle_request(request, PROXY, 0.0))
    assert resp.status == 423


def test_a_max_rate_below_the_lowest_honoured_is_raised_and_echoed():
    # load-status 8.2: one NOTIFY every 100 s would leave the node stale at
    # the proxy (validity 15 s, heartbeat 5 s): max-rate is raised to 3/validity.
    n = notifier(heartbeat=5.0, lowest_max_rate=0.2)
    _, first = established(n, event="load-status;max-rate=0.01")
    assert state_of(first) == "active;expires=600;max-rate=0.2"
    sent = [t for t, o in drive(n, 16.0) if isinstance(o, SendRequest)]
    assert sent == [5.0, 10.0, 15.0]


def test_the_lowest_max_rate_honoured_defaults_to_the_heartbeat_rate():
    n = notifier(heartbeat=5.0)
    _, first = established(n, event="load-status;max-rate=0.05")
    assert state_of(first).endswith(";max-rate=0.2")


def test_drop_with_a_reason_and_the_refresh_that_follows_gets_481():
    # load-status 4.6.2 / 4.7.4: authorization withdrawn, no NOTIFY (agent-service).
    n = notifier()
    tag, _ = established(n)
    (sid,) = [s.id for s in n.subscriptions.values()]
    out = n.drop(sid, "unauthorized")
    assert notifies(out) == [] and events(out, SubscriptionTerminated)[0].reason == "unauthorized"
    assert not n.subscriptions and n._per_source == {}
    (resp,) = responses(n.handle_request(subscribe(to_tag=tag, cseq=2), PROXY, 1.0))
    assert resp.status == 481
