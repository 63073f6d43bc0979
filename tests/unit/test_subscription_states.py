"""The subscriber's states and the one table of its moves (sipstatus.sip.subscriber)."""

from __future__ import annotations

import pytest

from sipstatus.sip.subscriber import (
    ACTIVE,
    IDLE,
    STOPPED,
    SUBSCRIBING,
    TRANSITIONS,
    UNSUBSCRIBING,
    WAITING,
    Subscriber,
    SubscriberConfig,
    SubscriberState,
)


def subscriber() -> Subscriber:
    config = SubscriberConfig("load-status", "application/load-status+json",
                              "sip:proxy@192.0.2.1", "sip:proxy@192.0.2.1:5060")
    return Subscriber("sip:agent@192.0.2.2", config)


def test_every_state_has_its_row_in_the_table():
    assert set(TRANSITIONS) == set(SubscriberState)


def test_a_new_subscription_may_follow_any_state():
    assert all(SUBSCRIBING in moves for state, moves in TRANSITIONS.items() if state is not SUBSCRIBING)


@pytest.mark.parametrize("state", [IDLE, WAITING, STOPPED, UNSUBSCRIBING])
def test_only_a_subscription_in_flight_or_up_becomes_active(state):
    assert ACTIVE not in TRANSITIONS[state]


def test_only_an_active_subscription_unsubscribes():
    assert [s for s, moves in TRANSITIONS.items() if UNSUBSCRIBING in moves] == [ACTIVE]


def test_a_move_outside_the_table_is_refused():
    sub = subscriber()
    assert sub.state is IDLE
    with pytest.raises(RuntimeError, match="idle to active"):
        sub._enter(ACTIVE)
    assert sub.state is IDLE


def test_start_and_stop_move_through_the_table():
    sub = subscriber()
    sub.start(0.0)
    assert sub.state is SUBSCRIBING
    sub2 = subscriber()
    sub2.stop(0.0)
    assert sub2.state is STOPPED
