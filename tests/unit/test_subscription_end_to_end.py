"""Our Subscriber against our Notifier through two endpoints, bytes on a fake wire.

Everything but the sockets: serialising, parsing, transactions, dialogs,
digest (the core's DigestClient and DigestServer), timers, on a fake clock.
"""

from __future__ import annotations

import random

from sipstatus.net import Endpoint, Transmit
from sipstatus.sip import SipError
from sipstatus.sip.digest import DigestClient, DigestServer
from sipstatus.sip.identifiers import IdGenerator
from sipstatus.sip.subscription import (
    NotificationReceived,
    NotificationRejected,
    Notifier,
    NotifyFailed,
    Subscribed,
    Subscriber,
    SubscriberConfig,
    SubscriberPool,
    SubscriptionCreated,
    SubscriptionEnded,
    SubscriptionTerminated,
)
from sipstatus.sip.transaction import Destination, TransactionLayer

TYPE = "application/load-status+json"
AGENT = ("192.0.2.1", 5060)
WATCHER = ("192.0.2.10", 5060)


class Wire:
    """Two endpoints and a lossless UDP network between them."""

    def __init__(self, agent: Endpoint, watcher: Endpoint) -> None:
        self.nodes = {AGENT: agent, WATCHER: watcher}
        self.events: list[tuple[float, object]] = []
        self.now = 0.0
        self.lose: set[str] = set()  # methods whose requests the network drops

    def deliver(self, sender: tuple[str, int], outputs) -> None:
        queue = [(sender, o) for o in outputs]
        while queue:
            origin, item = queue.pop(0)
            if not isinstance(item, Transmit):
                self.events.append((self.now, item))
                continue
            if item.data.split(b" ", 1)[0].decode() in self.lose:
                continue
            target = (item.destination.host, item.destination.port)
            node = self.nodes[target]
            source = Destination("UDP", *origin)
            queue.extend((target, o) for o in node.receive(item.data, source, self.now))

    def run(self, until: float) -> None:
        while True:
            times = [(t, a) for a, n in self.nodes.items() if (t := n.next_timer()) is not None]
            if not times:
                break
            when, address = min(times)
            if when > until:
                break
            self.now = max(self.now, when)
            self.deliver(address, self.nodes[address].handle_timer(self.now))
        self.now = until

    def of(self, kind) -> list:
        return [e for _, e in self.events if isinstance(e, kind)]


class Bodies:
    """The agent's body producer: a new seq every call, or a fixed body."""

    def __init__(self) -> None:
        self.seq = 0
        self.fixed: bytes | None = None

    def __call__(self, now: float) -> bytes:
        self.seq += 1
        return self.fixed if self.fixed is not None else f'{{"seq":{self.seq}}}'.encode()


def setup(authorize=None, client_auth=None, decode=None, heartbeat=5.0):
    bodies = Bodies()
    notifier = Notifier("load-status", TYPE, "sip:agent@192.0.2.1:5060", authorize=authorize,
                        heartbeat=heartbeat, produce=bodies,
                        ids=IdGenerator(random.Random(1).randbytes))
    notifier.bodies = bodies
    agent = Endpoint([notifier], local={"UDP": AGENT},
                     transactions=TransactionLayer(ids=IdGenerator(random.Random(2).randbytes)))
    pool = SubscriberPool()
    watcher = Endpoint([pool], local={"UDP": WATCHER},
                       transactions=TransactionLayer(ids=IdGenerator(random.Random(3).randbytes)))
    config = SubscriberConfig("load-status", TYPE, "sip:watcher@192.0.2.10",
                              "sip:watcher@192.0.2.10:5060", authorize=client_auth,
                              decode=decode, ids=IdGenerator(random.Random(4).randbytes),
                              random=lambda: 1.0)
    sub = Subscriber("sip:agent@192.0.2.1", config, destination=Destination("UDP", *AGENT))
    wire = Wire(agent, watcher)
    return wire, notifier, pool, sub


def start(wire: Wire, pool: SubscriberPool, sub: Subscriber) -> None:
    wire.deliver(WATCHER, wire.nodes[WATCHER].submit(pool, pool.add(sub, wire.now), wire.now))


def change(wire: Wire, notifier: Notifier, body: bytes | None = None, significant=True) -> None:
    """The state changes; ``body`` fixes what the producer gives from now on."""
    notifier.bodies.fixed = body
    agent = wire.nodes[AGENT]
    wire.deliver(AGENT, agent.submit(notifier, notifier.state_changed(None, wire.now, significant),
                                     wire.now))


def test_subscription_lives_for_an_hour_with_refreshes_and_heartbeats():
    wire, notifier, pool, sub = setup()
    start(wire, pool, sub)
    wire.run(3600.0)
    assert len(wire.of(SubscriptionCreated)) == 1
    assert wire.of(SubscriptionEnded) == [] and wire.of(SubscriptionTerminated) == []
    notes = wire.of(NotificationReceived)
    assert 720 <= len(notes) <= 730  # one per 5 s heartbeat, plus one per refresh
    seqs = [int(n.body[7:-1]) for n in notes]
    assert seqs == sorted(set(seqs))  # every NOTIFY a fresh body (spec 4.7.2)
    assert len(notifier.subscriptions) == 1


def test_state_change_reaches_the_watcher_at_once():
    wire, notifier, pool, sub = setup()
    start(wire, pool, sub)
    wire.run(1.0)
    change(wire, notifier, b'{"seq":99}')
    assert wire.of(NotificationReceived)[-1].body == b'{"seq":99}'
    assert wire.of(NotificationReceived)[-1].subscriber is sub


def test_digest_challenge_on_subscribe_and_on_every_refresh():
    server = DigestServer("agent.example", b"k" * 32, random=random.Random(5).randbytes)
    users = {"watcher": "pw"}

    def authorize(request, source, now):
        try:
            server.verify(request, now, users.get)
        except SipError as error:
            return error
        return None

    client = DigestClient("watcher", "pw", random=random.Random(6).randbytes)
    wire, notifier, pool, sub = setup(authorize=authorize, client_auth=client.authorize)
    start(wire, pool, sub)
    wire.run(1300.0)
    assert len(wire.of(Subscribed)) == 1
    assert wire.of(SubscriptionEnded) == []
    assert sub.dialog.local_cseq >= 5  # 2 refreshes, each challenged once


def test_wrong_password_is_tried_again_only_after_60_s():
    server = DigestServer("agent.example", b"k" * 32)

    def authorize(request, source, now):
        try:
            server.verify(request, now, {"watcher": "right"}.get)
        except SipError as error:
            return error
        return None

    client = DigestClient("watcher", "wrong")
    wire, notifier, pool, sub = setup(authorize=authorize, client_auth=client.authorize)
    start(wire, pool, sub)
    wire.run(10.0)
    ((when, ended),) = [(t, e) for t, e in wire.events if isinstance(e, SubscriptionEnded)]
    assert ended.status == 401 and ended.retry_at >= when + 60.0  # spec 4.15
    assert not notifier.subscriptions


def test_agent_restart_is_noticed_at_the_refresh_and_the_watcher_resubscribes():
    wire, notifier, pool, sub = setup()
    start(wire, pool, sub)
    wire.run(100.0)
    # The agent restarts: a fresh notifier knows no subscription.  Its
    # heartbeats stop; the watcher's refresh gets 481 and subscribes anew.
    fresh = Notifier("load-status", TYPE, "sip:agent@192.0.2.1:5060", produce=Bodies(),
                     ids=IdGenerator(random.Random(7).randbytes))
    wire.nodes[AGENT] = Endpoint([fresh], local={"UDP": AGENT})
    wire.run(700.0)
    ended = wire.of(SubscriptionEnded)
    assert [e.status for e in ended] == [481]
    assert len(fresh.subscriptions) == 1


def test_deactivated_makes_the_watcher_resubscribe_at_once():
    wire, notifier, pool, sub = setup()
    start(wire, pool, sub)
    wire.run(100.0)
    agent = wire.nodes[AGENT]
    wire.deliver(AGENT, agent.submit(notifier, notifier.terminate_all("deactivated", wire.now),
                                     wire.now))
    wire.run(100.2)  # the final NOTIFY keeps 100 ms from the heartbeat at 100.0
    assert len(wire.of(SubscriptionCreated)) == 2
    assert len(notifier.subscriptions) == 1


def test_invalid_body_ends_the_subscription_on_both_sides_and_it_comes_back_after_30_s():
    def decode(body):
        if body == b"bad":
            raise ValueError("capacity: 1.5 is above the maximum 1 (rule: maximum)")
        return body

    wire, notifier, pool, sub = setup(decode=decode)
    start(wire, pool, sub)
    wire.run(1.0)
    change(wire, notifier, b"bad")
    (rejected,) = wire.of(NotificationRejected)
    assert rejected.reason.startswith("Invalid load-status body: capacity: 1.5")
    (failed,) = wire.of(NotifyFailed)
    assert (failed.status, failed.reason) == (400, rejected.reason)  # logged at the agent
    assert [e.reason for e in wire.of(SubscriptionTerminated)] == ["notify-failed"]
    (ended,) = wire.of(SubscriptionEnded)
    assert ended.retry_at == wire.now + 30.0
    change(wire, notifier, None)  # the agent is fixed
    wire.run(40.0)
    assert len(wire.of(SubscriptionCreated)) == 2
    assert wire.of(NotificationReceived)[-1].body.startswith(b'{"seq"')


def test_lost_notifies_end_the_subscription_and_the_watcher_notices_by_refresh():
    wire, notifier, pool, sub = setup()
    start(wire, pool, sub)
    wire.run(10.0)
    wire.lose = {"NOTIFY"}
    wire.run(60.0)
    (terminated,) = wire.of(SubscriptionTerminated)
    assert terminated.reason == "notify-timeout"
    wire.lose = set()
    wire.run(700.0)  # the refresh meets 481; a new subscription follows
    assert len(wire.of(SubscriptionCreated)) == 2


def test_unsubscribe_ends_both_sides():
    wire, notifier, pool, sub = setup()
    start(wire, pool, sub)
    wire.run(3.0)
    watcher = wire.nodes[WATCHER]
    wire.deliver(WATCHER, watcher.submit(pool, pool.stop(sub, wire.now), wire.now))
    wire.run(10.0)
    assert wire.of(SubscriptionTerminated)[0].reason == "unsubscribed"
    assert wire.of(SubscriptionEnded)[0].reason == "unsubscribed"
    assert not notifier.subscriptions
    assert wire.nodes[WATCHER].next_timer() is None or wire.nodes[WATCHER].next_timer() > 10.0


# -- ported from agent-service ------------------------------------------------


def test_invalid_body_is_refused_with_400_both_ends_end_it_and_it_comes_back_after_30_s():
    # load-status 4.7.3 (the notifier ends it, logs status and reason) and 4.8
    # (the subscriber considers it ended, subscribes again no sooner than 30 s).
    def decode(body):
        if body == b"bad":
            raise ValueError("capacity: 1.5 is above the maximum 1 (rule: maximum)")
        return body

    wire, notifier, pool, sub = setup(decode=decode)
    start(wire, pool, sub)
    wire.run(1.0)
    change(wire, notifier, b"bad")
    (rejected,) = wire.of(NotificationRejected)
    assert "capacity: 1.5" in rejected.reason  # main prefixes "Invalid load-status body: "
    (failed,) = wire.of(NotifyFailed)
    assert (failed.status, failed.reason) == (400, rejected.reason)
    assert [e.reason for e in wire.of(SubscriptionTerminated)] == ["notify-failed"]
    (ended,) = wire.of(SubscriptionEnded)
    assert ended.status == 400 and ended.retry_at == wire.now + 30
    change(wire, notifier, b"good")
    wire.run(wire.now + 29)
    assert len(wire.of(SubscriptionCreated)) == 1
    wire.run(wire.now + 2)
    assert len(wire.of(SubscriptionCreated)) == 2
    assert wire.of(NotificationReceived)[-1].body == b"good"
