"""UAS and UAC checks above the parser (RFC 3261 sections 8.1.3.3 and 8.2)."""

from __future__ import annotations

import pytest

from sipstatus.sip import Request, Response, SipError, make_response
from sipstatus.sip.validation import check_max_forwards, check_request, validate_response


def subscribe(method: str = "SUBSCRIBE", uri: str = "sip:agent@192.0.2.1") -> Request:
    return Request(method, uri, [
        ("Via", "SIP/2.0/UDP 192.0.2.10;branch=z9hG4bK1"),
        ("Max-Forwards", "70"),
        ("From", "<sip:w@192.0.2.10>;tag=w"),
        ("To", "<sip:agent@192.0.2.1>"),
        ("Call-ID", "c"),
        ("CSeq", f"1 {method}"),
        ("Event", "load-status"),
    ])


def status_of(request: Request, **profile) -> SipError:
    with pytest.raises(SipError) as info:
        check_request(request, **profile)
    return info.value


def test_a_well_formed_subscribe_passes():
    assert check_request(subscribe()) is None


@pytest.mark.parametrize("name", ["To", "From", "CSeq", "Call-ID", "Via"])
def test_missing_mandatory_header_is_400(name):
    request = subscribe()
    request.remove_header(name)
    assert status_of(request).status == 400


def test_missing_max_forwards_is_tolerated():
    request = subscribe()
    request.remove_header("Max-Forwards")
    assert check_request(request) is None


def test_repeated_single_valued_header_is_400():
    request = subscribe()
    request.add_header("Call-ID", "other")
    assert status_of(request).status == 400


def test_known_but_unserved_method_is_405_with_allow():
    error = status_of(subscribe("INVITE"))
    assert error.status == 405
    assert error.headers == [("Allow", "NOTIFY, OPTIONS, PUBLISH, SUBSCRIBE")]


def test_unknown_method_is_501():
    assert status_of(subscribe("FROBNICATE")).status == 501


def test_cseq_method_mismatch_is_400():
    request = subscribe()
    request.set_header("CSeq", "1 NOTIFY")
    assert status_of(request).status == 400


def test_unsupported_uri_scheme_is_416():
    assert status_of(subscribe(uri="tel:+15551234")).status == 416


def test_schemes_can_be_widened():
    assert check_request(subscribe(uri="tel:+15551234"), schemes=("sip", "tel")) is None


def test_required_extension_not_supported_is_420_listing_it():
    request = subscribe()
    request.add_header("Require", "100rel, timer")
    error = status_of(request, supported=["timer"])
    assert (error.status, error.headers) == (420, [("Unsupported", "100rel")])


def test_require_is_ignored_for_cancel():
    request = subscribe("CANCEL")
    request.add_header("Require", "100rel")
    assert check_request(request, methods={"CANCEL"}) is None


def test_unaccepted_body_type_is_415_with_accept():
    request = subscribe("PUBLISH")
    request.add_header("Content-Type", "text/plain")
    request.body = b"hi"
    error = status_of(request, accept=["application/load-status+json"])
    assert (error.status, error.headers) == (415, [("Accept", "application/load-status+json")])


def test_accepted_body_type_passes():
    request = subscribe("PUBLISH")
    request.add_header("Content-Type", "application/load-status+json")
    request.body = b"{}"
    assert check_request(request, accept=["application/load-status+json"]) is None


def test_max_forwards_zero_is_483_for_a_forwarding_element():
    request = subscribe()
    request.set_header("Max-Forwards", "0")
    with pytest.raises(SipError) as info:
        check_max_forwards(request)
    assert info.value.status == 483


def test_response_with_one_via_is_kept():
    assert validate_response(make_response(subscribe(), 200)) is None


def test_response_with_two_vias_is_discarded():
    response = make_response(subscribe(), 200)
    response.add_header("Via", "SIP/2.0/UDP 192.0.2.99;branch=z9hG4bK2")
    with pytest.raises(SipError):
        validate_response(response)


def test_response_without_cseq_is_discarded():
    response: Response = make_response(subscribe(), 200)
    response.remove_header("CSeq")
    with pytest.raises(SipError):
        validate_response(response)
