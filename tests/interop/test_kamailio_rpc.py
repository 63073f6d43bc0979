"""The sidecar's push into a real Kamailio 5.6 over jsonrpcs (datagram and FIFO)."""

import time

import pytest

from sipstatus.proxy.kamailio import JsonRpcClient, KamailioSink, RpcError, rewrite_list_file

# Kamailio missing fails these (the `kamailio` fixture): ./dev test installs it.
pytestmark = pytest.mark.interop

# The `kamailio` fixture (tests/conftest.py) runs a real Kamailio whose pool is
# tests/support/kamailio_rpc.py DISPATCHER_LIST: ast1..ast3 in group 1.


class Recording(JsonRpcClient):
    """The real client, remembering the calls it made."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.calls = []

    def call(self, method, *params):
        self.calls.append((method, *params))
        return super().call(method, *params)


def states(rpc):
    return {d.node: d.flags[0] for d in KamailioSink(rpc).destinations()}


def test_destinations_are_discovered_over_the_datagram_socket(kamailio):
    rpc = JsonRpcClient(f"unix:{kamailio}/rpc.sock")
    nodes = {d.node: d.uri for d in KamailioSink(rpc).destinations()}
    assert nodes == {"ast1": "sip:127.0.0.1:5081", "ast2": "sip:127.0.0.1:5082", "ast3": "sip:127.0.0.1:5083"}


def test_destinations_are_discovered_over_the_fifo(kamailio):
    rpc = JsonRpcClient(f"fifo:{kamailio}/rpc.fifo", reply_dir=str(kamailio))
    assert {d.node for d in KamailioSink(rpc).destinations()} == {"ast1", "ast2", "ast3"}


def test_weights_go_into_the_htable_and_a_zero_weight_node_is_inactive(kamailio):
    rpc = JsonRpcClient(f"unix:{kamailio}/rpc.sock")
    KamailioSink(rpc).push({"ast1": 60, "ast2": 30, "ast3": 0}, now=0.0)
    assert rpc.call("htable.get", "sipstatus", "ast1")["item"]["value"] == 60
    assert rpc.call("htable.get", "sipstatus", "ast3")["item"]["value"] == 0
    assert states(rpc) == {"ast1": "A", "ast2": "A", "ast3": "I"}


def test_a_node_coming_back_is_made_active_again(kamailio):
    rpc = JsonRpcClient(f"unix:{kamailio}/rpc.sock")
    sink = KamailioSink(rpc)
    sink.push({"ast1": 60, "ast2": 0, "ast3": 10}, now=0.0)
    sink.push({"ast1": 60, "ast2": 25, "ast3": 10}, now=1.0)
    assert states(rpc)["ast2"] == "A"


def test_only_what_changed_is_pushed(kamailio):
    rpc = Recording(f"unix:{kamailio}/rpc.sock")
    sink = KamailioSink(rpc)
    sink.push({"ast1": 60, "ast2": 30, "ast3": 10}, now=0.0)
    rpc.calls.clear()
    sink.push({"ast1": 60, "ast2": 35, "ast3": 10}, now=1.0)
    assert rpc.calls == [("htable.seti", "sipstatus", "ast2", 35)]


def flush_until_reloaded(sink, limit=10.0):
    """Wait until a pending rewrite has been reloaded (at once if it already was)."""
    deadline = time.monotonic() + limit
    while sink.next_flush() is not None:
        assert time.monotonic() < deadline, "dispatcher.reload kept being refused"
        time.sleep(max(0.0, sink.next_flush() - time.monotonic()))
        sink.flush(time.monotonic())


def test_the_list_file_carries_weights_and_states_and_reloads_are_rate_limited(kamailio):
    # The test Kamailio runs with reload_delta 1 s, the sink with the same interval.
    rpc = Recording(f"unix:{kamailio}/rpc.sock")
    sink = KamailioSink(rpc, htable=None, list_file=str(kamailio / "dispatcher.list"), reload_interval=1.0)
    sink.push({"ast1": 70, "ast2": 20, "ast3": 0}, now=time.monotonic())
    flush_until_reloaded(sink)  # Kamailio's own start-up counts as a reload: it may refuse at first
    reloads = rpc.calls.count(("dispatcher.reload",))
    now = time.monotonic()
    sink.push({"ast1": 40, "ast2": 20, "ast3": 0}, now=now)
    assert rpc.calls.count(("dispatcher.reload",)) == reloads  # held back: within 1 s of the last
    assert sink.next_flush() > now
    flush_until_reloaded(sink)
    after = {d.node: (d.attrs.get("rweight"), d.flags[0]) for d in sink.destinations()}
    # The reload reset states to the file, and the file says ast3 is inactive.
    assert after == {"ast1": ("40", "A"), "ast2": ("20", "A"), "ast3": (None, "I")}
    assert (kamailio / "dispatcher.list").read_text().startswith("# pool 1")


def test_a_reload_refused_by_kamailio_stays_pending(kamailio):
    rpc = JsonRpcClient(f"unix:{kamailio}/rpc.sock")
    first = KamailioSink(rpc, htable=None, list_file=str(kamailio / "dispatcher.list"), reload_interval=1.0)
    first.push({"ast1": 70}, now=time.monotonic())
    flush_until_reloaded(first)
    # A second sink that does not know of that reload asks again at once:
    # Kamailio refuses (reload_delta 1 s) and the rewrite waits for its turn.
    second = KamailioSink(rpc, htable=None, list_file=str(kamailio / "dispatcher.list"), reload_interval=1.0)
    second.push({"ast1": 30}, now=time.monotonic())
    assert second.next_flush() is not None
    flush_until_reloaded(second)
    assert {d.node: d.attrs.get("rweight") for d in second.destinations()}["ast1"] == "30"


def test_an_unknown_method_names_the_method(kamailio):
    with pytest.raises(RpcError, match=r"no\.such\(\): Method Not Found"):
        JsonRpcClient(f"unix:{kamailio}/rpc.sock").call("no.such")


def test_an_unreachable_kamailio_is_named_in_the_error(tmp_path):
    with pytest.raises(RpcError, match="rpc.sock"):
        JsonRpcClient(f"unix:{tmp_path}/rpc.sock").call("core.version")


def test_rewrite_keeps_comments_and_other_groups():
    text = "# c\n2 sip:10.0.0.9 0 0 duid=ast1\n1 sip:127.0.0.1:5081 8 5 duid=ast1;socket=udp:127.0.0.1:5060\n"
    out = rewrite_list_file(text, {"ast1": 0}, group=1)
    assert out == "# c\n2 sip:10.0.0.9 0 0 duid=ast1\n1 sip:127.0.0.1:5081 9 5 duid=ast1;socket=udp:127.0.0.1:5060\n"
