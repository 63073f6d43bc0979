"""Dialogs for subscriptions (RFC 3261 section 12)."""

from __future__ import annotations

import pytest

from sipstatus.sip import Request, Response, SipError, make_response
from sipstatus.sip.dialog import dialog_as_uac, dialog_as_uas, dialog_id_of

VIA = "SIP/2.0/UDP 192.0.2.10:5060"


def subscribe(record_route: tuple[str, ...] = ()) -> Request:
    headers = [
        ("Via", "SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bKsub1"),
        *[("Record-Route", rr) for rr in record_route],
        ("From", "<sip:watcher@proxy.example.com>;tag=w1"),
        ("To", "<sip:agent@node1.example.com>"),
        ("Call-ID", "sub-1@proxy"),
        ("CSeq", "10 SUBSCRIBE"),
        ("Contact", "<sip:watcher@192.0.2.10:5060>"),
        ("Event", "load-status"),
        ("Expires", "600"),
    ]
    return Request("SUBSCRIBE", "sip:agent@node1.example.com", headers)


def accepted(request: Request) -> Response:
    response = make_response(request, 200, to_tag="n1", record_route=True,
                             headers=[("Contact", "<sip:agent@192.0.2.1:5070>")])
    return response


def test_uac_dialog_takes_ids_target_and_cseq_from_request_and_response():
    request = subscribe()
    dialog = dialog_as_uac(request, accepted(request))
    assert dialog.id == ("sub-1@proxy", "w1", "n1")
    assert dialog.remote_target == "sip:agent@192.0.2.1:5070"
    assert (dialog.local_cseq, dialog.remote_cseq) == (10, None)
    assert dialog.local_uri == "<sip:watcher@proxy.example.com>"


def test_uac_route_set_is_record_route_reversed():
    request = subscribe(("<sip:p2.example.com;lr>", "<sip:p1.example.com;lr>"))
    dialog = dialog_as_uac(request, accepted(request))
    assert dialog.route_set == ["<sip:p1.example.com;lr>", "<sip:p2.example.com;lr>"]


def test_uas_route_set_is_record_route_in_order():
    request = subscribe(("<sip:p2.example.com;lr>", "<sip:p1.example.com;lr>"))
    dialog = dialog_as_uas(request, local_tag="n1")
    assert dialog.route_set == ["<sip:p2.example.com;lr>", "<sip:p1.example.com;lr>"]
    assert dialog.id == ("sub-1@proxy", "n1", "w1")
    assert (dialog.local_cseq, dialog.remote_cseq) == (None, 10)
    assert dialog.remote_target == "sip:watcher@192.0.2.10:5060"


def test_record_route_values_in_one_field_are_split():
    request = subscribe(("<sip:p2.example.com;lr>, <sip:p1.example.com;lr>",))
    assert len(dialog_as_uas(request, "n1").route_set) == 2


def test_in_dialog_request_targets_the_remote_target_with_loose_routes():
    request = subscribe(("<sip:p1.example.com;lr>",))
    dialog = dialog_as_uas(request, local_tag="n1")
    notify = dialog.create_request("NOTIFY", via=VIA, contact="<sip:agent@192.0.2.1:5070>",
                                   headers=[("Event", "load-status")], body=b"{}")
    assert notify.uri == "sip:watcher@192.0.2.10:5060"
    assert notify.header_all("Route") == ["<sip:p1.example.com;lr>"]
    assert notify.from_addr.tag == "n1" and notify.to_addr.tag == "w1"
    assert notify.call_id == "sub-1@proxy"
    assert str(notify.cseq) == "1 NOTIFY"
    assert dialog.next_hop() == "sip:p1.example.com;lr"


def test_local_cseq_increments_per_request():
    dialog = dialog_as_uac(subscribe(), accepted(subscribe()))
    first = dialog.create_request("SUBSCRIBE", via=VIA)
    second = dialog.create_request("SUBSCRIBE", via=VIA)
    assert (first.cseq.number, second.cseq.number) == (11, 12)


def test_strict_router_becomes_the_request_uri_and_target_the_last_route():
    request = subscribe(("<sip:strict.example.com>",))
    dialog = dialog_as_uas(request, local_tag="n1")
    notify = dialog.create_request("NOTIFY", via=VIA)
    assert notify.uri == "sip:strict.example.com"
    assert notify.header_all("Route") == ["<sip:watcher@192.0.2.10:5060>"]


def test_without_routes_next_hop_is_the_remote_target():
    dialog = dialog_as_uas(subscribe(), local_tag="n1")
    assert dialog.next_hop() == "sip:watcher@192.0.2.10:5060"
    assert dialog.create_request("NOTIFY", via=VIA).header("Route") is None


def test_in_dialog_request_with_lower_cseq_is_refused_with_500():
    dialog = dialog_as_uas(subscribe(), local_tag="n1")
    stale = subscribe()
    stale.set_header("CSeq", "9 SUBSCRIBE")
    with pytest.raises(SipError) as info:
        dialog.receive_request(stale)
    assert info.value.status == 500


def test_in_dialog_request_advances_remote_cseq_and_refreshes_target():
    dialog = dialog_as_uas(subscribe(), local_tag="n1")
    refresh = subscribe()
    refresh.set_header("CSeq", "11 SUBSCRIBE")
    refresh.set_header("Contact", "<sip:watcher@198.51.100.7:5060>")
    dialog.receive_request(refresh)
    assert dialog.remote_cseq == 11
    assert dialog.remote_target == "sip:watcher@198.51.100.7:5060"


def test_dialog_creation_needs_exactly_one_contact():
    request = subscribe()
    request.remove_header("Contact")
    with pytest.raises(SipError):
        dialog_as_uas(request, local_tag="n1")


def test_uac_dialog_needs_the_to_tag():
    request = subscribe()
    response = make_response(request, 100)
    response.add_header("Contact", "<sip:agent@192.0.2.1>")
    with pytest.raises(SipError):
        dialog_as_uac(request, response)


def test_dialog_id_of_messages_from_both_directions():
    request = subscribe()
    response = accepted(request)
    uas = dialog_as_uas(request, local_tag="n1")
    uac = dialog_as_uac(request, response)
    in_dialog = uac.create_request("SUBSCRIBE", via=VIA)
    assert dialog_id_of(in_dialog, received=True) == uas.id
    assert dialog_id_of(in_dialog, received=False) == uac.id
    assert dialog_id_of(response, received=True) == uac.id
    assert dialog_id_of(response, received=False) == uas.id
    assert dialog_id_of(request) is None


def test_sips_request_uri_makes_a_secure_dialog():
    request = subscribe()
    request.uri = "sips:agent@node1.example.com"
    assert dialog_as_uas(request, local_tag="n1").secure
