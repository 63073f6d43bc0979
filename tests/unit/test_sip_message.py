"""SIP message parsing and serialising (RFC 3261 sections 7, 19, 20, 25)."""

from __future__ import annotations

import pytest

from sipstatus.sip import (
    Request,
    Response,
    SipError,
    SipUri,
    StreamFramer,
    make_response,
    parse_message,
    parse_uri,
)
from sipstatus.sip.headers import parse_name_addr, parse_via
from sipstatus.sip.message import (
    MAX_DATAGRAM_SIZE,
    MAX_HEADER_BYTES,
    MAX_HEADER_COUNT,
    MAX_LINE_LENGTH,
    MAX_STREAM_CONTENT_LENGTH,
    salvage_error_response,
)

BASE = [
    "Via: SIP/2.0/UDP 192.0.2.1:5070;branch=z9hG4bKabc",
    "Max-Forwards: 70",
    "From: <sip:agent@192.0.2.1>;tag=a1",
    "To: <sip:watcher@192.0.2.10>",
    "Call-ID: c1@192.0.2.1",
    "CSeq: 1 NOTIFY",
]


def wire(*lines: str, start: str = "NOTIFY sip:watcher@192.0.2.10 SIP/2.0", body: bytes = b"",
         content_length: bool = True) -> bytes:
    all_lines = [start, *lines]
    if content_length:
        all_lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(all_lines) + "\r\n\r\n").encode() + body


def request(*extra: str, body: bytes = b"") -> Request:
    message = parse_message(wire(*BASE, *extra, body=body))
    assert isinstance(message, Request)
    return message


def error_of(data: bytes) -> SipError:
    with pytest.raises(SipError) as info:
        parse_message(data)
    return info.value


# -- start lines ------------------------------------------------------------------------


def test_request_line_gives_method_and_uri():
    m = request()
    assert (m.method, m.uri) == ("NOTIFY", "sip:watcher@192.0.2.10")


def test_status_line_gives_status_and_reason():
    m = parse_message(wire(*BASE, start="SIP/2.0 489 Bad Event"))
    assert isinstance(m, Response) and (m.status, m.reason) == (489, "Bad Event")


def test_other_sip_version_is_505():
    assert error_of(wire(*BASE, start="NOTIFY sip:w@h SIP/3.0")).status == 505


def test_garbage_version_is_400():
    assert error_of(wire(*BASE, start="NOTIFY sip:w@h HTTP/1.1")).status == 400


@pytest.mark.parametrize("code", ["99", "700", "2000", "20x"])
def test_status_code_outside_100_to_699_is_rejected(code):
    assert error_of(wire(*BASE, start=f"SIP/2.0 {code} Nope")).status == 400


def test_leading_crlf_before_the_start_line_is_ignored():
    assert parse_message(b"\r\n\r\n" + wire(*BASE)).method == "NOTIFY"


def test_bare_lf_line_ends_are_rejected():
    assert error_of(wire(*BASE).replace(b"\r\n", b"\n", 3)).status == 400


# -- header names and values ----------------------------------------------------------------


@pytest.mark.parametrize(("compact", "long"), [
    ("i", "Call-ID"), ("m", "Contact"), ("f", "From"), ("t", "To"), ("v", "Via"),
    ("c", "Content-Type"), ("k", "Supported"), ("s", "Subject"), ("o", "Event"),
    ("u", "Allow-Events"), ("e", "Content-Encoding"), ("r", "Refer-To"), ("b", "Referred-By"),
    ("x", "Session-Expires"), ("y", "Identity"),
])
def test_compact_form_is_found_by_its_long_name(compact, long):
    values = {"m": "<sip:a@b>", "f": "<sip:a@b>;tag=1", "t": "<sip:a@b>",
              "v": "SIP/2.0/UDP h;branch=z9hG4bKx", "i": "x@y"}
    lines = [line for line in BASE if not line.lower().startswith(long.lower() + ":")]
    m = parse_message(wire(*lines, f"{compact}: {values.get(compact, 'text')}"))
    assert m.header(long) == values.get(compact, "text")
    assert m.header(long.upper()) == m.header(compact) == m.header(long)


def test_compact_content_length_frames_the_body():
    data = wire(*BASE, "l: 4", content_length=False) + b"bodyEXTRA"
    assert parse_message(data).body == b"body"


def test_lookup_of_unknown_header_is_case_insensitive():
    assert request("X-Node-Id: 7").header("x-NODE-id") == "7"


def test_folded_header_lines_are_unfolded_to_one_space():
    data = wire(*BASE, "Subject: first\r\n  second\r\n\tthird")
    assert parse_message(data).header("Subject") == "first second third"


def test_spaces_before_the_colon_are_allowed():
    assert request("Subject  : hi").header("Subject") == "hi"


def test_header_line_without_colon_is_400():
    assert error_of(wire(*BASE, "NoColonHere")).status == 400


def test_header_name_that_is_not_a_token_is_400():
    assert error_of(wire(*BASE, "Bad Name: x")).status == 400


def test_unknown_header_value_is_kept_opaque():
    assert request("X-Odd: ;;,,;<a,b>\"q,\"").header("X-Odd") == ';;,,;<a,b>"q,"'


def test_repeated_fields_are_all_kept_in_order():
    m = request("Allow: NOTIFY", "Allow: SUBSCRIBE, PUBLISH")
    assert m.header_all("Allow") == ["NOTIFY", "SUBSCRIBE, PUBLISH"]
    assert m.allow == ["NOTIFY", "SUBSCRIBE", "PUBLISH"]


def test_list_values_are_not_split_inside_quotes_or_angle_brackets():
    m = request('Contact: "Smith, J" <sip:j@h;x=a,b>, <sip:k@h>')
    assert m.header_values("Contact") == ['"Smith, J" <sip:j@h;x=a,b>', "<sip:k@h>"]
    assert [c.display_name for c in m.contacts] == ["Smith, J", None]


def test_non_list_header_is_not_split_on_commas():
    m = request("Date: Sat, 13 Nov 2010 23:29:00 GMT")
    assert m.header_values("Date") == ["Sat, 13 Nov 2010 23:29:00 GMT"]


def test_empty_element_in_a_list_header_is_400():
    assert error_of(wire(*BASE, "Contact: <sip:a@b>,,<sip:c@d>")).status == 400


def test_too_many_header_fields_is_513():
    lines = [f"X-H{i}: v" for i in range(MAX_HEADER_COUNT)]
    assert error_of(wire(*BASE, *lines)).status == 513


def test_overlong_header_line_is_513():
    assert error_of(wire(*BASE, "X-Long: " + "a" * MAX_LINE_LENGTH)).status == 513


def test_datagram_over_the_size_limit_is_513():
    assert error_of(wire(*BASE, body=b"x" * MAX_DATAGRAM_SIZE)).status == 513


# -- Content-Length framing -----------------------------------------------------------------


def test_body_is_framed_by_content_length_and_trailing_octets_ignored():
    data = wire(*BASE, "Content-Length: 3", content_length=False) + b"abcdef"
    assert parse_message(data).body == b"abc"


def test_body_shorter_than_content_length_is_400():
    data = wire(*BASE, "Content-Length: 10", content_length=False) + b"abc"
    assert error_of(data).status == 400


def test_without_content_length_a_datagram_body_is_the_rest():
    data = wire(*BASE, content_length=False) + b"rest of it"
    assert parse_message(data).body == b"rest of it"


def test_two_content_length_fields_are_400():
    data = wire(*BASE, "Content-Length: 0", "l: 0", content_length=False)
    assert error_of(data).status == 400


def test_huge_content_length_is_413():
    data = wire(*BASE, "Content-Length: 99999999999", content_length=False)
    assert error_of(data).status == 413


def test_body_keeps_binary_octets():
    body = bytes(range(256))
    assert request(body=body).body == body


# -- URIs -----------------------------------------------------------------------------------


def test_sip_uri_components():
    uri = parse_uri("sips:alice:pw@[2001:db8::1]:5061;transport=tcp;lr?subject=hi%20there")
    assert uri == SipUri(host="[2001:db8::1]", user="alice", password="pw", port=5061,
                         params={"transport": "tcp", "lr": None},
                         headers=(("subject", "hi there"),), scheme="sips")
    assert uri.transport == "tcp" and uri.lr


def test_uri_user_is_unescaped():
    assert parse_uri("sip:%61lice%20b@h").user == "alice b"


def test_uri_scheme_is_case_insensitive():
    assert parse_uri("SIP:a@h").scheme == "sip"


@pytest.mark.parametrize("text", [
    "sip:a@h:65536", "sip:a@[::zz]", "sip:a@h;=x", "sip:a%2@h", "sip:a@h@i", "sip:@h",
    "sip:a@", "sip:a@h:", "nocolon", "sip:a@h x",
])
def test_malformed_uris_are_400(text):
    with pytest.raises(SipError) as info:
        parse_uri(text)
    assert info.value.status == 400


def test_uri_str_escapes_what_needs_escaping():
    uri = SipUri(host="h", user="a b@c", params={"p": "v w"})
    assert str(uri) == "sip:a%20b%40c@h;p=v%20w"
    assert parse_uri(str(uri)) == uri


def test_other_schemes_are_kept_opaque():
    uri = parse_uri("tel:+1-201-555-0123")
    assert (uri.scheme, uri.opaque, str(uri)) == ("tel", "+1-201-555-0123", "tel:+1-201-555-0123")


# -- name-addr -------------------------------------------------------------------------------


def test_quoted_display_name_with_escapes():
    addr = parse_name_addr('"A \\"B\\" C" <sip:a@h>;tag=1')
    assert (addr.display_name, addr.tag) == ('A "B" C', "1")


def test_token_display_name():
    assert parse_name_addr("Alice  Smith <sip:a@h>").display_name == "Alice Smith"


def test_addr_spec_parameters_belong_to_the_header():
    addr = parse_name_addr("sip:a@h;tag=7;transport=tcp")
    assert addr.params == {"tag": "7", "transport": "tcp"} and addr.uri.params == {}


def test_uri_parameters_inside_angle_brackets_belong_to_the_uri():
    addr = parse_name_addr("<sip:a@h;transport=tcp>;expires=60")
    assert addr.uri.params == {"transport": "tcp"} and addr.expires == 60


def test_name_addr_str_round_trips():
    addr = parse_name_addr('"Q \\" x" <sip:a@h;lr>;tag=9;q=0.5')
    assert parse_name_addr(str(addr)) == addr


@pytest.mark.parametrize("text", ['"open <sip:a@h>', "<sip:a@h", "a,b <sip:a@h>",
                                  "<sip:a@h>;;", "<sip:a@h>;x=", "<sip:a@h> junk"])
def test_malformed_name_addrs_are_400(text):
    with pytest.raises(SipError):
        parse_name_addr(text)


# -- Via, CSeq, scalars ------------------------------------------------------------------------


def test_via_components():
    via = parse_via("SIP/2.0/udp [2001:db8::9]:5070;branch=z9hG4bKx;received=192.0.2.4;"
                    "rport=4000;maddr=239.1.1.1;ttl=16")
    assert (via.transport, via.host, via.port) == ("UDP", "[2001:db8::9]", 5070)
    assert (via.branch, via.received, via.rport, via.maddr, via.ttl) == (
        "z9hG4bKx", "192.0.2.4", 4000, "239.1.1.1", 16)
    assert via.sent_by == ("[2001:db8::9]", 5070)


def test_via_rport_flag_has_no_value():
    via = parse_via("SIP/2.0/UDP h;rport;branch=z9hG4bKx")
    assert "rport" in via.params and via.rport is None


def test_via_allows_lws_around_slashes_and_colon():
    via = parse_via("SIP / 2.0 / TCP host.example.com : 5080 ; branch = z9hG4bKy")
    assert (via.transport, via.host, via.port, via.branch) == (
        "TCP", "host.example.com", 5080, "z9hG4bKy")


@pytest.mark.parametrize("text", ["SIP/2.0/UDP", "SIP/2.0/UDP h;ttl=300", "HTTP/1.1/TCP h",
                                  "SIP/2.0/UDP h:99999", "SIP/2.0 h", "SIP/2.0/UDP h;rport=x"])
def test_malformed_vias_are_400(text):
    with pytest.raises(SipError):
        parse_via(text)


def test_cseq_accepts_2_to_the_32_minus_1():
    assert request_with_cseq(f"{2**32 - 1} NOTIFY").cseq.number == 2**32 - 1


def test_cseq_above_2_to_the_32_minus_1_is_400():
    lines = [line for line in BASE if not line.startswith("CSeq")]
    assert error_of(wire(*lines, f"CSeq: {2**32} NOTIFY")).status == 400


def request_with_cseq(value: str) -> Request:
    lines = [line for line in BASE if not line.startswith("CSeq")]
    return parse_message(wire(*lines, f"CSeq: {value}"))


def test_max_forwards_above_255_is_400():
    lines = [line for line in BASE if not line.startswith("Max-Forwards")]
    assert error_of(wire(*lines, "Max-Forwards: 256")).status == 400


def test_call_id_with_whitespace_is_400():
    lines = [line for line in BASE if not line.startswith("Call-ID")]
    assert error_of(wire(*lines, "Call-ID: a b")).status == 400


# -- event package headers -------------------------------------------------------------------


def test_event_header_package_and_id():
    event = request("Event: load-status;id=7").event
    assert (event.package, event.id) == ("load-status", "7")


def test_event_header_package_keeps_its_case():
    # RFC 6665 section 8.2.1 compares the event type octet by octet (spec 4.1).
    assert request("Event: Load-Status").event.package == "Load-Status"


def test_subscription_state_with_params():
    state = request("Subscription-State: terminated;reason=timeout;retry-after=30").subscription_state
    assert (state.state, state.reason, state.retry_after, state.expires) == (
        "terminated", "timeout", 30, None)


def test_subscription_state_expires():
    assert request("Subscription-State: active;expires=600").subscription_state.expires == 600


def test_expires_min_expires_and_etags():
    m = request("Expires: 600", "Min-Expires: 60", "SIP-ETag: dx200xyz", "SIP-If-Match: kwj449x")
    assert (m.expires, m.min_expires, m.sip_etag, m.sip_if_match) == (
        600, 60, "dx200xyz", "kwj449x")


def test_expires_that_is_not_a_number_is_400():
    with pytest.raises(SipError):
        _ = request("Expires: soon").expires


def test_allow_events_are_lower_cased_tokens():
    assert request("Allow-Events: load-status, Presence").allow_events == ["load-status", "presence"]


def test_retry_after_with_comment_and_duration():
    retry = request("Retry-After: 18000 (in a meeting);duration=3600").retry_after
    assert (retry.seconds, retry.duration) == (18000, 3600)


def test_content_type_is_the_lower_cased_media_type():
    m = request("Content-Type: Application/Load-Status+JSON; charset=utf-8", body=b"{}")
    assert m.content_type == "application/load-status+json"


def test_absent_headers_read_as_none_or_empty():
    m = request()
    assert (m.event, m.expires, m.sip_etag, m.retry_after, m.content_type) == (
        None, None, None, None, None)
    assert m.allow_events == [] and m.contacts == []


# -- building and serialising ---------------------------------------------------------------------


def notify() -> Request:
    return Request("NOTIFY", "sip:w@192.0.2.10", [
        ("v", "SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK1"), ("From", "<sip:a@h>;tag=1"),
        ("To", "<sip:w@h>;tag=2"), ("i", "c1"), ("CSeq", "3 NOTIFY"),
        ("Event", "load-status"), ("Content-Length", "999"),
    ], b'{"state":"normal"}')


def test_serialised_message_uses_crlf_and_the_real_content_length():
    data = notify().to_bytes()
    head, _, body = data.partition(b"\r\n\r\n")
    assert body == b'{"state":"normal"}'
    assert b"\n" not in head.replace(b"\r\n", b"")
    assert head.split(b"\r\n")[0] == b"NOTIFY sip:w@192.0.2.10 SIP/2.0"
    assert head.endswith(b"Content-Length: 18")
    assert head.count(b"Content-Length") == 1


def test_built_message_uses_long_header_names():
    assert notify().headers[0][0] == "Via" and notify().header("Call-ID") == "c1"


def test_built_message_round_trips():
    assert parse_message(notify().to_bytes()) == notify()


def test_cr_or_lf_in_a_value_is_refused_when_serialising():
    m = notify()
    m.add_header("Subject", "a\r\nInjected: yes")
    with pytest.raises(ValueError):
        m.to_bytes()


def test_set_header_replaces_all_fields_in_place():
    m = notify()
    m.add_header("Event", "other")
    m.set_header("o", "load-status;id=2")
    assert m.header_all("Event") == ["load-status;id=2"]


def test_prepend_and_remove_header():
    m = notify()
    m.prepend_header("Via", "SIP/2.0/UDP proxy;branch=z9hG4bK2")
    assert m.top_via.host == "proxy" and len(m.vias) == 2
    assert m.remove_header("via") == 2 and m.vias == []


def test_response_reason_defaults_to_the_rfc_phrase():
    assert Response(481).reason == "Call/Transaction Does Not Exist"


# -- make_response ----------------------------------------------------------------------------------


def test_response_copies_vias_from_call_id_and_cseq():
    req = request("Via: SIP/2.0/UDP proxy;branch=z9hG4bK2")
    resp = make_response(req, 200, to_tag="t9")
    assert resp.header_all("Via") == req.header_all("Via")
    for name in ("From", "Call-ID", "CSeq"):
        assert resp.header(name) == req.header(name)
    assert resp.to_addr.tag == "t9"


def test_response_keeps_an_existing_to_tag():
    req = request()
    req.set_header("To", "<sip:watcher@192.0.2.10>;tag=old")
    assert make_response(req, 200, to_tag="new").to_addr.tag == "old"


def test_100_trying_gets_no_to_tag():
    assert make_response(request(), 100).to_addr.tag is None


def test_stateless_to_tag_is_the_same_for_retransmissions():
    assert make_response(request(), 400).to_addr.tag == make_response(request(), 400).to_addr.tag


def test_record_route_is_copied_only_when_asked():
    req = request("Record-Route: <sip:p1;lr>")
    assert make_response(req, 200).header("Record-Route") is None
    assert make_response(req, 200, record_route=True).header("Record-Route") == "<sip:p1;lr>"


def test_salvaged_error_response_answers_an_unparseable_request():
    data = wire(*BASE, "Contact: <sip:broken").replace(b"To: <sip:watcher@192.0.2.10>",
                                                       b"t: <sip:watcher@192.0.2.10>")
    error = error_of(data)
    response = salvage_error_response(data, error)
    assert response.status == 400 and response.call_id == "c1@192.0.2.1"
    assert response.to_addr.tag


def test_no_salvaged_response_for_responses_acks_or_unaddressable_requests():
    error = SipError(400, "x")
    assert salvage_error_response(wire(*BASE, start="SIP/2.0 200 OK"), error) is None
    assert salvage_error_response(wire(*BASE, start="ACK sip:a@h SIP/2.0"), error) is None
    assert salvage_error_response(wire(*BASE[1:]), error) is None


# -- stream framing --------------------------------------------------------------------------------


def test_framer_cuts_two_messages_from_one_chunk():
    one, two = notify().to_bytes(), request().to_bytes()
    assert StreamFramer().feed(one + two) == [one, two]


def test_framer_assembles_a_message_fed_byte_by_byte():
    data = notify().to_bytes()
    framer = StreamFramer()
    out = [m for i in range(len(data)) for m in framer.feed(data[i : i + 1])]
    assert out == [data] and framer.buffered == 0


def test_framer_counts_a_crlf_keepalive_ping_and_skips_crlfs():
    data = notify().to_bytes()
    framer = StreamFramer()
    assert framer.feed(b"\r\n\r\n" + b"\r\n" + data) == [data]
    assert framer.pings == 1


def test_framer_waits_on_a_possible_partial_ping():
    framer = StreamFramer()
    assert framer.feed(b"\r\n") == [] and framer.pings == 0
    assert framer.feed(b"\r\n") == [] and framer.pings == 1


def test_framer_treats_missing_content_length_as_zero():
    data = wire(*BASE, content_length=False)
    assert StreamFramer().feed(data + data) == [data, data]


def test_framer_rejects_endless_headers_with_513():
    framer = StreamFramer()
    with pytest.raises(SipError) as info:
        framer.feed(b"NOTIFY sip:a@h SIP/2.0\r\n" + b"X: y\r\n" * (MAX_HEADER_BYTES // 6 + 1))
    assert info.value.status == 513


def test_framer_rejects_a_huge_content_length_with_413():
    data = wire(*BASE, f"Content-Length: {MAX_STREAM_CONTENT_LENGTH + 1}", content_length=False)
    with pytest.raises(SipError) as info:
        StreamFramer().feed(data)
    assert info.value.status == 413


def test_framer_stays_broken_after_a_framing_error():
    framer = StreamFramer()
    with pytest.raises(SipError):
        framer.feed(wire(*BASE, "Content-Length: -1", content_length=False))
    with pytest.raises(SipError):
        framer.feed(notify().to_bytes())


def test_cr_and_lf_that_are_not_a_pair_are_400():
    assert error_of(wire(*BASE, "Expires: 600\r \nX: y")).status == 400


def test_spaces_before_a_fold_are_lws_inside_the_value():
    m = parse_message(wire(*[line for line in BASE if not line.startswith("CSeq")],
                           "CSeq: 1   \r\n   NOTIFY"))
    assert (m.cseq.number, m.cseq.method) == (1, "NOTIFY")
