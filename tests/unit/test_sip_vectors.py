"""Every SIP message vector in spec/vectors/sip/ parses, and its body is what EXPECTED.tsv says.

What each receiver does with the message (489, 423, 412...) is tested with
the subscription and publication state machines; here the vectors are
checked as messages: the right kind, method or status, framing, Event
package and body outcome.
"""

import csv
import re

import pytest

from sipstatus.codec import MEDIA_TYPE, StatusError, decode
from sipstatus.sip import Request, Response, parse_message
from tests.support import ROOT

VECTORS = ROOT / "spec" / "vectors" / "sip"
with (VECTORS / "EXPECTED.tsv").open(newline="") as f:
    ROWS = list(csv.DictReader(f, delimiter="\t"))


def test_every_vector_file_has_an_expectation():
    assert {p.name for p in VECTORS.glob("*.sip")} == {row["file"] for row in ROWS}


@pytest.mark.parametrize("row", ROWS, ids=[r["file"] for r in ROWS])
def test_vector_parses_as_the_expected_kind(row):
    data = (VECTORS / row["file"]).read_bytes()
    assert b"\r\n" in data and b"\n" not in data.replace(b"\r\n", b"")
    message = parse_message(data)
    if row["kind"] == "request":
        assert isinstance(message, Request)
        assert message.method == row["method_or_status"]
    else:
        assert isinstance(message, Response)
        assert message.status == int(row["method_or_status"])
    declared = re.search(rb"\r\n(?:Content-Length|l)[ \t]*:[ \t]*(\d+)\r\n", data, re.I)
    assert declared and int(declared.group(1)) == len(message.body) == len(data) - data.index(b"\r\n\r\n") - 4


@pytest.mark.parametrize("row", ROWS, ids=[r["file"] for r in ROWS])
def test_vector_body_outcome(row):
    message = parse_message((VECTORS / row["file"]).read_bytes())
    expected = row["body"]
    if expected == "none":
        assert message.body == b""
        return
    if "wrong-content-type" not in row["file"]:
        assert message.header("Content-Type") == MEDIA_TYPE
    if expected == "valid":
        decode(message.body)
    else:
        _, member, rule = expected.split(":")
        with pytest.raises(StatusError) as err:
            decode(message.body)
        assert (err.value.member, err.value.rule) == (member, rule)


@pytest.mark.parametrize("row", [r for r in ROWS if r["kind"] == "request"], ids=lambda r: r["file"])
def test_vector_request_names_an_event_package(row):
    message = parse_message((VECTORS / row["file"]).read_bytes())
    package = message.event.package
    assert package == ("presence" if row["file"] == "subscribe-other-event.sip" else "load-status")
