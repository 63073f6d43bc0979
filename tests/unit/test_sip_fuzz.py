"""Fuzzing the receive path: any bytes on any transport raise only SipError.

Seeds are the spec's SIP vectors (spec/vectors/sip/) and the RFC 4475
corpus (tests/data/rfc4475/); hypothesis mutates them (bytes flipped,
inserted, deleted, spliced from other seeds, header lines repeated) and
feeds them to the core's parser and to a whole :class:`Endpoint` holding
a notifier, a compositor and a subscriber, as UDP datagrams and as a TCP
stream.  The core may answer, drop or raise :class:`SipError`; anything
else is a bug (issue 17 found a UnicodeEncodeError, an IndexError and a
TypeError this way).  ``SIPSTATUS_FUZZ_EXAMPLES`` sets the examples per
test (default 300) for a longer run.
"""

from __future__ import annotations

import logging
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sipstatus.net.endpoint import Endpoint
from sipstatus.sip import SipError, StreamFramer, parse_message
from sipstatus.sip.digest import DigestServer
from sipstatus.sip.publication import Compositor
from sipstatus.sip.subscription import Notifier, Subscriber, SubscriberConfig, SubscriberPool
from sipstatus.sip.transaction import Destination
from sipstatus.sip.uri import parse_uri
from tests.support import ROOT

SEEDS = [p.read_bytes() for p in sorted((ROOT / "spec" / "vectors" / "sip").glob("*.sip"))] + \
    [p.read_bytes() for p in sorted((ROOT / "tests" / "data" / "rfc4475").glob("*.dat"))]
EXAMPLES = int(os.environ.get("SIPSTATUS_FUZZ_EXAMPLES", "300"))
TYPE = "application/load-status+json"
SOURCES = [Destination("UDP", "192.0.2.9", 5060), Destination("UDP", "2001:db8::9", 5060),
           Destination("TCP", "192.0.2.9", 40001), Destination("TLS", "::1", 40002)]
# Fragments that tend to reach deeper: delimiters, escapes, bytes that are
# not UTF-8 or not ASCII, numbers too large, header parameters that steer
# matching and routing.
TOKENS = [b"\r\n", b" ", b":", b";", b",", b"<", b">", b"@", b"%", b"%ff", b"%C3", b"[", b"]",
          b"=", b'"', b"\\", b"\x00", b"\xff", b"\xc3", b"\xed\xa0\x80", "é".encode(),
          "\u2028".encode(), b"sip:", b"tel:", b"SIP/2.0", b"\r\n\r\n", b"0", b"-1",
          b"99999999999999999999", b";rport", b";received=192.0.2.1", b";branch=z9hG4bK",
          b";maddr=192.0.2.3", b";tag=x", b"Via: \r\n", b"Content-Length: 5\r\n",
          b"Authorization: Digest username=\"u\", realm=\"agent\", nonce=\"\xc3\xa9.1.\xc3\xa9\", "
          b"uri=\"sip:a@b\", response=\"\xc3\xa9\", qop=auth, nc=00000001, cnonce=\"c\"\r\n"]


@st.composite
def mutated(draw) -> bytes:
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 6))):
        at = draw(st.integers(0, len(data)))
        op = draw(st.integers(0, 5))
        if op == 0 and data:
            data[min(at, len(data) - 1)] = draw(st.integers(0, 255))
        elif op == 1:
            data[at:at] = draw(st.sampled_from(TOKENS))
        elif op == 2:
            del data[at:at + draw(st.integers(1, 20))]
        elif op == 3:
            other = draw(st.sampled_from(SEEDS))
            start = draw(st.integers(0, len(other) - 1))
            data[at:at] = other[start:start + draw(st.integers(1, 60))]
        elif op == 4:
            lines = bytes(data).split(b"\r\n")
            line = lines[draw(st.integers(0, len(lines) - 1))]
            lines.insert(draw(st.integers(0, len(lines))), line)
            data = bytearray(b"\r\n".join(lines))
        else:
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
    return bytes(data)


def endpoint() -> Endpoint:
    """An element with every user the receive path can reach."""
    digest = DigestServer("agent", b"k" * 32)

    def authorize(request, source, now):
        try:
            digest.verify(request, now, lambda user: "secret")
        except SipError as error:
            return error
        return None

    notifier = Notifier("load-status", TYPE, "sip:agent@192.0.2.1:5070", authorize=authorize)
    notifier.state_changed(b'{"x":1}', 0.0)
    compositor = Compositor("load-status", TYPE)
    pool = SubscriberPool()
    config = SubscriberConfig("load-status", TYPE, "sip:watcher@192.0.2.10",
                              "sip:watcher@192.0.2.10:5060")
    pool.add(Subscriber("sip:load-status@192.0.2.1:5070", config,
                        destination=Destination("UDP", "192.0.2.1", 5070)), 0.0)
    return Endpoint([notifier, compositor, pool], allow_events=["load-status"])


class Failures(logging.Handler):
    """Collects log records that carry a traceback or report an internal error."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info or record.levelno >= logging.ERROR:
            self.records.append(record)


@pytest.fixture()
def failures():
    handler = Failures()
    root = logging.getLogger("sipstatus")
    root.addHandler(handler)
    yield handler
    root.removeHandler(handler)


def feed(ep: Endpoint, data: bytes, source: Destination, now: float) -> None:
    if source.reliable:
        framer = StreamFramer()
        try:
            messages = framer.feed(data + b"\r\n\r\n")
        except SipError:
            return
        for message in messages:
            ep.receive(message, source, now)
    else:
        ep.receive(data, source, now)


# -- the fuzz tests ----------------------------------------------------------------------------


@settings(max_examples=EXAMPLES, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(data=mutated())
def test_parsing_mutated_seeds_raises_only_sip_error(data):
    try:
        message = parse_message(data)
    except SipError:
        return
    message.to_bytes()


@settings(max_examples=EXAMPLES, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(messages=st.lists(mutated(), min_size=1, max_size=4),
       source=st.sampled_from(SOURCES))
def test_endpoint_survives_mutated_seeds_without_internal_errors(messages, source, failures):
    failures.records.clear()
    ep = endpoint()
    for i, data in enumerate(messages):
        feed(ep, data, source, float(i))
        ep.handle_timer(float(i))
    assert ep.internal_errors == 0, [r.getMessage() for r in failures.records]
    assert failures.records == []


@settings(max_examples=EXAMPLES, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=600), source=st.sampled_from(SOURCES))
def test_endpoint_survives_arbitrary_bytes(data, source, failures):
    failures.records.clear()
    ep = endpoint()
    feed(ep, data, source, 0.0)
    assert ep.internal_errors == 0 and failures.records == []


# -- what the fuzzing found (issue 17) -----------------------------------------------------------

NOTIFY_HEAD = (b"Max-Forwards: 70\r\nFrom: <sip:load-status@192.0.2.1>;tag=a\r\n"
               b"To: <sip:watcher@192.0.2.10>;tag=b\r\nCall-ID: c1\r\nCSeq: 1 NOTIFY\r\n")


def test_an_escape_beside_a_byte_that_is_not_utf8_unquotes_without_unicode_error():
    # Bytes become text by surrogateescape; unquoting must go back to bytes.
    text = b"sip:user@example.com?Route=%3Csip:h\x9b.example.com%3E".decode(
        "utf-8", "surrogateescape")
    assert parse_uri(text).headers == (("Route", "<sip:h\udc9b.example.com>"),)


def test_an_escaped_user_part_keeps_its_undecodable_bytes():
    text = b"sip:u%41\x81@example.com".decode("utf-8", "surrogateescape")
    assert parse_uri(text).user == "uA\udc81"


def test_an_empty_via_is_answered_400_not_an_index_error():
    data = (b"OPTIONS sip:agent@192.0.2.1 SIP/2.0\r\nVia: \r\n"
            b"Via: SIP/2.0/UDP 192.0.2.9;branch=z9hG4bKa\r\n" + NOTIFY_HEAD.replace(b"NOTIFY", b"OPTIONS")
            + b"Content-Length: 0\r\n\r\n")
    message = parse_message(data)
    with pytest.raises(SipError, match="empty Via"):
        _ = message.top_via
    ep = endpoint()
    out = ep.receive(data, SOURCES[0], 0.0)
    assert ep.internal_errors == 0 and ep.malformed == 1
    assert [t.data.split(b"\r\n", 1)[0] for t in out] == [b"SIP/2.0 400 empty Via header field"]


def test_a_bad_cseq_read_while_matching_is_answered_400():
    data = (b"OPTIONS sip:agent@192.0.2.1 SIP/2.0\r\n"
            b"Via: SIP/2.0/UDP 192.0.2.9;branch=z9hG4bKb\r\n"
            + NOTIFY_HEAD.replace(b"CSeq: 1 NOTIFY", b"CSeq: one OPTIONS") + b"\r\n")
    ep = endpoint()
    out = ep.receive(data, SOURCES[0], 0.0)
    assert ep.internal_errors == 0
    assert out and out[0].data.startswith(b"SIP/2.0 400 ")


def test_a_digest_nonce_that_is_not_ascii_gets_a_challenge_not_a_type_error():
    digest = DigestServer("agent", b"k" * 32)
    data = (b"SUBSCRIBE sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.9;branch=z9hG4bKc\r\n"
            b"Max-Forwards: 70\r\nFrom: <sip:w@192.0.2.9>;tag=1\r\nTo: <sip:a@b>\r\n"
            b"Call-ID: d1\r\nCSeq: 1 SUBSCRIBE\r\nContact: <sip:w@192.0.2.9>\r\n"
            b"Event: load-status\r\nAuthorization: Digest username=\"u\", realm=\"agent\", "
            b"nonce=\"\xc3\xa9.1.\xc3\xa9\", uri=\"sip:a@b\", response=\"\xc3\xa9\", qop=auth, "
            b"nc=00000001, cnonce=\"c\"\r\n\r\n")
    with pytest.raises(SipError) as info:
        digest.verify(parse_message(data), 0.0, lambda user: "secret")
    assert info.value.status == 401 and "nonce not issued here" in info.value.reason


def test_a_digest_response_that_is_not_ascii_is_a_wrong_password():
    digest = DigestServer("agent", b"k" * 32)
    nonce = digest.make_nonce(0.0)
    data = (f"SUBSCRIBE sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.9;branch=z9hG4bKd\r\n"
            f"Max-Forwards: 70\r\nFrom: <sip:w@192.0.2.9>;tag=1\r\nTo: <sip:a@b>\r\n"
            f"Call-ID: d2\r\nCSeq: 1 SUBSCRIBE\r\nContact: <sip:w@192.0.2.9>\r\n"
            f"Event: load-status\r\nAuthorization: Digest username=\"u\", realm=\"agent\", "
            f"nonce=\"{nonce}\", uri=\"sip:a@b\", response=\"é\", algorithm=SHA-256, qop=auth, "
            f"nc=00000001, cnonce=\"c\"\r\n\r\n").encode()
    with pytest.raises(SipError) as info:
        digest.verify(parse_message(data), 0.1, lambda user: "secret")
    assert info.value.status == 401 and "wrong password" in info.value.reason


# -- the log under a flood of bad messages -----------------------------------------------------


def test_bad_messages_are_logged_one_line_each_rate_limited_without_traceback(caplog):
    ep = endpoint()
    bad = b"OPTIONS sip:agent@192.0.2.1 SIP/2.0\r\nVia: \r\n" + NOTIFY_HEAD + b"\r\n"
    with caplog.at_level(logging.DEBUG, logger="sipstatus"):
        for i in range(2000):
            ep.receive(bad, SOURCES[0], i * 0.001)  # 2,000 in 2 s
    records = [r for r in caplog.records if r.name.startswith("sipstatus")]
    assert all(r.exc_info is None for r in records)
    assert 1 <= len(records) <= ep.bad_message_log.burst
    assert "bad message from" in records[0].getMessage()
    assert "empty Via" in records[0].getMessage()
    assert ep.malformed == 2000


def test_the_first_line_after_a_quiet_window_counts_what_was_left_out(caplog):
    ep = endpoint()
    bad = b"NOTIFY sip:w@192.0.2.10 SIP/2.0\r\nVia: \r\n" + NOTIFY_HEAD + b"\r\n"
    with caplog.at_level(logging.DEBUG, logger="sipstatus"):
        for _ in range(50):
            ep.receive(bad, SOURCES[0], 0.0)
        ep.receive(bad, SOURCES[0], ep.bad_message_log.window + 1)
    messages = [r.getMessage() for r in caplog.records if r.name.startswith("sipstatus")]
    assert f"{50 - ep.bad_message_log.burst} more such lines left out" in messages[-2]


def test_a_second_final_answer_to_one_request_is_one_log_line_not_a_traceback(caplog):
    # transaction.py refuses it (ValueError); the endpoint must not let that
    # become a traceback per message.
    from sipstatus.sip.message import make_response
    from sipstatus.sip.subscription import SendResponse

    class AnswersTwice:
        def handle_request(self, request, source, now):
            return [SendResponse(make_response(request, 200)), SendResponse(make_response(request, 500))]

        def handle_response(self, response, request, now):
            return []

        def next_timer(self):
            return None

        def handle_timer(self, now):
            return []

    ep = Endpoint([AnswersTwice()])
    data = (b"NOTIFY sip:w@192.0.2.10 SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.9;branch=z9hG4bKtwice\r\n"
            + NOTIFY_HEAD + b"Event: load-status\r\nSubscription-State: active\r\n\r\n")
    with caplog.at_level(logging.DEBUG, logger="sipstatus"):
        out = ep.receive(data, SOURCES[0], 0.0)
    assert [t.data.split(b"\r\n", 1)[0] for t in out] == [b"SIP/2.0 200 OK"]
    assert ep.internal_errors == 1
    (record,) = [r for r in caplog.records if r.name.startswith("sipstatus")]
    assert record.exc_info is None and "ValueError: a final response was already sent" in record.getMessage()
