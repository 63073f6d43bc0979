"""The publication vectors of spec/vectors/sip answered as EXPECTED.tsv says.

A compositor keyed by the body's node (the codec decodes), whose entity
tags are those of the vectors (Zr4wXq9a.1, .2, ...), goes through the
vectors in order; the publisher takes publish-200.sip.
"""

from __future__ import annotations

import csv
import itertools

import pytest

from sipstatus.codec import MEDIA_TYPE, StatusError, decode
from sipstatus.sip import Request, Response, SipError, parse_message
from sipstatus.sip.publication import (
    Compositor,
    PublicationReceived,
    PublicationRefreshed,
    PublicationRemoved,
    Published,
    Publisher,
)
from sipstatus.sip.subscription import SendResponse, body_reason
from sipstatus.sip.transaction import Destination
from tests.support import ROOT

VECTORS = ROOT / "spec" / "vectors" / "sip"
with (VECTORS / "EXPECTED.tsv").open(newline="") as f:
    EXPECTED = {row["file"]: row for row in csv.DictReader(f, delimiter="\t")}
AGENT = Destination("UDP", "198.51.100.21", 5070)


def vector(name: str) -> Request | Response:
    assert name in EXPECTED
    return parse_message((VECTORS / name).read_bytes())


def by_node(request: Request, body: bytes):
    try:
        status = decode(body)
    except StatusError as error:
        raise SipError(400, body_reason("load-status", error)) from None
    return status.node, status


def compositor() -> Compositor:
    tags = (f"Zr4wXq9a.{n}" for n in itertools.count(1))
    return Compositor("load-status", MEDIA_TYPE, classify=by_node, make_etag=lambda: next(tags),
                      resources=lambda uri: uri == "sip:load-status@proxy.example.com")


def answer_of(out) -> Response:
    (resp,) = [o.response for o in out if isinstance(o, SendResponse)]
    return resp


def through(comp: Compositor, *names: str):
    outs = []
    for i, name in enumerate(names):
        outs.append(comp.handle_request(vector(name), AGENT, float(i)))
    return outs


def test_initial_publish_is_stored_under_its_node_with_a_new_tag():
    (out,) = through(compositor(), "publish-initial.sip")
    resp = answer_of(out)
    assert (resp.status, resp.sip_etag, resp.expires) == (200, "Zr4wXq9a.1", 600)
    (got,) = [o for o in out if isinstance(o, PublicationReceived)]
    assert got.key == "ast1.example.com"


def test_refresh_gets_a_new_tag_and_no_new_state():
    _, out = through(compositor(), "publish-initial.sip", "publish-refresh.sip")
    resp = answer_of(out)
    assert resp.status == 200 and resp.sip_etag not in (None, "Zr4wXq9a.1")
    assert resp.expires == 600
    assert [type(o) for o in out if not isinstance(o, SendResponse)] == [PublicationRefreshed]


def test_modify_replaces_the_state():
    *_, out = through(compositor(), "publish-initial.sip", "publish-refresh.sip",
                      "publish-modify.sip")
    resp = answer_of(out)
    assert (resp.status, resp.sip_etag, resp.expires) == (200, "Zr4wXq9a.3", 600)
    (got,) = [o for o in out if isinstance(o, PublicationReceived)]
    assert (got.key, got.value.weight) == ("ast1.example.com", 58)


def test_remove_answers_expires_0_and_the_node_becomes_unknown():
    comp = compositor()
    *_, out = through(comp, "publish-initial.sip", "publish-refresh.sip", "publish-modify.sip",
                      "publish-remove.sip")
    resp = answer_of(out)
    assert (resp.status, resp.expires, resp.sip_etag) == (200, 0, None)
    assert [o.reason for o in out if isinstance(o, PublicationRemoved)] == ["removed"]
    assert not comp.by_key


def test_other_node_with_the_tag_gets_400_and_changes_nothing():
    comp = compositor()
    *_, out = through(comp, "publish-initial.sip", "publish-refresh.sip", "publish-modify.sip",
                      "publish-other-node.sip")
    resp = answer_of(out)
    assert (resp.status, resp.reason) == (400, "Invalid load-status body: node (publication)")
    assert comp.by_key["ast1.example.com"].etag == "Zr4wXq9a.3"
    assert comp.by_key["ast1.example.com"].value.weight == 58


@pytest.mark.parametrize("name, status, header, value", [
    ("publish-unknown-etag.sip", 412, None, None),
    ("publish-short-expires.sip", 423, "Min-Expires", "60"),
])
def test_refused_publish(name, status, header, value):
    comp = compositor()
    resp = answer_of(comp.handle_request(vector(name), AGENT, 0.0))
    assert resp.status == status
    if header:
        assert resp.header(header) == value
    assert not comp.by_key


def test_publisher_keeps_the_tag_of_the_200_and_uses_it_next():
    pub = Publisher("sip:load-status@proxy.example.com", "load-status", MEDIA_TYPE,
                    "sip:agent@ast1.example.com", destination=Destination("UDP", "192.0.2.10", 5060))
    (sent,) = pub.publish(b"{}", 0.0)
    out = pub.handle_response(vector("publish-200.sip"), sent.request, 0.1)
    assert [o for o in out if isinstance(o, Published)] == [Published(pub, "Zr4wXq9a.1", 600)]
    (modify,) = pub.publish(b"{}", 1.0)
    assert modify.request.sip_if_match == "Zr4wXq9a.1"
