"""The subscription vectors of spec/vectors/sip answered as EXPECTED.tsv says.

Each vector goes to the role EXPECTED.tsv names (notifier or subscriber),
set up in the state the note describes, and the answer and what follows are
checked against the expectation.  The codec decodes the bodies.
"""

from __future__ import annotations

import csv
import json

import pytest

from sipstatus.codec import MEDIA_TYPE, decode
from sipstatus.sip import Request, Response, parse_message
from sipstatus.sip.identifiers import IdGenerator
from sipstatus.sip.subscription import (
    ACTIVE,
    WAITING,
    NotificationReceived,
    Notifier,
    SendRequest,
    SendResponse,
    Subscriber,
    SubscriberConfig,
    SubscriptionEnded,
    SubscriptionTerminated,
    refresh_delay,
)
from sipstatus.sip.transaction import Destination
from tests.support import ROOT

VECTORS = ROOT / "spec" / "vectors" / "sip"
with (VECTORS / "EXPECTED.tsv").open(newline="") as f:
    EXPECTED = {row["file"]: row for row in csv.DictReader(f, delimiter="\t")}
PROXY = Destination("UDP", "192.0.2.10", 5060)
AGENT = Destination("UDP", "198.51.100.21", 5070)
BODY = (VECTORS / "notify-active.sip").read_bytes().split(b"\r\n\r\n", 1)[1]


def vector(name: str) -> Request | Response:
    assert name in EXPECTED
    return parse_message((VECTORS / name).read_bytes())


class FixedTags(IdGenerator):
    """The agent's To-tag in the vectors is ag91d2."""

    def tag(self) -> str:
        return "ag91d2"


def notifier() -> Notifier:
    return Notifier("load-status", MEDIA_TYPE, "sip:load-status@198.51.100.21:5070",
                    produce=lambda now: BODY, ids=FixedTags())


def answer_of(out) -> Response:
    (resp,) = [o.response for o in out if isinstance(o, SendResponse)]
    return resp


def notifies(out) -> list[Request]:
    return [o.request for o in out if isinstance(o, SendRequest)]


# -- notifier -------------------------------------------------------------------------


def test_subscribe_gets_200_then_an_active_notify_with_the_rates_applied_as_asked():
    out = notifier().handle_request(vector("subscribe.sip"), PROXY, 0.0)
    resp = answer_of(out)
    assert (resp.status, resp.expires, resp.to_addr.tag) == (200, 600, "ag91d2")
    assert str(resp.contacts[0].uri) == "sip:load-status@198.51.100.21:5070"
    assert resp.allow_events == ["load-status"]
    (notify,) = notifies(out)
    assert notify.header("Subscription-State") == "active;expires=600;max-rate=5;min-rate=0.2"
    assert notify.content_type == MEDIA_TYPE and decode(notify.body).node == "ast1.example.com"
    assert out.index(next(o for o in out if isinstance(o, SendResponse))) < \
        out.index(next(o for o in out if isinstance(o, SendRequest)))


def test_out_of_dialog_refresh_replaces_without_a_final_notify():
    n = notifier()
    n.handle_request(vector("subscribe.sip"), PROXY, 0.0)
    n.ids = IdGenerator()  # the new dialog gets a new tag
    out = n.handle_request(vector("subscribe-refresh-out-of-dialog.sip"), PROXY, 60.0)
    resp = answer_of(out)
    assert resp.status == 200 and resp.to_addr.tag != "ag91d2"
    (ended,) = [o for o in out if isinstance(o, SubscriptionTerminated)]
    assert ended.reason == "replaced" and ended.id.call_id == "5b0e6f2c1d7e4a0b@192.0.2.10"
    (notify,) = notifies(out)  # only on the new dialog
    assert notify.call_id == "e81f03b9c27d4e11@192.0.2.10"
    assert notify.header("Subscription-State").startswith("active")
    assert len(n.subscriptions) == 1


def test_unsubscribe_gets_200_expires_0_then_terminated_timeout_with_the_body():
    n = notifier()
    out = n.handle_request(vector("subscribe.sip"), PROXY, 0.0)
    (first,) = notifies(out)
    from sipstatus.sip import make_response

    n.handle_response(make_response(first, 200), first, 0.0)
    out = n.handle_request(vector("subscribe-unsubscribe.sip"), PROXY, 30.0)
    resp = answer_of(out)
    assert (resp.status, resp.expires) == (200, 0)
    (notify,) = notifies(out)
    assert notify.header("Subscription-State") == "terminated;reason=timeout"
    assert notify.body == BODY
    assert not n.subscriptions


@pytest.mark.parametrize("name, status, header, value", [
    ("subscribe-other-event.sip", 489, "Allow-Events", "load-status"),
    ("subscribe-short-expires.sip", 423, "Min-Expires", "60"),
    ("subscribe-accept-mismatch.sip", 406, "Accept", MEDIA_TYPE),
])
def test_refused_subscribe(name, status, header, value):
    n = notifier()
    out = n.handle_request(vector(name), PROXY, 0.0)
    resp = answer_of(out)
    assert (resp.status, resp.header(header)) == (status, value)
    assert notifies(out) == [] and not n.subscriptions
    assert str(status) in EXPECTED[name]["expected"]


# -- subscriber -----------------------------------------------------------------------


def subscriber_after_subscribe() -> tuple[Subscriber, Request]:
    """A Subscriber that has just sent subscribe.sip."""
    config = SubscriberConfig("load-status", MEDIA_TYPE, "sip:watcher@proxy.example.com",
                              "sip:watcher@192.0.2.10:5060", decode=decode,
                              max_rate=5, min_rate=0.2, random=lambda: 1.0)
    sub = Subscriber("sip:load-status@ast1.example.com", config, destination=AGENT)
    sub.start(0.0)
    request = vector("subscribe.sip")
    sub.call_id, sub.local_tag, sub.pending = request.call_id, "pxy4c1e", request
    return sub, request


def test_200_schedules_the_refresh_and_timer_n_runs_on():
    sub, request = subscriber_after_subscribe()
    sub.handle_response(vector("subscribe-200.sip"), request, 0.5)
    assert sub.state == ACTIVE
    assert sub.refresh_at == 0.5 + refresh_delay(600) == 480.5
    assert sub.notify_deadline == 32.0  # Timer N from sending, until the first NOTIFY


def test_active_notify_is_accepted_with_its_body():
    sub, request = subscriber_after_subscribe()
    sub.handle_response(vector("subscribe-200.sip"), request, 0.5)
    out = sub.handle_request(vector("notify-active.sip"), AGENT, 0.6)
    assert answer_of(out).status == 200
    (got,) = [o for o in out if isinstance(o, NotificationReceived)]
    assert (got.value.node, got.value.weight) == ("ast1.example.com", 63)
    assert sub.notify_deadline is None


def test_active_notify_before_the_200_makes_the_dialog():
    sub, _ = subscriber_after_subscribe()
    out = sub.handle_request(vector("notify-active.sip"), AGENT, 0.1)
    assert answer_of(out).status == 200 and sub.state == ACTIVE
    assert sub.dialog.remote_tag == "ag91d2"


def test_terminated_probation_notify_is_applied_and_resubscribes_no_sooner_than_its_retry_after():
    sub, request = subscriber_after_subscribe()
    sub.handle_response(vector("subscribe-200.sip"), request, 0.5)
    sub.handle_request(vector("notify-active.sip"), AGENT, 0.6)
    out = sub.handle_request(vector("notify-terminated.sip"), AGENT, 100.0)
    assert answer_of(out).status == 200
    (got,) = [o for o in out if isinstance(o, NotificationReceived)]
    assert got.value.state.value == "down"  # applied at once
    (ended,) = [o for o in out if isinstance(o, SubscriptionEnded)]
    assert ended.retry_at >= 102.0 and notifies(out) == []  # retry-after=2


@pytest.mark.parametrize("name, status, reason, header", [
    ("notify-bad-body.sip", 400, "Invalid load-status body: weight (weight-hint)", None),
    ("notify-wrong-content-type.sip", 415, None, ("Accept", MEDIA_TYPE)),
])
def test_refused_notify_keeps_nothing_ends_and_resubscribes_no_sooner_than_30_s(
        name, status, reason, header):
    sub, request = subscriber_after_subscribe()
    sub.handle_response(vector("subscribe-200.sip"), request, 0.5)
    sub.handle_request(vector("notify-active.sip"), AGENT, 0.6)
    out = sub.handle_request(vector(name), AGENT, 10.0)
    resp = answer_of(out)
    assert resp.status == status
    if reason:
        assert resp.reason == reason
        assert EXPECTED[name]["body"] == "invalid:weight:weight-hint"
    if header:
        assert resp.header(header[0]) == header[1]
    assert not [o for o in out if isinstance(o, NotificationReceived)]
    (ended,) = [o for o in out if isinstance(o, SubscriptionEnded)]
    assert ended.retry_at >= 40.0 and sub.state == WAITING


def test_vector_bodies_agree_with_the_codec():
    assert json.loads(BODY)["weight"] == 63
