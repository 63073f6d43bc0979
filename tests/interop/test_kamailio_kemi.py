"""The KEMI Kamailio example (packaging/examples/kamailio/kemi/): Kamailio from
Debian running sipstatus_kemi.py in app_python3 with the sipstatus library of
this checkout, three SIPp nodes and a SIPp caller.

The split is checked as in test_kamailio_native.py (binomial 5-sigma bound),
against the weights the library's own policy gives for the same reports
(WaterFillPolicy by default, FreeSlotsPolicy when POLICY selects it); every invalid body vector must get 400 with exactly the message
`sipstatus.codec.decode` raises for it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sipstatus.codec import StatusError, decode
from sipstatus.proxy.nodetable import NodeTable
from sipstatus.proxy.policy import FreeSlotsPolicy, WaterFillPolicy, WeightPolicy
from sipstatus.status import State
from tests.support import ROOT
from tests.support.kamailio import EXAMPLES, Kamailio, assert_split, needs_kamailio, start_example
from tests.support.sip import MEDIA_TYPE, Publisher, SipClient, body
from tests.support.sipp import SippNode, split_within

pytestmark = needs_kamailio("app_python3")

CONFIG = EXAMPLES / "kemi" / "kamailio.cfg"
SCRIPT = EXAMPLES / "kemi" / "sipstatus_kemi.py"
VECTORS = ROOT / "spec" / "vectors" / "body"
RWEIGHTS = {"ast1": 10, "ast2": 30, "ast3": 60}
CALLS = 600


def start_kamailio(workdir: Path, nodes: dict[str, SippNode], **defines: str | int | None) -> Kamailio:
    # app_python3 runs Debian's python3, which does not see this checkout
    # unless told (in production the python3-sipstatus package provides it).
    return start_example(
        CONFIG, workdir, nodes.values(), {"KEMI_SCRIPT": f'"{SCRIPT}"', **defines}, {"SIPSTATUS_PATH": str(ROOT)}
    )


#: The tests of what reports do (drain, expiry, ordering, ...) read the
#: split off the weight hints: the headroom policy weighs a node by its hint.
HINTS_POLICY = '"headroom"'
#: `kam` (tests/conftest.py) runs with the hints policy; `shared` with the default.
KAM_DEFINES = {"POLICY": HINTS_POLICY}


@pytest.fixture(params=[None, '"free-slots"'], ids=["default policy", "free-slots"])
def policy_kam(request: pytest.FixtureRequest, workdir: Path, nodes: dict[str, SippNode]) -> Iterator[Kamailio]:
    """A Kamailio with the default policy (no POLICY define), or the one named."""
    kam = start_kamailio(workdir, nodes, **({} if request.param is None else {"POLICY": request.param}))
    try:
        yield kam
    finally:
        kam.stop()


@pytest.fixture
def shared_client(shared: Kamailio) -> Iterator[SipClient]:
    c = SipClient(shared.port)
    yield c
    c.close()


def policy_weights(reports: dict[str, tuple[int, int | None]], policy: WeightPolicy) -> dict[str, int]:
    """What a library policy makes of reports {node: (weight hint, limit)}."""
    table = NodeTable(reports)
    for name, (weight, limit) in reports.items():
        table.update(decode(body(name, weight, limit=limit)), 0.0)
    return policy.weights(table.views(1.0))


def free_slots_weights(reports: dict[str, tuple[int, int | None]]) -> dict[str, int]:
    """What the library's FreeSlotsPolicy makes of reports {node: (weight hint, limit)}."""
    return policy_weights(reports, FreeSlotsPolicy())


def report_all(client: SipClient, reports: dict[str, tuple[int, int | None]]) -> dict[str, Publisher]:
    pubs = {}
    for name, (weight, limit) in reports.items():
        pubs[name] = Publisher(client, name)
        reply = pubs[name].report(weight, limit=limit)
        assert reply.status == 200, f"{name}: {reply}"
    return pubs


# -- calls -------------------------------------------------------------------


def test_cold_start_falls_back_to_dispatcher_rweight(kam: Kamailio) -> None:
    assert_split(kam, RWEIGHTS)


def test_calls_split_by_free_slots(workdir: Path, nodes: dict[str, SippNode]) -> None:
    """Half free everywhere, but 300, 200 and 100 channels: free slots
    150/100/50, so FreeSlotsPolicy weighs them 100/67/33, not equally."""
    reports = {"ast1": (50, 300), "ast2": (50, 200), "ast3": (50, 100)}
    weights = free_slots_weights(reports)
    assert weights == {"ast1": 100, "ast2": 67, "ast3": 33}
    kam = start_kamailio(workdir, nodes, POLICY='"free-slots"')
    client = SipClient(kam.port)
    try:
        report_all(client, reports)
        assert_split(kam, weights)
    finally:
        client.close()
        kam.stop()


#: Reports without call limits where water-filling and free slots part:
#: water-filling aims every node at the pool's utilisation, so the nodes
#: above it (ast2, ast3) get almost nothing until ast1 catches up.
UNEVEN: dict[str, tuple[int, int | None]] = {"ast1": (60, None), "ast2": (30, None), "ast3": (10, None)}


def expected_counts(weights: dict[str, int], calls: int = CALLS) -> dict[str, int]:
    total = sum(weights.values())
    return {node: round(calls * w / total) for node, w in weights.items()}


def test_the_policy_is_water_filling_unless_policy_names_another(policy_kam: Kamailio) -> None:
    """Issue 14: water-filling is the default wherever a proxy weights, the
    KEMI module included; POLICY selects another (here free-slots)."""
    chosen = policy_kam.defines.get("POLICY")
    policy = WaterFillPolicy() if chosen is None else FreeSlotsPolicy()
    weights = policy_weights(UNEVEN, policy)
    # The two policies part here, or this test could not tell them apart.
    assert split_within(expected_counts(policy_weights(UNEVEN, WaterFillPolicy())), free_slots_weights(UNEVEN), CALLS)
    client = SipClient(policy_kam.port)
    try:
        report_all(client, UNEVEN)
        assert_split(policy_kam, weights)
    finally:
        client.close()


def test_draining_node_gets_no_new_calls(kam: Kamailio, client: SipClient) -> None:
    pubs = report_all(client, {"ast1": (60, 100), "ast2": (30, 100), "ast3": (10, 100)})
    assert pubs["ast1"].report(state=State.DRAINING).status == 200
    assert_split(kam, {"ast1": 0, "ast2": 30, "ast3": 10}, 300)


def test_node_whose_report_expired_gets_no_new_calls(kam: Kamailio, client: SipClient) -> None:
    report_all(client, {"ast1": (60, 100), "ast2": (30, 100)})
    assert Publisher(client, "ast3").report(10, validity=1, limit=100).status == 200
    time.sleep(1.05)
    assert_split(kam, {"ast1": 60, "ast2": 30, "ast3": 0}, 300)


def test_older_seq_of_same_instance_is_ignored(kam: Kamailio, client: SipClient) -> None:
    pubs = report_all(client, {"ast1": (60, 100), "ast2": (30, 100), "ast3": (10, 100)})
    ast1 = pubs["ast1"]
    late = body("ast1", state=State.DRAINING, instance=ast1.instance, seq=ast1.seq - 1)
    assert ast1.publish(late).status == 200
    assert_split(kam, {"ast1": 60, "ast2": 30, "ast3": 10}, 300)


def test_expires_zero_forgets_the_node(kam: Kamailio, client: SipClient) -> None:
    pubs = report_all(client, {"ast1": (60, 100), "ast2": (30, 100), "ast3": (10, 100)})
    tag = pubs["ast1"].etag
    reply = pubs["ast1"].publish(None, expires=0)
    assert (reply.status, reply.header("Expires")) == (200, "0")
    assert pubs["ast1"].publish(None, if_match=tag).status == 412
    assert_split(kam, {"ast1": 0, "ast2": 30, "ast3": 10}, 300)


# -- bad input ---------------------------------------------------------------


def test_bad_bodies_get_400_naming_member_and_rule(shared_client: SipClient) -> None:
    wrong = []
    for path in sorted(VECTORS.glob("invalid-*.json")):
        data = path.read_bytes()
        with pytest.raises(StatusError) as raised:
            decode(data)
        reply = Publisher(shared_client, "ast1").publish(data)
        if not data:
            # No body at all is a SIP matter first: an initial PUBLISH
            # without a body gets 400 (RFC 3903 section 6, step 3).
            expected = "body: missing in an initial PUBLISH"
        else:
            expected = raised.value.reason_phrase
        if (reply.status, reply.reason) != (400, expected):
            wrong.append(f"{path.name}: {reply}, expected 400 {expected}")
    assert not wrong, "\n".join(wrong)


def test_valid_vectors_pass_validation(shared_client: SipClient) -> None:
    refused = []
    for path in sorted(VECTORS.glob("valid-*.json")):
        data = path.read_bytes().replace(b'"ast1.example.com"', b'"ast1"')
        expected = 200 if b'"node":"ast1"' in data else 403  # valid, but not in the pool
        reply = Publisher(shared_client, "ast1").publish(data)
        if reply.status != expected:
            refused.append(f"{path.name}: {reply}, expected {expected}")
    assert not refused, "\n".join(refused)


def test_bad_body_changes_nothing(kam: Kamailio, client: SipClient) -> None:
    pubs = report_all(client, {"ast1": (60, 100), "ast2": (30, 100), "ast3": (10, 100)})
    bad = body("ast1", 60, instance=pubs["ast1"].instance, seq=99).replace(b'"state":"active"', b'"state":"busy"')
    reply = pubs["ast1"].publish(bad)
    assert (reply.status, reply.reason) == (400, "Invalid load-status body: state (enum)")
    assert reply.header("Warning").endswith('"state: \\"busy\\" is not one of active, draining, overloaded, down (rule: enum)"')
    assert_split(kam, {"ast1": 60, "ast2": 30, "ast3": 10}, 300)


def test_unknown_if_match_gets_412(shared_client: SipClient) -> None:
    assert Publisher(shared_client, "ast1", etag="no-such-tag").publish(body("ast1", 50)).status == 412


def test_expires_below_minimum_gets_423_with_min_expires(shared_client: SipClient) -> None:
    reply = Publisher(shared_client, "ast1").publish(body("ast1", 50), expires=59)
    assert (reply.status, reply.header("Min-Expires")) == (423, "60")


def test_publish_answers_etag_and_expires(shared_client: SipClient) -> None:
    reply = Publisher(shared_client, "ast2", expires=7200).report(50)
    assert reply.status == 200
    assert reply.header("SIP-ETag")
    assert reply.header("Expires") == "3600"


def test_retransmitted_refresh_gets_the_same_answer(shared_client: SipClient) -> None:
    pub = Publisher(shared_client, "ast3")
    assert pub.report(50).status == 200
    data = shared_client.build("PUBLISH", [("Event", "load-status"), ("Expires", "600"), ("SIP-If-Match", pub.etag or "")])
    first, again = shared_client.send(data), shared_client.send(data)
    assert (first.status, again.status) == (200, 200)
    assert first.header("SIP-ETag") == again.header("SIP-ETag")


def test_wrong_media_type_gets_415(shared_client: SipClient) -> None:
    headers = [("Event", "load-status"), ("Expires", "600"), ("Content-Type", "application/json")]
    _, reply = shared_client.request("PUBLISH", headers, body("ast1", 50))
    assert (reply.status, reply.header("Accept")) == (415, MEDIA_TYPE)


def test_notify_for_unknown_subscription_gets_481(shared_client: SipClient) -> None:
    headers = [("Event", "load-status"), ("Subscription-State", "active"), ("Content-Type", MEDIA_TYPE)]
    _, reply = shared_client.request("NOTIFY", headers, body("ast1", 50), to_tag="x")
    assert reply.status == 481


def test_notify_in_known_subscription_sets_weights(kam: Kamailio, client: SipClient) -> None:
    headers = [("Event", "load-status"), ("Subscription-State", "active;expires=600"), ("Content-Type", MEDIA_TYPE)]
    for name, weight in {"ast1": 10, "ast2": 30, "ast3": 60}.items():
        kam.rpc("htable.sets", "subs", f"sub-{name}", name)
        _, reply = client.request("NOTIFY", headers, body(name, weight), call_id=f"sub-{name}", to_tag="t")
        assert reply.status == 200
    assert_split(kam, {"ast1": 10, "ast2": 30, "ast3": 60}, 300)


def test_node_not_in_pool_gets_403(shared_client: SipClient) -> None:
    reply = Publisher(shared_client, "ast9").report(50)
    assert (reply.status, reply.reason) == (403, "node: not in the pool")


def test_auto_join_admits_a_new_node_until_its_report_expires(workdir: Path, nodes: dict[str, SippNode]) -> None:
    extra = SippNode("ast4", workdir)
    extra.start()
    kam = start_kamailio(workdir, nodes, WITH_AUTOJOIN=None, AUTOJOIN_PORT=extra.port, POLICY=HINTS_POLICY)
    client = SipClient(kam.port)
    try:
        report_all(client, {"ast1": (30, 100), "ast2": (20, 100), "ast3": (10, 100)})
        assert Publisher(client, "ast4").report(40, validity=2, limit=100).status == 200
        assert_split(kam, {"ast1": 30, "ast2": 20, "ast3": 10, "ast4": 40}, 400)
        time.sleep(2.05)
        assert_split(kam, {"ast1": 30, "ast2": 20, "ast3": 10, "ast4": 0}, 200)
        deadline = time.monotonic() + 3
        while "ast4" in kam.rpc("htable.dump", "ns") and time.monotonic() < deadline:
            time.sleep(0.2)
        assert "ast4" not in kam.rpc("htable.dump", "ns")
    finally:
        client.close()
        kam.stop()
        extra.stop()
