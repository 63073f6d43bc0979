"""A discrete-event simulation of call dispatch over a pool of Asterisk nodes.

The pool: nodes with different channel limits and CPU, Poisson call arrivals
with log-normal (or exponential) holding times, and an external CPU hog
switched on on one node part-way through. A node's true utilisation is

    max(channels / limit, cpu),  cpu = base + per-call cost x calls + hog + noise

Two models of what happens to a call sent to a node whose utilisation is at
or above 1 (channels at the limit, or CPU saturated), chosen by
`Scenario.reject`:

- rejecting (the default): the node rejects it and it is lost. This caps
  every node near 1, so a bad dispatcher looks only a little worse than a
  good one;
- without rejection: the node takes it anyway and its utilisation goes on
  above 1 (overload), so how far a dispatcher is from the ideal shows in
  full. The call is still counted as placed at the limit.

In both, a proxy that has no node to send a call to refuses it: lost.

Common random numbers: everything that is not the dispatcher's own doing --
arrival times, holding times, every node's CPU noise, the hog, the phases of
the nodes' sampling and heartbeat clocks -- is drawn once per seed by
`make_workload` and replayed identically for every dispatcher. What is the
dispatcher's own (its weighted random choices, the delivery delay of its
reports) comes from a stream seeded from the seed and its name, so it does
not shift anyone else's draws.

The sipstatus proxies get their reports from simulated agents that run the
agent's own scorer (agent/scoring.py) on simulated readings: CPU sampled
once a second, channels on every change (AMI events). When the agent sends
is a pluggable `NotifyPolicy`; `AgentNotifyPolicy` is the agent's: what is
significant is decided by the agent's own `is_significant` (agent/service.py:
a state change, a weight change of 5 or more), sent as soon as the rate
ceiling allows (notifier.max_rate, default 5/s); anything else rides on the
heartbeat (validity / 3 with the agent's default validity).

The simulation is pure Python and `random`; one call is one channel.
"""

from __future__ import annotations

import copy
import heapq
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from agent.collectors.interface import AsteriskLink, Reading
from agent.config import AgentConfig, HostConfig, NotifierConfig, ScoringConfig
from agent.scoring import Scorer as AgentScorer
from agent.service import SIGNIFICANT_WEIGHT_STEP, is_significant
from sipstatus import codec
from sipstatus.proxy.nodetable import NodeTable
from sipstatus.proxy.policy import Selector, WeightPolicy
from sipstatus.status import Asterisk, Cpu, LoadStatus, State, weight_hint

INF = math.inf


# --- the scenario and its random draws ---------------------------------------


@dataclass(frozen=True, slots=True)
class NodeSpec:
    """One Asterisk node: its channel limit (maxcalls) and its CPU."""

    name: str
    limit: int
    cores: int
    #: CPU fraction busy with no calls (the OS, Asterisk idle).
    cpu_base: float = 0.03
    #: CPU fraction the calls take when the node is at its channel limit:
    #: the limit is set a little below CPU saturation, as operators do.
    cpu_at_limit: float = 0.85

    @property
    def cpu_per_call(self) -> float:
        return self.cpu_at_limit / self.limit


DEFAULT_NODES = (
    NodeSpec("ast1", 400, 8),
    NodeSpec("ast2", 400, 8),
    NodeSpec("ast3", 200, 4),  # half the size: half the cores, half the limit
    NodeSpec("ast4", 400, 8),
)


@dataclass(frozen=True, slots=True)
class Scenario:
    """What is simulated; times in seconds from the start of the warm-up."""

    nodes: tuple[NodeSpec, ...] = DEFAULT_NODES
    #: Offered load as a fraction of the pool's total channel limit.
    load: float = 0.80
    #: Holding time: "lognormal" (mean, and sigma of the underlying normal)
    #: or "exponential" (mean).
    hold: str = "lognormal"
    mean_hold: float = 180.0
    hold_sigma: float = 1.0
    #: True: a node at or above its limit rejects a call; False: it takes
    #: it and its utilisation goes above 1 (see the module doc).
    reject: bool = True
    #: Traffic before the measured window (the pool fills up), not measured.
    warmup: float = 900.0
    #: The measured window.
    duration: float = 7200.0
    #: The node with the CPU hog, and the CPU fraction it eats from the
    #: middle of the measured window to its end.
    hog_node: int = 3
    hog_share: float = 0.40
    #: CPU noise per node: an AR(1) series, one value per second.
    noise_sd: float = 0.02
    noise_rho: float = 0.8
    #: Delivery delay of a report (agent to proxy), uniform.
    delay_min: float = 0.005
    delay_max: float = 0.020

    @property
    def arrival_rate(self) -> float:
        """Calls per second offered to the pool."""
        return self.load * sum(n.limit for n in self.nodes) / self.mean_hold

    @property
    def hog_at(self) -> float:
        return self.warmup + self.duration / 2

    @property
    def end(self) -> float:
        return self.warmup + self.duration


@dataclass(frozen=True, slots=True)
class Workload:
    """The draws every dispatcher shares for one seed."""

    seed: int
    #: Arrival times, increasing, and the holding time of each call.
    arrivals: tuple[float, ...]
    holds: tuple[float, ...]
    #: noise[i][k]: node i's CPU noise during second k.
    noise: tuple[tuple[float, ...], ...]
    #: Per node, a phase in [0, 1) for its clocks (the agent's sampling, a
    #: heartbeat): a clock of period P ticks at (phase + k) x P.
    phases: tuple[float, ...]


def make_workload(scenario: Scenario, seed: int) -> Workload:
    """Draw the arrivals, holding times, noise and clock phases for `seed`."""
    rng = random.Random(f"workload:{seed}")
    rate = scenario.arrival_rate
    mu = math.log(scenario.mean_hold) - scenario.hold_sigma**2 / 2
    if scenario.hold == "lognormal":
        def hold() -> float:
            return rng.lognormvariate(mu, scenario.hold_sigma)
    elif scenario.hold == "exponential":
        def hold() -> float:
            return rng.expovariate(1 / scenario.mean_hold)
    else:
        raise ValueError(f"Scenario.hold must be 'lognormal' or 'exponential', got {scenario.hold!r}")
    arrivals, holds = [], []
    t = rng.expovariate(rate)
    while t < scenario.end:
        arrivals.append(t)
        holds.append(hold())
        t += rng.expovariate(rate)
    seconds = int(math.ceil(scenario.end)) + 1
    innovation = scenario.noise_sd * math.sqrt(1 - scenario.noise_rho**2)
    noise = []
    for _ in scenario.nodes:
        x = rng.gauss(0.0, scenario.noise_sd)
        series = []
        for _ in range(seconds):
            series.append(x)
            x = scenario.noise_rho * x + rng.gauss(0.0, innovation)
        noise.append(tuple(series))
    phases = tuple(rng.random() for _ in scenario.nodes)
    return Workload(seed, tuple(arrivals), tuple(holds), tuple(noise), phases)


# --- the pool -----------------------------------------------------------------


class Node:
    """One node's true state: calls in progress, CPU hog, CPU noise."""

    __slots__ = ("spec", "calls", "hog", "noise", "util")

    def __init__(self, spec: NodeSpec) -> None:
        self.spec = spec
        self.calls = 0
        self.hog = 0.0
        self.noise = 0.0
        self.util = 0.0

    def cpu(self) -> float:
        """Fraction of the node's CPU in demand; above 1 when oversubscribed."""
        s = self.spec
        return max(0.0, s.cpu_base + s.cpu_per_call * self.calls + self.hog + self.noise)

    def refresh(self) -> None:
        self.util = max(self.calls / self.spec.limit, self.cpu())

    @property
    def at_limit(self) -> bool:
        return self.util >= 1.0


# --- the agent's scoring and notification policy (pluggable) ------------------


class ScoreLike(Protocol):
    """What the simulation reads of a score (agent.scoring.Score)."""

    state: State
    capacity: float


class Scorer(Protocol):
    """The agent's scorer for one node (agent.scoring.Scorer): state and
    capacity from a reading. Stateful (hysteresis), so there is one per node."""

    def score(self, reading: Reading) -> ScoreLike: ...


class NotifyPolicy(Protocol):
    """When the agent sends a report (one per subscription)."""

    def poll(self, state: State, capacity: float, now: float) -> bool:
        """True when the current status should be sent now."""
        ...

    def next_poll(self, now: float) -> float | None:
        """When to ask again if nothing changes (a deferred change, the heartbeat)."""
        ...

    def sent(self, state: State, capacity: float, now: float) -> None: ...


ScorerFactory = Callable[[NodeSpec], Scorer]
NotifyPolicyFactory = Callable[[], NotifyPolicy]


def agent_scorer(config: ScoringConfig | None = None) -> ScorerFactory:
    """The agent's own scorer (agent/scoring.py), one per node, with `config`
    (the agent's defaults when None)."""
    config = ScoringConfig() if config is None else config
    return lambda spec: RememberingScorer(AgentScorer(config))


class RememberingScorer:
    """The agent's scorer, with its answers remembered while the CPU figure
    stays the same. In the simulation a reading is fixed by the CPU figure
    and the call count, and `Scorer.score` is a function of the reading and
    of the triggers that are on (its only memory), so this gives the same
    answers as calling it every time, for less of the simulation's time."""

    def __init__(self, scorer: AgentScorer) -> None:
        self.scorer = scorer
        self._cpu: Cpu | None = None
        self._memo: dict[tuple[int | None, frozenset[str]], tuple[ScoreLike, set[str]]] = {}

    def score(self, reading: Reading) -> ScoreLike:
        if reading.cpu is not self._cpu:
            self._cpu = reading.cpu
            self._memo.clear()
        key = (reading.asterisk.calls if reading.asterisk else None, frozenset(self.scorer.on))
        hit = self._memo.get(key)
        if hit is None:
            result = self.scorer.score(reading)
            self._memo[key] = (result, set(self.scorer.on))
            return result
        result, on = hit
        self.scorer.on = set(on)
        return result


def _status(state: State, capacity: float) -> LoadStatus:
    return LoadStatus("node", "sim", 0, 1, state, capacity)


@dataclass
class AgentNotifyPolicy:
    """The agent's notification policy (agent/service.py and the Notifier of
    sipstatus/sip/notifier.py): a significant change (the agent's own
    `is_significant`) goes out as soon as `min_interval` since the last
    NOTIFY allows; an insignificant one waits for the heartbeat, which
    carries the current status."""

    min_interval: float = 1 / NotifierConfig().max_rate
    heartbeat: float = AgentConfig().validity / 3
    _announced: LoadStatus | None = None
    _sent_at: float = -INF
    _pending: bool = False

    def poll(self, state: State, capacity: float, now: float) -> bool:
        # Once significant, a change is sent at the first allowed moment even
        # if it has gone back since (the Notifier never drops one).
        if not self._pending and self._significant(state, capacity):
            self._pending = True
        if self._pending:
            return now >= self._sent_at + self.min_interval
        return now >= self._sent_at + self.heartbeat

    def next_poll(self, now: float) -> float | None:
        return self._sent_at + (self.min_interval if self._pending else self.heartbeat)

    def sent(self, state: State, capacity: float, now: float) -> None:
        status = _status(state, capacity)
        if is_significant(self._announced, status):
            self._announced = status
            self._announced_weight = status.weight
        self._sent_at = now
        self._pending = False

    _announced_weight = 0

    def _significant(self, state: State, capacity: float) -> bool:
        """agent.service.is_significant(announced, status), without building
        a LoadStatus on every channel change (the simulation has no affinity).
        tests/unit/test_dispatchsim.py checks that both agree."""
        a = self._announced
        if a is None or a.state is not state:
            return True
        return abs(self._announced_weight - weight_hint(state, capacity)) >= SIGNIFICANT_WEIGHT_STEP


# --- the simulation -------------------------------------------------------------


class Dispatcher(Protocol):
    """A proxy's way of choosing the node for each new call."""

    name: str

    def start(self, sim: Simulation) -> None:
        """Set up before the first call: schedule clocks, watch channels."""
        ...

    def choose(self, now: float) -> int | None:
        """The node index for the next call, or None to refuse it."""
        ...

    def placed(self, node: int, accepted: bool, now: float) -> None:
        """The call was sent to `node`; `accepted` is False when it was rejected."""
        ...

    def ended(self, node: int, now: float) -> None:
        """A call on `node` ended (the proxy sees the BYE)."""
        ...


@dataclass(slots=True)
class RunResult:
    """One dispatcher on one seed, over the measured window."""

    dispatcher: str
    seed: int
    offered: int = 0
    #: Calls sent to a node at or above its limit (rejected there, or
    #: taken into overload without rejection).
    at_limit: int = 0
    #: Calls the proxy refused because no node would take them.
    refused: int = 0
    #: Of those, the calls refused while some node was below its limit.
    refused_with_room: int = 0
    #: Calls sent to a node at or above its limit over the whole run, warm-up
    #: included. While it is 0 the two models run the very same events, so a
    #: run without rejection that ends with 0 is also the rejecting run.
    at_limit_all: int = 0
    #: Seconds during which at least one node was above 100%.
    overload_time: float = 0.0
    #: The most loaded node's utilisation, sampled once a second.
    max_util: list[float] = field(default_factory=list, repr=False)

    @property
    def lost(self) -> int:
        """Calls that did not get a working node: rejected at a full node
        (or, without rejection, put on one) or refused by the proxy."""
        return self.at_limit + self.refused

    def percentile(self, q: float, start: int = 0, stop: int | None = None) -> float:
        return percentile(self.max_util[start:stop], q)


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100), linear between closest ranks."""
    ordered = sorted(values)
    if not ordered:
        return math.nan
    pos = (len(ordered) - 1) * q / 100
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


class Simulation:
    """One dispatcher over one workload. `run()` once."""

    def __init__(self, scenario: Scenario, workload: Workload, dispatcher: Dispatcher) -> None:
        self.scenario = scenario
        self.workload = workload
        self.dispatcher = dispatcher
        self.nodes = [Node(spec) for spec in scenario.nodes]
        self.result = RunResult(dispatcher.name, workload.seed)
        self._heap: list[tuple[float, int, Callable[[float, object], None], object]] = []
        self._seq = 0
        self._watchers: list[list[Callable[[float], None]]] = [[] for _ in self.nodes]
        self._cpu_watchers: list[list[Callable[[float], None]]] = [[] for _ in self.nodes]
        self._changed = False  # a node's utilisation may have changed

    # What dispatchers may use.

    def at(self, when: float, fn: Callable[[float, object], None], arg: object = None) -> None:
        """Call fn(when, arg) at simulated time `when`."""
        self._seq += 1
        heapq.heappush(self._heap, (when, self._seq, fn, arg))

    def watch_channels(self, node: int, fn: Callable[[float], None]) -> None:
        """Call fn(now) whenever `node`'s channel count changes (an AMI event)."""
        self._watchers[node].append(fn)

    def watch_cpu(self, node: int, fn: Callable[[float], None]) -> None:
        """Call fn(now) whenever `node`'s CPU moves by something other than a
        call (the hog, the noise of each second)."""
        self._cpu_watchers[node].append(fn)

    def rng(self, purpose: str) -> random.Random:
        """A random stream of the dispatcher's own, for `purpose`."""
        return random.Random(f"{self.workload.seed}:{self.dispatcher.name}:{purpose}")

    def delivery_delay(self, rng: random.Random) -> float:
        return rng.uniform(self.scenario.delay_min, self.scenario.delay_max)

    # The run.

    def run(self) -> RunResult:
        sc, wl, result = self.scenario, self.workload, self.result
        nodes, heap = self.nodes, self._heap
        for i, node in enumerate(nodes):
            node.noise = wl.noise[i][0]
            node.refresh()
        self.dispatcher.start(self)
        arrivals, holds = wl.arrivals, wl.holds
        n_arrivals = len(arrivals)
        next_arrival = 0
        next_tick = 1.0  # CPU noise changes on whole seconds
        hog_pending = sc.hog_share > 0
        start, end = sc.warmup, sc.end
        next_sample = start + 0.5  # the most loaded node, once a second
        last = 0.0
        overloaded = False
        while True:
            t_arrival = arrivals[next_arrival] if next_arrival < n_arrivals else INF
            t_heap = heap[0][0] if heap else INF
            t_hog = sc.hog_at if hog_pending else INF
            t = min(t_arrival, t_heap, next_tick, t_hog)
            if t > end:
                t = end
            # The state is constant since `last`: account for it up to t.
            while next_sample < t:
                result.max_util.append(max(n.util for n in nodes))
                next_sample += 1.0
            if overloaded and t > start:
                result.overload_time += t - max(last, start)
            last = t
            if t >= end:
                break
            if t == t_hog:
                hog_pending = False
                nodes[sc.hog_node].hog = sc.hog_share
                nodes[sc.hog_node].refresh()
                self._changed = True
                for fn in self._cpu_watchers[sc.hog_node]:
                    fn(t)
            elif t == next_tick:
                k = int(t)
                for i, node in enumerate(nodes):
                    node.noise = wl.noise[i][k]
                    node.refresh()
                    for fn in self._cpu_watchers[i]:
                        fn(t)
                next_tick += 1.0
                self._changed = True
            elif t == t_heap:
                _, _, fn, arg = heapq.heappop(heap)
                fn(t, arg)
            else:
                self._arrive(t, holds[next_arrival])
                next_arrival += 1
            if self._changed:
                self._changed = False
                overloaded = False
                for node in nodes:
                    if node.util > 1.0:
                        overloaded = True
                        break
        return result

    def _arrive(self, now: float, hold: float) -> None:
        measured = now >= self.scenario.warmup
        if measured:
            self.result.offered += 1
        i = self.dispatcher.choose(now)
        if i is None:
            if measured:
                self.result.refused += 1
                if any(not n.at_limit for n in self.nodes):
                    self.result.refused_with_room += 1
            return
        node = self.nodes[i]
        if node.at_limit:
            self.result.at_limit_all += 1
            if measured:
                self.result.at_limit += 1
            if self.scenario.reject:
                self.dispatcher.placed(i, False, now)
                return
        node.calls += 1
        node.refresh()
        self._changed = True
        self.dispatcher.placed(i, True, now)
        self.at(now + hold, self._depart, i)
        for fn in self._watchers[i]:
            fn(now)

    def _depart(self, now: float, i: object) -> None:
        assert isinstance(i, int)
        node = self.nodes[i]
        node.calls -= 1
        node.refresh()
        self._changed = True
        self.dispatcher.ended(i, now)
        for fn in self._watchers[i]:
            fn(now)


def simulate(scenario: Scenario, workload: Workload, dispatcher: Dispatcher) -> RunResult:
    """Run `dispatcher` over `workload`."""
    return Simulation(scenario, workload, dispatcher).run()


# --- dispatchers ------------------------------------------------------------------


def weighted_choice(rng: random.Random, weights: Sequence[float]) -> int | None:
    """An index chosen with probability proportional to its weight; None if all are 0."""
    total = sum(weights)
    if total <= 0:
        return None
    x = rng.random() * total
    for i, w in enumerate(weights):
        x -= w
        if x < 0 and w > 0:
            return i
    return max(i for i, w in enumerate(weights) if w > 0)  # rounding at the very top


class _Blind:
    """A dispatcher that learns nothing from calls being placed or ending."""

    def placed(self, node: int, accepted: bool, now: float) -> None:
        pass

    def ended(self, node: int, now: float) -> None:
        pass


class RoundRobin(_Blind):
    """Each node in turn (Kamailio dispatcher algorithm 4)."""

    name = "round-robin"

    def start(self, sim: Simulation) -> None:
        self._n = len(sim.nodes)
        self._next = 0

    def choose(self, now: float) -> int | None:
        i = self._next
        self._next = (i + 1) % self._n
        return i


class StaticWeights(_Blind):
    """Weighted random over fixed weights proportional to the nodes' nominal
    capacity (their channel limits)."""

    name = "static-weights"

    def start(self, sim: Simulation) -> None:
        self._weights = [n.spec.limit for n in sim.nodes]
        self._rng = sim.rng("choice")

    def choose(self, now: float) -> int | None:
        return weighted_choice(self._rng, self._weights)


class LeastCalls:
    """Kamailio dispatcher algorithm 10 (call load): the node with the fewest
    active calls this proxy has sent, skipping nodes at their `maxload`
    (set to the node's channel limit). A rejected call is not counted."""

    name = "least-calls"

    def start(self, sim: Simulation) -> None:
        self._active = [0] * len(sim.nodes)
        self._maxload = [n.spec.limit for n in sim.nodes]

    def choose(self, now: float) -> int | None:
        best = None
        for i, calls in enumerate(self._active):
            if calls < self._maxload[i] and (best is None or calls < self._active[best]):
                best = i
        return best

    def placed(self, node: int, accepted: bool, now: float) -> None:
        if accepted:
            self._active[node] += 1

    def ended(self, node: int, now: float) -> None:
        self._active[node] -= 1


class FreeSwitchHeartbeat(_Blind):
    """OpenSIPS's weights from FreeSWITCH ESL heartbeats, applied to Asterisk:
    every `interval` seconds each node reports its sessions and idle CPU, and
    the proxy sets weight = round(max_weight x (1 - sessions/max_sessions) x
    idle_cpu/100), then chooses weighted at random."""

    def __init__(self, interval: float, max_weight: int = 100) -> None:
        self.interval = interval
        self.max_weight = max_weight
        self.name = f"fs-heartbeat-{interval:g}s"

    def start(self, sim: Simulation) -> None:
        self._sim = sim
        self._weights = [self.max_weight] * len(sim.nodes)
        self._rng = sim.rng("choice")
        self._delay_rng = sim.rng("delay")
        for i, phase in enumerate(sim.workload.phases):
            sim.at(phase * self.interval, self._heartbeat, i)

    def _heartbeat(self, now: float, i: object) -> None:
        assert isinstance(i, int)
        node = self._sim.nodes[i]
        idle_cpu = 100.0 * min(1.0, max(0.0, 1.0 - node.cpu()))
        free = max(0.0, 1.0 - node.calls / node.spec.limit)
        weight = round(self.max_weight * free * idle_cpu / 100)
        self._sim.at(now + self._sim.delivery_delay(self._delay_rng), self._receive, (i, weight))
        self._sim.at(now + self.interval, self._heartbeat, i)

    def _receive(self, now: float, report: object) -> None:
        i, weight = report  # type: ignore[misc]
        self._weights[i] = weight

    def choose(self, now: float) -> int | None:
        return weighted_choice(self._rng, self._weights)


class Ideal(_Blind):
    """The yardstick: the node with the lowest true utilisation, known
    instantly. Not realisable; no dispatcher can do better on this measure."""

    name = "ideal"

    def start(self, sim: Simulation) -> None:
        self._nodes = sim.nodes

    def choose(self, now: float) -> int | None:
        best, util = 0, INF
        for i, node in enumerate(self._nodes):
            if node.util < util:
                best, util = i, node.util
        return best


class Agent:
    """The sipstatus agent on one node, as the simulation sees it: samples CPU
    once a second, reacts to channel changes at once, scores, and sends
    reports under its notification policy with a small delivery delay.

    With `watch` (seconds; the agent's `cpu_watch_interval`), it also reads
    the CPU over short windows of that length between its samples and takes
    a short window's figure at once when it differs from the one in use by
    `jump` or more (agent/collectors/host.py). A short window that starts
    before the change sees part of it (the mean over the window), as the
    kernel's counters would. Calls move the CPU too little for a jump (less
    than 0.01 a call), so only the hog and the noise are watched.
    """

    #: The agent's default validity of a status, seconds.
    VALIDITY = AgentConfig().validity
    SAMPLE_INTERVAL = 1.0

    def __init__(
        self,
        sim: Simulation,
        index: int,
        scorer: Scorer,
        notify: NotifyPolicy,
        deliver: Callable[[float, object], None],
        delay_rng: random.Random,
        wire: bool = False,
        watch: float | None = None,
        jump: float = HostConfig().cpu_jump,
    ) -> None:
        self.wire = wire
        self._sim = sim
        self._index = index
        self._node = sim.nodes[index]
        self._scorer = scorer
        self._notify = notify
        self._deliver = deliver
        self._delay_rng = delay_rng
        self._cpu = Cpu(usage=None, cores=self._node.spec.cores)
        self._seq = 0
        self._state = State.ACTIVE
        self._capacity = 0.0
        self._timer_at: float | None = None
        self._asterisk: dict[int, Asterisk] = {}  # by channel count: values are immutable
        self.sent = 0
        self._watch = watch
        self._jump = jump
        self._watch_at: float | None = None
        #: The CPU before and after its last change, and when that was (what
        #: a short window that spans the change reads is between the two).
        self._cpu_before = self._cpu_after = 0.0
        self._cpu_changed_at = -INF
        #: Short-window readings that were taken (a jump seen).
        self.jumps = 0
        self._readings: dict[Asterisk, Reading] = {}  # for the current Cpu
        self._readings_cpu: Cpu | None = None

    def start(self) -> None:
        phase = self._sim.workload.phases[self._index]
        self._sim.at(phase * self.SAMPLE_INTERVAL, self._sample)
        if self._watch:
            self._watch_phase = phase * self._watch
            self._cpu_before = self._cpu_after = self._seen_now()
            self._sim.watch_cpu(self._index, self.cpu_moved)

    def _seen_now(self) -> float:
        # A host cannot be seen busier than 100%: demand beyond it is invisible.
        return min(1.0, self._node.cpu())

    def _sample(self, now: float, _: object = None) -> None:
        self._cpu = Cpu(usage=self._seen_now(), cores=self._node.spec.cores)
        self._rescore(now)
        self._sim.at(now + self.SAMPLE_INTERVAL, self._sample)

    def cpu_moved(self, now: float) -> None:
        """The node's CPU changed at `now` (the hog, the noise)."""
        if self._cpu_changed_at < now:  # (two changes at one instant are one)
            self._cpu_before = self._cpu_after
        self._cpu_changed_at = now
        self._cpu_after = self._seen_now()
        self._arm_watch(now)

    def _arm_watch(self, now: float) -> None:
        if self._watch_at is not None or self._cpu.usage is None:
            return
        if abs(self._seen_now() - self._cpu.usage) < self._jump:
            return
        w = self._watch
        assert w is not None
        k = math.floor((now - self._watch_phase) / w) + 1
        at = self._watch_phase + k * w
        if at <= now:  # `now` on a window's edge, rounded below it: the next window
            at += w
        self._watch_at = at
        self._sim.at(self._watch_at, self._watch_tick)

    def _watch_tick(self, now: float, _: object = None) -> None:
        self._watch_at = None
        w = self._watch
        assert w is not None
        current = self._seen_now()
        after = min(1.0, max(0.0, (now - self._cpu_changed_at) / w))
        seen = self._cpu_before + after * (current - self._cpu_before)
        if self._cpu.usage is not None and abs(seen - self._cpu.usage) >= self._jump:
            self.jumps += 1
            self._cpu = Cpu(usage=seen, cores=self._node.spec.cores)
            self._rescore(now)
        # The next short window sees the rest of a change this one saw in part.
        self._arm_watch(now)

    def channels_changed(self, now: float) -> None:
        self._rescore(now)

    def _asterisk_section(self) -> Asterisk:
        calls = self._node.calls
        section = self._asterisk.get(calls)
        if section is None:
            section = Asterisk(channels=calls, calls=calls, limit=self._node.spec.limit)
            self._asterisk[calls] = section
        return section

    def _rescore(self, now: float) -> None:
        asterisk = self._asterisk_section()
        reading = self._readings.get(asterisk) if self._readings_cpu is self._cpu else None
        if reading is None:
            if self._readings_cpu is not self._cpu:
                self._readings_cpu = self._cpu
                self._readings = {}
            reading = Reading(cpu=self._cpu, asterisk=asterisk, link=AsteriskLink.UP, asterisk_process=True)
            self._readings[asterisk] = reading
        score = self._scorer.score(reading)
        self._state, self._capacity = score.state, score.capacity
        self._consider(now)

    def _consider(self, now: float) -> None:
        if self._notify.poll(self._state, self._capacity, now):
            self._send(now)
        due = self._notify.next_poll(now)
        if due is not None and (self._timer_at is None or due < self._timer_at):
            self._timer_at = due
            self._sim.at(due, self._timer)

    def _timer(self, now: float, _: object = None) -> None:
        if now != self._timer_at:
            return  # superseded by an earlier timer
        self._timer_at = None
        self._consider(now)

    def _send(self, now: float) -> None:
        self._seq += 1
        self.sent += 1
        status = LoadStatus(
            node=self._node.spec.name,
            instance="sim",
            seq=self._seq,
            validity=self.VALIDITY,
            state=self._state,
            capacity=self._capacity,
            time=now,
            cpu=self._cpu,
            asterisk=self._asterisk_section(),
        )
        self._notify.sent(self._state, self._capacity, now)
        if self.wire:
            # Through the codec: the proxy gets what it would decode from the
            # body (validated, capacity to 4 decimals). Off in the benchmark
            # for speed: the rounding only reorders near-ties.
            status = codec.from_wire(codec.to_wire(status))
        self._sim.at(now + self._sim.delivery_delay(self._delay_rng), self._deliver, status)


class Sipstatus:
    """A proxy fed by sipstatus agents: a `NodeTable` of the last reports,
    and either a `WeightPolicy` (weighted random over its weights,
    recomputed on each report and when a node goes stale, like a script-side
    choice over an htable or dispatcher algorithm 11) or a `Selector` (asked
    for every call, told of every call sent)."""

    def __init__(
        self,
        rule: WeightPolicy | Selector,
        scorer: ScorerFactory | None = None,
        notify: NotifyPolicyFactory = AgentNotifyPolicy,
        name: str | None = None,
        workers: int = 1,
        wire: bool = False,
        watch: float | None = HostConfig().cpu_watch_interval or None,
    ) -> None:
        self._wire = wire
        self._watch = watch
        self._rule = rule
        self._weighted = hasattr(rule, "weights")
        # A selector's memory of the calls it sent is per process: Kamailio's
        # app_python3 keeps Python state per worker, and a worker chosen at
        # random handles each call. Reports are shared (an htable).
        self._selectors = [rule] + [copy.deepcopy(rule) for _ in range(workers - 1)]
        self._scorer = agent_scorer() if scorer is None else scorer
        self._notify = notify
        self.name = name or f"sipstatus-{rule.name}"
        #: Times a node's status expired before the next one arrived.
        self.expired = 0

    def start(self, sim: Simulation) -> None:
        names = [n.spec.name for n in sim.nodes]
        self._index = {name: i for i, name in enumerate(names)}
        self._names = names
        self._table = NodeTable(names)
        self._weights = [0] * len(names)
        self._expiry = INF
        self._views = list(self._table.views(0.0))
        self._rng = sim.rng("choice")
        delay_rng = sim.rng("delay")
        self.agents = []
        for i, node in enumerate(sim.nodes):
            agent = Agent(sim, i, self._scorer(node.spec), self._notify(), self._receive, delay_rng, self._wire,
                          watch=self._watch)
            sim.watch_channels(i, agent.channels_changed)
            agent.start()
            self.agents.append(agent)

    def _receive(self, now: float, status: object) -> None:
        assert isinstance(status, LoadStatus)
        self._check_expiry(now)
        self._table.update(status, now)
        self._reweigh(now)

    def _check_expiry(self, now: float) -> None:
        if now >= self._expiry:
            self.expired += 1
            self._reweigh(now)

    def _reweigh(self, now: float) -> None:
        # The views change only when a report arrives or a status expires.
        next_expiry = self._table.next_expiry(now)
        self._expiry = INF if next_expiry is None else next_expiry
        self._views = list(self._table.views(now))
        if self._weighted:
            weights = self._rule.weights(self._views)  # type: ignore[union-attr]
            self._weights = [weights[name] for name in self._names]

    def choose(self, now: float) -> int | None:
        self._check_expiry(now)
        if self._weighted:
            return weighted_choice(self._rng, self._weights)
        selectors = self._selectors
        self._worker = selectors[self._rng.randrange(len(selectors)) if len(selectors) > 1 else 0]
        node = self._worker.choose(self._views)  # type: ignore[union-attr]
        return None if node is None else self._index[node]

    def placed(self, node: int, accepted: bool, now: float) -> None:
        if not self._weighted:
            self._worker.sent(self._names[node])  # type: ignore[union-attr]

    def ended(self, node: int, now: float) -> None:
        pass


#: Where the agent's policies in this simulation come from.
AGENT_SOURCE = (
    "scoring: agent/scoring.py (the agent's own code); notification: a model of the agent's notifier "
    f"(is_significant from agent/service.py; the ceiling and heartbeat of sipstatus/sip/notifier.py): "
    f"on a significant change, at most {NotifierConfig().max_rate:g}/s, "
    "heartbeat 5 s"
)
