"""The proxy pool's decisions on a fake clock: no sockets, no sleeps.

`ProxyPool` is sans-I/O: every test passes `now`, asks `next_timer()` and
calls `handle_timer(now)` then, as the asyncio Watcher does.
"""

import pytest

from sipstatus.proxy.nodetable import NodeTable
from sipstatus.proxy.policy import HeadroomPolicy
from sipstatus.proxy.pool import (
    RECOMPUTE_INTERVAL,
    SINK_RETRY_MAX,
    STARTUP_GRACE,
    ProxyPool,
    SinkSchedule,
)
from sipstatus.status import LoadStatus, State

T0 = 1000.0


def status(node="ast1", seq=1, capacity=0.5, validity=15, instance="run1", state=State.ACTIVE):
    return LoadStatus(node, instance, seq, validity, state, capacity)


class CountingPolicy(HeadroomPolicy):
    """The headroom policy (weight = the node's hint), counting its runs."""

    def __init__(self):
        super().__init__()
        self.runs = 0

    def weights(self, views):
        self.runs += 1
        return super().weights(views)


def make_pool(nodes=("ast1",), *, expected=None, auto_join=False, sinks=("weights",), **kwargs):
    expected = list(nodes) if expected is None else expected
    pool = ProxyPool(NodeTable(nodes, auto_join=auto_join), CountingPolicy(),
                     expected=lambda: expected, **kwargs)
    schedules = {kind: pool.add_sink(kind, can_forget=True) for kind in sinks}
    pool.start(T0)
    return pool, schedules


def run_until(pool, until, subscribed=()):
    """Fire every timer due up to `until`, as the driver does; the resubscriptions asked for."""
    asked = []
    while (when := pool.next_timer()) is not None and when <= until:
        asked += pool.handle_timer(when, subscribed).resubscribe
    return asked


def taken(schedule, now=T0 + 100):
    """The payload a weight sink would be given now (None: nothing to push)."""
    job = schedule.take(now, None)
    return None if job is None else job.payload


# -- coalescing -------------------------------------------------------------------------------


def test_start_asks_for_a_computation_at_once():
    pool, _ = make_pool()
    assert pool.next_timer() == T0
    assert pool.handle_timer(T0).computed


def test_reports_closer_than_the_recompute_interval_are_taken_in_one_computation():
    pool, _ = make_pool(("ast1", "ast2"))
    run_until(pool, T0)
    runs = pool.policy.runs
    pool.report(status("ast1", capacity=0.3), T0 + 0.001)
    pool.changed(T0 + 0.001)
    pool.report(status("ast2", capacity=0.6), T0 + 0.005)
    pool.changed(T0 + 0.005)
    assert pool.next_timer() == pytest.approx(T0 + RECOMPUTE_INTERVAL)
    assert not pool.handle_timer(T0 + 0.01).computed  # not due yet
    assert pool.handle_timer(T0 + RECOMPUTE_INTERVAL).computed
    assert pool.policy.runs == runs + 1
    assert pool.weights == {"ast1": 30, "ast2": 60}


def test_a_change_long_after_the_last_computation_is_computed_at_once():
    pool, _ = make_pool()
    run_until(pool, T0)
    pool.changed(T0 + 3.0)
    assert pool.next_timer() == T0 + 3.0


def test_the_policy_runs_once_per_change_with_weight_and_view_sinks_and_a_reader():
    pool, _ = make_pool(sinks=("weights", "views"))
    pool.report(status(capacity=0.4), T0)
    run_until(pool, T0)
    runs = pool.policy.runs
    pool.report(status(seq=2, capacity=0.7), T0 + 1)
    pool.changed(T0 + 1)
    run_until(pool, T0 + 1)
    assert pool.weights_at(T0 + 1) == {"ast1": 70} and pool.weights_at(T0 + 2) == {"ast1": 70}
    assert pool.policy.runs == runs + 1


def test_a_reader_between_a_change_and_its_computation_gets_the_new_weights():
    pool, _ = make_pool()
    run_until(pool, T0)
    pool.report(status(capacity=0.4), T0 + 1)
    pool.changed(T0 + 1)
    assert pool.weights_at(T0 + 1) == {"ast1": 40}


# -- start-up grace -----------------------------------------------------------------------------


def test_nothing_is_pushed_in_the_grace_while_a_configured_node_is_unheard():
    pool, sinks = make_pool(("ast1", "ast2"))
    pool.report(status("ast1", capacity=0.5), T0)
    run_until(pool, T0 + STARTUP_GRACE - 0.001)
    assert pool.pushed is None and taken(sinks["weights"]) is None
    assert pool.next_timer() == T0 + STARTUP_GRACE


def test_after_the_grace_an_unheard_node_gets_weight_0():
    pool, sinks = make_pool(("ast1", "ast2"))
    pool.report(status("ast1", capacity=0.5), T0)
    run_until(pool, T0 + STARTUP_GRACE)
    assert taken(sinks["weights"]) == {"ast1": 50, "ast2": 0}
    assert pool.pushed == {"ast1": 50, "ast2": 0}


def test_the_grace_ends_once_every_configured_node_has_been_heard_from():
    pool, sinks = make_pool(("ast1", "ast2"))
    pool.report(status("ast1", capacity=0.5), T0)
    pool.report(status("ast2", capacity=0.2), T0 + 0.5)
    pool.changed(T0 + 0.5)
    run_until(pool, T0 + 0.5)
    assert taken(sinks["weights"]) == {"ast1": 50, "ast2": 20}


def test_an_agent_not_named_yet_holds_the_grace_to_its_end():
    pool, sinks = make_pool(("ast1",), expected=["ast1", "sip:192.0.2.9:5070"])
    pool.report(status("ast1"), T0)
    run_until(pool, T0 + 1)
    assert pool.pushed is None
    run_until(pool, T0 + STARTUP_GRACE)
    assert taken(sinks["weights"]) == {"ast1": 50}


def test_rooms_wait_for_the_grace_as_well():
    pool, sinks = make_pool(("ast1", "ast2"), sinks=("weights", "rooms"))
    pool.report(status("ast1"), T0)
    run_until(pool, T0 + 1)
    assert sinks["rooms"].latest is None
    run_until(pool, T0 + STARTUP_GRACE)
    assert sinks["rooms"].latest == {}


def test_without_sinks_there_is_no_grace_timer():
    pool, _ = make_pool(("ast1", "ast2"), sinks=())
    run_until(pool, T0)
    assert pool.next_timer() is None


# -- damping and departures ---------------------------------------------------------------------


def test_a_move_smaller_than_the_damper_step_is_not_pushed():
    pool, sinks = make_pool(damper_step=5)
    pool.report(status(capacity=0.5), T0)
    run_until(pool, T0)
    assert taken(sinks["weights"]) == {"ast1": 50}
    pool.report(status(seq=2, capacity=0.53), T0 + 1)
    pool.changed(T0 + 1)
    run_until(pool, T0 + 1)
    assert taken(sinks["weights"]) is None and pool.pushed == {"ast1": 50}
    pool.report(status(seq=3, capacity=0.56), T0 + 2)
    pool.changed(T0 + 2)
    run_until(pool, T0 + 2)
    assert taken(sinks["weights"]) == {"ast1": 56}


def test_a_node_that_stops_taking_calls_gets_through_at_once():
    pool, sinks = make_pool(damper_step=5)
    pool.report(status(capacity=0.02), T0)
    run_until(pool, T0)
    taken(sinks["weights"])
    pool.report(status(seq=2, capacity=0.02, state=State.DRAINING), T0 + 1)
    pool.changed(T0 + 1)
    run_until(pool, T0 + 1)
    assert taken(sinks["weights"]) == {"ast1": 0}


def test_a_departed_node_is_pushed_weight_0_once_then_forgotten():
    pool, sinks = make_pool(("ast1",), auto_join=True, sinks=("weights", "views"))
    pool.report(status("ast1"), T0)
    pool.report(status("pub9", capacity=0.3), T0)
    run_until(pool, T0)
    assert taken(sinks["weights"]) == {"ast1": 50, "pub9": 30}
    pool.table.forget("pub9")  # its publication was removed: an auto-joined node leaves
    pool.changed(T0 + 1)
    run_until(pool, T0 + 1)
    assert taken(sinks["weights"]) == {"ast1": 50, "pub9": 0}
    views, given = sinks["views"].take(T0 + 100, None).payload
    assert [v.node for v in views] == ["ast1", "pub9"] and given == {"ast1": 50, "pub9": 0}
    assert views[1].status is None
    assert pool.pushed == {"ast1": 50}
    pool.report(status("ast1", seq=2, capacity=0.9), T0 + 2)
    pool.changed(T0 + 2)
    run_until(pool, T0 + 2)
    assert taken(sinks["weights"]) == {"ast1": 90}


def test_view_sinks_get_every_change_even_one_the_damper_holds_back():
    pool, sinks = make_pool(sinks=("weights", "views"))
    pool.report(status(capacity=0.5), T0)
    run_until(pool, T0)
    taken(sinks["weights"]), taken(sinks["views"])
    pool.report(status(seq=2, capacity=0.52), T0 + 1)
    pool.changed(T0 + 1)
    run_until(pool, T0 + 1)
    assert taken(sinks["weights"]) is None
    views, given = taken(sinks["views"])
    assert views[0].status.capacity == 0.52 and given == {"ast1": 50}


# -- staleness and re-subscription ------------------------------------------------------------


def test_a_stale_subscribed_node_is_subscribed_to_afresh_once_per_staleness():
    pool, _ = make_pool(("ast1", "ast2"))
    pool.report(status("ast1", validity=15), T0)
    pool.report(status("ast2", validity=30), T0)
    assert run_until(pool, T0 + 14.999, ["ast1", "ast2"]) == []
    assert pool.next_timer() == T0 + 15
    assert run_until(pool, T0 + 15, ["ast1", "ast2"]) == ["ast1"]
    assert run_until(pool, T0 + 30, ["ast1", "ast2"]) == ["ast2"]  # and ast1 not again
    pool.report(status("ast1", seq=2, validity=15), T0 + 40)  # back: a new staleness may follow
    pool.changed(T0 + 40)
    assert run_until(pool, T0 + 55, ["ast1", "ast2"]) == ["ast1"]


def test_a_stale_node_whose_subscription_is_down_is_left_to_its_backoff():
    pool, _ = make_pool()
    pool.report(status(validity=15), T0)
    assert run_until(pool, T0 + 15, subscribed=[]) == []


def test_a_node_gone_stale_gets_weight_0_at_its_expiry():
    pool, sinks = make_pool()
    pool.report(status(validity=15), T0)
    run_until(pool, T0)
    assert taken(sinks["weights"]) == {"ast1": 50}
    run_until(pool, T0 + 15)
    assert taken(sinks["weights"]) == {"ast1": 0}


# -- one sink's schedule: newest first, retries, flushes, resyncs -----------------------------


def test_only_the_newest_payload_is_pushed():
    schedule = SinkSchedule()
    schedule.want({"ast1": 10})
    schedule.want({"ast1": 20})
    job = schedule.take(T0, None)
    assert (job.action, job.payload) == ("push", {"ast1": 20})
    schedule.done(job, T0)
    assert schedule.take(T0, None) is None and schedule.pushes == 1


def test_a_failed_push_is_tried_again_with_doubling_backoff_up_to_the_maximum():
    schedule = SinkSchedule()
    schedule.want({"ast1": 10})
    now, waits = T0, []
    for _ in range(9):
        job = schedule.take(now, None)
        assert job.payload == {"ast1": 10}
        waits.append(schedule.failed(job, now, "MI unreachable"))
        assert schedule.take(now + waits[-1] - 0.001, None) is None
        assert schedule.next_timer(None) == now + waits[-1]
        now += waits[-1]
    assert waits == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, SINK_RETRY_MAX, SINK_RETRY_MAX, SINK_RETRY_MAX]
    assert schedule.last_error == "MI unreachable" and schedule.failures == 9
    job = schedule.take(now, None)
    schedule.done(job, now)
    assert schedule.failures == 0 and schedule.last == {"ast1": 10}


def test_a_newer_payload_during_the_backoff_replaces_the_failed_one():
    schedule = SinkSchedule()
    schedule.want({"ast1": 10})
    schedule.failed(schedule.take(T0, None), T0, "refused")
    schedule.want({"ast1": 30})
    assert schedule.take(T0 + 0.2, None) is None  # still backing off
    assert schedule.take(T0 + 0.5, None).payload == {"ast1": 30}


def test_held_back_work_is_flushed_when_the_sink_says():
    schedule = SinkSchedule()
    assert schedule.next_timer(T0 + 5) == T0 + 5
    assert schedule.take(T0 + 4, T0 + 5) is None
    assert schedule.take(T0 + 5, T0 + 5).action == "flush"


def test_a_sink_that_can_forget_is_given_the_last_payload_in_full_every_resync():
    pool, sinks = make_pool(sink_resync=60.0)
    schedule = sinks["weights"]
    pool.report(status(), T0)
    run_until(pool, T0)
    job = schedule.take(T0, None)
    schedule.done(job, T0)
    assert schedule.next_timer(None) == T0 + 60
    assert schedule.take(T0 + 59, None) is None
    job = schedule.take(T0 + 60, None)
    assert (job.action, job.payload) == ("resync", {"ast1": 50})
    schedule.done(job, T0 + 60)
    assert schedule.resyncs == 1 and schedule.next_timer(None) == T0 + 120


def test_a_sink_that_cannot_forget_is_never_resynced():
    pool = ProxyPool(NodeTable(["ast1"]), HeadroomPolicy(), sink_resync=60.0)
    schedule = pool.add_sink("weights", can_forget=False)
    schedule.want({"ast1": 50})
    schedule.done(schedule.take(T0, None), T0)
    assert schedule.next_timer(None) is None
