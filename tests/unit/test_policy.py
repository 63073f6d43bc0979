"""Weight policies and selectors: from node statuses to weights and choices."""

import pytest

from sipstatus.proxy.nodetable import NodeView
from sipstatus.proxy.policy import (
    POLICIES,
    FreeSlotsPolicy,
    HeadroomPolicy,
    LeastUtilisedSelector,
    WaterFillPolicy,
    WeightDamper,
    make_policy,
)
from sipstatus.status import Asterisk, LoadStatus, State


def view(node, capacity, limit=None, state=State.ACTIVE, fresh=True, seq=1):
    s = LoadStatus(node, "i", seq, 15, state, capacity, asterisk=Asterisk(limit=limit))
    return NodeView(node, s, 0.0, fresh)


def test_headroom_weights_are_the_nodes_own_hints():
    assert HeadroomPolicy().weights([view("a", 0.6), view("b", 0.3)]) == {"a": 60, "b": 30}


@pytest.mark.parametrize("state", [State.DRAINING, State.OVERLOADED, State.DOWN])
def test_every_policy_gives_a_node_that_takes_no_calls_weight_zero(state):
    views = [view("a", 0.6), view("b", 0.9, state=state)]
    assert HeadroomPolicy().weights(views)["b"] == 0
    assert FreeSlotsPolicy().weights(views)["b"] == 0
    assert WaterFillPolicy().weights(views)["b"] == 0


def test_a_stale_node_gets_weight_zero():
    views = [view("a", 0.6), view("b", 0.9, fresh=False)]
    assert HeadroomPolicy().weights(views)["b"] == 0
    assert FreeSlotsPolicy().weights(views)["b"] == 0
    assert WaterFillPolicy().weights(views)["b"] == 0


def test_free_slots_weights_follow_free_slots_not_free_fraction():
    # Same free fraction, but the big node has twice the slots.
    weights = FreeSlotsPolicy().weights([view("big", 0.5, limit=400), view("small", 0.5, limit=200)])
    assert weights == {"big": 100, "small": 50}


def test_free_slots_uses_the_default_limit_when_the_limit_is_unknown():
    weights = FreeSlotsPolicy(default_limit=200).weights([view("known", 0.5, limit=400), view("unknown", 0.5)])
    assert weights == {"known": 100, "unknown": 50}


def test_free_slots_keeps_a_node_with_a_little_room_at_weight_one():
    weights = FreeSlotsPolicy().weights([view("a", 1.0, limit=1000), view("b", 0.01, limit=100)])
    assert weights["b"] == 1


def test_free_slots_is_all_zero_when_no_node_has_room():
    assert FreeSlotsPolicy().weights([view("a", 0.0, limit=10)]) == {"a": 0}


def test_least_utilised_chooses_the_lowest_utilisation():
    assert LeastUtilisedSelector().choose([view("a", 0.3), view("b", 0.7)]) == "b"


def test_least_utilised_counts_the_calls_it_sent_since_the_last_report():
    selector = LeastUtilisedSelector()
    views = [view("a", 0.50, limit=100), view("b", 0.45, limit=100)]
    picks = []
    for _ in range(10):
        picks.append(selector.choose(views))
        selector.sent(picks[-1])
    # a starts at 50% used, b at 55%; each call sent adds 1% to its node.
    # a takes 5 calls to catch up with b, then they alternate (ties go to the first).
    assert picks == ["a"] * 6 + ["b", "a", "b", "a"]


def test_least_utilised_forgets_sent_calls_when_a_new_report_arrives():
    selector = LeastUtilisedSelector()
    first = [view("a", 0.5, limit=10)]
    selector.choose(first)
    selector.sent("a")
    # Against the same report, a (50% + 10% sent) loses to b (55%); against a
    # newer report of a at 50%, the sent call is in the report and a wins.
    assert selector.choose(first + [view("b", 0.45, limit=10)]) == "b"
    assert selector.choose([view("a", 0.5, limit=10, seq=2), view("b", 0.45, limit=10)]) == "a"


def test_least_utilised_chooses_nothing_when_no_node_accepts_calls():
    assert LeastUtilisedSelector().choose([view("a", 0.5, state=State.DRAINING)]) is None


def test_damper_passes_the_first_weights():
    assert WeightDamper(min_step=5).apply({"a": 50}) == {"a": 50}


def test_damper_holds_a_change_smaller_than_the_step():
    damper = WeightDamper(min_step=5)
    damper.apply({"a": 50, "b": 20})
    assert damper.apply({"a": 53, "b": 18}) is None
    assert damper.current == {"a": 50, "b": 20}


def test_damper_passes_a_change_of_at_least_the_step_and_keeps_the_others():
    damper = WeightDamper(min_step=5)
    damper.apply({"a": 50, "b": 20})
    assert damper.apply({"a": 56, "b": 22}) == {"a": 56, "b": 20}


def test_damper_always_passes_a_change_to_or_from_zero():
    damper = WeightDamper(min_step=5)
    damper.apply({"a": 3})
    assert damper.apply({"a": 0}) == {"a": 0}
    assert damper.apply({"a": 2}) == {"a": 2}


# -- water-filling --


def loaded(node, calls, limit, capacity=None, **kw):
    """A node carrying `calls` of `limit`; its capacity is what is free of
    the limit unless given (a CPU hog makes it smaller)."""
    capacity = (limit - calls) / limit if capacity is None else capacity
    s = LoadStatus(node, "i", 1, 15, State.ACTIVE, capacity, asterisk=Asterisk(calls=calls, channels=calls, limit=limit))
    return NodeView(node, s, 0.0, kw.get("fresh", True))


def test_water_fill_weights_are_the_calls_carried_when_utilisation_is_equal():
    # Equal utilisation: each node is sent what it loses as its calls end.
    weights = WaterFillPolicy(floor=0.0).weights([loaded("big", 300, 400), loaded("small", 150, 200)])
    assert weights == {"big": 100, "small": 50}


def test_water_fill_sends_a_node_below_the_pools_level_more_than_its_share():
    weights = WaterFillPolicy().weights([loaded("low", 200, 400), loaded("high", 300, 400)])
    assert weights["low"] == 100 and weights["high"] < 50


def test_water_fill_counts_load_that_is_not_calls():
    # Same calls, but a CPU hog leaves "hog" only 10% free: it is the fuller node.
    weights = WaterFillPolicy().weights([loaded("calm", 240, 400), loaded("hog", 240, 400, capacity=0.1)])
    assert weights["calm"] == 100 and weights["hog"] < weights["calm"] / 4


def test_water_fill_spreads_an_idle_pool_by_its_room():
    weights = WaterFillPolicy().weights([loaded("big", 0, 400), loaded("small", 0, 200)])
    assert weights == {"big": 100, "small": 50}


def test_water_fill_keeps_a_node_far_above_the_level_at_a_small_weight_not_zero():
    weights = WaterFillPolicy().weights([loaded("a", 100, 400), loaded("b", 390, 400)])
    assert weights["a"] == 100 and weights["b"] == 1


def test_water_fill_without_call_counts_takes_the_utilisation_times_the_size():
    weights = WaterFillPolicy(default_limit=100, floor=0.0).weights([view("a", 0.5), view("b", 0.5)])
    assert weights == {"a": 100, "b": 100}


def test_water_fill_is_all_zero_when_no_node_accepts_calls():
    assert WaterFillPolicy().weights([loaded("a", 10, 10)]) == {"a": 0}


def test_water_fill_is_the_policy_a_proxy_uses_unless_told_otherwise():
    policy = make_policy(default_limit=250)
    assert isinstance(policy, WaterFillPolicy) and policy.default_limit == 250


def test_an_unknown_policy_name_is_named_in_the_error():
    with pytest.raises(ValueError, match="'fastest'.*water-fill"):
        make_policy("fastest")


def test_every_named_policy_can_be_made():
    assert {make_policy(name).name for name in POLICIES} == set(POLICIES)


def test_water_fill_aims_a_node_whose_room_is_its_cpu_lower_near_saturation():
    # Same utilisation 0.96 on both, but "cpu" is bound by its CPU (a measured
    # average), "calls" by its exact call count: near saturation "cpu" counts
    # the whole margin (0.05) and gets less.
    pool = [loaded("calls", 384, 400), loaded("cpu", 240, 400, capacity=0.04)]
    weights = WaterFillPolicy(floor=0.0).weights(pool)
    assert weights["calls"] == 100 and weights["cpu"] < 30
    even = WaterFillPolicy(floor=0.0, measured_margin=0.0).weights(pool)
    assert even == {"calls": 100, "cpu": 63}


def test_water_fill_counts_no_margin_for_a_cpu_bound_node_far_from_saturation():
    # At 0.8 (below 1 - 2 x margin) the CPU figure cannot reach saturation
    # unreported: both nodes are aimed at the same level.
    pool = [loaded("calls", 320, 400), loaded("cpu", 240, 400, capacity=0.2)]
    assert WaterFillPolicy(floor=0.0).weights(pool) == WaterFillPolicy(floor=0.0, measured_margin=0.0).weights(pool)


def test_water_fill_margin_grows_from_nothing_to_the_whole_margin_between_two_margins_and_one():
    def cpu_weight(capacity):
        pool = [loaded("calls", 400 - round(400 * capacity), 400), loaded("cpu", 200, 400, capacity=capacity)]
        return WaterFillPolicy(floor=0.0).weights(pool)["cpu"]

    def unmargined(capacity):
        pool = [loaded("calls", 400 - round(400 * capacity), 400), loaded("cpu", 200, 400, capacity=capacity)]
        return WaterFillPolicy(floor=0.0, measured_margin=0.0).weights(pool)["cpu"]

    assert cpu_weight(0.10) == unmargined(0.10)  # u = 0.90: none
    assert cpu_weight(0.07) < unmargined(0.07)  # u = 0.93: part of it
    # u = 0.93 counts 0.96 (0.03 more), u = 0.95 counts 1.0 (0.05 more)
    assert cpu_weight(0.07) > cpu_weight(0.05)
