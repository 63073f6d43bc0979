"""RFC 3903 publisher and compositor, on a fake clock."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sipstatus.sip import Request, SipError, make_response
from sipstatus.sip.compositor import (
    Compositor,
    PublicationReceived,
    PublicationRefreshed,
    PublicationRemoved,
)
from sipstatus.sip.publisher import DEFAULT_CEILING, PublicationFailed, Published, Unpublished
from sipstatus.sip.transaction_user import SendRequest, SendResponse, refresh_delay
from tests.support.publisher_driver import (
    AGENT,
    PROXY,
    TYPE,
    counter,
    events,
    ok,
    published,
    publisher,
    requests_of,
    run,
    sent,
)

# -- publisher --------------------------------------------------------------------------


def test_initial_publish_carries_body_event_and_expires_but_no_if_match():
    (out,) = publisher().publish(b'{"seq":1}', 0.0)
    req = out.request
    assert out.destination == PROXY
    assert (req.method, req.uri) == ("PUBLISH", "sip:node1@proxy.example")
    assert req.body == b'{"seq":1}' and req.content_type == TYPE
    assert req.header("Event") == "load-status" and req.expires == 600
    assert req.sip_if_match is None


def test_200_keeps_the_entity_tag_and_schedules_a_refresh():
    pub = publisher()
    (req,) = sent(pub.publish(b"b", 0.0))
    out = pub.handle_response(ok(req, "tag1", 300), req, 1.0)
    assert events(out, Published) == [Published(pub.id, "tag1", 300)]
    assert pub.etag == "tag1" and pub.next_timer() == 1.0 + refresh_delay(300)


def test_refresh_has_if_match_and_no_body():
    pub = published()
    ((when, req),) = requests_of(run(pub, 600.0))
    assert when == refresh_delay(600)
    assert req.sip_if_match == "e1" and req.body == b"" and req.expires == 600
    assert req.content_type is None


def test_refresh_takes_the_new_entity_tag():
    pub = published()
    ((when, req),) = requests_of(run(pub, 600.0))
    pub.handle_response(ok(req, "e2"), req, when)
    assert pub.etag == "e2"


def test_modify_has_if_match_and_the_new_body():
    pub = published()
    (req,) = sent(pub.publish(b"b2", 1.0))
    assert req.sip_if_match == "e1" and req.body == b"b2"


def test_one_publish_at_a_time_and_the_latest_body_wins():
    pub = publisher()
    (first,) = sent(pub.publish(b"b1", 0.0))
    assert sent(pub.publish(b"b2", 0.1)) == []
    assert sent(pub.publish(b"b3", 0.2)) == []
    (after,) = sent(pub.handle_response(ok(first), first, 0.6))
    assert after.body == b"b3" and after.sip_if_match == "e1"


def test_bodies_are_not_published_faster_than_the_ceiling():
    pub = published(now=0.0)
    assert sent(pub.publish(b"b2", DEFAULT_CEILING / 2)) == []
    ((when, req),) = requests_of(run(pub, 1.0))
    assert when == DEFAULT_CEILING and req.body == b"b2"


def test_ceiling_is_never_below_100_ms():
    assert publisher(min_interval=0.01).ceiling == 0.1


def test_cseq_rises_and_call_id_stays():
    pub = published()
    (req,) = sent(pub.publish(b"b2", 1.0))
    assert req.cseq.number == 2 and req.call_id == pub.call_id


def test_412_starts_over_with_an_initial_publish_as_soon_as_the_ceiling_allows():
    pub = published()
    ((when, req),) = requests_of(run(pub, 600.0))
    assert sent(pub.handle_response(make_response(req, 412), req, when + 0.1)) == []
    ((again_at, again),) = requests_of(run(pub, when + 1))
    assert again_at == when + DEFAULT_CEILING
    assert again.sip_if_match is None and again.body == b"b1"


def test_423_retries_with_min_expires():
    pub = publisher()
    (req,) = sent(pub.publish(b"b", 0.0))
    out = pub.handle_response(make_response(req, 423, headers=[("Min-Expires", "1200")]), req, 0.2)
    (again,) = sent(out)
    assert again.expires == 1200 and again.cseq.number == 2 and again.body == b"b"
    assert pub.expires == 1200


def test_a_retry_keeps_100_ms_from_the_previous_start():
    pub = publisher()
    (req,) = sent(pub.publish(b"b", 0.0))
    out = pub.handle_response(make_response(req, 423, headers=[("Min-Expires", "1200")]), req, 0.03)
    assert sent(out) == []
    ((when, again),) = requests_of(run(pub, 1.0))
    assert when == pytest.approx(0.1) and again.expires == 1200


def test_remove_sends_expires_0_with_if_match():
    pub = published()
    (req,) = sent(pub.remove(5.0))
    assert req.expires == 0 and req.sip_if_match == "e1" and req.body == b""
    out = pub.handle_response(make_response(req, 200), req, 5.1)
    assert events(out, Unpublished) == [Unpublished(pub.id)]
    assert pub.etag is None and pub.next_timer() is None


def test_remove_before_anything_was_published_needs_no_request():
    pub = publisher()
    out = pub.remove(0.0)
    assert sent(out) == [] and events(out, Unpublished)


def test_remove_answered_412_counts_as_removed():
    pub = published()
    (req,) = sent(pub.remove(5.0))
    out = pub.handle_response(make_response(req, 412), req, 5.1)
    assert events(out, Unpublished) and sent(out) == []


def test_challenge_is_answered_once_through_the_authorizer():
    calls = []

    def authorize(request, response):
        calls.append(1)
        if len(calls) > 1:
            return None
        retry = Request(request.method, request.uri, list(request.headers), request.body)
        retry.add_header("Authorization", "Digest x")
        retry.set_header("CSeq", f"{request.cseq.number + 1} PUBLISH")
        return retry

    pub = publisher(authorize=authorize)
    (req,) = sent(pub.publish(b"b", 0.0))
    (retry,) = sent(pub.handle_response(make_response(req, 401), req, 0.1))
    assert retry.header("Authorization") == "Digest x" and retry.body == b"b"
    out = pub.handle_response(make_response(retry, 401), retry, 0.2)
    assert events(out, PublicationFailed)[0].retry_at == 60.2  # like a 403 (spec 5.7)


@pytest.mark.parametrize("status", [500, 503])
def test_server_errors_wait_5_s_doubling_up_to_60(status):
    pub = publisher()
    (req,) = sent(pub.publish(b"b", 0.0))
    waits = []
    now = 0.0
    for _ in range(6):
        out = pub.handle_response(make_response(req, status), req, now)
        retry_at = events(out, PublicationFailed)[0].retry_at
        waits.append(retry_at - now)
        ((now, req),) = requests_of(run(pub, retry_at))
    assert waits == [5.0, 10.0, 20.0, 40.0, 60.0, 60.0]


def test_retry_after_is_waited_exactly():
    pub = publisher()
    (req,) = sent(pub.publish(b"b", 0.0))
    out = pub.handle_response(make_response(req, 503, headers=[("Retry-After", "17")]), req, 1.0)
    assert events(out, PublicationFailed)[0].retry_at == 18.0


@pytest.mark.parametrize("status", [400, 403, 404, 415, 489])
def test_client_errors_wait_60_s_doubling_up_to_600(status):
    pub = publisher()
    (req,) = sent(pub.publish(b"b", 0.0))
    waits = []
    now = 0.0
    for _ in range(6):
        out = pub.handle_response(make_response(req, status), req, now)
        retry_at = events(out, PublicationFailed)[0].retry_at
        waits.append(retry_at - now)
        ((now, req),) = requests_of(run(pub, retry_at))
    assert waits == [60.0, 120.0, 240.0, 480.0, 600.0, 600.0]


def test_failure_then_publishes_the_newest_body():
    pub = publisher()
    (req,) = sent(pub.publish(b"b1", 0.0))
    pub.handle_response(make_response(req, 503), req, 1.0)
    pub.publish(b"b2", 2.0)
    ((when, again),) = requests_of(run(pub, 10.0))
    assert when == 6.0 and again.body == b"b2"


def test_failed_refresh_is_retried_as_a_refresh():
    pub = published()
    ((when, req),) = requests_of(run(pub, 600.0))
    pub.handle_response(make_response(req, 500), req, when)
    ((_, again),) = requests_of(run(pub, when + 5))
    assert again.sip_if_match == "e1" and again.body == b""


def test_expired_state_is_published_anew_without_the_old_tag():
    pub = published()
    ((when, req),) = requests_of(run(pub, 600.0))
    pub.handle_response(make_response(req, 503, headers=[("Retry-After", "200")]), req, when)
    ((_, again),) = requests_of(run(pub, 800.0))
    assert again.sip_if_match is None and again.body == b"b1"


def test_responses_to_other_requests_are_ignored():
    pub = publisher()
    (req,) = sent(pub.publish(b"b", 0.0))
    other = Request("PUBLISH", req.uri, list(req.headers), req.body)
    assert pub.handle_response(ok(other), other, 0.1) == []
    assert pub.etag is None


# -- heartbeats with a producer (spec 5.2.2) ---------------------------------------------------


def test_heartbeat_modifies_with_a_fresh_body_and_needs_no_refresh():
    pub = publisher(produce=counter(), heartbeat=5.0)
    (req,) = sent(pub.publish(None, 0.0))
    pub.handle_response(ok(req), req, 0.0)
    seen = requests_of(run(pub, 700.0, answer=lambda r, t: ok(r, f"e{t}")))
    assert [t for t, _ in seen][:3] == [5.0, 10.0, 15.0]
    bodies = [r.body for _, r in seen]
    assert bodies[:2] == [b'{"seq":2}', b'{"seq":3}'] and all(bodies)  # never bodiless
    assert all(r.sip_if_match for _, r in seen)


def test_heartbeat_restarts_with_every_body():
    pub = publisher(produce=counter(), heartbeat=5.0)
    (req,) = sent(pub.publish(None, 0.0))
    pub.handle_response(ok(req), req, 0.0)
    (change,) = sent(pub.publish(None, 3.0))
    pub.handle_response(ok(change, "e2"), change, 3.0)
    ((when, _),) = requests_of(run(pub, 8.0, answer=lambda r, t: ok(r, "e3")))
    assert when == 8.0


def test_no_response_retries_at_the_next_heartbeat():
    pub = publisher(produce=counter(), heartbeat=5.0)
    (req,) = sent(pub.publish(None, 0.0))
    out = pub.handle_response(make_response(req, 408), req, 32.0)
    # The heartbeat (due at 5.0) is overdue: the newest body goes at once.
    (again,) = sent(out)
    assert again.body == b'{"seq":2}' and again.sip_if_match is None


def test_412_starts_over_with_a_freshly_produced_body():
    pub = publisher(produce=counter(), heartbeat=5.0)
    (req,) = sent(pub.publish(None, 0.0))
    pub.handle_response(ok(req), req, 0.0)
    (hb,) = [r for _, r in requests_of(run(pub, 5.0))]
    pub.handle_response(make_response(hb, 412), hb, 5.0)
    ((_, again),) = requests_of(run(pub, 6.0))
    assert again.sip_if_match is None and again.body == b'{"seq":3}'


def test_heartbeat_without_producer_is_refused():
    with pytest.raises(ValueError):
        publisher(heartbeat=5.0)


# -- compositor -------------------------------------------------------------------------


def counter_random():
    counter = itertools.count(1)
    return lambda n: next(counter).to_bytes(n, "big")


def compositor(**kw) -> Compositor:
    kw.setdefault("random", counter_random())
    return Compositor("load-status", TYPE, **kw)


def publish(*, body=b'{"node":"n1"}', if_match=None, expires=600, event="load-status",
            content_type=TYPE, cseq=1) -> Request:
    headers = [
        ("Via", f"SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKp{cseq}"),
        ("From", "<sip:agent@192.0.2.1>;tag=a"), ("To", "<sip:node1@proxy.example>"),
        ("Call-ID", "pub1"), ("CSeq", f"{cseq} PUBLISH"),
    ]
    if event:
        headers.append(("Event", event))
    if expires is not None:
        headers.append(("Expires", str(expires)))
    if if_match:
        headers.append(("SIP-If-Match", if_match))
    if body:
        headers.append(("Content-Type", content_type))
    return Request("PUBLISH", "sip:node1@proxy.example", headers, body or b"")


def answer(out):
    (resp,) = [o.response for o in out if isinstance(o, SendResponse)]
    return resp


def test_initial_publish_gets_200_with_etag_and_expires_and_the_body_goes_up():
    comp = compositor()
    out = comp.handle_request(publish(), AGENT, 0.0)
    resp = answer(out)
    assert resp.status == 200 and resp.sip_etag == "0000000000000001" and resp.expires == 600
    (got,) = events(out, PublicationReceived)
    assert (got.key, got.body, got.source) == ("sip:node1@proxy.example", b'{"node":"n1"}', AGENT)
    assert isinstance(out[0], SendResponse)


def test_publish_for_another_package_gets_489():
    resp = answer(compositor().handle_request(publish(event="presence"), AGENT, 0.0))
    assert resp.status == 489 and resp.allow_events == ["load-status"]


def test_publish_without_event_gets_489():
    assert answer(compositor().handle_request(publish(event=None), AGENT, 0.0)).status == 489


def test_short_expires_gets_423_with_min_expires():
    resp = answer(compositor().handle_request(publish(expires=10), AGENT, 0.0))
    assert resp.status == 423 and resp.min_expires == 60


def test_long_expires_is_capped():
    assert answer(compositor().handle_request(publish(expires=99999), AGENT, 0.0)).expires == 3600


def test_missing_expires_gets_the_default():
    assert answer(compositor().handle_request(publish(expires=None), AGENT, 0.0)).expires == 600


def test_initial_publish_without_body_gets_400():
    assert answer(compositor().handle_request(publish(body=None), AGENT, 0.0)).status == 400


def test_wrong_content_type_gets_415_with_accept():
    resp = answer(compositor().handle_request(publish(content_type="text/plain"), AGENT, 0.0))
    assert resp.status == 415 and resp.header("Accept") == TYPE


def test_unknown_if_match_gets_412():
    resp = answer(compositor().handle_request(publish(if_match="nosuch", body=None), AGENT, 0.0))
    assert resp.status == 412


def test_refresh_gets_a_new_etag_and_extends_the_expiry():
    comp = compositor()
    etag = answer(comp.handle_request(publish(), AGENT, 0.0)).sip_etag
    out = comp.handle_request(publish(if_match=etag, body=None, cseq=2), AGENT, 500.0)
    resp = answer(out)
    assert resp.status == 200 and resp.sip_etag != etag
    assert events(out, PublicationRefreshed)[0].etag == resp.sip_etag
    assert comp.handle_timer(600.0) == []
    assert events(comp.handle_timer(1100.0), PublicationRemoved)[0].reason == "expired"


def test_old_etag_is_unknown_after_a_refresh():
    comp = compositor()
    etag = answer(comp.handle_request(publish(), AGENT, 0.0)).sip_etag
    comp.handle_request(publish(if_match=etag, body=None, cseq=2), AGENT, 1.0)
    resp = answer(comp.handle_request(publish(if_match=etag, body=None, cseq=3), AGENT, 2.0))
    assert resp.status == 412


def test_modify_hands_up_the_new_body():
    comp = compositor()
    etag = answer(comp.handle_request(publish(), AGENT, 0.0)).sip_etag
    out = comp.handle_request(publish(if_match=etag, body=b'{"v":2}', cseq=2), AGENT, 1.0)
    assert answer(out).status == 200
    assert events(out, PublicationReceived)[0].body == b'{"v":2}'
    assert events(out, PublicationRemoved) == []
    assert len(comp.by_key) == 1


def test_expires_0_removes():
    comp = compositor()
    etag = answer(comp.handle_request(publish(), AGENT, 0.0)).sip_etag
    out = comp.handle_request(publish(if_match=etag, body=None, expires=0, cseq=2), AGENT, 1.0)
    assert answer(out).status == 200 and answer(out).expires == 0
    assert events(out, PublicationRemoved)[0].reason == "removed"
    assert not comp.by_etag and comp.next_timer() is None


def test_publication_expires_on_the_timer():
    comp = compositor()
    comp.handle_request(publish(expires=60), AGENT, 0.0)
    assert comp.next_timer() == 60.0
    (removed,) = events(comp.handle_timer(60.0), PublicationRemoved)
    assert removed.reason == "expired" and not comp.by_key


def node_of(request, body):
    import json

    try:
        node = json.loads(body)["node"]
    except (ValueError, KeyError):
        raise SipError(400, "node: missing (rule: required)") from None
    return node, node


def test_classify_keys_by_node_and_a_new_initial_publish_replaces():
    comp = compositor(classify=node_of)
    comp.handle_request(publish(), AGENT, 0.0)
    out = comp.handle_request(publish(cseq=9), AGENT, 5.0)  # agent restarted: no If-Match
    assert events(out, PublicationRemoved)[0].reason == "replaced"
    assert list(comp.by_key) == ["n1"] and len(comp.by_etag) == 1


def test_classify_refusal_is_the_answer():
    comp = compositor(classify=node_of)
    resp = answer(comp.handle_request(publish(body=b"{}"), AGENT, 0.0))
    assert (resp.status, resp.reason) == (400, "node: missing (rule: required)")


def test_authorizer_refusal_is_the_answer():
    comp = compositor(authorize=lambda r, s, n: SipError(403, "untrusted"))
    assert answer(comp.handle_request(publish(), AGENT, 0.0)).status == 403


def test_cap_answers_503():
    comp = compositor(classify=node_of, max_publications=1)
    comp.handle_request(publish(), AGENT, 0.0)
    resp = answer(comp.handle_request(publish(body=b'{"node":"n2"}'), AGENT, 0.0))
    assert resp.status == 503 and resp.retry_after.seconds == 60


def test_request_uri_that_is_no_resource_gets_404_first():
    comp = compositor(resources=lambda uri: uri == "sip:load-status@proxy.example")
    assert answer(comp.handle_request(publish(event="presence"), AGENT, 0.0)).status == 404


def test_unknown_etag_comes_before_short_expires():
    resp = answer(compositor().handle_request(publish(if_match="nosuch", expires=10), AGENT, 0.0))
    assert resp.status == 412


def test_several_if_match_values_get_400():
    req = publish(if_match="a", body=None)
    req.add_header("SIP-If-Match", "b")
    assert answer(compositor().handle_request(req, AGENT, 0.0)).status == 400
    req = publish(if_match="a, b", body=None)
    assert answer(compositor().handle_request(req, AGENT, 0.0)).status == 400


def test_modify_for_another_node_gets_400_node_publication_and_changes_nothing():
    comp = compositor(classify=node_of)
    etag = answer(comp.handle_request(publish(), AGENT, 0.0)).sip_etag
    out = comp.handle_request(publish(if_match=etag, body=b'{"node":"n2"}', cseq=2), AGENT, 1.0)
    resp = answer(out)
    assert (resp.status, resp.reason) == (400, "Invalid load-status body: node (publication)")
    assert comp.by_key["n1"].etag == etag and "n2" not in comp.by_key


def test_admit_refuses_a_node_the_publisher_may_not_publish_for():
    def admit(request, source, key, value, initial):
        return None if key == "n1" else SipError(403, "node not allowed")

    comp = compositor(classify=node_of, admit=admit)
    assert answer(comp.handle_request(publish(), AGENT, 0.0)).status == 200
    resp = answer(comp.handle_request(publish(body=b'{"node":"n2"}', cseq=2), AGENT, 0.0))
    assert resp.status == 403


def test_admit_is_told_whether_the_node_joins_the_pool():
    seen = []
    comp = compositor(classify=node_of,
                      admit=lambda r, s, key, value, initial: seen.append((key, initial)))
    etag = answer(comp.handle_request(publish(), AGENT, 0.0)).sip_etag
    comp.handle_request(publish(if_match=etag, body=b'{"node":"n1"}', cseq=2), AGENT, 1.0)
    comp.handle_request(publish(cseq=3), AGENT, 2.0)  # a restart: initial, known node
    assert seen == [("n1", True), ("n1", False), ("n1", False)]


def test_compositor_ignores_other_methods():
    req = publish()
    req.method = "SUBSCRIBE"
    assert compositor().handle_request(req, AGENT, 0.0) is None


def test_remove_by_key():
    comp = compositor()
    comp.handle_request(publish(), AGENT, 0.0)
    assert events(comp.remove("sip:node1@proxy.example"), PublicationRemoved)
    assert comp.next_timer() is None


# -- publisher against compositor -----------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(
    st.tuples(st.just("publish"), st.binary(min_size=1, max_size=4)),
    st.tuples(st.just("wait"), st.floats(0, 900, allow_nan=False)),
    st.tuples(st.just("forget"),),  # the compositor restarts
    st.tuples(st.just("remove"),),
), max_size=30))
def test_publisher_and_compositor_converge_on_the_latest_body(ops):
    pub = publisher()
    comp = compositor()
    now = 0.0

    def deliver(out):
        queue = list(out)
        while queue:
            o = queue.pop(0)
            if isinstance(o, SendRequest):
                resp = answer(comp.handle_request(o.request, AGENT, now))
                queue.extend(pub.handle_response(resp, o.request, now))

    for op in ops:
        if op[0] == "publish":
            deliver(pub.publish(op[1], now))
        elif op[0] == "wait":
            end = now + op[1]
            while True:
                times = [t for t in (pub.next_timer(), comp.next_timer()) if t is not None]
                if not times or min(times) > end:
                    break
                now = max(now, min(times))
                comp.handle_timer(now)
                deliver(pub.handle_timer(now))
            now = end
        elif op[0] == "forget":
            comp = compositor()
        else:
            deliver(pub.remove(now))
        # Nothing outstanding once delivered; a tag we hold is one the compositor knows
        # unless it restarted or the state expired in between.
        assert pub.pending is None
    # Give it time to settle: the latest body is what the compositor holds.
    end = now + 700
    while True:
        times = [t for t in (pub.next_timer(), comp.next_timer()) if t is not None]
        if not times or min(times) > end:
            break
        now = max(now, min(times))
        comp.handle_timer(now)
        deliver(pub.handle_timer(now))
    if pub.body is not None and not pub.removing:
        (held,) = comp.by_key.values()
        assert held.body == pub.body and held.etag == pub.etag
    else:
        assert not comp.by_key


@pytest.mark.parametrize("status", [200, 412])
def test_remove_then_publish_again_starts_fresh(status):
    pub = published()
    (req,) = sent(pub.remove(1.0))
    pub.handle_response(make_response(req, status), req, 1.1)
    (again,) = sent(pub.publish(b"b9", 2.0))
    assert again.sip_if_match is None


# -- ported from agent-service ------------------------------------------------


@pytest.mark.parametrize("status", [400, 403, 404, 415, 489])
def test_refusals_wait_60_s_doubling_up_to_600(status):
    assert waits_after(status) == [60.0, 120.0, 240.0, 480.0, 600.0]


def test_retry_after_is_waited_and_the_doubling_still_grows_behind_it():
    # Spec 5.7: the longer of Retry-After and 5 s doubling (it was "Retry-After
    # each time", which let a compositor saying "Retry-After: 7" draw one
    # PUBLISH every 7 s forever).
    assert waits_after(503, 3, [("Retry-After", "7")]) == [7.0, 10.0, 20.0]


def test_waits_are_stretched_at_random_never_shortened():
    pub = publisher(random=lambda: 0.0)
    (req,) = sent(pub.publish(b"b", 0.0))
    out = pub.handle_response(make_response(req, 500), req, 0.0)
    assert events(out, PublicationFailed)[0].retry_at == pytest.approx(6.0)


def waits_after(status: int, times: int = 5, headers=()) -> list[float]:
    pub = publisher()
    (req,) = sent(pub.publish(b"b", 0.0))
    waits = []
    now = 0.0
    for _ in range(times):
        out = pub.handle_response(make_response(req, status, headers=list(headers)), req, now)
        retry_at = events(out, PublicationFailed)[0].retry_at
        waits.append(retry_at - now)
        (req,) = sent(pub.handle_timer(retry_at))
        now = retry_at
    return waits


def test_no_response_waits_for_the_next_heartbeat_with_the_newest_body():
    # load-status 5.7: Timer F -> the next heartbeat carries the newest body.
    # (agent-service's test used a publisher without heartbeat, which waited
    # for the next publish(); main's retries those after 5 s, and the agent's
    # publishers have a heartbeat: checked here with one.)
    bodies = iter([b"b1", b"b2", b"b3"])
    pub = publisher(produce=lambda now: next(bodies), heartbeat=5.0)
    (req,) = sent(pub.publish(None, 0.0))
    assert req.body == b"b1"
    out = pub.handle_response(make_response(req, 408), req, 3.0)
    assert events(out, PublicationFailed)[0].retry_at == pytest.approx(5.0)
    assert pub.next_timer() == pytest.approx(5.0)
    (again,) = sent(pub.handle_timer(5.0))
    assert again.body == b"b2"
