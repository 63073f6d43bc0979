"""The dispatch simulator's mechanics (bench/dispatchsim.py)."""

import dataclasses
import random
import statistics

import pytest

from agent.config import NotifierConfig, ScoringConfig
from bench.dispatchsim import (
    AgentNotifyPolicy,
    Ideal,
    NodeSpec,
    RoundRobin,
    Scenario,
    Simulation,
    Sipstatus,
    StaticWeights,
    Workload,
    agent_scorer,
    make_workload,
    simulate,
    weighted_choice,
)
from sipstatus.proxy.policy import HeadroomPolicy, LeastUtilisedSelector
from sipstatus.status import State

SMALL = Scenario(
    nodes=(NodeSpec("a", 20, 2), NodeSpec("b", 20, 2), NodeSpec("c", 10, 1), NodeSpec("d", 20, 2)),
    warmup=120.0,
    duration=1200.0,
    mean_hold=30.0,
)


class Recording:
    """Wraps a dispatcher and records when it was asked to choose."""

    def __init__(self, inner):
        self.inner = inner
        self.name = inner.name
        self.asked = []

    def start(self, sim):
        self.inner.start(sim)

    def choose(self, now):
        self.asked.append(now)
        return self.inner.choose(now)

    def placed(self, node, accepted, now):
        self.inner.placed(node, accepted, now)

    def ended(self, node, now):
        self.inner.ended(node, now)


class Always:
    """Sends every call to one node (or refuses every call, with None)."""

    name = "always"

    def __init__(self, node):
        self.node = node

    def start(self, sim):
        pass

    def choose(self, now):
        return self.node

    def placed(self, node, accepted, now):
        pass

    def ended(self, node, now):
        pass


def one_node(limit, *, hog_share=0.0, duration=100.0):
    return Scenario(nodes=(NodeSpec("solo", limit, 1),), warmup=0.0, duration=duration, hog_node=0, hog_share=hog_share)


def quiet_workload(scenario, arrivals, holds):
    seconds = int(scenario.end) + 2
    return Workload(0, tuple(arrivals), tuple(holds), tuple((0.0,) * seconds for _ in scenario.nodes), (0.5,) * len(scenario.nodes))


def test_the_same_seed_draws_the_same_workload():
    assert make_workload(SMALL, 7) == make_workload(SMALL, 7)
    assert make_workload(SMALL, 7).arrivals != make_workload(SMALL, 8).arrivals


def test_every_dispatcher_is_offered_the_same_calls_at_the_same_times():
    workload = make_workload(SMALL, 3)
    runs = [Recording(d) for d in (RoundRobin(), StaticWeights(), Ideal(), Sipstatus(HeadroomPolicy()))]
    results = [simulate(SMALL, workload, r) for r in runs]
    assert runs[0].asked == list(workload.arrivals)
    for run, result in zip(runs[1:], results[1:], strict=True):
        assert run.asked == runs[0].asked
        assert result.offered == results[0].offered


def test_a_dispatchers_own_randomness_leaves_the_workload_untouched():
    workload = make_workload(SMALL, 3)
    before = make_workload(SMALL, 3)
    simulate(SMALL, workload, StaticWeights())
    assert workload == before


def test_the_ideal_dispatcher_does_no_worse_than_round_robin():
    workload = make_workload(SMALL, 1)
    rr = simulate(SMALL, workload, RoundRobin())
    ideal = simulate(SMALL, workload, Ideal())
    assert rr.at_limit > 0  # the small node makes round robin hit the limit
    assert ideal.lost <= rr.lost
    assert ideal.percentile(95) <= rr.percentile(95)


def test_a_call_sent_to_a_node_at_its_limit_is_counted_as_lost():
    scenario = one_node(limit=1)
    workload = quiet_workload(scenario, [1.0, 2.0, 3.0], [50.0, 50.0, 50.0])
    sim = Simulation(scenario, workload, Always(0))
    result = sim.run()
    assert result.at_limit == 2
    assert result.lost == 2
    assert sim.nodes[0].calls == 0  # the one accepted call ended at 51 s


def test_a_call_the_proxy_refuses_is_lost_but_not_at_limit():
    scenario = one_node(limit=10)
    result = simulate(scenario, quiet_workload(scenario, [1.0], [5.0]), Always(None))
    assert (result.refused, result.at_limit, result.lost) == (1, 0, 1)


def test_a_call_to_a_node_with_saturated_cpu_is_rejected():
    # 150% CPU hog from the middle on: the node's channels are free but its CPU is not.
    scenario = one_node(limit=100, hog_share=1.5)
    workload = quiet_workload(scenario, [10.0, 60.0], [5.0, 5.0])
    result = simulate(scenario, workload, Always(0))
    assert result.at_limit == 1


class HogProbe(Always):
    """Looks at every node's hog just before and just after a moment."""

    def __init__(self, moment):
        super().__init__(0)
        self.moment = moment
        self.seen = {}

    def start(self, sim):
        for when in (self.moment - 1e-6, self.moment + 1e-6):
            sim.at(when, self.look, sim)

    def look(self, now, sim):
        self.seen[now < self.moment] = [n.hog for n in sim.nodes]


def test_the_hog_switches_on_half_way_through_the_window_on_its_node_only():
    probe = HogProbe(SMALL.hog_at)
    simulate(SMALL, make_workload(SMALL, 0), probe)
    assert SMALL.hog_at == SMALL.warmup + SMALL.duration / 2
    assert probe.seen[True] == [0.0, 0.0, 0.0, 0.0]
    assert probe.seen[False] == [0.0, 0.0, 0.0, SMALL.hog_share]


def test_time_above_100_percent_is_the_time_the_hog_saturates_the_node():
    scenario = one_node(limit=100, hog_share=1.5, duration=200.0)
    result = simulate(scenario, quiet_workload(scenario, [], []), Always(0))
    assert result.overload_time == pytest.approx(100.0)


def test_the_utilisation_is_sampled_once_a_second_over_the_window():
    result = simulate(SMALL, make_workload(SMALL, 0), RoundRobin())
    assert len(result.max_util) == int(SMALL.duration)


class Deliveries(Sipstatus):
    """Records when each node's reports were sent and delivered."""

    def start(self, sim):
        self.log = []
        super().start(sim)

    def _receive(self, now, status):
        self.log.append((status.node, status.time, now))
        super()._receive(now, status)


def test_agent_reports_keep_the_rate_ceiling_and_the_heartbeat():
    ceiling = 1 / NotifierConfig().max_rate  # the agent's default (spec 8.2)
    proxy = Deliveries(LeastUtilisedSelector())
    simulate(SMALL, make_workload(SMALL, 2), proxy)
    for node in ("a", "b", "c", "d"):
        sent = [t for n, t, _ in proxy.log if n == node]
        gaps = [b - a for a, b in zip(sent, sent[1:], strict=False)]
        # `time` crosses the wire rounded to the millisecond (spec section 6).
        assert min(gaps) >= ceiling - 0.001
        assert max(gaps) <= 5.0 + 0.001
    assert all(0.005 - 0.0005 <= received - sent <= 0.020 + 0.0005 for _, sent, received in proxy.log)


def test_weighted_choice_never_picks_a_zero_weight():
    rng = random.Random(0)
    picks = {weighted_choice(rng, [0, 3, 0, 1]) for _ in range(2000)}
    assert picks == {1, 3}
    assert weighted_choice(rng, [0, 0]) is None


def test_a_node_at_its_call_limit_is_reported_overloaded_by_the_agents_scorer():
    scenario = one_node(limit=2, duration=20.0)
    proxy = Deliveries(LeastUtilisedSelector())
    simulate(scenario, quiet_workload(scenario, [1.0, 2.0], [100.0, 100.0]), proxy)
    last = proxy._table.view("solo", scenario.end).status
    assert last.state is State.OVERLOADED
    assert last.asterisk.calls == 2


def test_the_proxy_refuses_calls_while_every_node_is_overloaded():
    scenario = one_node(limit=2, duration=20.0)
    workload = quiet_workload(scenario, [1.0, 2.0, 5.0, 6.0], [100.0] * 4)
    result = simulate(scenario, workload, Sipstatus(HeadroomPolicy()))
    # The first two fill the node; its report is out well before the next two.
    assert (result.at_limit, result.refused) == (0, 2)


def test_the_agent_scorer_thresholds_are_configurable():
    # At 90% CPU a scorer with cpu_max 0.85 says overloaded, cpu_max 1.0 does not.
    scenario = Scenario(nodes=(NodeSpec("solo", 100, 1, cpu_base=0.9),), warmup=0.0, duration=10.0, hog_share=0.0, hog_node=0)
    workload = quiet_workload(scenario, [], [])
    states = {}
    for cpu_max in (0.85, 1.0):
        proxy = Deliveries(HeadroomPolicy(), agent_scorer(ScoringConfig(cpu_max=cpu_max)))
        simulate(scenario, workload, proxy)
        states[cpu_max] = proxy._table.view("solo", scenario.end).status.state
    assert states == {0.85: State.OVERLOADED, 1.0: State.ACTIVE}


class CountingSelector(LeastUtilisedSelector):
    def __init__(self):
        super().__init__()
        self.total = 0

    def sent(self, node):
        self.total += 1
        super().sent(node)


def test_selector_workers_each_remember_only_the_calls_they_sent():
    proxy = Sipstatus(CountingSelector(), workers=4)
    result = simulate(SMALL, make_workload(SMALL, 5), proxy)
    totals = [s.total for s in proxy._selectors]
    assert len(totals) == 4 and min(totals) > 0
    assert sum(totals) == len(make_workload(SMALL, 5).arrivals) - result.refused


def test_reports_can_go_through_the_codec_and_arrive_as_decoded():
    proxy = Deliveries(LeastUtilisedSelector(), wire=True)
    simulate(SMALL, make_workload(SMALL, 4), proxy)
    assert proxy.log
    capacities = [v.status.capacity for v in proxy._views if v.status is not None]
    assert capacities and all(round(c, 4) == c for c in capacities)


# -- the model without rejection, holding times, refusals with room --


def test_without_rejection_a_full_node_takes_the_call_into_overload_and_it_counts_at_limit():
    scenario = dataclasses.replace(one_node(limit=1), reject=False)
    sim = Simulation(scenario, quiet_workload(scenario, [1.0, 2.0, 3.0], [50.0, 50.0, 50.0]), Always(0))
    result = sim.run()
    assert result.at_limit == 2
    assert max(result.max_util) == pytest.approx(3.0)  # three calls on a one-call node


def test_holding_times_can_be_exponential_with_the_same_mean():
    scenario = dataclasses.replace(SMALL, hold="exponential", duration=20000.0)
    holds = make_workload(scenario, 0).holds
    assert statistics.fmean(holds) == pytest.approx(scenario.mean_hold, rel=0.05)
    # exponential: the standard deviation equals the mean (log-normal sigma 1: 1.31 x the mean)
    assert statistics.stdev(holds) == pytest.approx(scenario.mean_hold, rel=0.1)


def test_an_unknown_holding_time_distribution_is_named_in_the_error():
    with pytest.raises(ValueError, match="'pareto'"):
        make_workload(dataclasses.replace(SMALL, hold="pareto"), 0)


def test_a_refusal_while_a_node_has_room_is_counted_apart():
    scenario = one_node(limit=10)
    result = simulate(scenario, quiet_workload(scenario, [1.0], [5.0]), Always(None))
    assert (result.refused, result.refused_with_room) == (1, 1)


def test_a_refusal_while_every_node_is_full_is_not_a_refusal_with_room():
    scenario = one_node(limit=1)
    workload = quiet_workload(scenario, [1.0, 2.0], [50.0, 50.0])

    class FirstThenNone(Always):
        def choose(self, now):
            return 0 if now < 1.5 else None

    result = simulate(scenario, workload, FirstThenNone(0))
    assert (result.refused, result.refused_with_room) == (1, 0)


# -- the agent's CPU watch --


def hog_at_step(watch):
    """A one-node pool at 50% CPU; a +40% hog at 50.0 s. How long after it
    does the proxy first hear a CPU above 85%? (No rate ceiling here: a
    heartbeat just before would hold the report back half a second.)"""
    scenario = Scenario(nodes=(NodeSpec("solo", 100, 1, cpu_base=0.5, cpu_at_limit=0.0),), warmup=0.0,
                        duration=100.0, hog_node=0, hog_share=0.4)
    proxy = Deliveries(HeadroomPolicy(), watch=watch, notify=lambda: AgentNotifyPolicy(min_interval=0.0))
    proxy.cpus = []
    receive = proxy._receive

    def record(now, status):
        proxy.cpus.append((now, status.cpu.usage))
        receive(now, status)

    proxy._receive = record
    workload = quiet_workload(scenario, [], [])
    simulate(scenario, workload, proxy)
    return next(now for now, usage in proxy.cpus if usage > 0.85) - scenario.hog_at


def test_without_the_cpu_watch_a_hog_is_seen_at_the_next_sample():
    # The sample clock's phase is 0.5: samples at 50.5 s.
    assert 0.5 <= hog_at_step(None) <= 0.5 + 0.021


def test_the_cpu_watch_sees_a_hog_within_two_short_windows():
    assert hog_at_step(0.1) <= 0.2 + 0.021


def test_the_simulated_significance_rule_is_the_agents():
    from agent.service import is_significant
    from bench.dispatchsim import _status

    policy = AgentNotifyPolicy()
    policy.sent(State.ACTIVE, 0.50, 0.0)
    for state in State:
        for capacity in (0.0, 0.44, 0.455, 0.46, 0.5, 0.54, 0.545, 0.56, 1.0):
            expected = is_significant(_status(State.ACTIVE, 0.50), _status(state, capacity))
            assert policy._significant(state, capacity) == expected, (state, capacity)
