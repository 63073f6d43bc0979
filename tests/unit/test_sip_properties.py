"""Property tests: hostile input never breaks the core; messages round-trip."""

from __future__ import annotations

import itertools
import string

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sipstatus.sip import Request, Response, SipError, SipUri, StreamFramer, parse_message
from sipstatus.sip.headers import canonical_name
from sipstatus.sip.transaction import Destination, TransactionLayer
from sipstatus.sip.uri import parse_uri
from sipstatus.sip.validation import check_request, validate_response

SOURCE = Destination("UDP", "192.0.2.7", 5060)

VALID = [
    Request("NOTIFY", "sip:watcher@192.0.2.10:5060", [
        ("Via", "SIP/2.0/UDP 192.0.2.1:5070;branch=z9hG4bK7f3a;rport"),
        ("Max-Forwards", "70"),
        ("Route", "<sip:192.0.2.2;lr>"),
        ("From", '"Agent" <sip:agent@node.example.net>;tag=8c1e'),
        ("To", "<sip:watcher@proxy.example.net>;tag=a93b"),
        ("Call-ID", "4f8d2c1a@192.0.2.10"),
        ("CSeq", "48213 NOTIFY"),
        ("Contact", "<sip:agent@192.0.2.1:5070>;expires=60"),
        ("Event", "load-status;id=1"),
        ("Subscription-State", "active;expires=600"),
        ("Content-Type", "application/load-status+json"),
        ("Retry-After", "30 (busy);duration=60"),
    ], b'{"state":"normal","capacity":0.5}').to_bytes(),
    Response(202, None, [
        ("Via", "SIP/2.0/TCP [2001:db8::1]:5061;branch=z9hG4bKx;received=192.0.2.9"),
        ("From", "<sip:a@h>;tag=1"), ("To", "<sip:b@h>;tag=2"), ("Call-ID", "x"),
        ("CSeq", "1 SUBSCRIBE"), ("Expires", "600"), ("SIP-ETag", "e1"),
        ("Allow-Events", "load-status"),
    ]).to_bytes(),
]


def exercise(data: bytes) -> None:
    """Parse and read everything; only SipError may escape."""
    try:
        message = parse_message(data)
    except SipError:
        return
    for name in ("call_id", "cseq", "from_addr", "to_addr", "vias", "top_via", "contacts",
                 "routes", "record_routes", "max_forwards", "expires", "min_expires", "event",
                 "subscription_state", "allow_events", "allow", "require", "supported",
                 "sip_etag", "sip_if_match", "retry_after", "content_type"):
        try:
            getattr(message, name)
        except SipError:
            pass
    try:
        if isinstance(message, Request):
            _ = message.request_uri
            check_request(message)
        else:
            validate_response(message)
    except SipError:
        pass
    message.to_bytes()


@given(st.binary(max_size=2000))
def test_arbitrary_bytes_raise_only_sip_error(data):
    exercise(data)


@st.composite
def mutated(draw) -> bytes:
    data = bytearray(draw(st.sampled_from(VALID)))
    for _ in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(["replace", "insert", "delete"]))
        pos = draw(st.integers(0, len(data)))
        if kind == "delete" and data:
            del data[min(pos, len(data) - 1)]
        else:
            byte = draw(st.sampled_from(list(b'\r\n :;,<>"\\@/=%[]?&\x00\xff') + [
                draw(st.integers(0, 255))]))
            if kind == "insert" or pos == len(data):
                data.insert(pos, byte)
            else:
                data[pos] = byte
    return bytes(data)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(mutated())
def test_mutated_messages_raise_only_sip_error(data):
    exercise(data)


@settings(max_examples=300)
@given(mutated())
def test_transaction_layer_never_raises_on_received_datagrams(data):
    layer = TransactionLayer()
    layer.receive_datagram(data, SOURCE, now=0.0)
    layer.receive_datagram(data, SOURCE, now=0.1)  # and its retransmission
    layer.handle_timer(100.0)


@settings(max_examples=300)
@given(st.lists(st.binary(max_size=300), max_size=8), st.sampled_from(VALID + [b""]))
def test_stream_framer_raises_only_sip_error(chunks, prefix):
    framer = StreamFramer(max_header_bytes=2048, max_content_length=4096)
    try:
        for chunk in [prefix, *chunks]:
            for message in framer.feed(chunk):
                exercise(message)
    except SipError:
        pass


@settings(max_examples=200)
@given(st.sampled_from(VALID), st.lists(st.integers(1, 50), min_size=1, max_size=30))
def test_stream_framer_output_does_not_depend_on_chunking(data, sizes):
    stream = data * 3
    whole = StreamFramer().feed(stream)
    framer, out, pos = StreamFramer(), [], 0
    for size in itertools.cycle(sizes):
        if pos >= len(stream):
            break
        out += framer.feed(stream[pos : pos + size])
        pos += size
    assert out == whole == [data] * 3


# -- round trips ------------------------------------------------------------------------------

TOKEN_CHARS = string.ascii_letters + string.digits + "-.!%*_+`'~"
token = st.text(TOKEN_CHARS, min_size=1, max_size=12)
# Values of unknown headers: any text but CR and LF, no surrounding LWS.
opaque_value = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n"), max_size=40
).map(lambda s: s.strip(" \t"))
hostname = st.from_regex(r"\A[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?(\.[a-z]{2,6}){0,2}\Z")
free_text = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=12)


@st.composite
def sip_uris(draw) -> SipUri:
    params = draw(st.dictionaries(token.map(str.lower), st.none() | free_text, max_size=3))
    headers = tuple(draw(st.lists(st.tuples(free_text, st.text(max_size=8)), max_size=2)))
    user = draw(st.none() | free_text)
    return SipUri(
        host=draw(hostname | st.sampled_from(["192.0.2.1", "[2001:db8::1]", "[::1]"])),
        user=user,
        password=draw(st.none() | free_text) if user is not None else None,
        port=draw(st.none() | st.integers(0, 65535)),
        params=params,
        headers=headers,
        scheme=draw(st.sampled_from(["sip", "sips"])),
    )


@given(sip_uris())
def test_uri_round_trips_through_its_text(uri):
    assert parse_uri(str(uri)) == uri


unknown_name = token.filter(lambda n: canonical_name(n.lower()) == n.lower())


@st.composite
def messages(draw) -> Request | Response:
    uri = str(draw(sip_uris()).__class__(
        host=draw(hostname), user=draw(st.none() | free_text),
        params=draw(st.dictionaries(token.map(str.lower), st.none() | token, max_size=2))))
    headers = [
        ("Via", f"SIP/2.0/{draw(st.sampled_from(['UDP', 'TCP', 'TLS']))} "
                f"{draw(hostname)}:{draw(st.integers(1, 65535))};branch=z9hG4bK{draw(token)}"),
        ("From", f'"{draw(token)}" <{uri}>;tag={draw(token)}'),
        ("To", f"<{uri}>"),
        ("Call-ID", draw(token)),
        ("CSeq", f"{draw(st.integers(0, 2**32 - 1))} {draw(token)}"),
        ("Max-Forwards", str(draw(st.integers(0, 255)))),
    ]
    headers += draw(st.lists(st.tuples(unknown_name, opaque_value), max_size=6))
    headers = draw(st.permutations(headers))
    body = draw(st.binary(max_size=300))
    if draw(st.booleans()):
        return Request(draw(token), uri, headers, body)
    reason = draw(opaque_value)
    return Response(draw(st.integers(100, 699)), reason, headers, body)


@settings(max_examples=300)
@given(messages())
def test_parse_of_serialised_message_is_the_message(message):
    assert parse_message(message.to_bytes()) == message
