"""Weight policies and selectors: from node statuses to weights and choices."""

import pytest

from sipstatus.nodetable import NodeView
from sipstatus.policy import FreeSlotsPolicy, HeadroomPolicy, LeastUtilisedSelector, WeightDamper
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


def test_a_stale_node_gets_weight_zero():
    views = [view("a", 0.6), view("b", 0.9, fresh=False)]
    assert HeadroomPolicy().weights(views)["b"] == 0
    assert FreeSlotsPolicy().weights(views)["b"] == 0


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
