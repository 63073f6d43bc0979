"""OpenSIPS's load_balancer sizes, counted by the configured weight policy."""

import pytest

from sipstatus.proxy.nodetable import NodeView
from sipstatus.proxy.opensips import lb_capacity
from sipstatus.proxy.policy import POLICIES, FreeSlotsPolicy, free_slots, make_policy
from sipstatus.status import Asterisk, LoadStatus, State


def view(capacity, limit=100, calls=None, state=State.ACTIVE, fresh=True):
    status = LoadStatus("ast1", "i", 1, 15, state, capacity, asterisk=Asterisk(calls=calls, limit=limit))
    return NodeView("ast1", status, 0.0, fresh)


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_every_policy_sizes_a_node_as_the_sink_did_with_the_same_default_limit(name):
    policy = make_policy(name, default_limit=60)
    for v, load in ((view(0.25, limit=40, calls=30), 4), (view(0.5, limit=None), 0), (view(0.3, calls=2), 9)):
        assert lb_capacity(v, load, policy=policy) == lb_capacity(v, load, default_limit=60)
    assert lb_capacity(view(0.5, limit=None), 0, policy=policy) == 30


def test_the_default_policy_gives_the_numbers_of_the_formula():
    assert lb_capacity(view(0.25, limit=40), 4, policy=make_policy()) == 14
    assert lb_capacity(view(0.25, limit=40, calls=3), 4, policy=make_policy()) == 13


def test_a_node_that_takes_no_calls_has_no_free_slots():
    assert free_slots(view(0.5, state=State.DRAINING), make_policy()) == 0.0
    assert free_slots(view(0.5, fresh=False), make_policy()) == 0.0
    assert lb_capacity(view(0.5, fresh=False), 7, policy=make_policy()) == 7


def test_free_slots_policy_weighs_by_the_same_measure():
    policy = FreeSlotsPolicy(default_limit=200)
    small, big = view(0.5, limit=None), view(0.5, limit=400)
    assert free_slots(small, policy) == 100.0 and free_slots(big, policy) == 200.0
