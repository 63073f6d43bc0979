"""Failover in the three Kamailio examples (native, KEMI, sidecar), and in
Debian's stock kamailio.cfg with the native snippet dropped in, against
the real Kamailio from Debian and SIPp nodes that misbehave as a real pool
does:

- `ok` answers every INVITE (tests/sipp/e2e/uas.xml);
- `full` and `full2` answer every INVITE with 503, as an Asterisk at its
  maxcalls or shutting down does (tests/sipp/kamailio/refuse.xml), and
  OPTIONS with 200: they are alive;
- `dead` answers nothing at all, not even OPTIONS (tests/sipp/kamailio/
  silent.xml): a node whose SIP stack is gone.

Each node logs the time of every INVITE it receives, so a test can count
the attempts a call made. The weights reach each example the way they do
in production: a PUBLISH for the native and KEMI scripts, `htable.seti
sipstatus NODE WEIGHT` (what `sipstatus sidecar` pushes) for the sidecar's.
A node of weight 0 is never chosen, so each test decides which nodes take
part.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from sipstatus.proxy.kamailio import JsonRpcClient, KamailioSink
from tests.support import HOST, ROOT, failover_pool
from tests.support.kamailio import (
    EXAMPLES,
    PING_INTERVAL,
    Kamailio,
    needs_kamailio,
    start_example,
    stock_config,
)
from tests.support.sip import Publisher, SipClient
from tests.support.sipp import Caller, SippNode

pytestmark = needs_kamailio("jansson", "app_python3")

#: The misbehaving pool (tests/conftest.py's `nodes`).
RWEIGHTS, SCENARIOS = failover_pool.RWEIGHTS, failover_pool.SCENARIOS
#: Milliseconds Kamailio waits for any answer from a node in these tests
#: (SIPp sends no 100 Trying: an answering node slowed down by a busy test
#: machine must not be taken for a silent one).
FAILOVER_TIMEOUT = 3000


# -- the three ways ------------------------------------------------------------


def _weigh_by_publish(kam: Kamailio, weights: dict[str, int]) -> None:
    client = SipClient(kam.port)
    try:
        for name, weight in weights.items():
            reply = Publisher(client, name).report(weight or None)
            assert reply.status == 200, f"{name}: {reply}"
    finally:
        client.close()


def _weigh_by_rpc(kam: Kamailio, weights: dict[str, int]) -> None:
    rpc = JsonRpcClient(f"unix:{kam.workdir}/kamailio_rpc.sock")
    for name, weight in weights.items():
        rpc.call("htable.seti", "sipstatus", name, weight)


@dataclass(frozen=True)
class Way:
    #: The configuration to run, given the module's working folder.
    config: Callable[[Path], Path]
    weigh: Callable[[Kamailio, dict[str, int]], None]
    defines: tuple[tuple[str, str], ...] = ()
    env: tuple[tuple[str, str], ...] = ()


def example(way: str) -> Callable[[Path], Path]:
    return lambda workdir: EXAMPLES / way / "kamailio.cfg"


WAYS = {
    "native": Way(example("native"), _weigh_by_publish),
    # The native snippet (sipstatus.cfg) dropped into Debian's own kamailio.cfg.
    "stock": Way(lambda workdir: stock_config(workdir / "stock"), _weigh_by_publish),
    "kemi": Way(example("kemi"), _weigh_by_publish,
                (("KEMI_SCRIPT", f'"{EXAMPLES / "kemi" / "sipstatus_kemi.py"}"'),),
                (("SIPSTATUS_PATH", str(ROOT)),)),
    "sidecar": Way(example("sidecar"), _weigh_by_rpc),
}


@pytest.fixture(params=list(WAYS))
def way(request: pytest.FixtureRequest) -> Way:
    return WAYS[request.param]


def start(way: Way, workdir: Path, nodes: dict[str, SippNode], **defines: str | int) -> Kamailio:
    return start_example(way.config(workdir), workdir, nodes.values(),
                         {"FAILOVER_TIMEOUT": FAILOVER_TIMEOUT, **dict(way.defines), **defines}, dict(way.env))


def invite(kam: Kamailio) -> int:
    """One INVITE through the proxy from a fresh socket: the final status."""
    client = SipClient(kam.port)
    try:
        data = client.build("INVITE", [("Contact", f"<sip:caller@{HOST}:{client.port}>")],
                            ruri=f"sip:load@{HOST}:{kam.port}")
        return client.send(data, timeout=15).status
    finally:
        client.close()


def invites_since(node: SippNode, t0: float) -> int:
    return sum(1 for t in node.invite_times() if t >= t0)


def dispatcher_flags(kam: Kamailio) -> dict[str, str]:
    rpc = JsonRpcClient(f"unix:{kam.workdir}/kamailio_rpc.sock")
    return {d.node: d.flags for d in KamailioSink(rpc, group=1, htable=None).destinations()}


# -- the tests -------------------------------------------------------------------


def test_calls_a_node_refuses_are_taken_by_the_next_node(way: Way, workdir: Path,
                                                         nodes: dict[str, SippNode]) -> None:
    kam = start(way, workdir, nodes)
    try:
        way.weigh(kam, {"ok": 50, "full": 50, "full2": 0, "dead": 0})
        t0 = time.time()
        result = Caller(kam.port, 100, workdir, rate=50).start().wait()
        refused = invites_since(nodes["full"], t0)
        print(f"100 calls, ok/full at 50/50: {dict(result.counts)}, {refused} refused by full")
        assert result.counts == {"ok": 100}, kam.log_tail()
        assert result.failed == 0
        # The refusing node had its share, and each of those calls moved on.
        assert 20 <= refused <= 80
    finally:
        kam.stop()


def test_a_node_that_never_answers_loses_its_calls_to_the_next_node_and_is_marked_out(
        way: Way, workdir: Path, nodes: dict[str, SippNode]) -> None:
    kam = start(way, workdir, nodes, DS_PING_INTERVAL=1)
    try:
        way.weigh(kam, {"ok": 50, "full": 0, "full2": 0, "dead": 50})
        t0 = time.time()
        result = Caller(kam.port, 40, workdir, rate=10).start().wait()
        silent = invites_since(nodes["dead"], t0)
        print(f"40 calls, ok/dead at 50/50: {dict(result.counts)}; dead got {silent} INVITEs")
        assert result.counts == {"ok": 40}, kam.log_tail()
        assert result.failed == 0
        assert silent >= 1
        # After the first call it swallowed, `dead` is out: only the calls
        # placed while that one waited (10/s for FAILOVER_TIMEOUT) reach it.
        assert silent <= 1 + 10 * FAILOVER_TIMEOUT // 1000 + 2
        assert dispatcher_flags(kam)["dead"].startswith("I"), kam.log_tail()
    finally:
        kam.stop()


def test_when_every_node_refuses_the_caller_gets_the_refusal_after_one_try_each(
        way: Way, workdir: Path, nodes: dict[str, SippNode]) -> None:
    kam = start(way, workdir, nodes)
    try:
        way.weigh(kam, {"ok": 0, "full": 50, "full2": 50, "dead": 0})
        t0 = time.time()
        answers = [invite(kam) for _ in range(5)]
        time.sleep(0.5)
        tried = {n: invites_since(nodes[n], t0) for n in ("full", "full2")}
        assert answers == [503] * 5, kam.log_tail()
        # Never back to a node that refused: each call tried each node once.
        assert tried == {"full": 5, "full2": 5}
    finally:
        kam.stop()


def test_attempts_per_call_are_capped(way: Way, workdir: Path, nodes: dict[str, SippNode]) -> None:
    kam = start(way, workdir, nodes, MAX_ATTEMPTS=1)
    try:
        way.weigh(kam, {"ok": 0, "full": 50, "full2": 50, "dead": 0})
        t0 = time.time()
        answers = [invite(kam) for _ in range(6)]
        time.sleep(0.5)
        tried = invites_since(nodes["full"], t0) + invites_since(nodes["full2"], t0)
        assert answers == [503] * 6, kam.log_tail()
        assert tried == 6
    finally:
        kam.stop()


def test_a_node_reported_fresh_that_does_not_answer_options_is_marked_out_and_gets_no_calls(
        way: Way, workdir: Path, nodes: dict[str, SippNode]) -> None:
    """OPTIONS probing on (every PING_INTERVAL s; two unanswered probes make
    a destination inactive): `dead` is reported fresh and weighty, but its
    SIP stack does not answer, so it must go out of the pool before any call
    is made. (With `ds_ping_reply_codes` class=4, Kamailio's own 408 for the
    unanswered probe counted as alive and it never went out.) A probe is
    unanswered after tm's fr_timer: 4 s in the examples, 30 s in Debian's
    stock kamailio.cfg, hence the long deadline."""
    kam = start(way, workdir, nodes)
    try:
        way.weigh(kam, {"ok": 50, "full": 0, "full2": 0, "dead": 50})
        t0 = time.time()
        deadline = time.monotonic() + 90
        while not dispatcher_flags(kam)["dead"].startswith("I"):
            assert time.monotonic() < deadline, f"dead still active after 90 s\n{kam.log_tail()}"
            time.sleep(0.1)
        marked = time.time() - t0
        probes = len(nodes["dead"].request_times("OPTIONS"))
        t1 = time.time()
        result = Caller(kam.port, 40, workdir, rate=20).start().wait()
        print(f"dead marked inactive {marked:.1f} s after its report (probing every {PING_INTERVAL} s); "
              f"then 40 calls: {dict(result.counts)}")
        assert probes >= 2
        assert result.counts == {"ok": 40}
        assert invites_since(nodes["dead"], t1) == 0
        assert dispatcher_flags(kam)["ok"].startswith("A")
    finally:
        kam.stop()
