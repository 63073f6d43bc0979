"""The proxy side's process: follow many agents, keep the pool, push weights.

A `Watcher` runs one SIP element on the running asyncio loop:

- a `SubscriberPool` holding one `load-status` subscription per agent
  (spec/load-status.md section 4: refreshes on one timer heap, the
  re-subscription rules of sections 4.7.4 and 4.8, backoff on failure);
- optionally a `Compositor` for agents that PUBLISH instead (sections 5.5
  and 5.6: one publication per node, keyed by the body's `node`; 403 for a
  node outside the pool unless auto-join is on);
- one `NodeTable` fed by both (section 7: ordering by instance and seq,
  staleness on our own clock, checked on a timer at `next_expiry`);
- a weight policy (`WaterFillPolicy` unless told otherwise) whose output
  goes through a `WeightDamper` to the sinks (`KamailioSink`, the OpenSIPS
  adapter, or anything with the `Sink` shape).

UIs read `rows()` (one `NodeRow` per node) or iterate `updates()`.

Unknown is not zero: a node never heard from has state "unknown" and no
weight or metrics in its row; the sinks get weight 0 for it (no new calls,
spec section 5.6) only once the start-up grace is over, so that starting the
sidecar does not switch a working pool off before the agents had a chance
to answer.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import logging
import math
import re
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from .. import affinity
from ..affinity_table import DEFAULT_HOLD, AffinityTable, Applied
from ..codec import MEDIA_TYPE, StatusError, decode
from ..net import Endpoint, Resolver, SipService
from ..sip.errors import SipError
from ..sip.message import Request
from ..sip.publication import (
    Compositor,
    PublicationReceived,
    PublicationRefreshed,
    PublicationRemoved,
)
from ..sip.subscription import (
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
from ..sip.uri import SipUri, parse_uri
from ..status import LoadStatus
from .kamailio import Destination as DispatcherDestination
from .nodetable import NodeTable, NodeView, Outcome
from .policy import WaterFillPolicy, WeightDamper, WeightPolicy

log = logging.getLogger(__name__)

PACKAGE = "load-status"
#: Publication keys of the load-affinity compositor: "rooms:<node>".
ROOMS_KEY = "rooms:"
#: A node name (spec section 6.4).
NODE_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._:-]{0,62}[A-Za-z0-9])?")
#: The port an agent listens on when the URI does not say (packaging/agent.toml).
DEFAULT_AGENT_PORT = 5070
#: Seconds after start during which nothing is pushed to the sinks until
#: every configured node has been heard from (see the module docstring).
STARTUP_GRACE = 5.0
#: Weights are recomputed at most this often; reports arriving closer
#: together are taken in one computation (hundreds of agents at up to 5/s each).
RECOMPUTE_INTERVAL = 0.02
#: A stopping watcher waits this long for its unsubscriptions (spec 4.7.4
#: gives a stopping agent 2 s for its final NOTIFYs; the same bound here).
CLOSE_WAIT = 2.0
#: A sink that failed is tried again after 0.5 s, doubling up to this.
SINK_RETRY_MAX = 30.0


# -- what is followed ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Agent:
    """An agent to subscribe to: the node it reports and its SIP URI.

    `node` None: the agent is named by its first valid report (`--agent
    sip:HOST:PORT`). A node given (`--agent ast1=sip:HOST:PORT`) is a
    check as well as a name: a report for another node on that subscription
    is not used (spec section 4.8 step 6), so that an agent configured with
    the wrong name cannot pass its load off as another node's.
    """

    node: str | None
    uri: str

    def __post_init__(self) -> None:
        uri = parse_agent_uri(self.uri)
        if self.node is not None and not NODE_NAME.fullmatch(self.node):
            raise ValueError(f"agent node {self.node!r}: must be 1 to 64 of A-Z a-z 0-9 . _ : - "
                             "(spec section 6.4), starting and ending with a letter or digit")
        object.__setattr__(self, "uri", str(uri))

    @property
    def key(self) -> str:
        """How the watcher knows it: the node, or the URI until it is named."""
        return self.node if self.node is not None else self.uri


def parse_agent_uri(text: str) -> SipUri:
    """A SIP URI of an agent, or ValueError naming what is wrong with it."""
    try:
        uri = parse_uri(text.strip())
    except SipError as err:
        raise ValueError(f"agent URI {text!r}: {err.reason}") from None
    if not isinstance(uri, SipUri):
        raise ValueError(f"agent URI {text!r}: must be a sip: or sips: URI")
    return uri


def parse_agent(text: str) -> Agent:
    """`SIP-URI` or `NODE=SIP-URI` (the `--agent` flag) as an Agent."""
    if re.match(r"(?i)\s*sips?:", text):
        return Agent(None, text.strip())  # named by its first report
    node, sep, uri = text.partition("=")
    if not sep or not node or not uri:
        raise ValueError(f"agent {text!r}: expected SIP-URI or NODE=SIP-URI, e.g. sip:192.0.2.21:5070 "
                         "or ast1=sip:192.0.2.21:5070")
    return Agent(node.strip(), uri.strip())


def misnamed(expected: str, reported: str, uri: str) -> str:
    """What an operator reads when the agent at `uri`, followed as node
    `expected`, reports node `reported`: both ways to fix it."""
    return (f"the agent calls itself {reported!r}, not {expected!r}: name it {reported} here "
            f"(--agent {reported}={uri}, or the URI alone), or set agent.node = \"{expected}\" "
            "in its agent.toml and reload it")


def agents_from_destinations(destinations: Iterable[DispatcherDestination],
                             port: int = DEFAULT_AGENT_PORT) -> list[Agent]:
    """The agents of a Kamailio dispatcher group: node = the destination's
    `duid` (else its host), agent = sip:<destination host>:<port>."""
    agents: dict[str, Agent] = {}
    for destination in destinations:
        uri = parse_agent_uri(destination.uri)
        host = uri.host if ":" not in uri.host or uri.host.startswith("[") else f"[{uri.host}]"
        agent = Agent(destination.node, f"sip:{host}:{port}")
        if agents.setdefault(agent.node, agent) != agent:
            raise ValueError(f"dispatcher destinations {agents[agent.node].uri} and {destination.uri} "
                             f"both name node {agent.node!r}: give each a distinct duid")
    return list(agents.values())


# -- where weights go ----------------------------------------------------------------------


class Sink(Protocol):
    """Something that applies a pool's weights to a proxy (`KamailioSink`,
    the OpenSIPS MI adapter). Calls may block: the watcher makes them from a
    worker thread, one at a time per sink, newest weights first."""

    def push(self, weights: Mapping[str, int], now: float) -> None:
        """Apply `weights` (every node of the pool, 0 = no new calls)."""
        ...

    def next_flush(self) -> float | None:
        """When `flush` has held-back work to do (a rate-limited reload), or None."""
        ...

    def flush(self, now: float) -> object:
        """Do the held-back work if it is due."""
        ...


class ViewSink(Protocol):
    """A sink that wants the nodes themselves as well as the weights (the
    OpenSIPS adapter sizes load_balancer destinations from capacity and
    limit, and switches off the nodes the policy gives weight 0). Called
    from a worker thread with every node at each change, and the damped
    weights the weight sinks got (departed nodes at 0)."""

    def push(self, views: Iterable[NodeView], weights: Mapping[str, int]) -> object:
        ...


# -- what a UI shows -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NodeRow:
    """One node as an operator sees it.

    `state` is the node's state when its status is fresh, "stale" when its
    last status has outlived its validity (`reported` keeps what it said),
    and "unknown" when nothing is known (never heard from, or its
    publication ended). Metrics are None when unknown; `weight` is what the
    policy gives the node (None when unknown), `pushed` what the sinks were
    last given (the damped weight, None before the first push).
    """

    node: str
    state: str
    reported: str | None
    reason: str | None
    capacity: float | None
    weight: int | None
    pushed: int | None
    cpu: float | None
    channels: int | None
    calls: int | None
    limit: int | None  # Asterisk's maxcalls: a limit on calls
    mos: float | None
    p95: float | None
    age: float | None
    validity: int | None
    source: str | None  # "notify", "publish", or None
    link: str  # the subscription or publication, for operators

    @property
    def takes_calls(self) -> bool:
        return self.state == "active" and bool(self.weight)

    def to_json(self) -> dict[str, Any]:
        return {field.name: getattr(self, field.name) for field in dataclasses.fields(self)}


def node_row(view: NodeView, weight: int | None, pushed: int | None, now: float,
             source: str | None = None, link: str = "") -> NodeRow:
    status = view.status
    if status is None:
        return NodeRow(view.node, "unknown", None, None, None, None, pushed, None, None, None,
                       None, None, None, None, None, source, link)
    asterisk, cpu, quality, probe = status.asterisk, status.cpu, status.quality, status.probe
    age = view.age(now)
    return NodeRow(
        node=view.node,
        state=status.state.value if view.fresh else "stale",
        reported=status.state.value,
        reason=status.reason,
        capacity=status.capacity,
        weight=weight,
        pushed=pushed,
        cpu=cpu.usage if cpu else None,
        channels=asterisk.channels if asterisk else None,
        calls=asterisk.calls if asterisk else None,
        limit=asterisk.limit if asterisk else None,
        mos=quality.mos if quality else None,
        p95=probe.p95 if probe else None,
        age=None if age is None else max(0.0, age),
        validity=status.validity,
        source=source,
        link=link,
    )


# -- errors as the spec words them ---------------------------------------------------------------


def invalid_body(member: str, rule: str) -> str:
    """The reason phrase of spec section 6.6."""
    return f"Invalid load-status body: {member} ({rule})"


def parse_listen(text: str) -> tuple[str, str, int]:
    """`udp:127.0.0.1:5080`, `tcp:[::1]:5080`: (transport, host, port)."""
    match = re.fullmatch(r"(?i)(udp|tcp):(\[[0-9A-Fa-f:.]+\]|[^:\[\]]+):(\d{1,5})", text.strip())
    if not match:
        raise ValueError(f"listen address {text!r}: expected udp:HOST:PORT or tcp:HOST:PORT "
                         "(IPv6 in brackets), e.g. udp:127.0.0.1:5080")
    transport, host, port = match.group(1).upper(), match.group(2).strip("[]"), int(match.group(3))
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"listen address {text!r}: {host!r} is not an IP address") from None
    if port > 65535:
        raise ValueError(f"listen address {text!r}: port {port} is above 65535")
    return transport, host, port


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
    state); `updates()` yields the same snapshots to an async reader.
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
        self.policy: WeightPolicy = policy or WaterFillPolicy()
        self.damper = WeightDamper(min_step=self.config.damper_step)
        named = [a.node for a in self.agents.values() if a.node is not None]
        configured = [*named, *(n for n in nodes if n not in named)]
        self.table = NodeTable(configured, auto_join=self.config.auto_join)
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
        resync = self.config.sink_resync
        self._sinks = [_SinkRunner(sink, views=False, resync=resync, done=self._sink_done)
                       for sink in sinks]
        self._view_sinks = [_SinkRunner(sink, views=True, resync=resync, done=self._sink_done)
                            for sink in view_sinks]
        #: The rooms of the pool (load-affinity): announced sets and placements.
        self.affinity = AffinityTable(self.config.affinity_hold)
        self.affinity_subscribers: dict[str, Subscriber] = {}
        #: Sinks given room key -> node (`push(assignments, now)`), e.g. Kamailio's htable.
        self._affinity_sinks = [_SinkRunner(sink, views=False, resync=resync, done=self._sink_done)
                                for sink in affinity_sinks]
        self._affinity_pushed: dict[str, str] | None = None
        self._source: dict[str, str] = {}
        self._link: dict[str, str] = {}
        self._last_refusal = ""
        self._misnamed: dict[str, str] = {}  # key -> the node its agent reports instead
        self._answered: set[str] = set()  # agents that sent a body or whose subscription failed
        self._revived: set[str] = set()  # stale nodes subscribed to afresh (once per staleness)
        self._weights: dict[str, int] = {}
        self._pushed: dict[str, int] | None = None
        self._started_at = 0.0
        self._last_compute = -math.inf
        self._compute_handle: asyncio.TimerHandle | None = None
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
            transport, host, port = parse_listen(text)
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
        self._started_at = now
        base = self._subscriber_config()
        for runner in (*self._sinks, *self._view_sinks, *self._affinity_sinks):
            runner.start()
        for agent in self.agents.values():
            self._follow(agent, base, now)
            if self.config.affinity:
                self._follow_rooms(agent, now)
        self._schedule_compute()
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
        for handle in (self._timer, self._compute_handle):
            if handle is not None:
                handle.cancel()
        for runner in (*self._sinks, *self._view_sinks, *self._affinity_sinks):
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
                self.service.submit(self.pool, self.pool.refresh(sub, now))
            elif applied is Applied.APPLIED:
                self._mark_changed()
        elif isinstance(event, SubscriptionEnded):
            log.info("rooms of %s: subscription ended (%s)", event.subscriber.key, event.reason)

    # -- rooms: what a proxy asks --------------------------------------------------------------

    def lookup(self, key: str, now: float | None = None) -> str | None:
        """The node for a new call of the room with affinity key `key`
        (spec/load-affinity.md 7.2), or None: choose by weight, then `place`."""
        return self.affinity.lookup(key, self._weights, self.now() if now is None else now)

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

    def _node_of(self, sub: Subscriber, status: LoadStatus) -> str | None:
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

    def _name(self, agent: Agent, sub: Subscriber, node: str) -> str | None:
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
        sub.key = node
        self._link.pop(key, None)
        self._misnamed.pop(key, None)
        if key in self._answered:
            self._answered.discard(key)
            self._answered.add(node)
        self.table.add(node)
        log.info("the agent at %s is node %s (named by its report)", agent.uri, node)
        return node

    def _report_misnamed(self, key: str, sub: Subscriber, reported: str, text: str) -> None:
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
        weights = self.policy.weights(views)
        pushed = self._pushed or {}
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
        return dict(self._weights)

    @property
    def pushed(self) -> dict[str, int] | None:
        """The damped weights last handed to the sinks (None before the first push)."""
        return None if self._pushed is None else dict(self._pushed)

    def settled(self) -> bool:
        """Whether every agent has answered one way or another: a status
        accepted, or its subscription failed, refused or ended."""
        return all(key in self._answered for key in self.agents)

    async def updates(self) -> AsyncIterator[list[NodeRow]]:
        """Snapshots of `rows()`, one after each change (changes made while the
        reader was busy coalesce into the next snapshot)."""
        seen = -1
        while True:
            while self._version == seen:
                assert self._changed is not None, "the watcher is not started"
                await self._changed.wait()
            seen = self._version
            yield self.rows()

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
        if isinstance(subscriber, Subscriber) and subscriber.config.package == affinity.PACKAGE:
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
        outcome = self.table.update(status, now)
        self.counters[outcome.value] += 1
        if outcome is Outcome.ACCEPTED:
            self._source[status.node] = source
            self._revived.discard(status.node)
        elif outcome is Outcome.OUT_OF_ORDER:
            log.debug("%s: ignored %s seq %d of instance %s (out of date)", status.node, source,
                      status.seq, status.instance)

    def _notify_rejected(self, sub: Subscriber, reason: str, now: float) -> None:
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
        self._schedule_compute()

    def _schedule_compute(self) -> None:
        if self._compute_handle is not None or self._loop is None:
            return
        delay = max(0.0, self._last_compute + RECOMPUTE_INTERVAL - self._loop.time())
        self._compute_handle = self._loop.call_later(delay, self._compute)

    def _compute(self, now: float | None = None) -> None:
        self._compute_handle = None
        now = self.now() if now is None else now
        self._last_compute = now
        views = list(self.table.views(now))
        self._weights = self.policy.weights(views)
        self._push(now, views)
        self._push_rooms(now)
        self._arm()
        self._bump()
        if self.on_change is not None:
            try:
                self.on_change(self.rows(now))
            except Exception:  # noqa: BLE001 - a UI's error must not stop the watcher
                log.exception("on_change callback failed")

    def _sink_done(self) -> None:
        """A sink took a push: waiters (`wait_for`, `updates`) look again."""
        self._bump()

    def _bump(self) -> None:
        self._version += 1
        if self._changed is not None:
            changed, self._changed = self._changed, asyncio.Event()
            changed.set()

    def _push(self, now: float, views: list[NodeView]) -> None:
        if not self._sinks and not self._view_sinks:
            return
        if self._pushed is None and now < self._started_at + self.config.startup_grace \
                and not all(n in self.table and self.table.view(n, now).status is not None
                            for n in self.agents):
            return  # start-up grace: see the module docstring
        departed_views = [NodeView(n, None, None, False) for n in (self._pushed or {})
                          if n not in self.table]
        weights = dict(self._weights)
        departed = [n for n in (self._pushed or {}) if n not in weights]
        for node in departed:
            weights[node] = 0  # left the pool (spec 5.6): no new calls, said once
        damped = self.damper.apply(weights)
        for node in departed:
            self.damper.current.pop(node, None)
        # View sinks get every change of the nodes (a size follows the
        # capacity), with the damped weights: the policy says which nodes
        # take calls there too.
        given = {**self.damper.current, **{node: 0 for node in departed}}
        for runner in self._view_sinks:
            runner.want((views + departed_views, given))
        if damped is None and self._pushed is not None:
            for node in departed:
                del self._pushed[node]
            return
        pushed = dict(self.damper.current) if damped is None else damped
        before = self._pushed or {}
        changed = " ".join(f"{n}={w}" for n, w in sorted(pushed.items()) if before.get(n) != w)
        if changed:
            log.info("weights: %s", changed)
        for runner in self._sinks:
            runner.want(pushed)
        self._pushed = {n: w for n, w in pushed.items() if n not in departed}

    def _push_rooms(self, now: float) -> None:
        """Room key -> node, for every room whose node takes calls, to the
        affinity sinks (only when it changed; after the start-up grace)."""
        if not self._affinity_sinks or (self._pushed is None and (self._sinks or self._view_sinks)):
            return
        assignments = self.affinity.assignments(self._weights, now)
        if assignments != self._affinity_pushed:
            self._affinity_pushed = assignments
            for runner in self._affinity_sinks:
                runner.want(assignments)

    def _next_timer(self, now: float) -> float | None:
        times = []
        expiry = self.table.next_expiry(now)
        if expiry is not None:
            times.append(expiry)
        rooms = self.affinity.next_expiry()
        if rooms is not None:
            times.append(rooms)
        if self._pushed is None and (self._sinks or self._view_sinks):
            grace = self._started_at + self.config.startup_grace
            if grace > now:
                times.append(grace)
        return min(times) if times else None

    def _arm(self) -> None:
        if self._loop is None or self._closing:
            return
        when = self._next_timer(self._loop.time())
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
        if self._compute_handle is not None:
            self._compute_handle.cancel()
        self.affinity.expire(now)
        self._revive_stale(now)
        self._compute(now)

    def _revive_stale(self, now: float) -> None:
        """A node we subscribe to went stale: its heartbeats stopped although
        our subscription looked alive (an agent killed and restarted has no
        dialog with us, and says nothing). Subscribe afresh at once rather than
        at the next refresh (up to expires x 4/5 later); once per staleness:
        after that the new Subscriber's own backoff applies."""
        for node, sub in list(self.subscribers.items()):
            if node in self._revived or node not in self.table:
                continue
            view = self.table.view(node, now)
            if view.status is None or view.fresh or sub.state not in (ACTIVE, SUBSCRIBING):
                continue
            self._revived.add(node)
            log.warning("node %s: no report for %.0f s; subscribing to %s afresh", node,
                        view.age(now) or 0.0, sub.target)
            self.pool.discard(sub)
            self._follow(Agent(node, sub.target), sub.config, now)


class _SinkRunner:
    """Feeds one sink from a task: the newest weights (or views), one call at
    a time in a worker thread (a sink may block on its proxy), held-back
    flushes on time, failures retried with backoff without stopping the
    watcher, and, every `resync` seconds, the last push made again in full
    (`forget` then `push`) for a sink that can forget: a proxy that
    restarted has lost what it was told and only changes would reach it."""

    def __init__(self, sink: Sink | ViewSink, *, views: bool, resync: float | None = None,
                 done: Callable[[], None] | None = None) -> None:
        self.sink = sink
        self.done = done
        self.views = views
        self.resync = resync if resync and hasattr(sink, "forget") else None
        self.latest: Any = None
        self.last: Any = None  # the last payload the sink took
        self.failures = 0
        self.last_error: str | None = None
        self.pushes = 0
        self.resyncs = 0
        self._resync_at: float | None = None
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

    def want(self, payload: Mapping[str, int] | tuple[list[NodeView], Mapping[str, int]]) -> None:
        """The newest weights (a weight sink) or (views, weights) (a view sink)."""
        if self.views:
            views, weights = payload  # type: ignore[misc]
            self.latest = (list(views), dict(weights))
        else:
            self.latest = dict(payload)  # type: ignore[arg-type]
        self._wake.set()

    def _next_flush(self) -> float | None:
        next_flush = getattr(self.sink, "next_flush", None)
        return None if next_flush is None else next_flush()

    def _push(self, payload: Any, now: float) -> None:
        if self.views:
            self.sink.push(*payload)  # type: ignore[call-arg]
        else:
            self.sink.push(payload, now)  # type: ignore[call-arg]

    def _push_again(self, payload: Any, now: float) -> None:
        nodes = [v.node for v in payload[0]] if self.views else list(payload)
        self.sink.forget(nodes)  # type: ignore[union-attr]
        self._push(payload, now)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            due = self._next_flush()
            times = [t for t in (due, self._resync_at) if t is not None]
            timeout = None if not times else max(0.0, min(times) - loop.time())
            if self.latest is None:
                try:
                    await asyncio.wait_for(self._wake.wait(), timeout)
                except TimeoutError:
                    pass
            self._wake.clear()
            payload, self.latest = self.latest, None
            now = loop.time()
            resync_due = self._resync_at is not None and now >= self._resync_at
            try:
                if resync_due:
                    payload = self.last if payload is None else payload
                    await asyncio.to_thread(self._push_again, payload, now)
                    self.resyncs += 1
                    self.last = payload
                elif payload is not None:
                    await asyncio.to_thread(self._push, payload, now)
                    self.pushes += 1
                    self.last = payload
                elif due is not None and now >= due:
                    await asyncio.to_thread(self.sink.flush, now)  # type: ignore[union-attr]
                if self.resync is not None and self.last is not None and (
                        self._resync_at is None or resync_due):
                    self._resync_at = now + self.resync
                self.failures = 0
                if self.done is not None:
                    self.done()
            except Exception as err:  # noqa: BLE001 - the proxy may be restarting
                self.failures += 1
                self.last_error = str(err)
                wait = min(SINK_RETRY_MAX, 0.5 * 2 ** (self.failures - 1))
                log.warning("%s: %s; trying again in %.1f s", type(self.sink).__name__, err, wait)
                if payload is not None and self.latest is None:
                    self.latest = payload
                await asyncio.sleep(wait)
