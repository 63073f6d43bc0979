"""The rules issue 16 closed in the spec, one test per rule, on a fake clock.

Each test names the section whose text it checks: 4.15 (a subscriber's
answer to every SUBSCRIBE response), 5.7 (the publisher's waits, Retry-After
included, and the bodiless refreshes during a wait), 4.1 (the package name is
compared octet by octet), 4.3 (q=0 is "not acceptable") and 8.2 (the highest
min-rate honoured).
"""

from __future__ import annotations

import pytest

from sipstatus.sip import make_response
from sipstatus.sip.headers import parse_event
from sipstatus.sip.notifier import MAX_MIN_RATE, accepts
from sipstatus.sip.publisher import PublicationFailed, Published
from sipstatus.sip.subscriber import ACTIVE, STOPPED, WAITING, SubscriptionEnded
from tests.support.notifier_driver import PROXY, established, notifier, responses, state_of
from tests.support.notifier_driver import subscribe as subscribe_request
from tests.support.publisher_driver import counter, ok, publisher, requests_of
from tests.support.publisher_driver import run as run_publisher
from tests.support.publisher_driver import sent as sent_publish
from tests.support.subscriber_driver import active, events, reply, sent, subscriber
from tests.support.subscriber_driver import run as run_subscriber

TYPE = "application/load-status+json"

# -- 4.15: what a subscriber does with each response to a SUBSCRIBE ------------------------


@pytest.mark.parametrize("status", [400, 403, 404, 405, 406, 415, 489, 501, 603])
def test_a_refused_subscribe_is_tried_again_after_60_s_doubling_to_600(status):
    sub = subscriber()
    (req,) = sent(sub.start(0.0))
    now, waits = 0.0, []
    for _ in range(6):
        out = sub.handle_response(reply(req, status), req, now)
        (ended,) = events(out, SubscriptionEnded)
        assert ended.status == status and sub.state == WAITING
        waits.append(ended.retry_at - now)
        now = ended.retry_at
        (req,) = sent(sub.handle_timer(now))
    assert waits == [60.0, 120.0, 240.0, 480.0, 600.0, 600.0]


def test_refused_credentials_are_a_refusal_tried_again_after_60_s():
    sub = subscriber()  # no credentials for the challenge
    (req,) = sent(sub.start(0.0))
    out = sub.handle_response(reply(req, 401), req, 1.0)
    (ended,) = events(out, SubscriptionEnded)
    assert (ended.status, ended.retry_at) == (401, 61.0)


def test_a_refusal_wait_is_stretched_at_random_never_shortened():
    sub = subscriber(random=lambda: 0.0)  # the largest stretch: a fifth
    (req,) = sent(sub.start(0.0))
    (ended,) = events(sub.handle_response(reply(req, 403), req, 0.0), SubscriptionEnded)
    assert ended.retry_at == pytest.approx(72.0)


def test_a_refused_refresh_ends_the_subscription_and_subscribes_anew_after_60_s():
    sub = active()
    ((_, refresh),) = [(t, o) for t, o in run_subscriber(sub, 480.0) if hasattr(o, "request")]
    out = sub.handle_response(make_response(refresh.request, 403), refresh.request, 481.0)
    (ended,) = events(out, SubscriptionEnded)
    assert (ended.status, ended.retry_at) == (403, 541.0) and sub.state == WAITING
    (new,) = sent(sub.handle_timer(541.0))
    assert new.to_addr.tag is None


@pytest.mark.parametrize("status", [408, 500, 503, 480])
def test_a_failed_subscribe_without_retry_after_backs_off_from_2_s_doubling(status):
    sub = subscriber()
    (req,) = sent(sub.start(0.0))
    now, waits = 0.0, []
    for _ in range(4):
        out = sub.handle_response(make_response(req, status), req, now)
        (ended,) = events(out, SubscriptionEnded)
        waits.append(ended.retry_at - now)
        now = ended.retry_at
        (req,) = sent(sub.handle_timer(now))
    assert waits == [2.0, 4.0, 8.0, 16.0]


def test_a_constant_retry_after_still_doubles_the_subscribe_back_off():
    sub = subscriber()
    (req,) = sent(sub.start(0.0))
    now, waits = 0.0, []
    for _ in range(7):
        out = sub.handle_response(reply(req, 503, headers=[("Retry-After", "5")]), req, now)
        (ended,) = events(out, SubscriptionEnded)
        waits.append(ended.retry_at - now)
        now = ended.retry_at
        (req,) = sent(sub.handle_timer(now))
    assert waits == [5.0, 5.0, 8.0, 16.0, 32.0, 64.0, 128.0]


def test_a_subscriber_never_stops_on_a_response_while_configured():
    sub = subscriber()
    (req,) = sent(sub.start(0.0))
    for status in (404, 401, 489, 403, 500, 408, 603):
        sub.handle_response(reply(req, status), req, 0.0)
        assert sub.state != STOPPED and sub.next_timer() is not None
        (req,) = sent(sub.handle_timer(sub.next_timer()))


def test_a_refresh_answered_480_ends_the_subscription_and_backs_off():
    # RFC 6665 section 4.1.2.2 ends a refreshed subscription on 480.
    sub = active()
    ((_, refresh),) = [(t, o) for t, o in run_subscriber(sub, 480.0) if hasattr(o, "request")]
    out = sub.handle_response(make_response(refresh.request, 480), refresh.request, 481.0)
    (ended,) = events(out, SubscriptionEnded)
    assert (ended.status, ended.retry_at) == (480, 483.0) and sub.state == WAITING


def test_a_refresh_answered_500_is_retried_while_the_subscription_stands():
    sub = active()
    ((_, refresh),) = [(t, o) for t, o in run_subscriber(sub, 480.0) if hasattr(o, "request")]
    out = sub.handle_response(make_response(refresh.request, 500), refresh.request, 481.0)
    assert events(out, SubscriptionEnded) == [] and sub.state == ACTIVE
    (again,) = sent(sub.handle_timer(483.0))
    assert again.to_addr.tag is not None


def test_a_refresh_answered_481_subscribes_anew_at_once():
    sub = active()
    ((_, refresh),) = [(t, o) for t, o in run_subscriber(sub, 480.0) if hasattr(o, "request")]
    out = sub.handle_response(make_response(refresh.request, 481), refresh.request, 480.5)
    (new,) = sent(out)
    assert new.to_addr.tag is None and sub.state != ACTIVE


# -- 5.7: the publisher's waits -----------------------------------------------------------


def test_a_constant_retry_after_still_doubles_the_publish_wait():
    pub = publisher()
    (req,) = sent_publish(pub.publish(b"b", 0.0))
    now, waits = 0.0, []
    for _ in range(6):
        out = pub.handle_response(make_response(req, 503, headers=[("Retry-After", "5")]),
                                  req, now)
        retry_at = events(out, PublicationFailed)[0].retry_at
        waits.append(retry_at - now)
        ((now, req),) = requests_of(run_publisher(pub, retry_at))
    assert waits == [5.0, 10.0, 20.0, 40.0, 60.0, 60.0]


def test_a_retry_after_longer_than_the_doubling_is_waited():
    pub = publisher()
    (req,) = sent_publish(pub.publish(b"b", 0.0))
    out = pub.handle_response(make_response(req, 503, headers=[("Retry-After", "45")]), req, 1.0)
    assert events(out, PublicationFailed)[0].retry_at == 46.0


def heartbeating(granted: int = 60):
    """A publisher with heartbeats whose publication the compositor shortened."""
    pub = publisher(produce=counter(), heartbeat=5.0)
    (req,) = sent_publish(pub.publish(None, 0.0))
    pub.handle_response(ok(req, "e1", granted), req, 0.0)
    return pub


def test_a_refused_body_keeps_the_publication_alive_with_bodiless_refreshes():
    pub = heartbeating(granted=60)
    ((when, modify),) = requests_of(run_publisher(pub, 5.0))
    pub.handle_response(make_response(modify, 400), modify, when)  # back-off: 60 s
    seen = requests_of(run_publisher(pub, 64.0, answer=lambda r, t: ok(r, f"e{t}", 60)))
    # Each 60 s grant is refreshed at 28 s of it, without a body, until the
    # wait (60 s from the refusal at 5) is over and a body goes again.
    assert [(t, r.body, r.sip_if_match) for t, r in seen] == [(28.0, b"", "e1"),
                                                                (56.0, b"", "e28.0")]
    ((when, again),) = requests_of(run_publisher(pub, 66.0))
    assert when == 65.0 and again.body and again.sip_if_match == "e56.0"


def test_refreshes_during_a_body_back_off_do_not_reset_its_doubling():
    pub = heartbeating(granted=60)
    ((when, modify),) = requests_of(run_publisher(pub, 5.0))
    pub.handle_response(make_response(modify, 400), modify, when)
    answer = lambda r, t: ok(r, f"e{t}", 60) if not r.body else make_response(r, 400)  # noqa: E731
    seen = run_publisher(pub, 200.0, answer=answer)
    failures = [(t, e.retry_at) for t, e in seen if isinstance(e, PublicationFailed)]
    assert failures[0] == (65.0, 185.0)  # the second refusal waits 120 s


def test_no_refresh_is_sent_before_a_retry_after_has_passed():
    pub = heartbeating(granted=60)
    ((when, modify),) = requests_of(run_publisher(pub, 5.0))
    pub.handle_response(make_response(modify, 503, headers=[("Retry-After", "50")]),
                        modify, when)
    seen = requests_of(run_publisher(pub, 54.0, answer=lambda r, t: ok(r, "e2", 60)))
    assert seen == []


def test_a_refresh_during_the_back_off_reports_the_publication_kept():
    pub = heartbeating(granted=60)
    ((when, modify),) = requests_of(run_publisher(pub, 5.0))
    pub.handle_response(make_response(modify, 415), modify, when)
    seen = run_publisher(pub, 30.0, answer=lambda r, t: ok(r, "e2", 60))
    assert [e.etag for _, e in seen if isinstance(e, Published)] == ["e2"]


# -- 4.1: the package name is compared octet by octet (RFC 6665 section 8.2.1) --------------


def test_the_event_package_keeps_its_case():
    assert parse_event("LOAD-STATUS;id=7").package == "LOAD-STATUS"


@pytest.mark.parametrize("name", ["LOAD-STATUS", "Load-Status", "load-Status"])
def test_a_subscribe_for_the_package_in_another_case_gets_489(name):
    (resp,) = responses(notifier().handle_request(subscribe_request(event=name), PROXY, 0.0))
    assert resp.status == 489 and resp.allow_events == ["load-status"]


# -- 4.3: q=0 means "not acceptable" (RFC 3261 section 20.1, RFC 9110 section 12.4.2) -------


@pytest.mark.parametrize("accept", [f"{TYPE};q=0", "application/*;q=0", "*/*;q=0.000"])
def test_a_media_range_with_q_0_does_not_match(accept):
    assert not accepts([accept], TYPE)


def test_a_subscribe_accepting_the_type_only_with_q_0_gets_406():
    req = subscribe_request(extra=[("Accept", f"{TYPE};q=0")])
    (resp,) = responses(notifier().handle_request(req, PROXY, 0.0))
    assert resp.status == 406


# -- 8.2: the highest min-rate honoured (a heartbeat faster than the measurements) -----------


def test_min_rate_above_the_highest_honoured_is_lowered_to_it():
    _, first = established(notifier(), event="load-status;max-rate=100;min-rate=50")
    assert state_of(first).endswith(f";max-rate=10;min-rate={MAX_MIN_RATE:g}")


def test_adaptive_min_rate_above_the_highest_honoured_is_lowered_to_it():
    _, first = established(notifier(), event="load-status;adaptive-min-rate=7")
    assert state_of(first).endswith(f";adaptive-min-rate={MAX_MIN_RATE:g}")
