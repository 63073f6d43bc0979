"""The native Kamailio example (packaging/examples/kamailio/native/) against
the real Kamailio from Debian, three SIPp nodes and a SIPp caller.

Reports are PUBLISHed (and NOTIFYed) by hand over UDP with bodies from the
library's encoder; calls go through Kamailio and the test counts which node
answered each. The split of a weighted random choice is checked against a
binomial bound (see `split_within`): 600 calls at 60/30/10 expect 360/180/60
with standard deviations 12, 11.2 and 7.3, so a 5-sigma bound (plus one)
allows +-61/57/38 calls, fails a false alarm about once in a million runs,
and still rejects equal thirds (200 each) or the cold-start split.
"""

from __future__ import annotations

import csv
import time
from pathlib import Path

from sipstatus.status import State
from tests.support import ROOT
from tests.support.kamailio import EXAMPLES, Kamailio, assert_split, needs_kamailio, start_example
from tests.support.sip import MEDIA_TYPE, Publisher, SipClient, body
from tests.support.sipp import SippNode, place_calls

pytestmark = needs_kamailio("jansson")

CONFIG = EXAMPLES / "native" / "kamailio.cfg"
VECTORS = ROOT / "spec" / "vectors" / "body"
#: rweight in the dispatcher list: the cold-start split, unlike any reported one.
RWEIGHTS = {"ast1": 10, "ast2": 30, "ast3": 60}


def start_kamailio(workdir: Path, nodes: dict[str, SippNode], **defines: str | int | None) -> Kamailio:
    return start_example(CONFIG, workdir, nodes.values(), defines)


def publishers(client: SipClient) -> dict[str, Publisher]:
    return {name: Publisher(client, name) for name in RWEIGHTS}


def report_all(pubs: dict[str, Publisher], weights: dict[str, int], validity: int = 60) -> None:
    for name, weight in weights.items():
        reply = pubs[name].report(weight, validity=validity)
        assert reply.status == 200, f"{name}: {reply}"


# -- calls follow the reports ----------------------------------------------


def test_cold_start_falls_back_to_dispatcher_rweight(kam: Kamailio) -> None:
    assert_split(kam, RWEIGHTS)


def test_calls_split_by_reported_weights(kam: Kamailio, client: SipClient) -> None:
    report_all(publishers(client), {"ast1": 60, "ast2": 30, "ast3": 10})
    assert_split(kam, {"ast1": 60, "ast2": 30, "ast3": 10})


def test_draining_node_gets_no_new_calls(kam: Kamailio, client: SipClient) -> None:
    pubs = publishers(client)
    report_all(pubs, {"ast1": 60, "ast2": 30, "ast3": 10})
    reply = pubs["ast1"].report(state=State.DRAINING)
    assert reply.status == 200
    assert_split(kam, {"ast1": 0, "ast2": 30, "ast3": 10}, 300)


def test_node_whose_report_expired_gets_no_new_calls(kam: Kamailio, client: SipClient) -> None:
    pubs = publishers(client)
    report_all(pubs, {"ast1": 60, "ast2": 30})
    assert pubs["ast3"].report(10, validity=2).status == 200
    time.sleep(2.1)  # the validity of ast3's report, counted from its receipt
    assert_split(kam, {"ast1": 60, "ast2": 30, "ast3": 0}, 300)


def test_all_reports_expired_is_cold_start_again(kam: Kamailio, client: SipClient) -> None:
    """Stale is unknown, and unknown nodes get no new calls (spec section 7);
    but with no fresh report at all the proxy is back at cold start."""
    pubs = publishers(client)
    report_all(pubs, {"ast1": 60, "ast2": 30, "ast3": 10}, validity=1)
    time.sleep(1.1)
    assert_split(kam, RWEIGHTS, 300)


def test_only_zero_weights_fresh_gets_503(kam: Kamailio, client: SipClient) -> None:
    pubs = publishers(client)
    for name in RWEIGHTS:
        assert pubs[name].report(state=State.OVERLOADED).status == 200
    counts = place_calls(kam.port, 20, kam.workdir)
    assert counts == {"failed": 20}


def test_older_seq_of_same_instance_is_ignored(kam: Kamailio, client: SipClient) -> None:
    pubs = publishers(client)
    report_all(pubs, {"ast1": 60, "ast2": 30, "ast3": 10})
    ast1 = pubs["ast1"]
    late = body("ast1", state=State.DRAINING, instance=ast1.instance, seq=ast1.seq - 1)
    assert ast1.publish(late).status == 200
    same = body("ast1", state=State.DRAINING, instance=ast1.instance, seq=ast1.seq)
    assert ast1.publish(same).status == 200
    assert_split(kam, {"ast1": 60, "ast2": 30, "ast3": 10}, 300)


def test_new_instance_replaces_old_one_whatever_its_seq(kam: Kamailio, client: SipClient) -> None:
    pubs = publishers(client)
    report_all(pubs, {"ast1": 60, "ast2": 30, "ast3": 10})
    restarted = body("ast1", state=State.DRAINING, instance="restarted", seq=0)
    assert pubs["ast1"].publish(restarted).status == 200
    assert_split(kam, {"ast1": 0, "ast2": 30, "ast3": 10}, 300)


def test_destination_inactive_in_dispatcher_gets_no_calls(kam: Kamailio, client: SipClient, nodes: dict[str, SippNode]) -> None:
    report_all(publishers(client), {"ast1": 60, "ast2": 30, "ast3": 10})
    kam.rpc("dispatcher.set_state", "i", "1", f"sip:127.0.0.1:{nodes['ast1'].port}")
    assert_split(kam, {"ast1": 0, "ast2": 30, "ast3": 10}, 300)


def test_seq_beyond_32_bits_is_ordered(kam: Kamailio, client: SipClient) -> None:
    pubs = publishers(client)
    report_all(pubs, {"ast2": 30, "ast3": 10})
    ast1 = pubs["ast1"]
    assert ast1.publish(body("ast1", 60, instance="big", seq=9007199254740990)).status == 200
    assert ast1.publish(body("ast1", state=State.DRAINING, instance="big", seq=9007199254740989)).status == 200
    assert ast1.publish(body("ast1", state=State.DRAINING, instance="big", seq=4294967296)).status == 200
    assert_split(kam, {"ast1": 60, "ast2": 30, "ast3": 10}, 300)


# -- publication life cycle (RFC 3903) ------------------------------------


def test_publish_answers_etag_and_expires(kam: Kamailio, client: SipClient) -> None:
    pub = Publisher(client, "ast1")
    reply = pub.report(50)
    assert reply.status == 200
    assert reply.header("SIP-ETag")
    assert reply.header("Expires") == "600"


def test_expires_above_maximum_is_lowered(kam: Kamailio, client: SipClient) -> None:
    pub = Publisher(client, "ast1", expires=7200)
    assert pub.report(50).header("Expires") == "3600"


def test_publish_without_expires_gets_default(kam: Kamailio, client: SipClient) -> None:
    headers = [("Event", "load-status"), ("Content-Type", MEDIA_TYPE)]
    _, reply = client.request("PUBLISH", headers, body("ast1", 50))
    assert reply.status == 200
    assert reply.header("Expires") == "600"


def test_refresh_without_body_gets_new_etag_and_spends_old(kam: Kamailio, client: SipClient) -> None:
    pub = Publisher(client, "ast1")
    assert pub.report(50).status == 200
    first = pub.etag
    reply = pub.publish(None)
    assert reply.status == 200
    assert pub.etag and pub.etag != first
    assert pub.publish(None, if_match=first).status == 412


def test_retransmitted_refresh_gets_the_same_answer(kam: Kamailio, client: SipClient) -> None:
    pub = Publisher(client, "ast1")
    assert pub.report(50).status == 200
    data = client.build("PUBLISH", [("Event", "load-status"), ("Expires", "600"), ("SIP-If-Match", pub.etag or "")])
    first = client.send(data)
    again = client.send(data)
    assert (first.status, again.status) == (200, 200)
    assert first.header("SIP-ETag") == again.header("SIP-ETag")


def test_unknown_if_match_gets_412(shared: Kamailio) -> None:
    client = SipClient(shared.port)
    try:
        reply = Publisher(client, "ast1", etag="no-such-tag").publish(body("ast1", 50))
    finally:
        client.close()
    assert reply.status == 412


def test_expires_below_minimum_gets_423_with_min_expires(shared: Kamailio) -> None:
    client = SipClient(shared.port)
    try:
        reply = Publisher(client, "ast1").publish(body("ast1", 50), expires=59)
    finally:
        client.close()
    assert reply.status == 423
    assert reply.header("Min-Expires") == "60"


def test_expires_zero_removes_the_publication_and_the_status(kam: Kamailio, client: SipClient) -> None:
    pubs = publishers(client)
    report_all(pubs, {"ast1": 60, "ast2": 30, "ast3": 10})
    tag = pubs["ast1"].etag
    reply = pubs["ast1"].publish(None, expires=0)
    assert reply.status == 200
    assert reply.header("Expires") == "0"
    assert pubs["ast1"].publish(None, if_match=tag).status == 412
    assert_split(kam, {"ast1": 0, "ast2": 30, "ast3": 10}, 300)


def test_initial_publish_without_body_gets_400(shared: Kamailio) -> None:
    client = SipClient(shared.port)
    try:
        reply = Publisher(client, "ast1").publish(None)
    finally:
        client.close()
    assert reply.status == 400


def test_other_event_package_gets_489(shared: Kamailio) -> None:
    client = SipClient(shared.port)
    try:
        _, reply = client.request("PUBLISH", [("Event", "presence"), ("Expires", "600")], b"x")
    finally:
        client.close()
    assert reply.status == 489
    assert reply.header("Allow-Events") == "load-status"


def test_wrong_media_type_gets_415(shared: Kamailio) -> None:
    client = SipClient(shared.port)
    try:
        headers = [("Event", "load-status"), ("Expires", "600"), ("Content-Type", "application/json")]
        _, reply = client.request("PUBLISH", headers, body("ast1", 50))
    finally:
        client.close()
    assert reply.status == 415
    assert reply.header("Accept") == MEDIA_TYPE


# -- bad bodies ------------------------------------------------------------


def _expected_members() -> dict[str, tuple[str, str]]:
    """Invalid vectors whose broken member the native script checks (the
    members it relies on), with that member ("body" for the whole body) and
    the rule."""
    checked = {"version", "node", "instance", "seq", "validity", "state", "capacity", "weight", "body"}
    out = {}
    with open(VECTORS / "EXPECTED.tsv", newline="") as f:
        for row in csv.DictReader(f, delimiter="\t"):
            if row["codec"] != "invalid" or row["member"] not in checked:
                continue
            if row["rule"] in ("unique", "weight-hint") and row["file"] != "invalid-weight-draining.json":
                continue  # duplicates and the capacity/weight match need a JSON parser with types
            if row["rule"] == "encoding":
                continue  # the script does not check UTF-8
            out[row["file"]] = (row["member"], row["rule"])
    return out


BAD_BODIES = _expected_members()


def test_the_bad_body_list_covers_what_the_script_checks() -> None:
    members = {member for member, _ in BAD_BODIES.values()}
    assert {"version", "node", "instance", "seq", "validity", "state", "capacity", "weight", "body"} <= members


def test_bad_bodies_get_400_naming_the_member_and_rule(shared: Kamailio) -> None:
    client = SipClient(shared.port)
    wrong = []
    try:
        for name, (member, rule) in sorted(BAD_BODIES.items()):
            data = (VECTORS / name).read_bytes()
            reply = Publisher(client, "ast1").publish(data)
            if name == "invalid-empty.json":
                rule = "required"  # no body at all: an initial PUBLISH needs one (spec 5.5 step 8)
            expected = f"Invalid load-status body: {member} ({rule})"  # spec 6.6
            if (reply.status, reply.reason) != (400, expected):
                wrong.append(f"{name}: {reply} (expected 400 {expected})")
    finally:
        client.close()
    assert not wrong, "\n".join(wrong)


def test_valid_vectors_are_accepted(shared: Kamailio) -> None:
    client = SipClient(shared.port)
    refused = []
    try:
        for path in sorted(VECTORS.glob("valid-*.json")):
            # Most vectors name ast1.example.com: rename it to a pool member
            # (bytes, so nothing else changes). A body naming another node
            # passes the checks and then meets the pool: 403.
            data = path.read_bytes().replace(b'"ast1.example.com"', b'"ast1"')
            expected = 200 if b'"node":"ast1"' in data else 403
            reply = Publisher(client, "ast1").publish(data)
            if reply.status != expected or (expected == 403 and not reply.reason.startswith("node:")):
                refused.append(f"{path.name}: {reply}, expected {expected}")
    finally:
        client.close()
    assert not refused, "\n".join(refused)


def test_bad_body_changes_nothing(kam: Kamailio, client: SipClient) -> None:
    pubs = publishers(client)
    report_all(pubs, {"ast1": 60, "ast2": 30, "ast3": 10})
    tag = pubs["ast1"].etag
    bad = body("ast1", 60, instance=pubs["ast1"].instance, seq=99).replace(b'"weight":60', b'"weight":101')
    reply = pubs["ast1"].publish(bad)
    assert (reply.status, reply.reason) == (400, "Invalid load-status body: weight (maximum)")
    # The publication is untouched too: its tag still refreshes.
    assert pubs["ast1"].publish(None, if_match=tag).status == 200
    assert_split(kam, {"ast1": 60, "ast2": 30, "ast3": 10})


# -- pool membership ---------------------------------------------------------


def test_node_not_in_pool_gets_403(shared: Kamailio) -> None:
    client = SipClient(shared.port)
    try:
        reply = Publisher(client, "ast9").report(50)
    finally:
        client.close()
    assert reply.status == 403


def test_auto_join_admits_a_new_node_until_its_report_expires(workdir: Path, nodes: dict[str, SippNode]) -> None:
    extra = SippNode("ast4", workdir)
    extra.start()
    kam = start_kamailio(workdir, nodes, WITH_AUTOJOIN=None, AUTOJOIN_PORT=extra.port)
    client = SipClient(kam.port)
    try:
        pubs = publishers(client)
        report_all(pubs, {"ast1": 30, "ast2": 20, "ast3": 10})
        assert Publisher(client, "ast4").report(40, validity=3).status == 200
        assert_split(kam, {"ast1": 30, "ast2": 20, "ast3": 10, "ast4": 40}, 400)
        time.sleep(3.1)
        assert_split(kam, {"ast1": 30, "ast2": 20, "ast3": 10, "ast4": 0}, 200)
        # Gone from the table too, once the expiry timer has run (every second).
        deadline = time.monotonic() + 3
        while "ast4" in kam.rpc("htable.dump", "ns") and time.monotonic() < deadline:
            time.sleep(0.2)
        assert "ast4" not in kam.rpc("htable.dump", "ns")
        assert "ast4" not in kam.rpc("htable.dump", "joined")
    finally:
        client.close()
        kam.stop()
        extra.stop()


# -- NOTIFY ----------------------------------------------------------------


def _notify(client: SipClient, call_id: str, payload: bytes, state: str = "active;expires=600") -> int:
    headers = [("Event", "load-status"), ("Subscription-State", state), ("Content-Type", MEDIA_TYPE)]
    _, reply = client.request("NOTIFY", headers, payload, call_id=call_id, to_tag="proxy1")
    return reply.status


def test_notify_for_unknown_subscription_gets_481(shared: Kamailio) -> None:
    client = SipClient(shared.port)
    try:
        assert _notify(client, "unknown@127.0.0.1", body("ast1", 50)) == 481
        headers = [("Event", "load-status"), ("Subscription-State", "active"), ("Content-Type", MEDIA_TYPE)]
        _, reply = client.request("NOTIFY", headers, body("ast1", 50))  # no To-tag at all
        assert reply.status == 481
    finally:
        client.close()


def test_notify_in_known_subscription_sets_weights(kam: Kamailio, client: SipClient) -> None:
    for name, weight in {"ast1": 10, "ast2": 30, "ast3": 60}.items():
        call_id = f"sub-{name}@127.0.0.1"
        kam.rpc("htable.sets", "subs", call_id, name)
        assert _notify(client, call_id, body(name, weight)) == 200
    assert_split(kam, {"ast1": 10, "ast2": 30, "ast3": 60}, 300)
    # The subscription to ast3 ends: ast3 is forgotten, and unknown.
    assert _notify(client, "sub-ast3@127.0.0.1", b"", "terminated;reason=timeout") == 200
    assert _notify(client, "sub-ast3@127.0.0.1", body("ast3", 60, seq=2)) == 481
    assert_split(kam, {"ast1": 10, "ast2": 30, "ast3": 0}, 300)


def test_notify_with_bad_body_gets_400(kam: Kamailio, client: SipClient) -> None:
    kam.rpc("htable.sets", "subs", "sub-bad@127.0.0.1", "ast1")
    bad = body("ast1", 50).replace(b'"state":"active"', b'"state":"busy"')
    headers = [("Event", "load-status"), ("Subscription-State", "active"), ("Content-Type", MEDIA_TYPE)]
    _, reply = client.request("NOTIFY", headers, bad, call_id="sub-bad@127.0.0.1", to_tag="t")
    assert reply.status == 400
    assert reply.reason == "Invalid load-status body: state (enum)"
