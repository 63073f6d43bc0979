"""The conformance kit (`sipstatus conform compositor`) against the real OpenSIPS 3.6.8
running packaging/examples/opensips/compositor/opensips.cfg, as the real-OpenSIPS
tier runs it (tests/support/opensips.py: only its CUSTOMIZE ME lines changed).

Every rule the kit checks must pass, the same rules, in the same order, as
against the library's own compositor (so a run cut short cannot pass); the
run time is printed (the closing note's figure).

Found by the kit: OpenSIPS script compares strings without case (`==` and
`!=` are str_casematch in route.c), so the config answered `Event:
LOAD-STATUS` with 200 where spec 4.1 says 489; it now compares the header's
hex (`{s.encode.hexa}`). For the same reasons both examples took
`version: 1.0` and `state: "ACTIVE"` (LOOKALIKES); the subscriber example
also a NOTIFY's `Event: LOAD-STATUS`. Tests here send them.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from sipstatus import conform
from sipstatus.codec import MEDIA_TYPE
from sipstatus.conform.common import status_of
from sipstatus.conform.compositor import CompositorCheck
from sipstatus.conform.peer import Peer, Received
from sipstatus.sip import Request, Response
from tests.support import HOST
from tests.support.conform_peers import Served, compositor
from tests.support.opensips import (
    EXAMPLES,
    OpenSips,
    PoolEntry,
    customize,
    dbtext_tables,
    opensips_build,
)
from tests.support.ports import free_port

PREFIX, WHY = opensips_build()

# (a missing peer skips the whole tier: tests/conftest.py)
pytestmark = [pytest.mark.opensips]


def start_compositor(tmp_path: Path) -> OpenSips:
    """The compositor example as the tier runs it, with one node, ast1, in its pool."""
    assert PREFIX is not None
    port = free_port()
    pool = [PoolEntry("ast1", 1, free_port())]  # nothing listens there: no call is made
    run = tmp_path / "opensips"
    text = customize((EXAMPLES / "compositor" / "opensips.cfg").read_text(), port=port, dbtext=run / "dbtext",
                     pool=pool, modules=PREFIX / "lib64" / "opensips" / "modules")
    dbtext_tables(run / "dbtext", pool)
    opensips = OpenSips(PREFIX, run, text, port)
    opensips.start()
    return opensips


def test_the_opensips_compositor_example_passes_as_compositor(tmp_path: Path):
    opensips = start_compositor(tmp_path)
    port = opensips.port
    try:
        started = time.monotonic()
        report = conform.run("compositor", f"sip:{HOST}:{port}", node="ast1")
        took = time.monotonic() - started
        alive = opensips.alive()
    finally:
        opensips.stop()
    print(f"\nconform compositor against OpenSIPS: {len(report.results)} rules in {took:.2f} s")
    assert report.ok, "\n".join(r.line() for r in report.failed) or "no rule checked"
    with Served(compositor()) as served:
        reference = conform.run("compositor", served.target)
    assert [(r.rule, r.text) for r in report.results] == [(r.rule, r.text) for r in reference.results]
    assert alive, opensips.log_tail()
    assert opensips.problems() == []


#: Bodies that compare equal to a valid one in OpenSIPS script (its == ignores
#: case; $json's 1.0 equals 1) but break a rule of spec 6, and the reason of
#: the 400 (spec 6.6), as sipstatus.codec names member and rule.
LOOKALIKES = {
    "version 1.0": ({"version": 1.0}, "version (type)"),
    "version 1e0": ({"version": "1e0"}, "version (type)"),
    "state ACTIVE": ({"state": "ACTIVE"}, "state (enum)"),
}


def status_body(changes: dict[str, object], seq: int) -> bytes:
    """A valid body for ast1 with ``changes`` (a str version: the JSON as is)."""
    fields: dict[str, object] = {"version": 1, "node": "ast1", "instance": "os00000000", "seq": seq,
                                 "validity": 15, "state": "active", "capacity": 0.5, "weight": 50}
    fields.update(changes)
    return ("{" + ",".join(f'"{k}":{v if isinstance(v, str) and k == "version" else json.dumps(v)}'
                           for k, v in fields.items()) + "}").encode()


def publish(opensips: OpenSips, changes: dict[str, object], seq: int) -> Response | None:
    """An initial PUBLISH of ``status_body(changes, seq)``."""
    peer = Peer(HOST)
    try:
        check = CompositorCheck(peer, (HOST, opensips.port), conform.Report("compositor", ""), node="ast1")
        return check.publish(payload=status_body(changes, seq))
    finally:
        peer.close()


def test_the_opensips_compositor_example_refuses_bodies_that_only_look_valid(tmp_path: Path):
    opensips = start_compositor(tmp_path)
    try:
        answers = {name: status_of(publish(opensips, changes, seq))
                   for seq, (name, (changes, _)) in enumerate(LOOKALIKES.items(), 1)}
        # every state in its exact form still passes (weight 0 unless active)
        states = {state: status_of(publish(opensips, {"state": state, "weight": 50 if state == "active" else 0},
                                           seq))
                  for seq, state in enumerate(("active", "draining", "overloaded", "down"), 10)}
    finally:
        opensips.stop()
    assert answers == {name: f"400 Invalid load-status body: {reason}"
                       for name, (_, reason) in LOOKALIKES.items()}
    assert states == {state: "200 OK" for state in states}
    assert opensips.problems() == []


def test_the_opensips_subscriber_example_refuses_load_status_in_capitals_and_lookalike_bodies(tmp_path: Path):
    # Spec 4.1: the package name is compared byte for byte. The kit plays the
    # agent: it answers the config's SUBSCRIBE, then sends a NOTIFY in that
    # subscription with `Event: load-status` (200) and one with
    # `Event: LOAD-STATUS` (489 with Allow-Events; it got 200 before), then
    # the LOOKALIKES bodies (400 naming member and rule; 200 before).
    assert PREFIX is not None
    port = free_port()
    agent = Peer(HOST)
    agent.policy = lambda request: (200, [("Expires", "600"), ("Contact", f"<sip:load-status@{agent.hostport}>")])
    pool = [PoolEntry("ast1", 1, free_port())]
    run = tmp_path / "opensips"
    text = customize((EXAMPLES / "subscriber" / "opensips.cfg").read_text(), port=port, dbtext=run / "dbtext",
                     pool=pool, agents=[("ast1", f"sip:load-status@{agent.hostport}")],
                     modules=PREFIX / "lib64" / "opensips" / "modules")
    dbtext_tables(run / "dbtext", pool)
    opensips = OpenSips(PREFIX, run, text, port)
    opensips.start()
    try:
        sub = agent.wait_request(lambda r: r.request.method == "SUBSCRIBE", 30)
        assert sub is not None, "no SUBSCRIBE within 30 s"
        answers = {event: notify(agent, sub, event, seq) for seq, event in enumerate(("load-status", "LOAD-STATUS"), 1)}
        lookalikes = {name: status_of(notify(agent, sub, "load-status", seq, changes))
                      for seq, (name, (changes, _)) in enumerate(LOOKALIKES.items(), 3)}
        alive = opensips.alive()
    finally:
        opensips.stop()
        agent.close()
    assert status_of(answers["load-status"]).startswith("200 ")
    capitals = answers["LOAD-STATUS"]
    assert capitals is not None and capitals.status == 489, status_of(capitals)
    assert "load-status" in capitals.allow_events
    assert lookalikes == {name: f"400 Invalid load-status body: {reason}"
                          for name, (_, reason) in LOOKALIKES.items()}
    assert alive, opensips.log_tail()


def notify(agent: Peer, sub: Received, event: str, seq: int,
           changes: dict[str, object] | None = None) -> Response | None:
    """A NOTIFY in the subscription ``sub`` (the kit's 200 made it), with ``event``
    and a valid body for ast1 with ``changes`` (as `status_body` writes them)."""
    request = sub.request
    assert request.from_addr is not None and request.to_addr is not None
    contacts = request.contacts
    headers = [
        ("Max-Forwards", "70"),
        ("From", f"<{request.to_addr.uri}>;tag={sub.to_tag}"),
        ("To", request.header("From") or ""),
        ("Call-ID", request.call_id or ""),
        ("CSeq", f"{seq} NOTIFY"),
        ("Contact", f"<sip:load-status@{agent.hostport}>"),
        ("Event", event), ("Subscription-State", "active;expires=600"),
        ("Content-Type", MEDIA_TYPE),
    ]
    target = str(contacts[0].uri) if contacts else str(request.from_addr.uri)
    return agent.send_request(Request("NOTIFY", target, headers, status_body(changes or {}, seq)), sub.source)
