"""End to end: the real Kamailio 5.6 with the example configurations, three
REAL `sipstatus-agent run` processes, three SIPp nodes and a SIPp caller.

Each node is three things (`E2eNode`):

- a SIPp UAS standing for its Asterisk (tests/sipp/e2e/uas.xml): it answers
  INVITEs (naming itself in X-Node), logs the arrival time of each, and
  answers the OPTIONS of its agent's probe (a probe left unanswered would
  make the agent report the node down);
- a fake AMI (tests/support/fake_ami.py, replaying real Asterisk 20 transcripts) with
  its own channel count;
- its agent, a real process (`python -m agent run`), reading that AMI,
  probing that UAS, with its own `max_calls`.

Four ways for Kamailio to learn the weights (`WAYS`), each test runs in each:

- native: the agents PUBLISH to packaging/examples/kamailio/native, whose
  script keeps the reports in an htable and picks nodes by weight hint;
- stock: the same script as the drop-in sipstatus.cfg, included into
  Debian's own /etc/kamailio/kamailio.cfg with the three edits its "Use"
  section asks for (tests.support.kamailio.stock_config);
- kemi: the same against packaging/examples/kamailio/kemi (Python: the
  library's KEMI module, sipstatus.kemi: its codec, NodeTable and default
  policy, water-filling);
- sidecar: `sipstatus sidecar` subscribes to the agents and pushes into
  packaging/examples/kamailio/sidecar (weights into the htable `sipstatus`,
  whose script picks nodes by them, and dispatcher states).

The agents run with the host collector off (see `tests.support.agents.Agent`):
the shared test machine's CPU (often 100 % busy with other jobs) is not the
node's, and with any `cpu_max` (at most 1.0) a busy machine gives capacity
0 or `overloaded`. Capacity is then the free call slots, which the test
controls:

| node | AMI transcript | calls | limit | capacity | weight hint | free slots |
|------|----------------|-------|-------|----------|-------------|------------|
| ast1 | coreshowchannels | 5 | 25 (agent max_calls) | 0.8 | 80 | 20 |
| ast2 | coreshowchannels_b2b | 4 (6 channels) | 5 (Asterisk CoreMaxCalls) | 0.2 | 20 | 1 |
| ast3 | coreshowchannels_idle | 0 | 10 (agent max_calls) | 1.0 | 100 | 10 |

The native script weighs nodes by the weight hint (80/20/100: 40/10/50 %),
the sidecar by the free-slots policy (20/1/10 scaled to 100/5/50:
64.5/3.2/32.3 %), the KEMI script by the library's default, water-filling
(ast3, the idlest, most; ast2, above the pool's level, least). The cold-start rweights of the dispatcher list
(10/60/30) are unlike both.

Tolerances. Split: each node's count is Binomial(n, p); it must be within
5 standard deviations + 1 call of n p (`split_within`): a false alarm about
once in 1.7 million per node, while equal thirds or the cold-start split are
more than 15 sigmas away. Timing: the agents' `validity` is 3 s and they
report every second (validity / 3); a report is trusted until receipt +
validity (the native script in whole seconds, so up to 1 s early), so after
a SIGKILL the node must be out within `validity` (+ 0.25 s for an INVITE in
flight and the UAS's clock reading), and a drained node must get no INVITE
later than 1 s after the drain command returned (the brief's bound; the
agent sends the drain at once, within its 10/s ceiling). A restarted agent
must get calls again within 20 s (publishing ways: its first PUBLISH) or
75 s (sidecar: a restarted agent knows no subscription, and the sidecar
finds out at its next refresh, 28 s after a grant of 60 s).

Besides: a one-minute stress run (200 calls/s while three nodes report 100
times a second each, marked slow) and 100 simulated agents converging in
the native example's htable, with Kamailio's CPU per 1,000 reports.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import math
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from sipstatus import codec
from sipstatus.proxy.kamailio import JsonRpcClient, KamailioSink
from sipstatus.proxy.nodetable import NodeTable
from sipstatus.proxy.policy import FreeSlotsPolicy, make_policy
from sipstatus.status import State
from tests.support import HOST, ROOT
from tests.support.agents import Agent, Sidecar
from tests.support.e2e_pool import SPECS, VALIDITY, E2eNode
from tests.support.kamailio import (
    EXAMPLES,
    Destinationless,
    Kamailio,
    dispatcher_list,
    needs_kamailio,
    start_example,
    stock_config,
)
from tests.support.reports import simulate_agents, stream_reports
from tests.support.sip import Publisher, SipClient
from tests.support.sipp import Caller, SippNode, split_within

pytestmark = needs_kamailio("jansson", "app_python3")

CALLS = 600
#: Calls per second of the background callers of the drain and kill tests.
RATE = 100


DRAINED = "ast1"
KILLED = "ast3"


# -- the ways Kamailio learns the weights --------------------------------------


@dataclasses.dataclass(frozen=True)
class Way:
    name: str
    start: Callable[[Path, list[SippNode]], Kamailio]
    #: The weights the agents' statuses should give (what Kamailio must use).
    expected: Callable[[dict[str, dict]], dict[str, int]]
    #: The weights Kamailio holds now (from its htable or dispatcher), by node.
    held: Callable[[Kamailio], dict[str, int]]
    #: The agents PUBLISH to Kamailio (else a sidecar subscribes to them).
    publish: bool = True
    #: How long a restarted agent may take to get calls again.
    comeback: float = 20.0


def _native_start(workdir: Path, nodes: list[SippNode]) -> Kamailio:
    return start_example(EXAMPLES / "native" / "kamailio.cfg", workdir, nodes)


def _stock_start(workdir: Path, nodes: list[SippNode]) -> Kamailio:
    """Debian's own kamailio.cfg with packaging/examples/kamailio/native/
    sipstatus.cfg dropped in (tests.support.kamailio.stock_config)."""
    return start_example(stock_config(workdir / "stock"), workdir, nodes)


def _kemi_start(workdir: Path, nodes: list[SippNode]) -> Kamailio:
    return start_example(EXAMPLES / "kemi" / "kamailio.cfg", workdir, nodes,
                         {"KEMI_SCRIPT": f'"{EXAMPLES / "kemi" / "sipstatus_kemi.py"}"'}, {"SIPSTATUS_PATH": str(ROOT)})


def hint_weights(statuses: dict[str, dict]) -> dict[str, int]:
    """The native script's weights: the hint of active nodes, else 0."""
    return {n: s["weight"] if s["state"] == "active" else 0 for n, s in statuses.items()}


def free_slot_weights(statuses: dict[str, dict]) -> dict[str, int]:
    """The sidecar's weights here: sipstatus.proxy.policy.FreeSlotsPolicy (tests.support.agents.Sidecar's policy)."""
    now = time.time()
    table = NodeTable(statuses)
    for body in statuses.values():
        table.update(codec.from_wire(body), now)
    return FreeSlotsPolicy(default_limit=100).weights(table.views(now))


def default_policy_weights(statuses: dict[str, dict]) -> dict[str, int]:
    """The KEMI script's weights: the library's default policy (sipstatus.kemi's)."""
    now = time.time()
    table = NodeTable(statuses)
    for body in statuses.values():
        table.update(codec.from_wire(body), now)
    return make_policy().weights(table.views(now))


def native_held(kam: Kamailio) -> dict[str, int]:
    """ns: node -> "expires;weight;state;instance;seq"; a stale node weighs 0."""
    now = int(time.time())
    held = {}
    for node, value in kam.htable("ns").items():
        expires, weight = value.split(";")[:2]
        held[node] = int(weight) if int(expires) > now else 0
    return held


def kemi_held(kam: Kamailio) -> dict[str, int]:
    """ns: node -> {"received", "body"}; the script's policy over them."""
    now = time.time()
    table = NodeTable(SPECS)
    for value in kam.htable("ns").values():
        entry = json.loads(value)
        table.update(codec.decode(entry["body"]), entry["received"])
    return make_policy().weights(table.views(now))


def _sidecar_start(workdir: Path, nodes: list[SippNode]) -> Kamailio:
    return start_example(EXAMPLES / "sidecar" / "kamailio.cfg", workdir, nodes)


def sidecar_held(kam: Kamailio) -> dict[str, int]:
    """What the sidecar pushed: the htable `sipstatus` weight of each node
    whose dispatcher destination is active (the script skips inactive ones)."""
    rpc = JsonRpcClient(f"unix:{kam.workdir}/kamailio_rpc.sock")
    pushed = {node: int(weight) for node, weight in kam.htable("sipstatus").items()}
    return {d.node: pushed.get(d.node, 0) if d.flags.startswith("A") else 0
            for d in KamailioSink(rpc, group=1, htable=None).destinations()}


#: The sidecar's subscriptions (seconds, the least the spec allows): a
#: restarted agent knows no subscription, and the sidecar learns it at its
#: next refresh, 28 s after a grant of 60 s (refresh_delay).
SIDECAR_EXPIRES = 60

WAYS = {
    "native": Way("native", _native_start, hint_weights, native_held),
    # The same script as a drop-in (sipstatus.cfg) in Debian's stock kamailio.cfg.
    "stock": Way("stock", _stock_start, hint_weights, native_held),
    "kemi": Way("kemi", _kemi_start, default_policy_weights, kemi_held),
    # packaging/examples/kamailio/sidecar: the sidecar subscribes to the
    # agents and pushes weights (htable `sipstatus`) and dispatcher states.
    "sidecar": Way("sidecar", _sidecar_start, free_slot_weights, sidecar_held, publish=False,
                   comeback=SIDECAR_EXPIRES + 15.0),
}


# -- fixtures ---------------------------------------------------------------------------


@dataclasses.dataclass
class Setup:
    way: Way
    kam: Kamailio
    agents: dict[str, Agent]
    nodes: dict[str, E2eNode]
    workdir: Path
    sidecar: Sidecar | None = None

    def stop(self) -> None:
        """Stop its processes (again: a no-op)."""
        if self.sidecar is not None:
            self.sidecar.stop()
        for agent in self.agents.values():
            agent.stop()
        self.kam.stop()

    def log_tail(self) -> str:
        tail = f"Kamailio:\n{self.kam.log_tail(15)}"
        if self.sidecar is not None:
            tail += f"\nsidecar:\n{self.sidecar.log_tail(15)}"
        return tail


#: The ways' setups running now (one at a time: pytest groups the tests by way).
RUNNING: list[Setup] = []


@pytest.fixture(scope="module", params=list(WAYS))
def setup(request: pytest.FixtureRequest, workdir: Path, pool: dict[str, E2eNode]) -> Iterator[Setup]:
    """A Kamailio of one way, the three agents publishing to it (or the
    sidecar subscribing to them and pushing into it), shared by the tests of
    that way: each test starts from `converged` (Kamailio holds what the
    agents report) and leaves every node active and reporting again."""
    way = WAYS[request.param]
    kam = way.start(workdir, [n.uas for n in pool.values()])
    s = Setup(way, kam, {}, pool, workdir)
    try:
        for name, node in pool.items():
            s.agents[name] = Agent(name, workdir, ami_port=node.ami_port, probe=node.uas.uri,
                                   max_calls=SPECS[name].max_calls, validity=VALIDITY,
                                   publish=[f"sip:load-status@{HOST}:{kam.port}"] if way.publish else [])
            s.agents[name].start()
        if not way.publish:
            s.sidecar = Sidecar(kam, {name: a.uri for name, a in s.agents.items()}, workdir, expires=SIDECAR_EXPIRES)
            s.sidecar.start()
        RUNNING.append(s)
        yield s
    finally:
        s.stop()
        if s in RUNNING:
            RUNNING.remove(s)


@pytest.fixture(autouse=True)
def _no_setup_left_running(request: pytest.FixtureRequest) -> None:
    """A test without a way's setup runs without the last one, which pytest
    would keep until the module ends (the stress test needs the machine)."""
    if "setup" not in request.fixturenames:
        while RUNNING:
            RUNNING.pop().stop()


# -- helpers ----------------------------------------------------------------------------


def statuses(s: Setup) -> dict[str, dict]:
    """Each agent's current status, from `sipstatus-agent status --json`."""
    return {name: agent.status() for name, agent in s.agents.items()}


def converged(s: Setup, timeout: float = 20.0) -> dict[str, int]:
    """Wait until Kamailio's htable gives the weights the agents' statuses
    give; return them."""
    deadline = time.monotonic() + timeout
    while True:
        expected = s.way.expected(statuses(s))
        held = s.way.held(s.kam)
        if held == expected:
            return expected
        if time.monotonic() > deadline:
            raise AssertionError(f"{s.way.name}: Kamailio holds {held}, the agents report {expected}\n"
                                 f"{s.log_tail()}")
        time.sleep(0.2)


def split_table(counts: dict[str, int], weights: dict[str, int], calls: int) -> str:
    total = sum(weights.values())
    lines = [f"{'node':6} {'weight':>6} {'expected':>9} {'bound':>7} {'got':>5}"]
    for node, weight in weights.items():
        p = weight / total
        bound = 5 * math.sqrt(calls * p * (1 - p)) + 1
        lines.append(f"{node:6} {weight:6d} {calls * p:9.1f} {bound:7.1f} {counts.get(node, 0):5d}")
    if counts.get("failed"):
        lines.append(f"failed {counts['failed']}")
    return "\n".join(lines)


def wait_for_invites(node: SippNode, after: float, timeout: float) -> float | None:
    """The time of the first INVITE the node received after `after`, waiting
    up to `timeout` seconds for one."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        later = [t for t in node.invite_times() if t > after]
        if later:
            return min(later)
        time.sleep(0.1)
    return None


# -- the tests --------------------------------------------------------------------------


def test_calls_split_by_the_weights_the_agents_report(setup: Setup) -> None:
    weights = converged(setup)
    assert len(set(weights.values())) == 3, f"the three nodes should weigh differently: {weights}"
    result = Caller(setup.kam.port, CALLS, setup.workdir, rate=RATE).start().wait()
    print(f"\n[{setup.way.name}] split of {CALLS} calls, weights from the agents' status --json "
          f"(5 sigma + 1):\n{split_table(result.counts, weights, CALLS)}")
    problems = split_within(result.counts, weights, CALLS)
    assert not problems, f"{setup.way.name}: {problems}\n{setup.log_tail()}"
    assert result.failed == 0
    # The weights did not move while the calls ran (the split is against them).
    assert setup.way.expected(statuses(setup)) == weights


def test_drain_stops_new_calls_within_one_second(setup: Setup) -> None:
    weights = converged(setup)
    node = setup.nodes[DRAINED].uas
    caller = Caller(setup.kam.port, RATE * 60, setup.workdir, rate=RATE).start()
    try:
        begin = time.time()
        assert wait_for_invites(node, begin, 10) is not None, f"{DRAINED} got no calls before the drain"
        time.sleep(1.0)
        t_start = time.time()
        setup.agents[DRAINED].ctl("drain")
        t_returned = time.time()
        time.sleep(3.0)
        t_end = time.time()
    finally:
        result = caller.stop_softly()
    times = node.invite_times()
    before = [t for t in times if begin <= t < t_start]
    after_start = [t for t in times if t >= t_start]
    late = [t for t in times if t > t_returned + 1.0]
    last = max(after_start, default=None)
    reaction = None if last is None else last - t_returned
    others = {n: sum(1 for t in e.uas.invite_times() if t_returned + 1.0 < t < t_end)
              for n, e in setup.nodes.items() if n != DRAINED}
    print(f"\n[{setup.way.name}] drain of {DRAINED} (weight {weights[DRAINED]}): the command took "
          f"{t_returned - t_start:.3f} s; {len(before)} INVITEs before it, {len(after_start)} after it started; "
          f"last INVITE {'none' if reaction is None else f'{reaction:+.3f} s'} after it returned; "
          f"INVITEs to the others from +1 s to the end: {others}; calls failed: {result.failed}")
    assert before, f"{DRAINED} got no calls before the drain"
    assert not late, f"{len(late)} INVITEs reached {DRAINED} more than 1 s after the drain returned " \
                     f"(first {late[0] - t_returned:.3f} s after)"
    assert all(others.values()), f"the other nodes stopped getting calls too: {others}"
    assert statuses(setup)[DRAINED]["state"] == "draining"
    assert result.failed == 0, result.output[-2000:]

    # Undrained, the node takes calls again.
    setup.agents[DRAINED].ctl("undrain")
    assert converged(setup) == weights
    t_back = time.time()
    result = Caller(setup.kam.port, 300, setup.workdir, rate=RATE).start().wait()
    assert result.failed == 0
    assert sum(1 for t in node.invite_times() if t > t_back) == result.counts[DRAINED] > 0


def test_killed_agent_goes_stale_and_comes_back_when_restarted(setup: Setup) -> None:
    weights = converged(setup)
    node = setup.nodes[KILLED].uas
    agent = setup.agents[KILLED]
    caller = Caller(setup.kam.port, RATE * 200, setup.workdir, rate=RATE, timeout=300).start()
    try:
        begin = time.time()
        assert wait_for_invites(node, begin, 10) is not None, f"{KILLED} got no calls before the kill"
        time.sleep(1.0)
        t_kill = time.time()
        agent.kill()
        time.sleep(VALIDITY + 3.0)
        t_restart = time.time()
        agent.start()
        t_started = time.time()
        first_back = wait_for_invites(node, t_kill + VALIDITY + 0.25, setup.way.comeback)
        time.sleep(1.0)
    finally:
        result = caller.stop_softly()
    times = node.invite_times()
    after_kill = [t for t in times if t_kill <= t < t_restart]
    gone = max(after_kill, default=t_kill) - t_kill
    silent = [t for t in times if t_kill + VALIDITY + 0.25 < t < t_restart]
    back = None if first_back is None else first_back - t_started
    print(f"\n[{setup.way.name}] SIGKILL of {KILLED}'s agent (weight {weights[KILLED]}, validity {VALIDITY} s): "
          f"{len(after_kill)} INVITEs after the kill, the last {gone:.3f} s after it; then none for "
          f"{t_restart - t_kill - gone:.1f} s until the restart; the restarted agent took "
          f"{t_started - t_restart:.2f} s to serve and got its first INVITE "
          f"{'never' if back is None else f'{back:+.3f} s'} after that; calls failed: {result.failed}")
    assert after_kill, f"{KILLED} was out at once: its last report should have been trusted for a while"
    assert gone <= VALIDITY + 0.25, f"{KILLED} still got calls {gone:.3f} s after its agent died"
    assert not silent, f"{len(silent)} INVITEs reached {KILLED} after its report went stale"
    assert first_back is not None, f"{KILLED} got no calls after its agent restarted\n{agent.log_tail()}"
    assert result.failed == 0, result.output[-2000:]
    assert converged(setup) == weights


#: Calls per second during the rolling restart (the issue's bound).
ROLLING_RATE = 20
#: Seconds between one agent's restart and the next one's stop.
ROLLING_GAP = 2.0
#: A restarted agent's node must take calls again within this (publishing
#: ways: its first PUBLISH; sidecar: the re-SUBSCRIBE after retry-after).
ROLLING_COMEBACK = 15.0


def test_a_rolling_restart_of_every_agent_loses_no_call(setup: Setup) -> None:
    """What a package upgrade across the pool does: each agent is stopped
    (SIGTERM) and started again at once, one after the other, ROLLING_GAP s
    apart, while calls come in at ROLLING_RATE per second. A stopping agent
    takes its node out (final NOTIFY `down`, or its publication removed) and
    the new one must bring it back within seconds: with the sidecar and the
    retry-after of 30 s used before, all three nodes were out together and
    most calls got 503."""
    weights = converged(setup)
    caller = Caller(setup.kam.port, ROLLING_RATE * 600, setup.workdir, rate=ROLLING_RATE, timeout=600).start()
    back: dict[str, float | None] = {}
    try:
        assert wait_for_invites(setup.nodes[KILLED].uas, time.time(), 10) is not None
        restarted = {}
        for name, agent in setup.agents.items():
            agent.stop()
            agent.start()
            restarted[name] = time.time()
            time.sleep(ROLLING_GAP)
        for name, t in restarted.items():
            first = wait_for_invites(setup.nodes[name].uas, t, ROLLING_COMEBACK) if weights[name] else None
            back[name] = None if first is None else first - t
        converged(setup)
        time.sleep(1.0)
    finally:
        result = caller.stop_softly()
    print(f"\n[{setup.way.name}] rolling restart at {ROLLING_RATE} calls/s: {result.successful} calls "
          f"successful, {result.failed} failed; first INVITE after each restart: "
          + ", ".join(f"{n} {'never' if b is None else f'{b:+.2f} s'}" for n, b in back.items()))
    assert result.failed == 0, f"{result.output[-2000:]}\n{setup.log_tail()}"
    assert all(b is not None for n, b in back.items() if weights[n]), f"{back}\n{setup.log_tail()}"


# -- stress: weights changing under load ---------------------------------------------------

STRESS_SECONDS = 60
STRESS_CPS = 200
REPORTS_PER_SECOND = 100  # per node; an agent sends at most 10 (spec 8.7)
#: A node drains for the first DRAIN_SECONDS of every DRAIN_CYCLE-th second
#: window, one node after the other (never all at once: calls must not fail).
DRAIN_CYCLE = 5.0
DRAIN_SECONDS = 2.0
#: A drain report must take effect within this: INVITEs that reach the node
#: later than this after its first draining report count as wrong.
DRAIN_GRACE = 0.25


def stress_schedule(names: list[str]) -> Callable[[str, int, float], tuple[State, int]]:
    def schedule(node: str, k: int, elapsed: float) -> tuple[State, int]:
        window = int(elapsed // DRAIN_CYCLE)
        if names[window % len(names)] == node and elapsed % DRAIN_CYCLE < DRAIN_SECONDS:
            return State.DRAINING, 0
        # Every report a new weight: 1..100, three steps up each time.
        return State.ACTIVE, 1 + (3 * k + 37 * names.index(node)) % 100

    return schedule


@pytest.mark.slow
def test_calls_keep_succeeding_while_weights_change_under_load(workdir: Path, pool: dict[str, E2eNode]) -> None:
    """200 calls/s through the native example for a minute while each node
    reports 100 times a second with a new weight each time, and drains in
    turn: no call fails, drains take effect at once, Kamailio survives."""
    names = list(pool)
    kam = _native_start(workdir, [n.uas for n in pool.values()])
    pid = kam.proc.pid if kam.proc else None
    calls = STRESS_CPS * STRESS_SECONDS
    try:
        # The example reads its pool from the dispatcher list on a timer: a
        # call placed before that read has no node to go to (503).
        deadline = time.monotonic() + 15
        while len(kam.htable("pool")) < len(names) and time.monotonic() < deadline:
            time.sleep(0.1)
        cpu_before = kam.cpu_seconds()
        caller = Caller(kam.port, calls, workdir, rate=STRESS_CPS, limit=4 * STRESS_CPS,
                        timeout=3 * STRESS_SECONDS).start()
        try:
            stats = asyncio.run(stream_reports(kam.port, names, rate=REPORTS_PER_SECOND, duration=STRESS_SECONDS,
                                               schedule=stress_schedule(names)))
            held = native_held(kam)
            result = caller.wait()
        finally:
            caller.stop()
        elapsed = time.time() - (caller.started or 0)
        cpu = kam.cpu_seconds() - cpu_before
        alive = kam.alive()
        same_pid = kam.proc is not None and kam.proc.pid == pid and kam.proc.poll() is None
        wrong = {}
        returned: Counter[str] = Counter()  # INVITEs in the second after a drain ended
        for node, start, end in stats.drains:
            times = pool[node].uas.invite_times()
            late = [t for t in times if start + DRAIN_GRACE <= t < end]
            if late:
                wrong[f"{node}@{start:.1f}"] = len(late)
            returned[node] += sum(1 for t in times if end <= t < end + 1.0)
        print(f"\n[stress] {calls} calls at {STRESS_CPS}/s asked, took {elapsed:.1f} s; SIPp: {result.successful} "
              f"successful, {result.failed} failed, exit {result.returncode}; split {dict(result.counts)}")
        print(f"[stress] reports over {stats.duration:.1f} s: " + ", ".join(
            f"{n} {stats.sent[n]} sent ({stats.sent[n] / stats.duration:.1f}/s), {dict(stats.answered.get(n, {}))}, "
            f"{stats.retransmissions[n]} retransmitted, {stats.timeouts[n]} unanswered" for n in names))
        print(f"[stress] PUBLISH round trip p50 {1000 * stats.latency(0.5):.1f} ms, p99 "
              f"{1000 * stats.latency(0.99):.1f} ms, max {1000 * max(stats.latencies, default=math.nan):.1f} ms; "
              f"{len(stats.drains)} drains, INVITEs later than {DRAIN_GRACE} s into one: {wrong or 'none'}, "
              f"in the second after one: {dict(returned)}; "
              f"Kamailio CPU {cpu:.1f} s, alive {alive}, same PID {same_pid}")
        assert result.failed == 0 and result.successful == calls and result.returncode == 0, result.output[-6000:]
        assert "failed" not in result.counts
        for n in names:
            assert set(stats.answered[n]) == {200}, f"{n}: {stats.answered[n]}"
            assert stats.sent[n] >= 0.95 * REPORTS_PER_SECOND * STRESS_SECONDS, f"{n}: only {stats.sent[n]} reports"
        assert held == stats.last_weight, "Kamailio does not hold the last reported weights"
        assert len(stats.drains) >= STRESS_SECONDS // DRAIN_CYCLE - 1
        assert not wrong, f"drained nodes got INVITEs: {wrong}"
        assert all(returned[n] for n in names), f"nodes did not come back after their drains: {returned}"
        assert alive and same_pid, kam.log_tail()
    finally:
        kam.stop()


# -- 100 nodes -------------------------------------------------------------------------------

MANY = 100
MANY_SECONDS = 10.0
MANY_CHANGE_EVERY = 0.2  # each node reports a new weight 5 times a second


def _weigh_by_publish(kam: Kamailio, weights: dict[str, int]) -> None:
    client = SipClient(kam.port)
    try:
        for name, weight in weights.items():
            assert Publisher(client, name).report(weight or None).status == 200
    finally:
        client.close()


def _weigh_by_rpc(kam: Kamailio, weights: dict[str, int]) -> None:
    """What the sidecar pushes: htable.seti sipstatus NODE WEIGHT."""
    rpc = JsonRpcClient(f"unix:{kam.workdir}/kamailio_rpc.sock")
    for name, weight in weights.items():
        rpc.call("htable.seti", "sipstatus", name, weight)


#: The example configurations that read the pool in route[POOL_LOAD], and
#: how a node's weight reaches each (the native script: a report; the
#: sidecar example: what the sidecar pushes).
POOL_READERS = {
    "native": (EXAMPLES / "native" / "kamailio.cfg", _weigh_by_publish, "ns"),
    "sidecar": (EXAMPLES / "sidecar" / "kamailio.cfg", _weigh_by_rpc, "sipstatus"),
}


@pytest.mark.parametrize("config", list(POOL_READERS))
def test_example_reads_a_pool_of_two_hundred(workdir: Path, config: str) -> None:
    """route[POOL_LOAD] reads the dispatcher.list RPC reply (about 370 octets
    per destination) through Kamailio's pv buffer: with the default 8192
    octets it failed from about 25 destinations on, and every report got 403
    (native) or every call the cold-start choice (sidecar). The examples'
    PV_BUFFER_SIZE (65536) holds 170; 200 need 131072. And Kamailio stops a
    `while` after max_while_loops turns (100 by default): the pool and the
    choice of a node stopped at the 100th."""
    path, weigh, table = POOL_READERS[config]
    names = [f"node{i:03d}" for i in range(200)]
    members = [Destinationless(name, 20000 + i) for i, name in enumerate(names)]
    # Nothing answers behind these destinations: no OPTIONS probing.
    kam = start_example(path, workdir, members, {"PV_BUFFER_SIZE": 131072, "LOG_LEVEL": 3, "DS_PING_INTERVAL": 0})
    client = SipClient(kam.port)
    try:
        assert len(kam.htable("pool")) == 200, kam.log_tail()
        # Every node has a weight, and only one is above 0: route[PICK] must
        # look at all 200 to find it (it logs its choice at level 3; nothing
        # answers behind node199's port, so the call itself fails).
        taker = names[-1]
        weigh(kam, {name: 40 if name == taker else 0 for name in names})
        assert len(kam.htable(table)) == 200
        invite = client.build("INVITE", [("Contact", f"<sip:caller@{HOST}:{client.port}>")],
                              ruri=f"sip:load@{HOST}:{kam.port}")
        client.sock.sendto(invite, client.proxy)
        deadline = time.monotonic() + 10
        while f"call to {taker} " not in kam.log():
            assert time.monotonic() < deadline, kam.log_tail()
            time.sleep(0.05)
    finally:
        client.close()
        kam.stop()


@pytest.mark.parametrize("config", list(POOL_READERS))
def test_example_keeps_its_pool_when_the_list_cannot_be_read(workdir: Path, config: str) -> None:
    """A list too long for the buffer is logged, and the pool read before
    stays as it was (it was emptied: every node left the pool)."""
    few = [Destinationless(f"node{i:03d}", 20000 + i) for i in range(5)]
    kam = start_example(POOL_READERS[config][0], workdir, few, {"PV_BUFFER_SIZE": 8192, "DS_PING_INTERVAL": 0})
    try:
        pool = kam.htable("pool")
        assert len(pool) == 5
        many = [Destinationless(f"node{i:03d}", 20000 + i) for i in range(100)]
        list_file = kam.defines["DS_LIST"]
        assert isinstance(list_file, str)
        dispatcher_list(Path(list_file.strip('"')), many)
        kam.rpc("dispatcher.reload")
        deadline = time.monotonic() + 15  # the pool timer runs every 10 s
        while "cannot read the reply of dispatcher.list" not in kam.log():
            assert time.monotonic() < deadline, kam.log_tail()
            time.sleep(0.2)
        assert kam.htable("pool") == pool
    finally:
        kam.stop()


def test_a_hundred_agents_converge_and_what_their_reports_cost(workdir: Path) -> None:
    """100 simulated agents (the library's Publisher, each on its own
    loopback address 127.0.0.10-109) report to the native example with a
    100-entry dispatcher list: after 10 s of changing weights each node's
    last reported weight is what Kamailio's htable holds. Prints Kamailio's
    CPU time per 1,000 reports (all its processes, psutil), net of its idle
    consumption over the same time."""
    names = [f"node{i:03d}" for i in range(MANY)]
    # Destinations nobody answers: this test routes no call.
    members = [Destinationless(name, 20000 + i) for i, name in enumerate(names)]
    kam = start_example(EXAMPLES / "native" / "kamailio.cfg", workdir, members, {"DS_PING_INTERVAL": 0})
    try:
        final = {name: 1 + (37 * i) % 100 for i, name in enumerate(names)}  # 1..100, all different
        idle_from, idle_cpu = time.monotonic(), kam.cpu_seconds()
        time.sleep(10.0)  # one run of the pool timer (route[POOL_LOAD], every 10 s)
        idle_rate = (kam.cpu_seconds() - idle_cpu) / (time.monotonic() - idle_from)
        cpu_before = kam.cpu_seconds()
        stats = asyncio.run(simulate_agents(kam.port, names, duration=MANY_SECONDS, change_every=MANY_CHANGE_EVERY,
                                            final=final))
        cpu = kam.cpu_seconds() - cpu_before
        converged_at = None
        looked_from = time.monotonic()
        deadline = looked_from + 10
        while time.monotonic() < deadline:
            held = {node: int(v.split(";")[1]) for node, v in kam.htable("ns").items()}
            if held == final:
                converged_at = time.monotonic()
                break
            time.sleep(0.1)
        net = cpu - idle_rate * stats.elapsed
        per_thousand = 1000 * net / stats.published if stats.published else math.nan
        print(f"\n[100 nodes] {stats.published} reports answered 200 in {stats.elapsed:.1f} s "
              f"({stats.published / stats.elapsed:.0f}/s), {stats.failed} failed {dict(stats.failures)}; "
              f"final weights answered {stats.settle:.2f} s after they were published, in the htable "
              f"{'never' if converged_at is None else f'{converged_at - looked_from:.2f} s after that'}; Kamailio CPU "
              f"{cpu:.2f} s (idle {idle_rate * stats.elapsed:.2f} s): {per_thousand:.3f} CPU s per 1,000 reports")
        assert stats.final == final, "not every node published its final weight"
        assert converged_at is not None, f"Kamailio's htable never showed the final weights: " \
            f"{ {n: (held.get(n), w) for n, w in final.items() if held.get(n) != w} }"
        assert stats.failed == 0, stats.failures
        assert kam.alive()
    finally:
        kam.stop()
