"""The OpenSIPS sidecar push over MI (mi_http JSON-RPC), against a fake mi_http
that answers as OpenSIPS 3.x does (tests/support/fake_opensips_mi.py cites the sources)."""

import json
import socket
import urllib.request

import pytest

from sipstatus.proxy.nodetable import NodeTable, NodeView
from sipstatus.proxy.opensips import (
    MiClient,
    MiError,
    MiUnreachable,
    OpenSipsSink,
    lb_capacity,
    parse_ds_list,
    parse_lb_list,
)
from sipstatus.status import Asterisk, LoadStatus, State
from tests.support.fake_opensips_mi import DsDst, FakeMiServer, FakeOpenSips, LbDst


def view(node, capacity, limit=100, state=State.ACTIVE, fresh=True, seq=1):
    s = LoadStatus(node, "i", seq, 15, state, capacity, asterisk=Asterisk(limit=limit))
    return NodeView(node, s, 0.0, fresh)


def pool():
    """Three Asterisk nodes in load_balancer group 1 (resource "channels") and
    dispatcher set 1; ast1 and ast2 are named by their attrs, ast3 by its host."""
    return FakeOpenSips(
        lb=[
            LbDst(1, 1, "sip:10.0.0.1:5060", {"channels": [30, 4]}, attrs="node=ast1"),
            LbDst(2, 1, "sip:10.0.0.2:5060", {"channels": [30, 0]}, attrs="node=ast2;zone=b"),
            LbDst(3, 1, "sip:ast3", {"channels": [30, 0]}),
            LbDst(9, 2, "sip:10.0.0.9:5060", {"channels": [10, 0]}, attrs="node=ast1"),  # other group
        ],
        ds={"default": {1: [DsDst("sip:10.0.0.1:5060", attrs="node=ast1"),
                            DsDst("sip:10.0.0.2:5060", attrs="node=ast2"),
                            DsDst("sip:ast3")]}},
    )


@pytest.fixture
def osips():
    with FakeMiServer(pool()) as server:
        yield server


@pytest.fixture
def sink(osips):
    s = OpenSipsSink(MiClient(osips.url), lb_group=1, resource="channels", ds_set=1)
    s.refresh()
    return s


def lb_state(osips, dst_id):
    return next(d for d in MiClient(osips.url).call("lb_list")["Destinations"] if d["id"] == dst_id)


# -- the client speaks MI JSON-RPC as OpenSIPS does ------------------------------


def test_a_command_without_parameters_sends_no_params_member(osips):
    assert "Destinations" in MiClient(osips.url).call("lb_list")
    assert osips.state.calls == [("lb_list", None)]


def test_params_null_is_an_invalid_request(osips):
    raw = json.dumps({"jsonrpc": "2.0", "method": "lb_list", "params": None, "id": 1}).encode()
    request = urllib.request.Request(osips.url, data=raw, method="POST", headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request) as answer:
        reply = json.loads(answer.read())
    assert reply["error"] == {"code": -32600, "message": "Invalid Request"}


def test_a_wrong_parameter_name_is_invalid_params_naming_the_method(osips):
    with pytest.raises(MiError) as caught:
        MiClient(osips.url).call("lb_resize", {"id": 1, "res_name": "channels", "new_capacity": 5})
    err = caught.value
    assert (err.code, err.data) == (-32602, "Named parameters do not match")
    assert err.method == "lb_resize" and err.params["id"] == 1
    assert "lb_resize" in str(err) and '"id": 1' in str(err)


def test_a_missing_parameter_is_invalid_params(osips):
    with pytest.raises(MiError) as caught:
        MiClient(osips.url).call("lb_resize", {"destination_id": 1, "res_name": "channels"})
    assert (caught.value.code, caught.value.data) == (-32602, "Too few or too many parameters")


def test_an_unknown_method_is_method_not_found(osips):
    with pytest.raises(MiError) as caught:
        MiClient(osips.url).call("lb_weight", {"destination_id": 1})
    assert caught.value.code == -32601


def test_opensips_unreachable_is_a_clear_error():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again before the call: nobody listens
    client = MiClient(f"http://127.0.0.1:{port}/mi", timeout=1.0)
    with pytest.raises(MiUnreachable) as caught:
        client.call("lb_resize", {"destination_id": 1, "res_name": "channels", "new_capacity": 5})
    message = str(caught.value)
    assert "cannot reach OpenSIPS MI" in message and f"127.0.0.1:{port}" in message
    assert message.startswith("lb_resize(")


def test_an_unreachable_opensips_stops_the_push(osips):
    sink = OpenSipsSink(MiClient(osips.url), lb_group=1)
    sink.refresh()
    osips.httpd.shutdown()
    osips.httpd.server_close()
    with pytest.raises(MiUnreachable):
        sink.push([view("ast1", 0.5)])


# -- discovery ---------------------------------------------------------------------


def test_discovery_maps_destinations_to_nodes_by_attrs_then_host(sink):
    assert sink.lb_destination("ast1").id == 1
    assert sink.lb_destination("ast2").id == 2
    assert sink.lb_destination("ast3").id == 3  # no node= attribute: its URI host
    assert sink.ds_destination("ast2").uri == "sip:10.0.0.2:5060"
    assert sink.ds_destination("ast3").uri == "sip:ast3"


def test_discovery_keeps_to_its_own_group(sink):
    # Destination 9 says node=ast1 too, but it is in load_balancer group 2.
    assert sink.lb_destination("ast1").id == 1


def test_parsers_read_the_documented_shapes():
    lb = parse_lb_list({"Destinations": [{"uri": "sip:a", "id": 7, "group": 3, "enabled": "no",
                                          "auto-reenable": "off",
                                          "Resources": [{"name": "pstn", "max": 6, "load": 2}],
                                          "attrs": "node=n7"}]})
    assert (lb[0].id, lb[0].group, lb[0].enabled, lb[0].auto_reenable, lb[0].node) == (7, 3, False, False, "n7")
    assert lb[0].resources["pstn"].max == 6 and lb[0].resources["pstn"].load == 2
    ds = parse_ds_list({"PARTITIONS": [{"name": "default", "SETS": [
        {"id": 2, "Destinations": [{"URI": "sip:10.0.0.202", "state": "Probing", "first_hit_counter": 0}]}]},
        {"name": "empty"}]})
    assert [(d.partition, d.set_id, d.uri, d.state, d.node) for d in ds] == [
        ("default", 2, "sip:10.0.0.202", "Probing", "10.0.0.202")]


# -- capacities ---------------------------------------------------------------------


def test_capacity_is_opensips_load_plus_the_free_slots_reported():
    assert lb_capacity(view("a", 0.25, limit=40), load=4) == 14
    assert lb_capacity(view("a", 0.5, limit=None), load=0, default_limit=60) == 30


def test_resize_on_weight_change(osips, sink):
    result = sink.push([view("ast1", 0.5, limit=40), view("ast2", 0.25, limit=40), view("ast3", 1.0, limit=30)])
    assert result.errors == [] and result.unknown == []
    # ast1 has 4 calls from OpenSIPS already: 4 + 20 free; ast3 is already at 30.
    assert ("lb_resize", {"destination_id": 1, "res_name": "channels", "new_capacity": 24}) in result.applied
    assert ("lb_resize", {"destination_id": 2, "res_name": "channels", "new_capacity": 10}) in result.applied
    assert not any(p["destination_id"] == 3 for m, p in result.applied if m == "lb_resize")
    assert lb_state(osips, 1)["Resources"][0]["max"] == 24
    sink.push([view("ast1", 0.1, limit=40, seq=2)])
    assert lb_state(osips, 1)["Resources"][0]["max"] == 8


def test_no_call_when_nothing_changed(osips, sink):
    views = [view("ast1", 0.5, limit=40), view("ast2", 0.25, limit=40)]
    sink.push(views)
    before = len(osips.state.calls)
    assert sink.push(views).applied == []
    assert len(osips.state.calls) == before  # not even a read
    sink.refresh()  # OpenSIPS still has what was pushed
    assert sink.push(views).applied == []
    assert [m for m, _ in osips.state.calls[before:]] == ["lb_list", "ds_list"]


def test_a_draining_node_is_disabled_and_comes_back(osips, sink):
    result = sink.push([view("ast2", 0.9, state=State.DRAINING)])
    assert ("lb_status", {"destination_id": 2, "new_status": 0}) in result.applied
    assert ("ds_set_state", {"state": "i", "group": "1", "address": "sip:10.0.0.2:5060"}) in result.applied
    assert not any(m == "lb_resize" for m, _ in result.applied)
    dst = lb_state(osips, 2)
    assert (dst["enabled"], dst["auto-reenable"]) == ("no", "off")  # probing will not undo it
    assert osips.state.ds["default"][1][1].state == "Inactive"

    back = sink.push([view("ast2", 0.5, limit=40, seq=2)])
    methods = [m for m, _ in back.applied]
    # resized before it is enabled, so it never takes calls on the old size
    assert methods.index("lb_resize") < methods.index("lb_status")
    assert ("lb_status", {"destination_id": 2, "new_status": 1}) in back.applied
    assert ("ds_set_state", {"state": "a", "group": "1", "address": "sip:10.0.0.2:5060"}) in back.applied
    assert lb_state(osips, 2)["enabled"] == "yes"
    assert osips.state.ds["default"][1][1].state == "Active"


def test_a_stale_node_is_disabled(osips, sink):
    table = NodeTable(["ast1"])
    table.update(LoadStatus("ast1", "i", 1, 15, State.ACTIVE, 0.5, asterisk=Asterisk(limit=40)), now=100.0)
    sink.push(table.views(now=101.0))
    assert lb_state(osips, 1)["enabled"] == "yes"
    result = sink.push(table.views(now=116.0))  # validity 15 s after receipt: stale
    assert ("lb_status", {"destination_id": 1, "new_status": 0}) in result.applied
    assert lb_state(osips, 1)["enabled"] == "no"
    assert osips.state.ds["default"][1][0].state == "Inactive"


def test_a_node_never_heard_from_gets_no_calls(osips, sink):
    sink.push(NodeTable(["ast3"]).views(now=0.0))
    assert lb_state(osips, 3)["enabled"] == "no"


def test_an_unknown_destination_is_never_resized(osips, sink):
    before = len(osips.state.calls)
    result = sink.push([view("ast9", 0.5)])
    assert result.unknown == ["ast9"] and result.applied == []
    assert len(osips.state.calls) == before


def test_a_node_with_two_destinations_is_left_alone(osips):
    osips.state.lb.append(LbDst(4, 1, "sip:10.0.0.4:5060", {"channels": [30, 0]}, attrs="node=ast2"))
    sink = OpenSipsSink(MiClient(osips.url), lb_group=1)
    sink.refresh()
    result = sink.push([view("ast2", 0.5), view("ast1", 0.5)])
    assert result.unknown == ["ast2"]
    assert all(p["destination_id"] == 1 for _, p in result.applied)


def test_a_destination_without_the_resource_is_not_resized(osips):
    sink = OpenSipsSink(MiClient(osips.url), lb_group=1, resource="pstn")
    sink.refresh()
    before = len(osips.state.calls)
    result = sink.push([view("ast1", 0.5)])
    assert result.applied == [] and "pstn" in str(result.errors[0])
    assert len(osips.state.calls) == before


def test_an_mi_error_is_reported_with_method_and_params_and_the_state_is_kept(osips, sink):
    sink.push([view("ast1", 0.5, limit=40), view("ast2", 0.5, limit=40)])
    # The operator removed destination 2 from the database and ran lb_reload.
    removed = osips.state.lb.pop(1)
    result = sink.push([view("ast1", 0.25, limit=40, seq=2), view("ast2", 0.25, limit=40, seq=2)])
    assert [(e.method, e.params, e.code, e.message) for e in result.errors] == [
        ("lb_resize", {"destination_id": 2, "res_name": "channels", "new_capacity": 10}, 404,
         "Destination ID not found")]
    assert str(result.errors[0]).startswith('lb_resize({"destination_id": 2,')
    assert ("lb_resize", {"destination_id": 1, "res_name": "channels", "new_capacity": 14}) in result.applied
    # The failed resize is not taken as applied: once the destination is back, it is sent again.
    osips.state.lb.insert(1, removed)
    again = sink.push([view("ast1", 0.25, limit=40, seq=2), view("ast2", 0.25, limit=40, seq=2)])
    assert again.applied == [("lb_resize", {"destination_id": 2, "res_name": "channels", "new_capacity": 10})]


def test_a_dispatcher_error_is_reported_and_retried(osips, sink):
    osips.state.ds["default"][1][1].uri = "sip:10.0.0.22:5060"  # changed behind our back
    result = sink.push([view("ast2", 0.5, state=State.DRAINING)])
    err = next(e for e in result.errors if e.method == "ds_set_state")
    assert err.code == 404 and err.params["address"] == "sip:10.0.0.2:5060"
    assert "destination not found" in str(err)
    sink.refresh()
    retry = sink.push([view("ast2", 0.5, state=State.DRAINING)])
    assert ("ds_set_state", {"state": "i", "group": "1", "address": "sip:10.0.0.22:5060"}) in retry.applied


def test_sizes_lost_to_a_reload_are_restored_after_refresh(osips, sink):
    sink.push([view("ast1", 0.5, limit=40)])
    osips.state.lb[0].resources["channels"][0] = 30  # lb_reload: the database's size again
    sink.refresh()
    result = sink.push([view("ast1", 0.5, limit=40)])
    assert result.applied == [("lb_resize", {"destination_id": 1, "res_name": "channels", "new_capacity": 24})]


def test_a_dispatcher_set_in_a_named_partition_is_addressed_with_it(osips):
    osips.state.ds["edge"] = {5: [DsDst("sip:10.0.0.1:5060", attrs="node=ast1")]}
    sink = OpenSipsSink(MiClient(osips.url), lb_group=None, ds_set=5, ds_partition="edge")
    sink.refresh()
    result = sink.push([view("ast1", 0.0)])  # no room: no calls
    assert result.applied == [("ds_set_state", {"state": "i", "group": "edge:5", "address": "sip:10.0.0.1:5060"})]
    assert osips.state.ds["edge"][5][0].state == "Inactive"


def test_the_load_added_back_is_at_most_the_calls_the_node_counted():
    # OpenSIPS has 15 calls on the node; the report (taken when it had 10 of
    # them) says 20 slots free. The 5 calls placed since are in the load and
    # not yet in the report: max = 10 + 20, so OpenSIPS sees 15 free (20 less
    # the 5), not 20 (the 5 offered again).
    s = LoadStatus("n", "i", 1, 15, State.ACTIVE, 0.4, asterisk=Asterisk(calls=10, limit=50))
    assert lb_capacity(NodeView("n", s, 0.0, True), 15) == 30
    # calls the node has from elsewhere are not OpenSIPS's: its own load counts
    s = LoadStatus("n", "i", 1, 15, State.ACTIVE, 0.4, asterisk=Asterisk(calls=25, limit=50))
    assert lb_capacity(NodeView("n", s, 0.0, True), 15) == 35
    # unknown call count: all of OpenSIPS's load (unknown is not zero)
    s = LoadStatus("n", "i", 1, 15, State.ACTIVE, 0.4, asterisk=Asterisk(calls=None, limit=50))
    assert lb_capacity(NodeView("n", s, 0.0, True), 15) == 35


def test_the_sidecar_reads_the_load_before_every_push():
    # The sidecar pushed max = (the load read up to a minute before) + free
    # slots: calls placed since were counted twice, once in OpenSIPS's load
    # and once in the smaller free slots (issue 13). Here OpenSIPS places 10
    # calls between two reports; the second push must see them.
    from sipstatus.proxy.sidecar import RefreshingOpenSips

    state = FakeOpenSips(lb=[LbDst(1, 1, "sip:10.0.0.1:5060", {"channels": [100, 0]}, attrs="node=ast1")])
    with FakeMiServer(state) as server:
        sink = RefreshingOpenSips(OpenSipsSink(MiClient(server.url), lb_group=1), interval=60.0, clock=lambda: 0.0)
        first = LoadStatus("ast1", "i", 1, 15, State.ACTIVE, 1.0, asterisk=Asterisk(calls=0, limit=30))
        sink.push([NodeView("ast1", first, 0.0, True)])
        assert state.lb[0].resources["channels"] == [30, 0]
        state.lb[0].resources["channels"][1] = 10  # OpenSIPS placed 10 calls
        second = LoadStatus("ast1", "i", 2, 15, State.ACTIVE, 0.6667, asterisk=Asterisk(calls=10, limit=30))
        sink.push([NodeView("ast1", second, 0.0, True)])
        max_, load = state.lb[0].resources["channels"]
        assert (max_, max_ - load) == (30, 20)  # 20 free, as the node says; not 10


def test_a_notification_gets_202_and_an_answer_that_never_ends(osips):
    # OpenSIPS 3.6.8 answers a JSON-RPC notification (no "id") with 202 and a
    # chunked body it never finishes; MiClient always sends an id.
    request = urllib.request.Request(osips.url, data=b'{"jsonrpc": "2.0", "method": "lb_list"}', method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=2) as answer:
        assert answer.status == 202
        with pytest.raises(TimeoutError):
            answer.read()


def test_ds_list_destinations_carry_their_resolved_addresses(osips):
    dests = MiClient(osips.url).call("ds_list")["PARTITIONS"][0]["SETS"][0]["Destinations"]
    assert [d["resolved_addresses"] for d in dests[:2]] == [["10.0.0.1:5060"], ["10.0.0.2:5060"]]


# -- the weight policy decides which nodes take calls ---------------------------------


def test_a_node_the_policy_gives_weight_0_is_disabled_though_it_accepts_calls(osips, sink):
    result = sink.push([view("ast1", 0.5, limit=40), view("ast2", 0.5, limit=40)], {"ast1": 0, "ast2": 60})
    assert ("lb_status", {"destination_id": 1, "new_status": 0}) in result.applied
    assert ("ds_set_state", {"state": "i", "group": "1", "address": "sip:10.0.0.1:5060"}) in result.applied
    assert lb_state(osips, 1)["enabled"] == "no" and lb_state(osips, 2)["enabled"] == "yes"


def test_a_node_missing_from_the_policys_weights_gets_no_calls(osips, sink):
    sink.push([view("ast2", 0.5, limit=40)], {})
    assert lb_state(osips, 2)["enabled"] == "no"


def test_a_node_with_a_positive_weight_is_sized_to_its_free_slots_whatever_the_weight(osips, sink):
    # load_balancer sends each call to the most free slots; a size other than
    # the node's free slots would either put calls beyond its room or refuse
    # calls while the pool has room (sipstatus.proxy.opensips, module docstring).
    sink.push([view("ast2", 0.25, limit=40), view("ast3", 0.5, limit=40)], {"ast2": 100, "ast3": 1})
    assert lb_state(osips, 2)["Resources"][0]["max"] == 10
    assert lb_state(osips, 3)["Resources"][0]["max"] == 20


def test_the_policys_weights_switch_a_node_back_on(osips, sink):
    sink.push([view("ast2", 0.5, limit=40)], {"ast2": 0})
    back = sink.push([view("ast2", 0.5, limit=40, seq=2)], {"ast2": 35})
    assert ("lb_status", {"destination_id": 2, "new_status": 1}) in back.applied
    assert lb_state(osips, 2)["enabled"] == "yes"


def test_the_sidecar_passes_the_weights_to_the_sink():
    from sipstatus.proxy.sidecar import RefreshingOpenSips

    state = FakeOpenSips(lb=[LbDst(1, 1, "sip:10.0.0.1:5060", {"channels": [100, 0]}, attrs="node=ast1")])
    with FakeMiServer(state) as server:
        sink = RefreshingOpenSips(OpenSipsSink(MiClient(server.url), lb_group=1), interval=60.0, clock=lambda: 0.0)
        status = LoadStatus("ast1", "i", 1, 15, State.ACTIVE, 1.0, asterisk=Asterisk(calls=0, limit=30))
        sink.push([NodeView("ast1", status, 0.0, True)], {"ast1": 0})
        assert state.lb[0].disabled
