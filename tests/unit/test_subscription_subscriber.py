"""The subscriber side of RFC 6665 (and its pool), on a fake clock."""

from __future__ import annotations

import random

import pytest

from sipstatus.sip import Request, make_response
from sipstatus.sip.identifiers import IdGenerator
from sipstatus.sip.subscriber import (
    ACTIVE,
    NOTIFY_WAIT,
    STOPPED,
    WAITING,
    NotificationReceived,
    NotificationRejected,
    Subscribed,
    Subscriber,
    SubscriberPool,
    SubscriptionEnded,
    backoff,
)
from sipstatus.sip.transaction import Destination
from sipstatus.sip.transaction_user import SendRequest, refresh_delay
from tests.support.subscriber_driver import (
    AGENT,
    TYPE,
    BodyError,
    active,
    answers,
    config,
    events,
    notify,
    reply,
    run,
    sent,
    subscriber,
)

# -- the initial SUBSCRIBE ---------------------------------------------------------


def test_initial_subscribe_carries_event_expires_accept_and_contact():
    sub = subscriber(max_rate=2, min_rate=0.2)
    (out,) = sub.start(0.0)
    req = out.request
    assert out.destination == AGENT
    assert req.method == "SUBSCRIBE" and req.uri == "sip:agent@192.0.2.1"
    assert req.header("Event") == "load-status;min-rate=0.2;max-rate=2"
    assert req.expires == 600
    assert req.header("Accept") == TYPE
    assert str(req.contacts[0].uri) == "sip:watcher@192.0.2.10:5060"
    assert req.from_addr.tag and req.to_addr.tag is None
    assert req.cseq.number == 1


def test_event_id_goes_in_the_event_header():
    sub = Subscriber("sip:agent@192.0.2.1", config(), event_id="a7")
    assert sub.start(0.0)[0].request.header("Event") == "load-status;id=a7"


def test_200_makes_the_dialog_and_schedules_the_refresh():
    sub = subscriber()
    (req,) = sent(sub.start(0.0))
    resp = reply(req, 200, headers=[("Expires", "600"),
                                    ("Record-Route", "<sip:p1@192.0.2.5;lr>, <sip:p2@192.0.2.6;lr>")])
    out = sub.handle_response(resp, req, 1.0)
    assert events(out, Subscribed) == [Subscribed(sub.id, 600)]
    assert sub.state == ACTIVE and sub.dialog.remote_tag == "n1"
    assert sub.dialog.remote_target == "sip:agent@192.0.2.1:5060"
    # RFC 3261 section 12.1.2: the UAC's route set is Record-Route reversed.
    assert sub.dialog.route_set == ["<sip:p2@192.0.2.6;lr>", "<sip:p1@192.0.2.5;lr>"]
    assert sub.refresh_at == 1.0 + refresh_delay(600)


def test_refresh_when_a_fifth_or_32_seconds_are_left():
    assert refresh_delay(600) == 480  # spec 4.4: at 480 s of 600
    assert refresh_delay(60) == 28  # at 28 s of 60
    assert refresh_delay(3600) == 2880
    assert refresh_delay(20) == 10  # shorter than any notifier of ours grants


def test_notify_before_the_200_makes_the_dialog():
    sub = subscriber()
    (req,) = sent(sub.start(0.0))
    out = sub.handle_request(notify(sub, 1, extra=[("Record-Route", "<sip:p1@192.0.2.5;lr>")]),
                             AGENT, 0.1)
    assert answers(out)[0].status == 200
    assert sub.state == ACTIVE and sub.dialog.remote_tag == "n1"
    assert sub.dialog.route_set == ["<sip:p1@192.0.2.5;lr>"]  # UAS: in order
    assert events(out, Subscribed) == [Subscribed(sub.id, 600)]
    out = sub.handle_response(reply(req, 200, headers=[("Expires", "600")]), req, 0.2)
    assert events(out, Subscribed) == []  # announced once


def test_423_retries_with_min_expires():
    sub = subscriber()
    (req,) = sent(sub.start(0.0))
    out = sub.handle_response(reply(req, 423, headers=[("Min-Expires", "900")]), req, 0.1)
    (retry,) = sent(out)
    assert retry.expires == 900
    assert retry.cseq.number == 2
    assert retry.call_id == req.call_id
    assert retry.header("Via") is None


def test_423_without_a_larger_min_expires_backs_off():
    sub = subscriber()
    (req,) = sent(sub.start(0.0))
    out = sub.handle_response(reply(req, 423, headers=[("Min-Expires", "60")]), req, 0.1)
    assert sent(out) == []
    assert sub.state == WAITING


@pytest.mark.parametrize("status", [489, 403, 404])
def test_refusals_are_reported_and_retried_after_60_s(status):
    # Spec 4.15 (it was "never retried" before the rule was written down).
    sub = subscriber()
    (req,) = sent(sub.start(0.0))
    out = sub.handle_response(reply(req, status), req, 0.1)
    (ended,) = events(out, SubscriptionEnded)
    assert (ended.status, ended.retry_at) == (status, 60.1)
    assert sub.state == WAITING and sub.next_timer() == 60.1


def test_challenge_is_answered_once_through_the_authorizer():
    calls = []

    def authorize(request, response):
        calls.append(response.status)
        if len(calls) > 1:
            return None
        retry = Request(request.method, request.uri, list(request.headers), request.body)
        retry.add_header("Authorization", 'Digest username="w"')
        cseq = retry.cseq
        retry.set_header("CSeq", f"{cseq.number + 1} {cseq.method}")
        return retry

    sub = subscriber(authorize=authorize)
    (req,) = sent(sub.start(0.0))
    (retry,) = sent(sub.handle_response(reply(req, 401), req, 0.1))
    assert retry.header("Authorization") == 'Digest username="w"'
    out = sub.handle_response(reply(retry, 401), retry, 0.2)
    assert sent(out) == []
    assert events(out, SubscriptionEnded)[0].status == 401
    assert calls == [401, 401]


def test_challenge_without_an_authorizer_is_a_refusal():
    sub = subscriber()
    (req,) = sent(sub.start(0.0))
    out = sub.handle_response(reply(req, 407), req, 0.1)
    assert events(out, SubscriptionEnded)[0].retry_at == 60.1  # spec 4.15


def test_timeout_retries_with_exponential_backoff():
    sub = subscriber()
    times = []
    now = 0.0
    (req,) = sent(sub.start(now))
    for _ in range(4):
        now += 32.0
        out = sub.handle_response(make_response(req, 408), req, now)
        retry_at = events(out, SubscriptionEnded)[0].retry_at
        times.append(retry_at - now)
        (req,) = sent(sub.handle_timer(retry_at))
        now = retry_at
    assert times == [2.0, 4.0, 8.0, 16.0]


def test_backoff_is_capped_and_jittered_between_half_and_all():
    assert backoff(20, lambda: 1.0) == 600.0
    assert backoff(20, lambda: 0.0) == 300.0
    assert backoff(1, lambda: 0.0) == 1.0


def test_503_retry_after_is_honoured_when_longer_than_the_backoff():
    sub = subscriber()
    (req,) = sent(sub.start(0.0))
    out = sub.handle_response(reply(req, 503, headers=[("Retry-After", "50")]), req, 1.0)
    assert events(out, SubscriptionEnded)[0].retry_at == 51.0


def test_success_resets_the_backoff():
    sub = subscriber()
    (req,) = sent(sub.start(0.0))
    out = sub.handle_response(make_response(req, 408), req, 32.0)
    (req,) = sent(sub.handle_timer(events(out, SubscriptionEnded)[0].retry_at))
    sub.handle_response(reply(req, 200, headers=[("Expires", "600")]), req, 40.0)
    assert sub.failures == 0


def test_no_notify_within_64_t1_after_the_200_counts_as_failure():
    sub = subscriber()
    (req,) = sent(sub.start(0.0))
    sub.handle_response(reply(req, 200, headers=[("Expires", "600")]), req, 0.0)
    seen = run(sub, NOTIFY_WAIT)
    (ended,) = events([o for _, o in seen], SubscriptionEnded)
    assert ended.retry_at is not None and sub.state == WAITING


def test_responses_to_other_requests_are_ignored():
    sub = subscriber()
    (req,) = sent(sub.start(0.0))
    stranger = Request("SUBSCRIBE", req.uri, list(req.headers))
    assert sub.handle_response(reply(stranger, 200), stranger, 0.1) == []
    assert sub.state != ACTIVE


# -- refresh --------------------------------------------------------------------------


def test_refresh_goes_in_dialog_before_expiry():
    sub = active()
    seen = run(sub, 480.0)
    ((when, out),) = [(t, o) for t, o in seen if isinstance(o, SendRequest)]
    req = out.request
    assert when == 480.0
    assert req.to_addr.tag == "n1" and req.call_id == sub.call_id
    assert req.uri == "sip:agent@192.0.2.1:5060"  # the remote target
    assert req.cseq.number == 2 and req.expires == 600
    assert out.destination == Destination("UDP", "192.0.2.1", 5060)


def test_refresh_follows_the_route_set():
    sub = subscriber()
    (req,) = sent(sub.start(0.0))
    sub.handle_response(reply(req, 200, headers=[("Expires", "600"),
                                                 ("Record-Route", "<sip:192.0.2.5;lr>")]), req, 0)
    sub.handle_request(notify(sub, 1), AGENT, 0.0)
    (out,) = [o for _, o in run(sub, 480.0) if isinstance(o, SendRequest)]
    assert out.request.header_values("Route") == ["<sip:192.0.2.5;lr>"]
    assert out.destination == Destination("UDP", "192.0.2.5", 5060)


def test_notify_expires_reschedules_the_refresh():
    sub = active()
    sub.handle_request(notify(sub, 2, "active;expires=120"), AGENT, 100.0)
    assert sub.refresh_at == 100.0 + refresh_delay(120)


def test_refresh_answered_481_starts_a_new_subscription_at_once():
    sub = active()
    old_call_id = sub.call_id
    ((_, refresh),) = [(t, o) for t, o in run(sub, 480.0) if isinstance(o, SendRequest)]
    out = sub.handle_response(make_response(refresh.request, 481), refresh.request, 480.1)
    (new,) = sent(out)
    assert new.to_addr.tag is None and new.call_id != old_call_id
    assert events(out, SubscriptionEnded)[0].retry_at == 480.1


def test_refresh_failure_retries_the_refresh_before_expiry():
    sub = active()
    ((_, refresh),) = [(t, o) for t, o in run(sub, 480.0) if isinstance(o, SendRequest)]
    out = sub.handle_response(make_response(refresh.request, 500), refresh.request, 481.0)
    assert sent(out) == [] and sub.state == ACTIVE
    assert sub.refresh_at == 483.0
    (again,) = sent(sub.handle_timer(483.0))
    assert again.to_addr.tag == "n1" and again.cseq.number == 3


def test_refresh_failure_too_close_to_expiry_resubscribes_later():
    sub = active()
    ((_, refresh),) = [(t, o) for t, o in run(sub, 480.0) if isinstance(o, SendRequest)]
    out = sub.handle_response(make_response(refresh.request, 408), refresh.request, 599.0)
    assert sub.state == WAITING
    assert events(out, SubscriptionEnded)[0].retry_at == 601.0


def test_refresh_refused_403_ends_the_subscription_and_waits_60_s():
    sub = active()
    ((_, refresh),) = [(t, o) for t, o in run(sub, 480.0) if isinstance(o, SendRequest)]
    out = sub.handle_response(make_response(refresh.request, 403), refresh.request, 481.0)
    assert events(out, SubscriptionEnded)[0].retry_at == 541.0  # spec 4.15
    assert sub.state == WAITING


def test_refresh_challenge_updates_the_dialog_cseq():
    def authorize(request, response):
        retry = Request(request.method, request.uri, list(request.headers))
        retry.set_header("CSeq", f"{request.cseq.number + 1} SUBSCRIBE")
        retry.add_header("Authorization", "Digest x")
        return retry

    sub = active(subscriber(authorize=authorize))
    ((_, refresh),) = [(t, o) for t, o in run(sub, 480.0) if isinstance(o, SendRequest)]
    (retry,) = sent(sub.handle_response(make_response(refresh.request, 401), refresh.request, 481))
    assert retry.cseq.number == 3 and sub.dialog.local_cseq == 3


def test_unanswered_expiry_makes_a_new_subscription():
    sub = active()
    sub.refresh_at = None  # as if the refresh was lost without trace
    seen = run(sub, 600.0)
    outs = [o for _, o in seen]
    assert events(outs, SubscriptionEnded)[0].reason == "expired"
    (new,) = sent(outs)
    assert new.to_addr.tag is None


# -- NOTIFY ---------------------------------------------------------------------------


def test_valid_notify_gets_200_and_its_decoded_body():
    sub = active()
    out = sub.handle_request(notify(sub, 2, body=b'{"seq":5}'), AGENT, 1.0)
    assert answers(out)[0].status == 200
    (got,) = events(out, NotificationReceived)
    assert (got.state, got.value) == ("active", {"seq": 5})


def test_invalid_body_gets_400_naming_member_and_rule_with_a_warning():
    sub = active()
    out = sub.handle_request(notify(sub, 2, body=b'{"x":1}'), AGENT, 1.0)
    (resp,) = answers(out)
    assert (resp.status, resp.reason) == (400, "Invalid load-status body: seq (required)")
    assert resp.header("Warning") == '399 192.0.2.10:5060 "seq: missing (rule: required)"'
    assert events(out, NotificationRejected)[0].reason == resp.reason
    assert events(out, NotificationReceived) == []


def test_a_refused_notify_ends_the_subscription_and_resubscribes_after_30_s_doubling():
    sub = active()
    waits = []
    now = 1.0
    for cseq in range(2, 6):
        out = sub.handle_request(notify(sub, cseq, body=b'{"x":1}'), AGENT, now)
        (ended,) = events(out, SubscriptionEnded)
        assert ended.status == 400 and sub.state == WAITING
        waits.append(ended.retry_at - now)
        (req,) = sent(sub.handle_timer(ended.retry_at))
        now = ended.retry_at
        sub.handle_response(reply(req, 200, headers=[("Expires", "600")]), req, now)
    assert waits == [30.0, 60.0, 120.0, 240.0]
    sub.handle_request(notify(sub, 9), AGENT, now)  # a good body resets the count
    out = sub.handle_request(notify(sub, 10, body=b'{"x":1}'), AGENT, now + 1)
    assert events(out, SubscriptionEnded)[0].retry_at == now + 1 + 30.0


def test_check_hook_refuses_a_body_for_another_node():
    def same_node(value):
        if value.get("node", "ast1") != "ast1":
            raise BodyError("node", "subscription", "not the subscribed node")

    sub = active(Subscriber("sip:agent@192.0.2.1", config(), destination=AGENT, check=same_node))
    (resp,) = answers(sub.handle_request(notify(sub, 2, body=b'{"seq":2,"node":"ast2"}'), AGENT, 1))
    assert resp.reason == "Invalid load-status body: node (subscription)"


def test_reason_phrase_is_one_printable_line():
    def decode(body):
        if body == b"bad":
            raise ValueError("a\r\nb")
        return body

    sub = active(subscriber(decode=decode))
    (resp,) = answers(sub.handle_request(notify(sub, 2, body=b"bad"), AGENT, 1.0))
    assert resp.reason == "Invalid load-status body: a  b"
    resp.to_bytes()


def test_notify_with_another_content_type_gets_415():
    sub = active()
    (resp,) = answers(sub.handle_request(notify(sub, 2, content_type="text/plain"), AGENT, 1.0))
    assert resp.status == 415 and resp.header("Accept") == TYPE


def test_active_notify_without_body_gets_400_body_required():
    sub = active()
    (resp,) = answers(sub.handle_request(notify(sub, 2, body=None), AGENT, 1.0))
    assert (resp.status, resp.reason) == (400, "Invalid load-status body: body (required)")


def test_terminated_notify_without_body_is_accepted():
    sub = active()
    out = sub.handle_request(notify(sub, 2, "terminated;reason=noresource", body=None), AGENT, 1.0)
    assert answers(out)[0].status == 200
    assert events(out, NotificationReceived)[0].value is None


def test_notify_with_a_lower_cseq_gets_500():
    sub = active()
    sub.handle_request(notify(sub, 5), AGENT, 1.0)
    (resp,) = answers(sub.handle_request(notify(sub, 4), AGENT, 1.1))
    assert resp.status == 500


def test_notify_without_subscription_state_gets_400():
    sub = active()
    req = notify(sub, 2)
    req.remove_header("Subscription-State")
    assert answers(sub.handle_request(req, AGENT, 1.0))[0].status == 400


def test_notify_for_another_event_gets_489():
    sub = active()
    (resp,) = answers(sub.handle_request(notify(sub, 2, event="presence"), AGENT, 1.0))
    assert resp.status == 489


def test_notify_of_another_dialog_is_not_ours():
    sub = active()
    assert sub.handle_request(notify(sub, 2, from_tag="fork"), AGENT, 1.0) is None
    other = notify(sub, 2)
    other.set_header("Call-ID", "else")
    assert sub.handle_request(other, AGENT, 1.0) is None


@pytest.mark.parametrize("reason", ["deactivated", "timeout"])
def test_terminated_deactivated_or_timeout_resubscribes_at_once(reason):
    sub = active()
    old = sub.call_id
    out = sub.handle_request(notify(sub, 2, f"terminated;reason={reason}", body=None), AGENT, 90.0)
    assert answers(out)[0].status == 200
    (new,) = sent(out)
    assert new.method == "SUBSCRIBE" and new.to_addr.tag is None and new.call_id != old


def test_deactivated_right_after_subscribing_backs_off_instead():
    sub = active()
    out = sub.handle_request(notify(sub, 2, "terminated;reason=deactivated", body=None), AGENT, 5.0)
    assert sent(out) == []
    assert events(out, SubscriptionEnded)[0].retry_at == 7.0


@pytest.mark.parametrize("reason", ["probation", "giveup"])
def test_terminated_probation_or_giveup_resubscribes_after_retry_after(reason):
    sub = active()
    state = f"terminated;reason={reason};retry-after=90"
    out = sub.handle_request(notify(sub, 2, state, body=None), AGENT, 10.0)
    assert sent(out) == []
    assert events(out, SubscriptionEnded)[0].retry_at == 100.0
    assert sent(sub.handle_timer(99.0)) == []
    assert sent(sub.handle_timer(100.0))[0].method == "SUBSCRIBE"


def test_terminated_probation_without_retry_after_waits_30_s():
    sub = active()
    out = sub.handle_request(notify(sub, 2, "terminated;reason=probation", body=None), AGENT, 10.0)
    assert events(out, SubscriptionEnded)[0].retry_at == 40.0


@pytest.mark.parametrize("reason", ["rejected", "noresource", "invariant"])
def test_terminated_rejected_or_noresource_does_not_resubscribe(reason):
    sub = active()
    out = sub.handle_request(notify(sub, 2, f"terminated;reason={reason}", body=None), AGENT, 1.0)
    assert sent(out) == []
    assert events(out, SubscriptionEnded)[0].retry_at is None
    assert sub.state == STOPPED and sub.next_timer() is None


# -- stopping ----------------------------------------------------------------------------


def test_stop_unsubscribes_in_dialog_and_ends_on_the_final_notify():
    sub = active()
    (unsub,) = sent(sub.stop(5.0))
    assert unsub.expires == 0 and unsub.to_addr.tag == "n1"
    assert sub.handle_response(make_response(unsub, 200), unsub, 5.1) == []
    out = sub.handle_request(notify(sub, 3, "terminated;reason=timeout"), AGENT, 5.2)
    assert answers(out)[0].status == 200
    assert events(out, SubscriptionEnded)[0].reason == "unsubscribed"
    assert sent(out) == [] and sub.state == STOPPED


def test_stop_gives_up_waiting_for_the_final_notify():
    sub = active()
    (unsub,) = sent(sub.stop(5.0))
    sub.handle_response(make_response(unsub, 200), unsub, 5.0)
    outs = [o for _, o in run(sub, 5.0 + NOTIFY_WAIT)]
    assert events(outs, SubscriptionEnded)[0].reason == "unsubscribed"
    assert sub.next_timer() is None


def test_stop_while_subscribing_unsubscribes_on_the_200():
    sub = subscriber()
    (req,) = sent(sub.start(0.0))
    assert sub.stop(0.1) == []
    out = sub.handle_response(reply(req, 200, headers=[("Expires", "600")]), req, 0.2)
    (unsub,) = sent(out)
    assert unsub.expires == 0


def test_stop_while_waiting_stops_the_retries():
    sub = subscriber()
    (req,) = sent(sub.start(0.0))
    sub.handle_response(make_response(req, 408), req, 32.0)
    sub.stop(33.0)
    assert sub.state == STOPPED and sub.next_timer() is None


def test_next_timer_never_returns_a_handled_time():
    sub = active()
    (unsub,) = sent(sub.stop(5.0))
    sub.expires_at = 4.0  # stale deadline while unsubscribing
    run(sub, 1000.0)
    assert sub.next_timer() is None or sub.next_timer() > 1000.0


# -- the pool --------------------------------------------------------------------------------


def test_pool_routes_notify_by_call_id_and_answers_none_for_strangers():
    pool = SubscriberPool()
    shared = config()  # one id generator for all: distinct Call-IDs
    subs = [Subscriber(f"sip:n{i}@192.0.2.{i}", shared, destination=AGENT) for i in range(1, 4)]
    for s in subs:
        pool.add(s, 0.0)
    out = pool.handle_request(notify(subs[1], 1), AGENT, 0.1)
    assert events(out, Subscribed)[0].subscriber == subs[1].id
    stranger = notify(subs[1], 2)
    stranger.set_header("Call-ID", "unknown")
    assert pool.handle_request(stranger, AGENT, 0.2) is None


def test_pool_routes_responses_and_follows_new_dialogs():
    pool = SubscriberPool()
    sub = Subscriber("sip:n1@192.0.2.1", config(), destination=AGENT)
    (req,) = sent(pool.add(sub, 0.0))
    out = pool.handle_response(make_response(req, 408), req, 32.0)
    retry_at = events(out, SubscriptionEnded)[0].retry_at
    assert pool.next_timer() == retry_at
    (again,) = sent(pool.handle_timer(retry_at))
    assert again.call_id != req.call_id
    pool.handle_response(reply(again, 200, headers=[("Expires", "600")]), again, retry_at)
    assert events(pool.handle_request(notify(sub, 1), AGENT, retry_at), NotificationReceived)


def test_pool_timer_heap_fires_each_subscriber_at_its_time():
    pool = SubscriberPool()
    subs = []
    ids = IdGenerator(random.Random(5).randbytes)
    for i, expires in enumerate((120, 600, 60)):
        s = Subscriber(f"sip:n{i}@192.0.2.1", config(expires=expires, ids=ids), destination=AGENT)
        subs.append(s)
        (req,) = sent(pool.add(s, 0.0))
        pool.handle_response(reply(req, 200, headers=[("Expires", str(expires))]), req, 0.0)
        pool.handle_request(notify(s, 1, f"active;expires={expires}"), AGENT, 0.0)
    fired = []
    while (when := pool.next_timer()) is not None and when <= 600:
        for o in pool.handle_timer(when):
            if isinstance(o, SendRequest):
                fired.append((when, o.request.uri))
                pool.handle_response(reply(o.request, 200, headers=[
                    ("Expires", o.request.header("Expires"))]), o.request, when)
    # 60 s: refreshed at 28, 56, 84; 120 s: at 88; 600 s: at 480.
    assert [t for t, _ in fired[:4]] == [28.0, 56.0, 84.0, 88.0]


def test_pool_discard_forgets_the_subscriber():
    pool = SubscriberPool()
    sub = Subscriber("sip:n1@192.0.2.1", config(), destination=AGENT)
    pool.add(sub, 0.0)
    pool.discard(sub)
    assert pool.next_timer() is None
    assert pool.handle_request(notify(sub, 1), AGENT, 0.0) is None


# -- ported from agent-service ------------------------------------------------


@pytest.mark.parametrize(("body", "content_type", "status"), [(b'{"x":1}', TYPE, 400), (b'{"seq":1}', "text/plain", 415)])
def test_a_refused_body_ends_the_subscription_and_a_new_one_follows_after_30_s_doubling(body, content_type, status):
    # load-status 4.8: the notifier has ended it (4.7.3); no sooner than 30 s,
    # doubling up to 600 s while the bodies keep failing; a good body resets.
    sub = active()
    out = sub.handle_request(notify(sub, 2, body=body, content_type=content_type), AGENT, 1.0)
    (ended,) = events(out, SubscriptionEnded)
    assert (ended.status, ended.retry_at) == (status, 31.0)
    assert sub.handle_request(notify(sub, 3), AGENT, 2.0) is None  # the old dialog is gone
    waits = []
    for cseq in range(4, 10):
        (again,) = sent(sub.handle_timer(sub.next_timer()))
        now = sub.retry_at if sub.retry_at else sub.since
        sub.handle_response(reply(again, 200), again, now)
        out = sub.handle_request(notify(sub, cseq, body=body, content_type=content_type), AGENT, now)
        (ended,) = events(out, SubscriptionEnded)
        waits.append(ended.retry_at - now)
    assert waits == [60.0, 120.0, 240.0, 480.0, 600.0, 600.0]
    (again,) = sent(sub.handle_timer(sub.next_timer()))
    sub.handle_response(reply(again, 200), again, sub.since)
    sub.handle_request(notify(sub, 20), AGENT, sub.since)  # a good body
    assert sub.bad_notifies == 0  # main: bad_notifies (theirs: body_failures)
