"""The real OpenSIPS 3.6.8 with the example configurations and the sidecar,
three real agents, SIPp nodes and a SIPp caller (tests/support/opensips.py).

Three ways for OpenSIPS to learn the nodes' loads (`WAYS`), each a stack of
its own (one per module run, in order):

- compositor: packaging/examples/opensips/compositor/opensips.cfg as
  shipped, only its CUSTOMIZE ME lines changed; the agents PUBLISH to it;
- subscriber: packaging/examples/opensips/subscriber/opensips.cfg, which
  SUBSCRIBEs to the agents (Expires 60, its CUSTOMIZE ME line, so that
  refreshes happen within the test);
- sidecar: the compositor config plus the README's mi_http lines, no report
  reaching it; `sipstatus sidecar --opensips-mi` subscribes to the agents and
  sizes load_balancer over MI.

Every config also gets the README's mi_http lines (the sidecar's way needs
them; for the others they only let the tests read lb_list, which the
scripts never call over HTTP).

The nodes (`SPECS`): each node's SIPp UAS turns every call it carries into a
Newchannel/Hangup of its fake AMI, so its agent counts its own calls, as it
would on a real Asterisk; the CoreShowChannels after the agent's login holds
the calls the node had before (5, 4, none):

| node | calls before | agent max_calls | free slots ("room") |
|------|--------------|-----------------|---------------------|
| ast1 | 5 | 35 | 30 |
| ast2 | 4 | 24 | 20 |
| ast3 | 0 | 10 | 10 |

load_balancer sends each call to the destination with the most free
capacity, so with 40 calls up the split fills the roomiest nodes first
(about 23/13/4 calls in progress, water-filling), not a weight ratio.

Bounds. The agents' validity is 3 s, reports every second. A drained node
must get no INVITE later than 1 s after the command (the Kamailio tier's
bound); an agent stopped with SIGTERM (removal / terminated NOTIFY), none
later than 2 s after the signal (the agent's own shutdown comes first). A
SIGKILLed agent's node must get none later than validity + 1 s (the scripts
check once a second, in whole seconds) + 0.5 s. After an OpenSIPS restart,
every node must be sized again within 15 s (the subscriber re-subscribes at
its next 5 s tick after the agents' NOTIFYs are refused). No call may be
rejected while a node has room, and no node may carry more calls than its
room. OpenSIPS must log no error and not crash (its log is read).
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from sipstatus.status import State
from tests.support import HOST
from tests.support.fake_ami import FakeAmis
from tests.support.kamailio import Destinationless
from tests.support.opensips import (
    EXAMPLES,
    Calls,
    LiveNode,
    OpenSips,
    OpenSipsSidecar,
    PoolEntry,
    Pump,
    add_mi_http,
    customize,
    dbtext_tables,
    opensips_build,
    readme_block,
    wait_for,
)
from tests.support.ports import free_port
from tests.support.reports import stream_reports

PREFIX, WHY = opensips_build()

# (a missing peer skips the whole tier: tests/conftest.py)
pytestmark = [pytest.mark.opensips]

VALIDITY = 3
SPECS = {  # node: (CoreShowChannels transcript, calls in it, agent max_calls)
    "ast1": ("coreshowchannels", 5, 35),
    "ast2": ("coreshowchannels_b2b", 4, 24),
    "ast3": ("coreshowchannels_idle", 0, 10),
}
ROOM = {node: limit - before for node, (_, before, limit) in SPECS.items()}
WAYS = ["compositor", "subscriber", "sidecar"]
#: Seconds the subscriber's refresh test may take to see two refreshes of
#: every node (Expires 60: one about every 40 s).
REFRESH_WINDOW = 105
#: Where the measurements of this run go (the closing note's figures).
FIGURES: dict[str, dict[str, object]] = {}


@dataclass
class Stack:
    way: str
    workdir: Path
    opensips: OpenSips
    nodes: dict[str, LiveNode]
    amis: FakeAmis
    pump: Pump
    sidecar: OpenSipsSidecar | None = None
    figures: dict[str, object] = field(default_factory=dict)

    def lb_list(self) -> dict[str, dict]:
        """node -> {"enabled": bool, "max": int, "load": int}, from MI lb_list."""
        request = urllib.request.Request(self.opensips.mi_url, method="POST",
                                         data=json.dumps({"jsonrpc": "2.0", "method": "lb_list", "id": 1}).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=5) as answer:
            result = json.loads(answer.read())["result"]
        out = {}
        for dst in result["Destinations"]:
            res = {r["name"]: r for r in dst["Resources"]}["channels"]
            out[dst["attrs"].split("=", 1)[1]] = {"enabled": dst["enabled"] == "yes", "max": int(res["max"]),
                                                  "load": int(res["load"])}
        return out

    def sized(self) -> bool:
        """Every node enabled and resized from its reports (the table says 100)."""
        try:
            held = self.lb_list()
        except OSError:
            return False
        return all(d["enabled"] and d["max"] != 100 for d in held.values()) and len(held) == len(self.nodes)

    def calls(self, calls: int, rate: float, duration: float) -> Calls:
        return Calls(self.opensips.port, calls, self.workdir, rate=rate, duration=duration).start()

    def check_log(self) -> None:
        assert self.opensips.alive(), f"OpenSIPS is not running:\n{self.opensips.log_tail()}"
        assert self.opensips.problems() == []


def build_stack(way: str, workdir: Path, *, specs: dict[str, tuple[str, int, int]] = SPECS,
                scenarios: dict[str, str] | None = None, expires: int | None = None) -> Stack:
    prefix = PREFIX
    assert prefix is not None
    port = free_port()
    mi_port = free_port()
    amis = FakeAmis()
    publish = [f"sip:load-status@{HOST}:{port}"] if way == "compositor" else []
    nodes = {name: LiveNode(name, workdir, amis, limit, transcript=transcript,
                            scenario=(scenarios or {}).get(name, "node.xml"), publish=publish, validity=VALIDITY)
             for name, (transcript, _, limit) in specs.items()}
    pool = [PoolEntry(name, i, node.port) for i, (name, node) in enumerate(nodes.items(), 1)]
    run = workdir / f"opensips-{way}-{secrets.token_hex(2)}"
    config = "subscriber" if way == "subscriber" else "compositor"
    text = customize((EXAMPLES / config / "opensips.cfg").read_text(), port=port, dbtext=run / "dbtext", pool=pool,
                     agents=[(n.name, f"sip:load-status@{HOST}:{n.agent.port}") for n in nodes.values()],
                     expires=expires, modules=prefix / "lib64" / "opensips" / "modules")
    text = add_mi_http(text, mi_port)
    dbtext_tables(run / "dbtext", pool)
    opensips = OpenSips(prefix, run, text, port, mi_port=mi_port)
    stack = Stack(way, workdir, opensips, nodes, amis, Pump(nodes.values()))
    try:
        opensips.start()
        stack.pump.start()
        for node in nodes.values():
            node.start()
        if way == "sidecar":
            stack.sidecar = OpenSipsSidecar(opensips.mi_url, {n.name: n.agent.uri for n in nodes.values()}, workdir)
            stack.sidecar.start()
        wait_for(stack.sized, 40, f"{way}: every node sized in load_balancer")
    except BaseException:
        stop_stack(stack)
        raise
    return stack


def stop_stack(stack: Stack) -> None:
    if stack.sidecar is not None:
        stack.sidecar.stop()
    for node in stack.nodes.values():
        node.stop()
    stack.pump.stop()
    stack.opensips.stop()
    stack.amis.close()


@pytest.fixture(scope="module", params=WAYS)
def stack(request, tmp_path_factory) -> Iterator[Stack]:
    way = request.param
    s = build_stack(way, tmp_path_factory.mktemp(f"opensips-{way}"), expires=60 if way == "subscriber" else None)
    FIGURES[way] = s.figures
    try:
        yield s
    finally:
        stop_stack(s)
        print(f"\nOpenSIPS {way}: {json.dumps(s.figures, sort_keys=True)}")


def invites_after(node: LiveNode, when: float) -> list[float]:
    return [t for t, _ in node.invites() if t > when]


def disabled_after(stack: Stack, node: str, since: float) -> float:
    """Seconds from `since` until lb_list shows `node` disabled (polled)."""
    wait_for(lambda: not stack.lb_list()[node]["enabled"], 15, f"{node} disabled in load_balancer", period=0.02)
    return round(time.time() - since, 3)


def peak_calls(node: LiveNode, since: float = 0.0) -> int:
    """The most calls the node carried at once (from its INVITE/BYE log)."""
    live, peak = 0, 0
    for line in node.lines():
        fields = line.split()
        if fields and fields[0] == "+" and float(fields[1]) + float(fields[2]) / 1e6 >= since:
            live += 1
            peak = max(peak, live)
        elif fields and fields[0] == "-" and live > 0:
            live -= 1
    return peak


# -- the README's tables -------------------------------------------------------------------------


def test_the_readme_tables_are_the_ones_opensips_ships():
    # The README gave the 3.2/3.3 dispatcher table (version 8, no probe_mode);
    # OpenSIPS 3.6.8 refused to start with it. The column lines and versions
    # must be the installed scripts/dbtext/opensips ones.
    assert PREFIX is not None
    shipped = PREFIX / "share" / "opensips" / "dbtext" / "opensips"
    for table in ("load_balancer", "dispatcher"):
        theirs = (shipped / table).read_text().splitlines()[0].split()
        assert readme_block(f"`/etc/opensips/dbtext/{table}`").splitlines()[0].split() == theirs, table
    versions = dict(line.split(":") for line in (shipped / "version").read_text().splitlines()[1:] if ":" in line)
    ours = dict(line.split(":") for line in readme_block("`/etc/opensips/dbtext/version`").splitlines()[1:])
    assert ours == {t: versions[t] for t in ours}


# -- the tests, in each way -----------------------------------------------------------------------


def test_sustained_calls_follow_free_slots_and_none_is_rejected(stack):
    # 320 calls of 2.5 s at 16/s: about 40 in progress, two thirds of the
    # pool's 60 free slots, for 20 s (the sidecar's double counting refused
    # about one call in six at such a load: issue 13).
    start = time.time()
    counts = stack.calls(320, rate=16, duration=2.5).wait()
    stack.figures["split"] = {n: round(counts.share(n), 3) for n in SPECS}
    stack.figures["sustained_rejected"] = sum(counts.rejected.values())
    assert dict(counts.rejected) == {} and counts.missing == 0, counts.output[-2000:]
    assert counts.answered["ast1"] > counts.answered["ast2"] > counts.answered["ast3"], counts.answered
    for name, node in stack.nodes.items():
        assert peak_calls(node, start) <= ROOM[name], f"{name} carried more calls than its room"
    stack.check_log()


def test_a_drained_node_gets_no_call_after_the_drain(stack):
    node = stack.nodes["ast1"]
    caller = stack.calls(120, rate=12, duration=0.5)
    time.sleep(3)
    node.agent.ctl("drain")
    drained = time.time()
    stack.figures["drain_disabled_after_s"] = disabled_after(stack, "ast1", drained)
    try:
        counts = caller.wait()
        late = invites_after(node, drained)
        before = [t for t, _ in node.invites() if t <= drained]
        stack.figures["drain_last_invite_after_s"] = round(max(late) - drained, 3) if late else None
        assert before, "no call reached the node before the drain"
        assert [t - drained for t in late if t > drained + 1.0] == []
        assert dict(counts.rejected) == {} and counts.missing == 0
    finally:
        node.agent.ctl("undrain")
    wait_for(stack.sized, 20, "the node back after undrain")
    stack.check_log()


def test_a_killed_agents_node_is_out_within_its_validity(stack):
    # ast1, the roomiest node, gets the calls; its agent dies without a word.
    node = stack.nodes["ast1"]
    mark = len(stack.opensips.log())
    caller = stack.calls(150, rate=15, duration=0.3)
    time.sleep(2.5)
    node.agent.kill()
    killed = time.time()
    stack.figures["sigkill_disabled_after_s"] = disabled_after(stack, "ast1", killed)
    counts = caller.wait()
    late = invites_after(node, killed)
    stack.figures["sigkill_last_invite_after_s"] = round(max(late) - killed, 3) if late else None
    assert [t for t, _ in node.invites() if killed - 2.5 < t <= killed], "no call reached the node before the kill"
    assert [t - killed for t in late if t > killed + VALIDITY + 1.5] == []
    assert dict(counts.rejected) == {} and counts.missing == 0
    if stack.way != "sidecar":
        # the scripts' expiry timer (it could not list the nodes before: issue 13)
        assert "no valid report from ast1: taken out" in stack.opensips.log()[mark:]
    back = time.time()
    node.agent.start()
    # The subscriber may have sent its fresh SUBSCRIBE while the agent was
    # dead; it tries again 32 s after that one (Timer N), so up to ~40 s.
    wait_for(stack.sized, 60, "the node back after its agent restarted")
    stack.figures["agent_restart_back_s"] = round(time.time() - back, 2)
    stack.check_log()


def test_after_an_opensips_restart_every_node_is_sized_again_within_seconds(stack):
    # A pool in full first (the killed agent's node came back in the test
    # before).
    wait_for(stack.sized, 60, "every node sized before the restart")
    stack.opensips.restart()
    wait_for(stack.sized, 15, "every node sized again after the restart")
    # from the new OpenSIPS process's start (it answers about 0.5 s later)
    stack.figures["opensips_restart_back_s"] = round(time.time() - stack.opensips.started_at, 2)
    counts = stack.calls(60, rate=15, duration=0.3).wait()
    assert dict(counts.rejected) == {} and counts.missing == 0
    stack.check_log()


def test_the_subscriber_refreshes_its_subscriptions_with_no_gap(stack):
    # Expires 60 (the config's CUSTOMIZE ME line): within REFRESH_WINDOW s the
    # subscriber must SUBSCRIBE again about every 40 s (twice), with every
    # node enabled and sized all along (no stale window), calls flowing and
    # none refused. The subscriptions are fresh (OpenSIPS restarted in the
    # test before), so the one they replace runs out (60 s) well before the
    # second refresh, and the test ends VALIDITY + 2 s after the second
    # refresh of every node rather than at the window's end.
    # Before: every NOTIFY pushed the refresh back, no re-SUBSCRIBE was ever
    # sent, and all nodes went stale together when the subscriptions ran out.
    if stack.way != "subscriber":
        pytest.skip("the subscriber config's own refresh (the sidecar's is the library's, tested elsewhere)")
    marks = {name: node.agent.log_path.read_text().count("subscription from") for name, node in stack.nodes.items()}

    def subscribes() -> dict[str, int]:
        return {name: node.agent.log_path.read_text().count("subscription from") - marks[name]
                for name, node in stack.nodes.items()}

    start = time.time()
    gaps: list[str] = []
    rejected: Counter[str] = Counter()
    placed = missing = 0
    refreshed_at = None
    while time.time() - start < REFRESH_WINDOW:
        # 5 calls a second, in batches of 5 s, each checked whole
        caller = stack.calls(25, rate=5, duration=1.0)
        while caller.proc is not None and caller.proc.poll() is None:
            held = stack.lb_list()
            gaps += [f"{time.time() - start:.1f} s: {node} {d}" for node, d in held.items() if not d["enabled"]]
            time.sleep(0.5)
        counts = caller.wait()
        placed, missing = placed + counts.calls, missing + counts.missing
        rejected.update(counts.rejected)
        if refreshed_at is None and all(n >= 2 for n in subscribes().values()):
            refreshed_at = time.time()
        if refreshed_at is not None and time.time() - refreshed_at >= VALIDITY + 2:
            break
    counted = subscribes()
    stack.figures["refresh"] = {"seconds": round(time.time() - start), "subscribes": counted, "calls": placed}
    assert all(n >= 2 for n in counted.values()), counted
    assert gaps == []
    assert dict(rejected) == {} and missing == 0
    log = stack.opensips.log()
    assert "no valid report" not in log[log.rfind("---- start"):]
    stack.check_log()


def test_an_agent_stopped_with_sigterm_takes_its_node_out_at_once(stack):
    # ast1's agent stops: its removal PUBLISH (refused with 415 before: issue
    # 13), or its terminated NOTIFY, takes the node out at once.
    node = stack.nodes["ast1"]
    caller = stack.calls(120, rate=15, duration=0.3)
    time.sleep(2.5)
    mark = len(stack.opensips.log())
    stopped = time.time()
    node.agent.stop()
    stack.figures["sigterm_disabled_after_s"] = disabled_after(stack, "ast1", stopped)
    counts = caller.wait()
    late = invites_after(node, stopped)
    stack.figures["sigterm_last_invite_after_s"] = round(max(late) - stopped, 3) if late else None
    assert [t for t, _ in node.invites() if stopped - 2.5 < t <= stopped], "no call reached the node before the stop"
    # at once: long before its validity would take it out (3 s, then up to
    # 1 s for the scripts' timer); 2 s allow for the agent's own shutdown on
    # a busy machine (1.3 s seen at a load average of 18 on 2 cores)
    assert [t - stopped for t in late if t > stopped + 2.0] == []
    assert dict(counts.rejected) == {} and counts.missing == 0
    assert "removed" in node.agent.log_tail(5) or stack.way != "compositor", node.agent.log_tail(5)
    # the removal is not followed by a "taken out" when the old validity runs out
    time.sleep(VALIDITY + 2)
    assert "no valid report from ast1" not in stack.opensips.log()[mark:]
    # The agent runs again, but its node is not waited for: a subscriber
    # re-subscribes only 30 s after a terminated NOTIFY (spec 4.7.4), so this
    # test comes last of those that need every node sized.
    node.agent.start()
    stack.check_log()


def test_opensips_logged_no_error_and_never_crashed(stack):
    stack.check_log()
    stack.figures["opensips_starts"] = stack.opensips.starts


# -- failover -----------------------------------------------------------------------------------


@pytest.mark.parametrize("way", ["compositor", "subscriber"])
def test_a_call_refused_with_503_goes_to_another_node_and_never_back(way, tmp_path):
    # "refuser" has the most room, so load_balancer tries it first; it answers
    # every INVITE 503. Every call must end at ast1, none may be tried twice
    # at the refuser, and the caller sees no error while ast1 has room.
    specs = {"ast1": ("coreshowchannels_idle", 0, 20), "refuser": ("coreshowchannels_idle", 0, 40)}
    stack = build_stack(way, tmp_path, specs=specs, scenarios={"refuser": "refuse.xml"})
    try:
        counts = stack.calls(60, rate=10, duration=0.5).wait()
        refused = [cid for _, cid in stack.nodes["refuser"].invites()]
        taken = [cid for _, cid in stack.nodes["ast1"].invites()]
        FIGURES.setdefault("failover", {})[way] = {"refused": len(refused), "taken": len(taken)}
        print(f"\nOpenSIPS {way} failover: {len(refused)} calls refused by the refuser, {len(taken)} taken by ast1")
        assert dict(counts.rejected) == {} and counts.missing == 0
        assert counts.answered == {"ast1": 60}
        assert refused, "the refuser was never tried"
        assert len(refused) == len(set(refused)), "a call went back to the node that refused it"
        assert set(refused) <= set(taken)
        stack.check_log()
    finally:
        stop_stack(stack)


# -- CPU ----------------------------------------------------------------------------------------


def test_compositor_cpu_per_thousand_reports(tmp_path):
    # Not a bound: the figure for the closing note. Three nodes PUBLISH 40
    # reports a second each for 10 s, with changing weights (so each report
    # costs an lb_list and an lb_resize); every one must be answered 200.
    prefix = PREFIX
    assert prefix is not None
    port, mi_port = free_port(), free_port()
    nodes = [Destinationless(f"ast{i}", free_port()) for i in (1, 2, 3)]
    pool = [PoolEntry(n.name, i, n.port) for i, n in enumerate(nodes, 1)]
    run = tmp_path / "opensips"
    text = add_mi_http(customize((EXAMPLES / "compositor" / "opensips.cfg").read_text(), port=port,
                                 dbtext=run / "dbtext", pool=pool, modules=prefix / "lib64" / "opensips" / "modules"),
                       mi_port)
    dbtext_tables(run / "dbtext", pool)
    opensips = OpenSips(prefix, run, text, port, mi_port=mi_port)
    opensips.start()
    try:
        before = opensips.cpu_seconds()
        stats = asyncio.run(stream_reports(port, [n.name for n in nodes], rate=40, duration=10,
                                           schedule=lambda node, k, t: (State.ACTIVE, 10 + k % 80)))
        cpu = opensips.cpu_seconds() - before
        sent = sum(stats.sent.values())
        FIGURES["cpu"] = {"reports": sent, "cpu_s_per_1000": round(cpu / sent * 1000, 3)}
        print(f"\nOpenSIPS compositor: {sent} reports, {cpu:.2f} s CPU, {cpu / sent * 1000:.3f} s per 1,000")
        assert {n.name: dict(stats.answered[n.name]) for n in nodes} == {n.name: {200: stats.sent[n.name]} for n in nodes}
        assert opensips.alive() and opensips.problems() == []
    finally:
        opensips.stop()


# -- the fake MI server follows the real one ----------------------------------------------------


def test_the_fake_mi_server_answers_as_the_real_opensips(tmp_path):
    # tests/support/fake_opensips_mi.py serves the fast unit tests; here the same
    # requests go to a real OpenSIPS and to the fake holding the same
    # destinations, and the answers must be equal.
    from tests.support.fake_opensips_mi import DsDst, FakeMiServer, FakeOpenSips, LbDst

    assert PREFIX is not None
    port, mi_port = free_port(), free_port()
    nodes = [Destinationless(f"ast{i}", free_port()) for i in (1, 2)]
    pool = [PoolEntry(n.name, i, n.port) for i, n in enumerate(nodes, 1)]
    run = tmp_path / "opensips"
    text = add_mi_http(customize((EXAMPLES / "compositor" / "opensips.cfg").read_text(), port=port,
                                 dbtext=run / "dbtext", pool=pool, modules=PREFIX / "lib64" / "opensips" / "modules"),
                       mi_port)
    dbtext_tables(run / "dbtext", pool)
    fake = FakeOpenSips(lb=[LbDst(e.lb_id, 1, e.uri, {"channels": [100, 0]}, attrs=f"node={e.node}") for e in pool],
                        ds={"default": {1: [DsDst(e.uri, attrs=f"node={e.node}", description=e.node) for e in pool]}})
    requests = [
        {"jsonrpc": "2.0", "method": "lb_list", "id": 1},
        {"jsonrpc": "2.0", "method": "ds_list", "id": 2},
        {"jsonrpc": "2.0", "method": "ds_list", "params": {"full": 1}, "id": 3},
        {"jsonrpc": "2.0", "method": "lb_resize", "params": {"destination_id": 1, "resource": "channels", "size": 5},
         "id": 4},
        {"jsonrpc": "2.0", "method": "lb_status", "params": {"destination_id": 1, "new_status": 0}, "id": 5},
        {"jsonrpc": "2.0", "method": "lb_list", "id": 6},
        {"jsonrpc": "2.0", "method": "no_such_command", "id": 7},
        {"jsonrpc": "2.0", "method": "lb_list", "params": None, "id": 8},
    ]

    def ask(url: str, request: dict) -> object:
        http = urllib.request.Request(url, data=json.dumps(request).encode(), method="POST",
                                      headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(http, timeout=5) as answer:
            return answer.status, json.loads(answer.read())

    opensips = OpenSips(PREFIX, run, text, port, mi_port=mi_port)
    opensips.start()
    try:
        real = [ask(opensips.mi_url, r) for r in requests]
    finally:
        opensips.stop()
    with FakeMiServer(fake) as server:
        imitation = [ask(server.url, r) for r in requests]
    for request, theirs, ours in zip(requests, real, imitation, strict=True):
        assert ours == theirs, request["method"]
