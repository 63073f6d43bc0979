"""RFC 4475 torture tests, every file of tests/data/rfc4475/.

Each message is read as raw bytes and handled as one UDP datagram.  The facts
asserted are those of EXPECTATIONS.tsv; where the RFC allows a choice, the
test names the choice this stack makes.  Requests go through
``parse_message`` and then ``check_request`` (the UAS checks); responses
through ``parse_message`` and then ``validate_response`` (the UAC checks).
"""

from __future__ import annotations

import hashlib

import pytest

from sipstatus.sip import Request, Response, SipError, SipUri, StreamFramer, parse_message
from sipstatus.sip.transaction import Destination, RequestReceived, SendMessage, TransactionLayer
from sipstatus.sip.uri import AbsoluteUri
from sipstatus.sip.validation import check_max_forwards, check_request, validate_response
from tests.support import DATA

#: The RFC's own messages, extracted from its text; bytes exact (see
#: tests/data/rfc4475/README.md and SHA256SUMS there).
CORPUS = DATA / "rfc4475"
EXPECTATIONS = {
    row["file"]: row
    for row in (
        dict(zip(header, line.split("\t"), strict=True))
        for lines in [CORPUS.joinpath("EXPECTATIONS.tsv").read_text("utf-8").splitlines()]
        for header in [lines[0].split("\t")]
        for line in lines[1:]
        if line
    )
}
FILES = sorted(p.name for p in CORPUS.glob("*.dat"))
SOURCE = Destination("UDP", "192.0.2.200", 5060)

# The profile the RFC's application rows assume: a UA that accepts INVITE
# with application/sdp bodies.  The sipstatus UAS itself serves SUBSCRIBE,
# NOTIFY, PUBLISH and OPTIONS (check_request's default).
INVITE_UA = {"methods": {"INVITE", "ACK", "CANCEL", "BYE", "OPTIONS"},
             "accept": ["application/sdp"]}


def raw(name: str) -> bytes:
    return CORPUS.joinpath(name).read_bytes()


def parse(name: str) -> Request | Response:
    return parse_message(raw(name))


def parse_request(name: str) -> Request:
    message = parse(name)
    assert isinstance(message, Request)
    return message


def parse_error(name: str) -> SipError:
    with pytest.raises(SipError) as info:
        parse(name)
    return info.value


def uas_verdict(name: str, **profile: object) -> int | None:
    """The status a UAS answers (None: it acts on the request)."""
    try:
        request = parse_message(raw(name))
        assert isinstance(request, Request)
        check_request(request, **profile)  # type: ignore[arg-type]
    except SipError as error:
        return error.status
    return None


def uac_discards(name: str) -> bool:
    try:
        response = parse_message(raw(name))
        assert isinstance(response, Response)
        validate_response(response)
    except SipError:
        return True
    return False


# -- the corpus itself ------------------------------------------------------------


def test_every_corpus_file_has_an_expectation_and_a_test():
    assert set(FILES) == set(EXPECTATIONS) == set(CASES)
    assert len(FILES) == 49


def test_corpus_bytes_match_sha256sums():
    for line in CORPUS.joinpath("SHA256SUMS").read_text().splitlines():
        digest, name = line.split()
        assert hashlib.sha256(raw(name.lstrip("*"))).hexdigest() == digest, name


@pytest.mark.parametrize("name", FILES)
def test_no_file_breaks_the_parser_or_checks(name):
    """Only SipError may escape parsing and the checks above it."""
    try:
        message = parse_message(raw(name))
    except SipError:
        return
    checks = (
        [lambda: check_request(message), lambda: check_request(message, **INVITE_UA),
         lambda: check_max_forwards(message)]
        if isinstance(message, Request)
        else [lambda: validate_response(message)]
    )
    for check in checks:
        try:
            check()
        except SipError:
            pass


@pytest.mark.parametrize("name", FILES)
def test_file(name):
    CASES[name]()


# -- 3.1.1 valid messages -----------------------------------------------------------


def wsinv():
    m = parse_request("wsinv.dat")
    assert m.method == "INVITE"
    uri = m.request_uri
    assert isinstance(uri, SipUri)
    assert (uri.user, uri.host, uri.params) == ("vivekg", "chair-dnrc.example.com",
                                                {"unknownparam": None})
    assert m.max_forwards == 68
    assert (m.cseq.number, m.cseq.method) == (9, "INVITE")
    assert len(m.header_all("Via")) == 2
    assert [v.branch for v in m.vias] == ["390skdjuw", "z9hG4bK9ikj8", "z9hG4bK30239"]
    assert [v.transport for v in m.vias] == ["UDP", "TCP", "UDP"]
    assert len(m.body) == 150
    assert m.to_addr.tag == "1918181833n"
    assert m.from_addr.display_name == 'J Rosenberg \\"'
    assert m.from_addr.tag == "98asjd8"
    assert m.header("NewFangledHeader") == "newfangled value continued newfangled value"
    assert m.header("UnknownHeaderWithUnusualValue") == ";;,,;;,;"
    assert m.header("Subject") == ""
    (contact,) = m.contacts
    assert contact.display_name == 'Quoted string ""'
    assert contact.params == {"newparam": "newvalue", "secondparam": None, "q": "0.33"}
    assert m.routes[0].uri.params["unknownwith"] == "value"
    assert check_request(m, **INVITE_UA) is None


def intmeth():
    m = parse_request("intmeth.dat")
    method = "!interesting-Method0123456789_*+`.%indeed'~"
    assert m.method == method and m.cseq.method == method
    assert m.to_addr.display_name == "BEL:\x07 NUL:\x00 DEL:\x7f"
    uri = m.request_uri
    assert uri.user == "1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*"
    assert uri.password == "&it+has=1,weird!*pas$wo~d_too.(doesn't-it)"
    assert m.from_addr.display_name == "token1~` token2'+_ token3*%!.-"
    assert m.from_addr.params["fromparam''~+*_!.-%"] == '"\u0440\u0430\u0431\u043e\u0442\u0430\u044e\u0449\u0438\u0439"'
    assert m.from_addr.tag == "_token~1'+`*%!-."
    assert m.call_id == "intmeth.word%ZK-!.*_+'@word`~)(><:\\/\"][?}{"
    assert m.header("extensionHeader-!.%*+_`'~") == "\ufeff\u5927\u505c\u96fb"
    # An unknown method: a UAS answers 501 (with Allow).
    assert uas_verdict("intmeth.dat") == 501


def esc01():
    m = parse_request("esc01.dat")
    assert m.method == "INVITE"
    uri = m.request_uri
    assert (uri.user, uri.host) == ("sips:user@example.com", "example.net")
    assert m.to_addr.uri.user == "user"
    assert m.from_addr.uri.user == "I have spaces"
    (contact,) = m.contacts
    assert contact.uri.user == "caller"
    assert contact.uri.params == {"lr": None, "name": "value%41"}
    assert len(m.body) == 150


def escnull():
    m = parse_request("escnull.dat")
    assert m.method == "REGISTER"
    assert m.to_addr.uri.user == "null-\x00-null"
    assert m.from_addr.uri.user == "null-\x00-null"
    assert [c.uri.user for c in m.contacts] == ["\x00", "\x00\x00"]


def esc02():
    m = parse_request("esc02.dat")
    assert m.method == "RE%47IST%45R"
    assert m.to_addr.display_name == "%Z%45" and m.from_addr.display_name == "%Z%45"
    assert len(m.contacts) == 2
    assert m.header("C%6Fntact") == "<sip:alias2@host2.example.com>"
    assert uas_verdict("esc02.dat") == 501


def lwsdisp():
    m = parse_request("lwsdisp.dat")
    assert m.method == "OPTIONS"
    assert m.from_addr.display_name == "caller"


def longreq():
    m = parse_request("longreq.dat")
    assert m.method == "INVITE"
    assert len(m.header_all("Via")) == 34 and len(m.vias) == 34
    assert [v.host for v in m.vias[:2]] == ["sip33.example.com", "sip32.example.com"]
    assert m.vias[-1].host == "host.example.com" and m.vias[-1].received == "192.0.2.5"
    assert m.vias[-1].branch.startswith("verylong" + "long" * 40)
    to = m.to_addr
    assert to.display_name == "I have a user name of " + "extreme" * 10 + " proportion"
    assert to.uri.port == 6000
    assert to.uri.params["unknownparam1"] == "very" + "long" * 20 + "value"
    assert to.uri.params["longparam" + "name" * 25] == "shortvalue"
    assert to.uri.params["verylong" + "long" * 24 + "parameternamewithnovalue"] is None
    assert m.from_addr.uri.user == "amazinglylongcallername" * 5
    assert m.from_addr.tag == "12" + "982" * 50 + "424"
    assert m.call_id == "longreq.one" + "really" * 20 + "longcallid"
    name = "Unknown-" + "Long" * 20 + "-Name"
    assert m.header(name.lower()).startswith("unknown-" + "long" * 20 + "-value;")
    assert len(m.body) == 150


def dblreq():
    m = parse_request("dblreq.dat")
    assert m.method == "REGISTER" and m.body == b""
    assert b"INVITE" in raw("dblreq.dat")  # the noise is there, and ignored


def semiuri():
    uri = parse_request("semiuri.dat").request_uri
    assert (uri.user, uri.host, uri.params) == ("user;par=u@example.net", "example.com", {})


def transports():
    m = parse_request("transports.dat")
    assert [v.transport for v in m.vias] == ["UDP", "SCTP", "TLS", "UNKNOWN", "TCP"]


def mpart01():
    m = parse_request("mpart01.dat")
    assert m.method == "MESSAGE"
    assert len(m.body) == 553
    assert m.content_type == "multipart/mixed"
    assert b"\x00" in m.body and b"application/octet-stream" in m.body
    data = raw("mpart01.dat")
    assert data.endswith(m.body)  # not cut, not re-lined


def unreason():
    m = parse("unreason.dat")
    assert isinstance(m, Response) and m.status == 200
    assert "=" in m.reason and "*" in m.reason and not m.reason.isascii()
    assert len(m.body) == 154


def noreason():
    m = parse("noreason.dat")
    assert isinstance(m, Response) and (m.status, m.reason) == (100, "")


# -- 3.1.2 invalid messages -----------------------------------------------------------


def rejected_400(name: str, words: str):
    error = parse_error(name)
    assert error.status == 400 and words in error.reason


def badinv01():
    rejected_400("badinv01.dat", "empty")


def clerr():
    rejected_400("clerr.dat", "Content-Length")
    # Over a stream the framer waits for the rest of the 9999 octets.
    framer = StreamFramer()
    assert framer.feed(raw("clerr.dat")) == []
    assert framer.buffered == len(raw("clerr.dat"))


def ncl():
    rejected_400("ncl.dat", "Content-Length")
    with pytest.raises(SipError) as info:
        StreamFramer().feed(raw("ncl.dat"))
    assert info.value.status == 400


def scalar02():
    rejected_400("scalar02.dat", "CSeq")


def scalarlg():
    error = parse_error("scalarlg.dat")  # a response: discarded
    assert "CSeq" in error.reason


def quotbal():
    rejected_400("quotbal.dat", "quoted string")


def ltgtruri():
    rejected_400("ltgtruri.dat", "URI")


def lwsruri():
    rejected_400("lwsruri.dat", "Request-Line")


def lwsstart():
    """Reject allowed: this parser rejects (400); the Request-Line grammar is
    single-SP separated and guessing buys an endpoint nothing."""
    rejected_400("lwsstart.dat", "Request-Line")


def trws():
    """Reject allowed: this parser rejects trailing SP in the Request-Line (400)."""
    rejected_400("trws.dat", "Request-Line")


def escruri():
    """Reject allowed: this parser rejects a Request-URI carrying headers (400),
    so they are neither forwarded nor turned into header fields."""
    rejected_400("escruri.dat", "Request-URI must not carry headers")


def baddate():
    """Reject allowed only if Date matters: it does not here, Date is kept
    opaque, so the request is accepted by the parser and the UAS checks."""
    m = parse_request("baddate.dat")
    assert m.header("Date").endswith("EST")
    assert uas_verdict("baddate.dat", **INVITE_UA) is None


def regbadct():
    rejected_400("regbadct.dat", "enclosed in <>")


def badaspec():
    """Reject reasonable: this parser rejects spaces inside <> (400)."""
    rejected_400("badaspec.dat", "whitespace")


def baddn():
    rejected_400("baddn.dat", "display name")


def badvers():
    assert parse_error("badvers.dat").status == 505


def mismatch01():
    parse_request("mismatch01.dat")
    assert uas_verdict("mismatch01.dat") == 400


def mismatch02():
    """501 (preferred to 400): the method check runs before the CSeq check."""
    parse_request("mismatch02.dat")
    assert uas_verdict("mismatch02.dat") == 501


def bigcode():
    error = parse_error("bigcode.dat")  # a response: discarded
    assert "status code" in error.reason


# -- 3.2 transaction ----------------------------------------------------------------


def badbranch():
    """This element rejects (400, statelessly) rather than fall back to RFC
    2543 matching: a branch that is only the cookie claims RFC 3261
    matching and identifies nothing."""
    m = parse_request("badbranch.dat")
    assert m.top_via.branch == "z9hG4bK"
    layer = TransactionLayer()
    (sent,) = layer.receive_datagram(raw("badbranch.dat"), SOURCE, now=0.0)
    assert isinstance(sent, SendMessage) and sent.message.status == 400
    assert not layer.servers  # stateless


# -- 3.3 application ----------------------------------------------------------------


def insuf():
    m = parse_request("insuf.dat")
    assert m.call_id is None and m.from_addr is None and m.to_addr is None
    assert uas_verdict("insuf.dat", **INVITE_UA) == 400


def unkscm():
    m = parse_request("unkscm.dat")
    assert isinstance(m.request_uri, AbsoluteUri)
    assert m.request_uri.scheme == "nobodyKnowsThisScheme"
    assert uas_verdict("unkscm.dat") == 416


def novelsc():
    m = parse_request("novelsc.dat")
    assert m.request_uri.scheme == "soap.beep"
    assert uas_verdict("novelsc.dat") == 416  # the scheme is never accepted here


def unksm2():
    """Parsed; the registrar's 400 for a non-SIP To AOR is not implemented
    because sipstatus has no registrar: its UAS answers REGISTER with 405."""
    m = parse_request("unksm2.dat")
    assert m.to_addr.uri == AbsoluteUri("isbn", "2983792873")
    assert m.from_addr.uri.scheme == "http"
    assert m.contacts[0].uri == AbsoluteUri("name", "John_Smith")
    assert uas_verdict("unksm2.dat") == 405


def bext01():
    m = parse_request("bext01.dat")
    with pytest.raises(SipError) as info:
        check_request(m)
    assert info.value.status == 420
    assert info.value.headers == [("Unsupported", "nothingSupportsThis, nothingSupportsThisEither")]


def invut():
    parse_request("invut.dat")
    assert uas_verdict("invut.dat", **INVITE_UA) == 415


def regaut01():
    """A non-registrar endpoint answers 405; the Authorization is kept as is."""
    m = parse_request("regaut01.dat")
    assert m.header("Authorization") == "NoOneKnowsThisScheme opaque-data=here"
    assert uas_verdict("regaut01.dat") == 405


def multi01():
    parse_request("multi01.dat")
    assert uas_verdict("multi01.dat", **INVITE_UA) == 400


def mcl01():
    rejected_400("mcl01.dat", "Content-Length")
    with pytest.raises(SipError) as info:  # over TCP: no framing, close
        StreamFramer().feed(raw("mcl01.dat"))
    assert info.value.status == 400


def bcast():
    m = parse("bcast.dat")
    assert isinstance(m, Response) and m.vias[1].host == "255.255.255.255"
    assert uac_discards("bcast.dat")


def zeromf():
    m = parse_request("zeromf.dat")
    assert m.max_forwards == 0
    assert uas_verdict("zeromf.dat") is None  # a UAS processes it normally
    with pytest.raises(SipError) as info:
        check_max_forwards(m)  # a forwarding element does not
    assert info.value.status == 483


def cparam01():
    (contact,) = parse_request("cparam01.dat").contacts
    assert contact.params == {"unknownparam": None}
    assert contact.uri.params == {}


def cparam02():
    (contact,) = parse_request("cparam02.dat").contacts
    assert contact.params == {}
    assert contact.uri.params == {"unknownparam": None}


def regescrt():
    (contact,) = parse_request("regescrt.dat").contacts
    assert contact.uri.headers == (("Route", "<sip:sip.example.com>"),)
    assert str(contact.uri) == "sip:user@example.com?Route=%3Csip:sip.example.com%3E"


def sdp01():
    """Not implemented here: 406 for an unacceptable Accept is INVITE
    offer/answer semantics, and sipstatus has no INVITE UAS.  The request
    parses and passes the generic checks even for an INVITE-capable profile."""
    m = parse_request("sdp01.dat")
    assert m.header("Accept") == "text/nobodyKnowsThis"
    assert uas_verdict("sdp01.dat", **INVITE_UA) is None


# -- 3.4 backward compatibility ---------------------------------------------------------


def inv2543():
    """Accepted (backward compatible): no branch, no From tag, no Max-Forwards,
    body is the rest of the datagram.  INVITE handling itself (RFC 2543 or
    not) is out of scope: the TU sees it and, for sipstatus, answers 405."""
    m = parse_request("inv2543.dat")
    assert m.top_via.branch is None and m.from_addr.tag is None and m.max_forwards is None
    assert len(m.body) == 105
    assert uas_verdict("inv2543.dat", **INVITE_UA) is None
    # Matched by Call-ID, From tag, CSeq and sent-by: a copy is a retransmission.
    layer = TransactionLayer()
    (event,) = layer.receive_datagram(raw("inv2543.dat"), SOURCE, now=0.0)
    assert isinstance(event, RequestReceived)
    assert layer.receive_datagram(raw("inv2543.dat"), SOURCE, now=0.5) == []


CASES = {f"{fn.__name__}.dat": fn for fn in [
    wsinv, intmeth, esc01, escnull, esc02, lwsdisp, longreq, dblreq, semiuri, transports,
    mpart01, unreason, noreason, badinv01, clerr, ncl, scalar02, scalarlg, quotbal,
    ltgtruri, lwsruri, lwsstart, trws, escruri, baddate, regbadct, badaspec, baddn, badvers,
    mismatch01, mismatch02, bigcode, badbranch, insuf, unkscm, novelsc, unksm2, bext01,
    invut, regaut01, multi01, mcl01, bcast, zeromf, cparam01, cparam02, regescrt, sdp01,
    inv2543,
]}
