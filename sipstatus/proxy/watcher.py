"""The proxy side's process: follow many agents, feed the pool, run its sinks.

A `Watcher` is the asyncio driver of a `ProxyPool` (proxy/pool.py, where
every decision over time is made: start-up grace, departures, staleness and
re-subscription, coalescing, damping, sink retries and resyncs). It runs
one SIP element on the running asyncio loop:

- a `SubscriberPool` holding one `load-status` subscription per agent
  (spec/load-status.md section 4: refreshes on one timer heap, the
  re-subscription rules of sections 4.7.4 and 4.8, backoff on failure);
- optionally a `Compositor` for agents that PUBLISH instead (sections 5.5
  and 5.6: one publication per node, keyed by the body's `node`; 403 for a
  node outside the pool unless auto-join is on);
- the pool's `NodeTable`, fed by both (section 7), its timer armed at the
  pool's `next_timer()`;
- the sinks (`KamailioSink`, the OpenSIPS adapter, or anything with the
  `Sink` shape), each called from a worker thread when its `SinkSchedule`
  says.

UIs read `rows()` (one `NodeRow` per node) or pass `on_change`.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from .. import affinity
from ..affinity_table import DEFAULT_HOLD, AffinityTable, Applied
from ..codec import MEDIA_TYPE, StatusError, decode
from ..configkit import parse_listen
from ..net import Resolver, SipService
from ..sip.compositor import (
    Compositor,
    PublicationReceived,
    PublicationRefreshed,
    PublicationRemoved,
)
from ..sip.endpoint import Endpoint
from ..sip.errors import SipError
from ..sip.message import Request
from ..sip.subscriber import (
    ACTIVE,
    STOPPED,
    SUBSCRIBING,
    NotificationReceived,
    NotificationRejected,
    Subscribed,
    Subscriber,
    SubscriberConfig,
    SubscriberPool,
    SubscriptionEnded,
    body_reason,
    direct_destination,
)
from ..sip.transaction import Destination
from ..sip.transaction_user import ClientId
from ..sip.uri import SipUri, parse_uri
from ..status import LoadStatus
from .agents import Agent, misnamed, parse_agent_uri
from .nodetable import NodeTable, NodeView, Outcome
from .policy import WaterFillPolicy, WeightPolicy
from .pool import STARTUP_GRACE, ProxyPool, SinkJob, SinkSchedule
from .rows import NodeRow, node_row
from .sinks import Sink, ViewSink

log = logging.getLogger("sipstatus.watcher")  # the name operators know from the sidecar's log

PACKAGE = "load-status"
#: Publication keys of the load-affinity compositor: "rooms:<node>".
ROOMS_KEY = "rooms:"
#: A stopping watcher waits this long for its unsubscriptions (spec 4.7.4
#: gives a stopping agent 2 s for its final NOTIFYs; the same bound here).
CLOSE_WAIT = 2.0


# -- the watcher ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class WatcherConfig:
    """How a Watcher subscribes, composes and weighs (defaults per the spec)."""

    listen: tuple[str, ...] = ("udp:127.0.0.1:0",)
    #: The host our Contact and Via carry when listening on a wildcard address.
    advertise: str | None = None
    #: Subscription duration asked for (spec 4.4: 60..3600).
    expires: int = 600
    #: RFC 6446 rate parameters sent in SUBSCRIBE (None: not sent).
    max_rate: float | None = None
    min_rate: float | None = None
    #: Accept PUBLISH (be a compositor, spec section 5).
    compositor: bool = False
    #: Compositor: an initial publication for a node outside the pool adds it (spec 5.6).
    auto_join: bool = False
    #: Compositor: the Request-URI user part it answers for (None: any), else 404.
    resource: str | None = None
    #: Compositor: source networks allowed to publish (empty: any).
    trusted: tuple[str, ...] = ()
    #: Compositor: shortest publication accepted (spec 5.3: 60).
    min_publication: int = 60
    #: Weights move only by this many points (or to or from 0).
    damper_step: int = 5
    startup_grace: float = STARTUP_GRACE
    #: Every this many seconds, a sink that has `forget` is given the last
    #: weights again in full (a restarted proxy lost them); None: never.
    sink_resync: float | None = None
    #: Also subscribe to each agent's rooms (load-affinity, spec/load-affinity.md).
    affinity: bool = False
    #: Seconds a placement made with `place` holds without the node's announcement.
    affinity_hold: float = DEFAULT_HOLD


class Watcher:
    """Follows `agents` (and, as a compositor, publishers) and keeps the pool.

    Call `await start()` on a running loop, `await close()` at the end.
    `on_change(rows)` is called after every change of what is known (a
    report accepted, a node gone stale, joined or left, a subscription's
    state).
    """

    def __init__(
        self,
        agents: Iterable[Agent] = (),
        *,
        config: WatcherConfig | None = None,
        policy: WeightPolicy | None = None,
        sinks: Sequence[Sink] = (),
        view_sinks: Sequence[ViewSink] = (),
        affinity_sinks: Sequence[Sink] = (),
        nodes: Iterable[str] = (),
        on_change: Callable[[list[NodeRow]], None] | None = None,
        resolver: Resolver | None = None,
    ) -> None:
        self.config = config or WatcherConfig()
        #: By key: the node, or the URI of an agent not named yet.
        self.agents: dict[str, Agent] = {}
        for agent in agents:
            if agent.key in self.agents:
                what = f"node {agent.node!r}" if agent.node else f"agent {agent.uri}"
                raise ValueError(f"{what} is given twice ({self.agents[agent.key].uri} and {agent.uri})")
            self.agents[agent.key] = agent
        named = [a.node for a in self.agents.values() if a.node is not None]
        configured = [*named, *(n for n in nodes if n not in named)]
        #: Every decision over time (sans-I/O): this class feeds it and runs what it decides.
        self.core = ProxyPool(
            NodeTable(configured, auto_join=self.config.auto_join), policy or WaterFillPolicy(),
            damper_step=self.config.damper_step, startup_grace=self.config.startup_grace,
            affinity=AffinityTable(self.config.affinity_hold), expected=lambda: self.agents,
            sink_resync=self.config.sink_resync)
        self.policy: WeightPolicy = self.core.policy
        self.table = self.core.table
        #: The rooms of the pool (load-affinity): announced sets and placements.
        self.affinity = self.core.affinity
        self.on_change = on_change
        self.resolver = resolver
        self.trusted = [ipaddress.ip_network(n, strict=False) for n in self.config.trusted]
        self.pool = SubscriberPool()
        self.compositor: Compositor | None = None
        #: The compositor of load-affinity (compositor and affinity both on):
        #: publication keys are "rooms:<node>".
        self.rooms_compositor: Compositor | None = None
        if self.config.compositor:
            self.compositor = Compositor(
                PACKAGE, MEDIA_TYPE, resources=self._is_resource if self.config.resource else None,
                authorize=self._authorize_publisher if self.trusted else None,
                classify=self._classify, admit=self._admit,
                min_expires=self.config.min_publication,
                other_packages=[affinity.PACKAGE] if self.config.affinity else ())
            if self.config.affinity:
                self.rooms_compositor = Compositor(
                    affinity.PACKAGE, affinity.MEDIA_TYPE,
                    resources=self._is_resource if self.config.resource else None,
                    authorize=self._authorize_publisher if self.trusted else None,
                    classify=self._classify_rooms, admit=self._admit_rooms,
                    min_expires=self.config.min_publication, other_packages=[PACKAGE])
        self.subscribers: dict[str, Subscriber] = {}
        self.service: SipService | None = None
        self.addresses: list[tuple[str, str, int]] = []
        self.counters = {outcome.value: 0 for outcome in Outcome} | {"rejected": 0, "misnamed": 0}
        self.affinity_subscribers: dict[str, Subscriber] = {}
        # Weight sinks, view sinks, and sinks given room key -> node
        # (`push(assignments, now)`, e.g. Kamailio's htable).
        self._runners = [
            _SinkRunner(sink, self.core.add_sink(kind, can_forget=hasattr(sink, "forget")),
                        views=kind == "views", done=self._sink_done)
            for kind, given in (("weights", sinks), ("views", view_sinks), ("rooms", affinity_sinks))
            for sink in given]
        self._source: dict[str, str] = {}
        self._link: dict[str, str] = {}
        self._last_refusal = ""
        self._misnamed: dict[str, str] = {}  # key -> the node its agent reports instead
        self._answered: set[str] = set()  # agents that sent a body or whose subscription failed
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._version = 0
        self._changed: asyncio.Event | None = None  # set and replaced at each change
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closing = False

    # -- running ---------------------------------------------------------------------------------

    async def start(self) -> None:
        """Listen, subscribe to every agent and start the sinks."""
        self._loop = asyncio.get_running_loop()
        self._changed = asyncio.Event()
        users: list[object] = [self.pool]
        if self.compositor is not None:
            users.append(self.compositor)
        if self.rooms_compositor is not None:
            users.append(self.rooms_compositor)
        packages = [PACKAGE, affinity.PACKAGE] if self.config.affinity else [PACKAGE]
        endpoint = Endpoint(users, allow_events=packages)  # type: ignore[arg-type]
        self.service = SipService(endpoint, resolver=self.resolver, on_event=self._on_event)
        for text in self.config.listen:
            transport, host, port = parse_listen(text, ("udp", "tcp"), port_zero=True)
            try:
                bound = await self.service.listen(transport, host, port, advertise=self.config.advertise)
            except OSError as err:
                await self.service.close()
                raise OSError(err.errno, f"cannot listen on {text}: {err.strerror or err}") from None
            self.addresses.append((transport, bound[0], bound[1]))
        if ipaddress.ip_address(self.addresses[0][1]).is_unspecified and not self.config.advertise:
            await self.service.close()
            raise ValueError(f"listening on {self.config.listen[0]} needs the address agents reach "
                             "this host at for our Contact (advertise / sip.advertise)")
        now = self.now()
        self.core.start(now)
        base = self._subscriber_config()
        for runner in self._runners:
            runner.start()
        for agent in self.agents.values():
            self._follow(agent, base, now)
            if self.config.affinity:
                self._follow_rooms(agent, now)
        self._arm()

    async def close(self) -> None:
        """Unsubscribe (waiting up to CLOSE_WAIT s for the answers), stop the sinks, close."""
        if self.service is None or self._closing:
            return
        self._closing = True
        now = self.now()
        for sub in [*self.subscribers.values(), *self.affinity_subscribers.values()]:
            if sub in self.pool.subscribers:
                self.service.submit(self.pool, self.pool.stop(sub, now))
        # Wait until every subscription has ended: one that was up ends on
        # the final NOTIFY after our Expires 0; one still being made (its 2xx
        # not yet seen, or a refresh in flight) is unsubscribed on that 2xx
        # (RFC 6665 4.1.2.3) or ends on its failure. Closing before then would
        # leave the notifier a subscription nobody ends.
        await self.wait_for(lambda w: all(
            s.state == STOPPED for s in [*w.subscribers.values(), *w.affinity_subscribers.values()]
            if s in w.pool.subscribers), CLOSE_WAIT)
        if self._timer is not None:
            self._timer.cancel()
        for runner in self._runners:
            await runner.stop()
        await self.service.close()

    def now(self) -> float:
        assert self._loop is not None, "the watcher is not started"
        return self._loop.time()

    @property
    def contact(self) -> str:
        transport, host, port = self.addresses[0]
        host = self.config.advertise or host
        if ":" in host:
            host = f"[{host}]"
        param = "" if transport == "UDP" else f";transport={transport.lower()}"
        return f"sip:sipstatus@{host}:{port}{param}"

    def _subscriber_config(self) -> SubscriberConfig:
        _, host, _ = self.addresses[0]
        host = self.config.advertise or host
        local = f"sip:sipstatus@[{host}]" if ":" in host else f"sip:sipstatus@{host}"
        return SubscriberConfig(
            PACKAGE, MEDIA_TYPE, local, self.contact, expires=self.config.expires,
            max_rate=self.config.max_rate, min_rate=self.config.min_rate, decode=self._decode)

    def _follow(self, agent: Agent, config: SubscriberConfig, now: float) -> None:
        uri = parse_agent_uri(agent.uri)
        sub = Subscriber(agent.uri, config, destination=direct_destination(uri), key=agent.key)
        self.subscribers[agent.key] = sub
        self._link[agent.key] = "subscribing" if agent.node else "subscribing (named by its first report)"
        assert self.service is not None
        self.service.submit(self.pool, self.pool.add(sub, now))

    def _follow_rooms(self, agent: Agent, now: float) -> None:
        """Subscribe to the agent's rooms (load-affinity) beside its status."""
        _, host, _ = self.addresses[0]
        host = self.config.advertise or host
        local = f"sip:sipstatus@[{host}]" if ":" in host else f"sip:sipstatus@{host}"
        config = SubscriberConfig(affinity.PACKAGE, affinity.MEDIA_TYPE, local, self.contact,
                                  expires=self.config.expires, decode=affinity.decode)
        uri = parse_agent_uri(agent.uri)
        sub = Subscriber(agent.uri, config, destination=direct_destination(uri), key=agent.key)
        self.affinity_subscribers[agent.key] = sub
        assert self.service is not None
        self.service.submit(self.pool, self.pool.add(sub, now))

    def _rooms_event(self, event: object, now: float) -> None:
        """A NOTIFY (or the end) of a load-affinity subscription (spec/load-affinity.md 5)."""
        if isinstance(event, NotificationReceived) and isinstance(event.value, affinity.AffinityBody):
            sub, body = event.subscriber, event.value
            expected = sub.key if sub.key in self.table else None
            if expected is not None and body.node != expected:
                log.warning("rooms of %s: the agent at %s reports node %s; ignored", expected, sub.target, body.node)
                return
            applied = self.affinity.update(body, now)
            if applied is Applied.GAP:
                log.info("rooms of %s: delta %d->%d does not follow what we have; asking for a full set",
                         body.node, body.base or 0, body.seq)
                assert self.service is not None
                rooms = self.affinity_subscribers[sub.key]
                self.service.submit(self.pool, self.pool.refresh(rooms, now))
            elif applied is Applied.APPLIED:
                self._mark_changed()
        elif isinstance(event, SubscriptionEnded):
            log.info("rooms of %s: subscription ended (%s)", event.subscriber.key, event.reason)

    # -- rooms: what a proxy asks --------------------------------------------------------------

    def lookup(self, key: str, now: float | None = None) -> str | None:
        """The node for a new call of the room with affinity key `key`
        (spec/load-affinity.md 7.2), or None: choose by weight, then `place`."""
        return self.affinity.lookup(key, self.core.weights, self.now() if now is None else now)

    def place(self, key: str, node: str, now: float | None = None) -> None:
        """A new call of room `key` was sent to `node` (it holds for the hold time)."""
        self.affinity.place(key, node, self.now() if now is None else now)
        self._mark_changed()

    def refused(self, key: str, node: str) -> None:
        """`node` refused a call of room `key`: the room follows the retry."""
        self.affinity.refused(key, node)
        self._mark_changed()

    def _decode(self, body: bytes) -> LoadStatus:
        """Spec 4.8 step 5; the Subscriber words the 400 from the error's
        member and rule (spec 6.6), the log gets the whole explanation."""
        try:
            return decode(body)
        except StatusError as err:
            self._last_refusal = str(err)
            raise

    def _node_of(self, sub: ClientId, status: LoadStatus) -> str | None:
        """The node a report on `sub` may be applied to, or None.

        Spec 4.8 step 6: a report for another node than the subscription's
        is not applied. It is answered 200 all the same, and the subscription
        stands: a name that does not match is a configuration error on one
        side, which a new subscription cannot mend, and a 400 would end the
        subscription (4.7.3), again after every re-subscription. Once either
        side is fixed, the next report applies. An agent followed without a
        name takes the one of its first valid report."""
        key = sub.key
        agent = self.agents.get(key)
        if agent is not None and agent.node is None:
            return self._name(agent, sub, status.node)
        if status.node == key:
            if self._misnamed.pop(key, None) is not None:
                log.warning("node %s: the agent at %s now reports %s: its reports are used again",
                            key, sub.target, key)
                self._link[key] = "active"
            return key
        self._report_misnamed(key, sub, status.node, misnamed(key, status.node, sub.target))
        return None

    def _name(self, agent: Agent, sub: ClientId, node: str) -> str | None:
        """Name an agent followed by its URI after its first valid report."""
        key = agent.key
        if node in self.table or node in self.agents:
            other = self.agents.get(node)
            taken = f"the agent at {other.uri}" if other is not None else "a node that publishes"
            self._report_misnamed(key, sub, node, f"the agent calls itself {node!r}, which is already "
                                  f"the node of {taken}: give one of them another agent.node")
            return None
        del self.agents[key]
        self.agents[node] = Agent(node, agent.uri)
        self.subscribers[node] = self.subscribers.pop(key)
        self.subscribers[node].key = node
        self._link.pop(key, None)
        self._misnamed.pop(key, None)
        if key in self._answered:
            self._answered.discard(key)
            self._answered.add(node)
        self.table.add(node)
        log.info("the agent at %s is node %s (named by its report)", agent.uri, node)
        return node

    def _report_misnamed(self, key: str, sub: ClientId, reported: str, text: str) -> None:
        self.counters["misnamed"] += 1
        self._link[key] = text
        if self._misnamed.get(key) != reported:
            self._misnamed[key] = reported
            log.warning("%s (agent %s): %s. Its reports are not used until the names match: the name "
                        "given to an agent guards against one agent's load counted as another node's",
                        key, sub.target, text)

    # -- what is known ------------------------------------------------------------------------------

    def rows(self, now: float | None = None) -> list[NodeRow]:
        """Every node of the pool, by name."""
        now = self.now() if now is None else now
        views = list(self.table.views(now))
        weights = self.core.weights_at(now)
        pushed = self.core.pushed or {}
        rows = []
        for view in views:
            known = view.status is not None
            rows.append(node_row(view, weights.get(view.node) if known else None,
                                 pushed.get(view.node), now, self._source.get(view.node),
                                 self._link_text(view.node, now)))
        for key, agent in self.agents.items():
            if agent.node is None:  # not named yet: shown by its URI
                rows.append(node_row(NodeView(key, None, None, False), None, None, now, None,
                                     self._link_text(key, now)))
        return sorted(rows, key=lambda r: r.node)

    def weights(self) -> dict[str, int]:
        """The policy's weights at the last computation (every node; 0 = no new calls)."""
        return dict(self.core.weights)

    @property
    def pushed(self) -> dict[str, int] | None:
        """The damped weights last handed to the sinks (None before the first push)."""
        return self.core.pushed

    def settled(self) -> bool:
        """Whether every agent has answered one way or another: a status
        accepted, or its subscription failed, refused or ended."""
        return all(key in self._answered for key in self.agents)

    async def wait_for(self, predicate: Callable[[Watcher], bool], timeout: float) -> bool:
        """Wait until `predicate(self)` holds, looking again after each change
        (and each push a sink took); False if it still does not after `timeout` s."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not predicate(self):
            assert self._changed is not None, "the watcher is not started"
            left = deadline - loop.time()
            if left <= 0:
                return False
            try:
                await asyncio.wait_for(self._changed.wait(), left)
            except TimeoutError:
                return predicate(self)
        return True

    def _link_text(self, node: str, now: float) -> str:
        sub = self.subscribers.get(node)
        if sub is not None and sub.retry_at is not None and sub.state != ACTIVE:
            return f"{self._link.get(node, '')}, again in {max(0.0, sub.retry_at - now):.0f} s"
        return self._link.get(node, "")

    # -- SIP events ---------------------------------------------------------------------------------

    def _on_event(self, event: object) -> None:
        now = self.now()
        subscriber = getattr(event, "subscriber", None)
        if isinstance(subscriber, ClientId) and subscriber.package == affinity.PACKAGE:
            self._rooms_event(event, now)
            return
        if isinstance(event, NotificationReceived | NotificationRejected | SubscriptionEnded):
            self._answered.add(event.subscriber.key)
        if isinstance(event, NotificationReceived):
            node = event.subscriber.key
            status = event.value if isinstance(event.value, LoadStatus) else None
            if status is not None:
                node = self._node_of(event.subscriber, status)
            if node is not None:
                self._link[node] = "active" if event.state != "terminated" else "terminated"
                if status is not None:
                    self._report(status, now, "notify")
        elif isinstance(event, NotificationRejected):
            self._notify_rejected(event.subscriber, event.reason, now)
        elif isinstance(event, Subscribed):
            if event.subscriber.key not in self._misnamed:  # that says more
                self._link[event.subscriber.key] = "active"
            log.info("subscribed to %s (%s) for %d s", event.subscriber.key, event.subscriber.target,
                     event.expires)
        elif isinstance(event, SubscriptionEnded):
            self._subscription_ended(event)
        elif isinstance(event, PublicationReceived) and isinstance(event.value, affinity.AffinityBody):
            if self.affinity.update(event.value, now) is Applied.APPLIED:
                self._mark_changed()
            return
        elif isinstance(event, PublicationRemoved) and event.key.startswith(ROOMS_KEY):
            if event.reason != "replaced":
                self.affinity.forget(event.key.removeprefix(ROOMS_KEY))
                self._mark_changed()
            return
        elif isinstance(event, PublicationReceived):
            self._link[event.key] = f"published from {event.source.host}:{event.source.port}"
            self._report(event.value, now, "publish")  # type: ignore[arg-type]
        elif isinstance(event, PublicationRemoved):
            if event.reason != "replaced":
                # Spec 5.6: the node is unknown from this moment, not when its validity runs out.
                log.info("publication of %s %s: the node is unknown now", event.key, event.reason)
                self.table.forget(event.key)
                self._source.pop(event.key, None)
                self._link[event.key] = f"publication {event.reason}"
                if event.key not in self.table:
                    self._link.pop(event.key, None)
        elif isinstance(event, PublicationRefreshed):
            return
        else:
            return
        self._mark_changed()

    def _report(self, status: LoadStatus, now: float, source: str) -> None:
        outcome = self.core.report(status, now)
        self.counters[outcome.value] += 1
        if outcome is Outcome.ACCEPTED:
            self._source[status.node] = source
        elif outcome is Outcome.OUT_OF_ORDER:
            log.debug("%s: ignored %s seq %d of instance %s (out of date)", status.node, source,
                      status.seq, status.instance)

    def _notify_rejected(self, sub: ClientId, reason: str, now: float) -> None:
        # Spec 6.6: log every refused body with the node, member and rule. The
        # subscription ends on it (4.7.3) and the Subscriber comes back later
        # (4.8: 30 s, doubling); the node keeps its last good status (7.3).
        self.counters["rejected"] += 1
        detail, self._last_refusal = self._last_refusal, ""
        log.warning("node %s: NOTIFY from %s refused: %s%s", sub.key, sub.target, reason,
                    f" ({detail})" if detail else "")
        self._link[sub.key] = f"refused a body: {reason}"

    def _subscription_ended(self, event: SubscriptionEnded) -> None:
        sub, node = event.subscriber, event.subscriber.key
        if event.retry_at is None:
            if self._closing:
                self._link[node] = "unsubscribed"
                return
            self._link[node] = f"stopped: {event.reason}" + (f" ({event.status})" if event.status else "")
            log.warning("node %s: subscription to %s ended for good: %s%s", node, sub.target,
                        event.reason, f" ({event.status})" if event.status else "")
        else:
            if event.reason != "notify-refused":  # the link already says which body and why
                self._link[node] = f"ended: {event.reason}" + (f" ({event.status})" if event.status else "")
            log.info("node %s: subscription to %s ended (%s%s); subscribing again in %.1f s", node,
                     sub.target, event.reason, f", {event.status}" if event.status else "",
                     max(0.0, event.retry_at - self.now()))

    # -- the compositor's hooks ------------------------------------------------------------------------

    def _is_resource(self, uri: str) -> bool:
        """Spec 5.5 step 2: the Request-URI names our resource (else 404)."""
        try:
            parsed = parse_uri(uri)
        except SipError:
            return False
        return isinstance(parsed, SipUri) and parsed.user == self.config.resource

    def _authorize_publisher(self, request: Request, source: Destination, now: float) -> SipError | None:
        """Spec 5.5 step 4: trusted networks."""
        try:
            address = ipaddress.ip_address(source.host.strip("[]"))
        except ValueError:
            address = None
        if address is None or not any(address in network for network in self.trusted):
            log.warning("PUBLISH from %s refused: not in the trusted networks", source.host)
            return SipError(403, "source address not trusted")
        return None

    def _classify(self, request: Request, body: bytes) -> tuple[str, object]:
        """Spec 5.5 step 9: the body's rules; the node is the publication's key."""
        try:
            status = decode(body)
        except StatusError as err:
            log.warning("PUBLISH body refused: %s", err)
            raise SipError(400, body_reason(PACKAGE, err)) from None
        return status.node, status

    def _classify_rooms(self, request: Request, body: bytes) -> tuple[str, object]:
        """A load-affinity PUBLISH body (spec/load-affinity.md 4); the key is "rooms:<node>"."""
        try:
            rooms = affinity.decode(body)
        except StatusError as err:
            log.warning("PUBLISH of rooms refused: %s", err)
            raise SipError(400, body_reason(affinity.PACKAGE, err)) from None
        return ROOMS_KEY + rooms.node, rooms

    def _admit_rooms(self, request: Request, source: Destination, key: str, rooms: object,
                     initial: bool) -> SipError | None:
        """The node must be in the pool, and a delta must follow what we have:
        otherwise 412, and the publisher starts again with a full set
        (spec/load-affinity.md section 2)."""
        node = key.removeprefix(ROOMS_KEY)
        if node not in self.table and not self.table.auto_join:
            return SipError(403, f"node {node} is not in the pool")
        if isinstance(rooms, affinity.AffinityBody) and self.affinity.would_gap(rooms):
            log.info("rooms of %s: PUBLISH of delta %s->%d does not follow what we have: 412",
                     node, rooms.base, rooms.seq)
            return SipError(412, "Conditional Request Failed (rooms: a full set is needed)")
        return None

    def _admit(self, request: Request, source: Destination, node: str, status: object,
               initial: bool) -> SipError | None:
        """Spec 5.5 step 12: a node outside the pool joins only with auto-join."""
        if initial and node not in self.table and not self.table.auto_join:
            log.warning("PUBLISH for node %s from %s refused: not in the pool (auto-join is off)",
                        node, source.host)
            return SipError(403, f"node {node} is not in the pool")
        return None

    # -- weights and timers ---------------------------------------------------------------------------

    def _mark_changed(self) -> None:
        if self._loop is not None:
            self.core.changed(self._loop.time())
            self._arm()

    def _sink_done(self) -> None:
        """A sink took a push: waiters (`wait_for`) look again."""
        self._bump()

    def _bump(self) -> None:
        self._version += 1
        if self._changed is not None:
            changed, self._changed = self._changed, asyncio.Event()
            changed.set()

    def _arm(self) -> None:
        if self._loop is None:
            return
        when = self.core.next_timer()
        if self._closing:
            # Closing: computations go on (waiters look again after each), no new other timers.
            when = self.core.compute_at
            if when is None or (self._timer_at is not None and self._timer_at <= when):
                return
        if when == self._timer_at:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = when
        self._timer = None if when is None else self._loop.call_at(when, self._fire, when)

    def _fire(self, when: float) -> None:
        self._timer = self._timer_at = None
        # asyncio may run a timer a clock tick early; what was due at `when` is due.
        now = max(self.now(), when)
        subscribed = [node for node, sub in self.subscribers.items() if sub.state in (ACTIVE, SUBSCRIBING)]
        tick = self.core.handle_timer(now, subscribed)
        for node in tick.resubscribe:
            sub = self.subscribers[node]
            view = self.table.view(node, now)
            log.warning("node %s: no report for %.0f s; subscribing to %s afresh", node,
                        view.age(now) or 0.0, sub.target)
            self.pool.discard(sub)
            self._follow(Agent(node, sub.target), sub.config, now)
        for runner in self._runners:
            runner.wake()
        self._arm()
        if tick.computed:
            self._bump()
            if self.on_change is not None:
                try:
                    self.on_change(self.rows(now))
                except Exception:  # noqa: BLE001 - a UI's error must not stop the watcher
                    log.exception("on_change callback failed")


class _SinkRunner:
    """Runs one sink's `SinkSchedule` from a task: each job in a worker
    thread (a sink may block on its proxy), one at a time."""

    def __init__(self, sink: Sink | ViewSink, schedule: SinkSchedule, *, views: bool,
                 done: Callable[[], None] | None = None) -> None:
        self.sink, self.schedule, self.views, self.done = sink, schedule, views, done
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    def wake(self) -> None:
        """The pool may have given the schedule a payload."""
        if self.schedule.latest is not None:
            self._wake.set()

    def _next_flush(self) -> float | None:
        next_flush = getattr(self.sink, "next_flush", None)
        return None if next_flush is None else next_flush()

    def _do(self, job: SinkJob, now: float) -> None:
        if job.action == "flush":
            self.sink.flush(now)  # type: ignore[union-attr]
            return
        if job.action == "resync":
            nodes = [v.node for v in job.payload[0]] if self.views else list(job.payload)
            self.sink.forget(nodes)  # type: ignore[union-attr]
        if self.views:
            self.sink.push(*job.payload)  # type: ignore[call-arg]
        else:
            self.sink.push(job.payload, now)  # type: ignore[call-arg]

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            now = loop.time()
            job = self.schedule.take(now, self._next_flush())
            if job is None:
                when = self.schedule.next_timer(self._next_flush())
                timeout = None if when is None else max(0.0, when - loop.time())
                try:
                    await asyncio.wait_for(self._wake.wait(), timeout)
                except TimeoutError:
                    pass
                self._wake.clear()
                continue
            try:
                await asyncio.to_thread(self._do, job, now)
            except Exception as err:  # noqa: BLE001 - the proxy may be restarting
                wait = self.schedule.failed(job, now, str(err))
                log.warning("%s: %s; trying again in %.1f s", type(self.sink).__name__, err, wait)
                continue
            self.schedule.done(job, now)
            if self.done is not None:
                self.done()
