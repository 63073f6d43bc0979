"""The watcher against in-process agents over real UDP sockets on 127.0.0.1.

Nothing here sleeps to let time pass: every test waits for what it expects
(`Watcher.wait_for`, an agent's events) with a timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses

import pytest

from sipstatus.codec import MEDIA_TYPE, encode
from sipstatus.net import SipService
from sipstatus.proxy.agents import Agent
from sipstatus.proxy.policy import FreeSlotsPolicy, HeadroomPolicy
from sipstatus.proxy.watcher import Watcher, WatcherConfig
from sipstatus.sip import subscriber
from sipstatus.sip.endpoint import Endpoint
from sipstatus.sip.notifier import SubscriptionCreated, SubscriptionTerminated
from sipstatus.sip.publisher import PublicationFailed, Published, Publisher, Unpublished
from sipstatus.sip.subscriber import STOPPED, SUBSCRIBING
from sipstatus.sip.transaction import Destination
from sipstatus.status import State
from tests.support.fake_agents import FakeAgent, status_for
from tests.support.subscriber_driver import AGENT, active, notify, sent

WAIT = 10.0


class RecordingSink:
    """A sink that remembers what it was given."""

    def __init__(self):
        self.pushes: list[dict[str, int]] = []

    def push(self, weights, now):
        self.pushes.append(dict(weights))

    def next_flush(self):
        return None

    def flush(self, now):
        return False


async def started(agents, **kw) -> Watcher:
    config = kw.pop("config", None) or WatcherConfig(**kw.pop("settings", {}))
    watcher = Watcher([Agent(a.node, a.uri) for a in agents], config=config, **kw)
    await watcher.start()
    return watcher


@contextlib.asynccontextmanager
async def watching(agents, watcher: Watcher | None = None, **kw):
    """`watcher` started (by default one following the started `agents`, made
    as `started` makes it); on leaving, it is closed, then the agents stopped."""
    if watcher is None:
        watcher = await started(agents, **kw)
    else:
        await watcher.start()
    try:
        yield watcher
    finally:
        await watcher.close()
        for agent in agents:
            await agent.stop()


def weight_of(watcher: Watcher, node: str):
    return {r.node: r.weight for r in watcher.rows()}[node]


def row_of(watcher: Watcher, node: str):
    return {r.node: r for r in watcher.rows()}[node]


async def until(watcher: Watcher, predicate, what: str, timeout: float = WAIT):
    if not await watcher.wait_for(predicate, timeout):
        pytest.fail(f"timed out waiting for {what}; rows: {watcher.rows()}")


def run(coroutine):
    asyncio.run(coroutine)


# -- following agents ------------------------------------------------------------------------


def test_weights_converge_for_every_agent_under_free_slots():
    async def main():
        agents = [await FakeAgent("ast1", capacity=0.5, limit=200).start(),  # 100 free slots
                  await FakeAgent("ast2", capacity=0.8, limit=100).start(),  # 80
                  await FakeAgent("ast3", capacity=0.25, limit=100).start()]  # 25
        async with watching(agents, policy=FreeSlotsPolicy()) as watcher:
            expected = {"ast1": 100, "ast2": 80, "ast3": 25}
            await until(watcher, lambda w: w.weights() == expected, "the free-slots weights")
            assert {r.node: r.state for r in watcher.rows()} == {n: "active" for n in expected}
            agents[2].set(capacity=0.9)  # 90 free slots
            await until(watcher, lambda w: w.weights() == {"ast1": 100, "ast2": 80, "ast3": 90},
                        "ast3's new weight")

    run(main())


def test_headroom_policy_gives_each_node_its_own_hint():
    async def main():
        agents = [await FakeAgent("ast1", capacity=0.5, limit=200).start(),
                  await FakeAgent("ast2", capacity=0.625, limit=100).start()]
        async with watching(agents, policy=HeadroomPolicy()) as watcher:
            await until(watcher, lambda w: w.weights() == {"ast1": 50, "ast2": 63}, "headroom weights")

    run(main())


def test_a_node_never_heard_from_is_unknown_not_zero():
    async def main():
        silent = Destination("UDP", "127.0.0.1", 9)  # discard port: nothing answers
        watcher = Watcher([Agent("ghost", f"sip:{silent.host}:{silent.port}")])
        async with watching([], watcher):
            (row,) = watcher.rows()
            assert row.state == "unknown" and row.weight is None and row.capacity is None
            assert row.cpu is None and row.channels is None and row.age is None
            assert not row.takes_calls

    run(main())


def test_an_agent_that_stops_answering_goes_stale_and_its_weight_drops_to_0():
    async def main():
        live = await FakeAgent("ast1", capacity=0.5, validity=1).start()
        dead = await FakeAgent("ast2", capacity=0.5, validity=1).start()
        async with watching([live, dead], policy=HeadroomPolicy()) as watcher:
            await until(watcher, lambda w: w.weights() == {"ast1": 50, "ast2": 50}, "both agents")
            await dead.stop()
            await until(watcher, lambda w: row_of(w, "ast2").state == "stale", "ast2 stale", timeout=5)
            row = row_of(watcher, "ast2")
            assert row.weight == 0 and row.reported == "active" and row.capacity == 0.5
            assert watcher.weights() == {"ast1": 50, "ast2": 0}
            # The live agent's heartbeats keep it fresh meanwhile.
            assert row_of(watcher, "ast1").state == "active"

    run(main())


def test_a_killed_and_restarted_agent_is_subscribed_to_afresh_when_its_node_goes_stale():
    # The restarted agent knows nothing of our subscription and says nothing;
    # without this the node would wait for our refresh (480 s of 600) to return.
    async def main():
        old = await FakeAgent("ast1", capacity=0.5, validity=1).start()
        async with watching([old], policy=HeadroomPolicy()) as watcher:
            await until(watcher, lambda w: w.weights() == {"ast1": 50}, "the first body")
            port = old.port
            await old.stop()  # killed: no final NOTIFY
            await until(watcher, lambda w: row_of(w, "ast1").state == "stale", "ast1 stale", timeout=5)
            new = await FakeAgent("ast1", port=port, capacity=0.7, validity=1).start()
            try:
                await until(watcher, lambda w: w.weights() == {"ast1": 70}, "the restarted agent", timeout=10)
            finally:
                await new.stop()

    run(main())


def test_an_older_or_duplicate_notify_is_ignored():
    async def main():
        agent = await FakeAgent("ast1", capacity=0.5).start()
        async with watching([agent], policy=HeadroomPolicy()) as watcher:
            await until(watcher, lambda w: w.weights() == {"ast1": 50}, "the first body")
            newer = agent.set(capacity=0.7)
            await until(watcher, lambda w: w.weights() == {"ast1": 70}, "seq 2")
            accepted = watcher.counters["accepted"]
            agent.send(dataclasses.replace(newer, seq=newer.seq - 1, capacity=0.1))  # reordered
            await until(watcher, lambda w: w.counters["out-of-order"] == 1, "the old seq")
            agent.send(dataclasses.replace(newer, capacity=0.2))  # duplicate seq
            await until(watcher, lambda w: w.counters["out-of-order"] == 2, "the duplicate")
            assert watcher.weights() == {"ast1": 70} and watcher.counters["accepted"] == accepted

    run(main())


def test_a_new_instance_replaces_the_old_one_even_with_a_lower_seq():
    async def main():
        agent = await FakeAgent("ast1", capacity=0.5).start()
        async with watching([agent], policy=HeadroomPolicy()) as watcher:
            await until(watcher, lambda w: w.weights() == {"ast1": 50}, "the first body")
            agent.send(dataclasses.replace(agent.status, instance="restarted1", seq=1, capacity=0.3))
            await until(watcher, lambda w: w.weights() == {"ast1": 30}, "the new instance")

    run(main())


def test_probation_with_retry_after_resubscribes_after_retry_after():
    async def main():
        agent = await FakeAgent("ast1", capacity=0.5).start()
        async with watching([agent], policy=HeadroomPolicy()) as watcher:
            await agent.next(SubscriptionCreated)
            await until(watcher, lambda w: w.weights() == {"ast1": 50}, "the first body")
            ended_at = agent.service.now()
            await agent.terminate("probation", retry_after=1)
            # The final body says down: no new calls at once, not after the validity.
            await until(watcher, lambda w: row_of(w, "ast1").state == "down", "the down body")
            assert watcher.weights() == {"ast1": 0}
            agent.set(state="active", capacity=0.6, reason=None)
            await agent.next(SubscriptionCreated, timeout=5)
            assert agent.service.now() - ended_at >= 1.0
            await until(watcher, lambda w: w.weights() == {"ast1": 60}, "the node back")

    run(main())


def test_probation_without_retry_after_waits_the_default(monkeypatch):
    monkeypatch.setattr(subscriber, "PROBATION_WAIT", 1.5)  # spec 4.7.4: 30 s

    async def main():
        agent = await FakeAgent("ast1").start()
        async with watching([agent]):
            await agent.next(SubscriptionCreated)
            ended_at = agent.service.now()
            await agent.terminate("probation")
            await agent.next(SubscriptionCreated, timeout=5)
            assert agent.service.now() - ended_at >= 1.5

    run(main())


def test_deactivated_resubscribes_at_once(monkeypatch):
    monkeypatch.setattr(subscriber, "MIN_LIFETIME", 0.0)  # one that lived 30 s

    async def main():
        agent = await FakeAgent("ast1").start()
        async with watching([agent]):
            await agent.next(SubscriptionCreated)
            agent.service.submit(agent.notifier, agent.notifier.terminate_all(
                "deactivated", agent.service.now()))
            await agent.next(SubscriptionCreated, timeout=5)  # how soon: the fake-clock test below

    run(main())


def test_deactivated_resubscribes_at_once_on_a_fake_clock():
    """The watcher's Subscriber, told "deactivated" by a subscription that
    lived MIN_LIFETIME (the test above, over UDP), sends its new SUBSCRIBE
    in answer to that NOTIFY, at the same instant: 0 s later, well under 1 s."""
    sub = active(now=0.0)
    ended_at = subscriber.MIN_LIFETIME
    out = sub.handle_request(notify(sub, 2, "terminated;reason=deactivated", body=None), AGENT, ended_at)
    (new,) = sent(out)
    assert new.method == "SUBSCRIBE" and new.to_addr.tag is None  # a new dialog, sent at `ended_at`


def test_noresource_stops_following_the_agent():
    async def main():
        agent = await FakeAgent("ast1").start()
        async with watching([agent]) as watcher:
            await agent.next(SubscriptionCreated)
            await agent.terminate("noresource")
            await until(watcher, lambda w: row_of(w, "ast1").link.startswith("stopped: noresource"),
                        "the subscription stopped")
            assert watcher.subscribers["ast1"].next_timer() is None
            assert row_of(watcher, "ast1").state == "down"

    run(main())


def test_a_refused_body_gets_400_and_the_agent_is_subscribed_again_later(monkeypatch):
    monkeypatch.setattr(subscriber, "BAD_NOTIFY_WAIT", 1.0)  # spec 4.8: 30 s

    async def main():
        agent = await FakeAgent("ast1", capacity=0.5).start()
        async with watching([agent], policy=HeadroomPolicy()) as watcher:
            await agent.next(SubscriptionCreated)
            await until(watcher, lambda w: w.weights() == {"ast1": 50}, "the first body")
            # The watcher refuses the body no earlier than it was sent, and waits
            # 1 s from then: measured from the sending (the same loop clock the
            # watcher schedules with), not from when this test saw the refusal,
            # which can be a little later than the watcher's own moment.
            sent_at = agent.service.now()
            agent.send_raw(encode(agent.status).replace(b'"weight":50', b'"weight":90'))
            await until(watcher, lambda w: w.counters["rejected"] == 1, "the refusal")
            # The last good status is kept (spec 7.3) until it goes stale.
            assert row_of(watcher, "ast1").link.startswith(
                "refused a body: Invalid load-status body: weight (weight-hint), again in ")
            assert watcher.weights() == {"ast1": 50}
            agent.set(capacity=0.4)  # fixed before the watcher comes back
            await agent.next(SubscriptionCreated, timeout=5)
            assert agent.service.now() - sent_at >= 1.0
            await until(watcher, lambda w: w.weights() == {"ast1": 40}, "the fixed agent")

    run(main())


def test_an_agent_given_without_a_name_is_named_by_its_first_report():
    async def main():
        agent = await FakeAgent("host-7", capacity=0.5, limit=100).start()
        watcher = Watcher([Agent(None, agent.uri)])
        async with watching([agent], watcher):
            (row,) = watcher.rows()
            assert row.node == agent.uri and row.state == "unknown"
            await until(watcher, lambda w: w.weights() == {"host-7": 100}, "the first report")
            (row,) = watcher.rows()
            assert row.node == "host-7" and row.state == "active" and row.link == "active"
            assert row.capacity == 0.5
            assert list(watcher.agents) == ["host-7"] and watcher.settled()
            agent.set(capacity=0.4)  # later reports apply to the node it named
            await until(watcher, lambda w: row_of(w, "host-7").capacity == 0.4, "the next report")

    run(main())


def test_a_report_for_another_node_is_not_used_and_the_link_says_how_to_fix_either_side():
    async def main():
        agent = await FakeAgent("host-7", validity=1).start()  # heartbeats every 1/3 s
        watcher = Watcher([Agent("ast1", agent.uri)])
        async with watching([agent], watcher):
            await until(watcher, lambda w: w.counters["misnamed"] >= 4, "several reports")
            row = row_of(watcher, "ast1")
            assert row.state == "unknown" and row.weight is None and "host-7" not in watcher.table
            assert row.link == (f"the agent calls itself 'host-7', not 'ast1': name it host-7 here "
                                f"(--agent host-7={agent.uri}, or the URI alone), or set "
                                f'agent.node = "ast1" in its agent.toml and reload it')
            # The subscription stands: no refusal, no new SUBSCRIBE, nothing in a loop.
            assert agent.subscriptions == 1 and watcher.counters["rejected"] == 0
            events = [agent.events.get_nowait() for _ in range(agent.events.qsize())]
            assert not any(isinstance(e, SubscriptionTerminated) for e in events)
            agent.set(node="ast1")  # the agent's side fixed (agent.node, reload)
            await until(watcher, lambda w: row_of(w, "ast1").state == "active", "the fixed report")
            assert row_of(watcher, "ast1").link == "active" and agent.subscriptions == 1

    run(main())


def test_an_unnamed_agent_reporting_a_node_already_followed_is_not_used():
    async def main():
        first = await FakeAgent("ast1").start()
        second = await FakeAgent("ast1").start()
        watcher = Watcher([Agent("ast1", first.uri), Agent(None, second.uri)])
        async with watching([first, second], watcher):
            await until(watcher, lambda w: w.counters["misnamed"] >= 1
                        and row_of(w, "ast1").state == "active", "both reports")
            row = row_of(watcher, second.uri)
            assert row.state == "unknown"
            assert row.link == (f"the agent calls itself 'ast1', which is already the node of the "
                                f"agent at {first.uri}: give one of them another agent.node")

    run(main())


def test_close_unsubscribes():
    async def main():
        agent = await FakeAgent("ast1").start()
        watcher = await started([agent])
        await agent.next(SubscriptionCreated)
        await watcher.close()
        ended = await agent.next(SubscriptionTerminated)
        assert ended.reason == "unsubscribed"
        await agent.stop()

    run(main())


def test_close_unsubscribes_a_subscription_whose_2xx_it_has_not_seen_yet():
    # RFC 6665 4.1.2.3: close() right after start(), the SUBSCRIBE still in
    # flight: close waits for its 2xx and then unsubscribes (Expires 0).
    async def main():
        agent = await FakeAgent("ast1").start()
        watcher = await started([agent])
        (sub,) = watcher.subscribers.values()
        assert sub.state == SUBSCRIBING
        await watcher.close()
        await agent.next(SubscriptionCreated)
        ended = await agent.next(SubscriptionTerminated)
        assert ended.reason == "unsubscribed"
        assert sub.state == STOPPED
        await agent.stop()

    run(main())


def test_listening_on_a_wildcard_address_needs_an_advertised_one():
    async def main():
        watcher = Watcher([], config=WatcherConfig(listen=("udp:0.0.0.0:0",), compositor=True))
        with pytest.raises(ValueError, match=r"listening on udp:0\.0\.0\.0:0 needs the address agents reach"):
            await watcher.start()
        advertised = Watcher([], config=WatcherConfig(listen=("udp:0.0.0.0:0",), advertise="127.0.0.1",
                                                     compositor=True))
        async with watching([], advertised):
            assert advertised.contact.startswith("sip:sipstatus@127.0.0.1:")

    run(main())


def test_a_listen_address_in_use_is_named():
    async def main():
        first = Watcher([], config=WatcherConfig(compositor=True))
        await first.start()
        _, host, port = first.addresses[0]
        second = Watcher([], config=WatcherConfig(listen=(f"udp:{host}:{port}",), compositor=True))
        try:
            with pytest.raises(OSError, match=f"cannot listen on udp:{host}:{port}"):
                await second.start()
        finally:
            await first.close()

    run(main())


# -- sinks ---------------------------------------------------------------------------------------


def test_sinks_get_the_damped_weights_once_every_node_has_reported():
    async def main():
        agents = [await FakeAgent("ast1", capacity=0.5).start(),
                  await FakeAgent("ast2", capacity=0.8).start()]
        sink = RecordingSink()
        async with watching(agents, policy=HeadroomPolicy(), sinks=[sink]) as watcher:
            await until(watcher, lambda w: w.pushed == {"ast1": 50, "ast2": 80}, "the first push")
            assert all(set(p) == {"ast1", "ast2"} for p in sink.pushes)  # never a half-known pool
            agents[0].set(capacity=0.52)  # 2 points: below the damper's step
            agents[1].set(capacity=0.6)
            await until(watcher, lambda w: w.pushed == {"ast1": 50, "ast2": 60}, "the damped push")
            await until(watcher, lambda w: sink.pushes[-1] == {"ast1": 50, "ast2": 60}, "the sink")

    run(main())


def test_after_the_startup_grace_an_unknown_node_is_pushed_as_0():
    async def main():
        agent = await FakeAgent("ast1", capacity=0.5).start()
        sink = RecordingSink()
        agents = [Agent("ast1", agent.uri), Agent("ghost", "sip:127.0.0.1:9")]
        watcher = Watcher(agents, config=WatcherConfig(startup_grace=0.5), policy=HeadroomPolicy(),
                          sinks=[sink])
        async with watching([agent], watcher):
            await until(watcher, lambda w: row_of(w, "ast1").state == "active", "ast1")
            assert watcher.pushed is None  # ghost has not answered and the grace runs
            await until(watcher, lambda w: w.pushed == {"ast1": 50, "ghost": 0}, "the grace's end")
            assert row_of(watcher, "ghost").weight is None  # still unknown to people

    run(main())


class ForgettingSink(RecordingSink):
    def __init__(self):
        super().__init__()
        self.forgotten: list[list[str]] = []

    def forget(self, nodes):
        self.forgotten.append(sorted(nodes))


def test_a_sink_that_can_forget_is_given_everything_again_periodically():
    async def main():
        agent = await FakeAgent("ast1", capacity=0.5).start()
        sink = ForgettingSink()
        config = WatcherConfig(sink_resync=0.2)
        async with watching([agent], config=config, policy=HeadroomPolicy(), sinks=[sink]) as watcher:
            await until(watcher, lambda w: len(sink.forgotten) >= 2, "two resyncs")
            assert sink.forgotten[:2] == [["ast1"], ["ast1"]]
            assert all(p == {"ast1": 50} for p in sink.pushes)

    run(main())


class FailingOnceSink(RecordingSink):
    def __init__(self):
        super().__init__()
        self.failed = False

    def push(self, weights, now):
        if not self.failed:
            self.failed = True
            raise OSError("proxy restarting")
        super().push(weights, now)


def test_a_failing_sink_is_tried_again_with_the_newest_weights():
    async def main():
        agent = await FakeAgent("ast1", capacity=0.5).start()
        sink = FailingOnceSink()
        async with watching([agent], policy=HeadroomPolicy(), sinks=[sink]) as watcher:
            await until(watcher, lambda w: sink.pushes == [{"ast1": 50}], "the retried push")
            assert sink.failed

    run(main())


class RecordingViewSink:
    """A sink that takes the nodes themselves and the weights (the shape of OpenSipsSink.push)."""

    def __init__(self):
        self.pushes = []
        self.weights = []

    def push(self, views, weights):
        self.pushes.append({v.node: (v.accepts_calls, v.status and v.status.capacity) for v in views})
        self.weights.append(dict(weights))


def test_view_sinks_get_every_node_with_its_status():
    async def main():
        agent = await FakeAgent("ast1", capacity=0.5).start()
        sink = RecordingViewSink()
        async with watching([agent], view_sinks=[sink]) as watcher:
            await until(watcher, lambda w: sink.pushes and sink.pushes[-1] == {"ast1": (True, 0.5)},
                        "the view push")
            agent.set(state=State.DRAINING)
            await until(watcher, lambda w: sink.pushes[-1] == {"ast1": (False, 0.5)}, "the drain")

    run(main())


def test_view_sinks_get_the_damped_weights_the_weight_sinks_get():
    async def main():
        agent = await FakeAgent("ast1", capacity=0.5).start()
        sink = RecordingViewSink()
        weights = RecordingSink()
        async with watching([agent], sinks=[weights], view_sinks=[sink]) as watcher:
            await until(watcher, lambda w: sink.weights and weights.pushes, "the first push")
            assert sink.weights[-1] == watcher.pushed
            agent.set(state=State.DRAINING)
            await until(watcher, lambda w: sink.weights[-1] == {"ast1": 0}, "weight 0 for the drained node")

    run(main())


# -- the compositor ------------------------------------------------------------------------------


async def publisher_service():
    events: asyncio.Queue = asyncio.Queue()
    service = SipService(Endpoint([], allow_events=["load-status"]), on_event=events.put_nowait)
    await service.listen("UDP", "127.0.0.1", 0)
    return service, events


async def publish(service, events, watcher, status, *, expires=600):
    transport, host, port = watcher.addresses[0]
    publisher = Publisher(f"sip:load-status@{host}:{port}", "load-status", MEDIA_TYPE,
                          f"sip:agent@{host}", destination=Destination(transport, host, port),
                          expires=expires)
    service.endpoint.users.append(publisher)
    service.submit(publisher, publisher.publish(encode(status), service.now()))
    while True:
        event = await asyncio.wait_for(events.get(), WAIT)
        if isinstance(event, Published | PublicationFailed):
            return publisher, event


@contextlib.asynccontextmanager
async def composing(watcher: Watcher):
    """The compositor `watcher` started, and a service to publish to it from;
    on leaving, the service closed, then the watcher."""
    async with watching([], watcher):
        service, events = await publisher_service()
        try:
            yield service, events
        finally:
            await service.close()


def test_publish_from_a_node_outside_the_pool_gets_403():
    async def main():
        watcher = Watcher([], nodes=["ast1"], config=WatcherConfig(compositor=True))
        async with composing(watcher) as (service, events):
            _, failed = await publish(service, events, watcher, status_for("intruder"))
            assert isinstance(failed, PublicationFailed) and failed.status == 403
            assert "intruder" not in watcher.table
            _, ok = await publish(service, events, watcher, status_for("ast1", capacity=0.4))
            assert isinstance(ok, Published)
            await until(watcher, lambda w: row_of(w, "ast1").capacity == 0.4, "the configured node")
            assert row_of(watcher, "ast1").source == "publish"

    run(main())


def test_auto_join_adds_a_publisher_and_removes_it_when_its_publication_expires():
    async def main():
        config = WatcherConfig(compositor=True, auto_join=True, min_publication=1)
        sink = RecordingSink()
        watcher = Watcher([], config=config, policy=HeadroomPolicy(), sinks=[sink])
        async with composing(watcher) as (service, events):
            publisher, ok = await publish(service, events, watcher, status_for("ast7", capacity=0.3),
                                          expires=1)
            assert isinstance(ok, Published)
            await until(watcher, lambda w: w.weights() == {"ast7": 30}, "ast7 joined")
            publisher.refresh_at = None  # the agent goes silent: no refresh
            service.endpoint.users.remove(publisher)
            await until(watcher, lambda w: "ast7" not in w.table, "the expiry", timeout=5)
            assert watcher.rows() == [] and watcher.weights() == {}
            # The sinks were told once that it takes no calls, then no more of it.
            await until(watcher, lambda w: sink.pushes[-1] == {"ast7": 0}, "the leaving push")
            assert watcher.pushed == {}

    run(main())


def test_a_removed_publication_makes_the_node_unknown_at_once():
    async def main():
        watcher = Watcher([], nodes=["ast1"], config=WatcherConfig(compositor=True))
        async with composing(watcher) as (service, events):
            publisher, ok = await publish(service, events, watcher, status_for("ast1", capacity=0.4))
            await until(watcher, lambda w: row_of(w, "ast1").state == "active", "the publication")
            service.submit(publisher, publisher.remove(service.now()))
            while not isinstance(await asyncio.wait_for(events.get(), WAIT), Unpublished):
                pass
            await until(watcher, lambda w: row_of(w, "ast1").state == "unknown", "ast1 unknown")
            assert row_of(watcher, "ast1").weight is None

    run(main())


def test_an_older_publication_body_is_answered_200_and_ignored():
    async def main():
        watcher = Watcher([], nodes=["ast1"], config=WatcherConfig(compositor=True),
                          policy=HeadroomPolicy())
        async with composing(watcher) as (service, events):
            status = status_for("ast1", capacity=0.4, seq=10)
            await publish(service, events, watcher, status)
            await until(watcher, lambda w: w.weights() == {"ast1": 40}, "seq 10")
            _, ok = await publish(service, events, watcher, dataclasses.replace(status, seq=9, capacity=0.9))
            assert isinstance(ok, Published)
            await until(watcher, lambda w: w.counters["out-of-order"] == 1, "the old body")
            assert watcher.weights() == {"ast1": 40}

    run(main())


def test_publish_to_another_resource_gets_404():
    async def main():
        config = WatcherConfig(compositor=True, auto_join=True, resource="pool-a")
        watcher = Watcher([], config=config)
        async with composing(watcher) as (service, events):
            _, failed = await publish(service, events, watcher, status_for("ast1"))  # to load-status@
            assert isinstance(failed, PublicationFailed) and failed.status == 404
            assert watcher.rows() == []

    run(main())


def test_an_invalid_publish_body_gets_400_naming_member_and_rule():
    async def main():
        watcher = Watcher([], config=WatcherConfig(compositor=True, auto_join=True))
        async with composing(watcher) as (service, events):
            publisher, _ = await publish(service, events, watcher, status_for("ast1"))
            bad = encode(status_for("ast1", capacity=0.5)).replace(b'"weight":50', b'"weight":7')
            service.submit(publisher, publisher.publish(bad, service.now() + 1))
            while not isinstance(failed := await asyncio.wait_for(events.get(), WAIT), PublicationFailed):
                pass
            assert (failed.status, failed.reason) == (400, "Invalid load-status body: weight (weight-hint)")

    run(main())


def test_publish_from_an_untrusted_network_gets_403():
    async def main():
        config = WatcherConfig(compositor=True, auto_join=True, trusted=("192.0.2.0/24",))
        watcher = Watcher([], config=config)
        async with composing(watcher) as (service, events):
            _, failed = await publish(service, events, watcher, status_for("ast1"))
            assert isinstance(failed, PublicationFailed) and failed.status == 403

    run(main())


def test_the_draining_state_reaches_the_rows():
    async def main():
        agent = await FakeAgent("ast1", capacity=0.5).start()
        async with watching([agent]) as watcher:
            await until(watcher, lambda w: row_of(w, "ast1").state == "active", "active")
            agent.set(state=State.DRAINING, reason="maintenance")
            await until(watcher, lambda w: row_of(w, "ast1").state == "draining", "draining")
            row = row_of(watcher, "ast1")
            assert row.weight == 0 and row.reason == "maintenance" and not row.takes_calls

    run(main())
