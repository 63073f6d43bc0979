"""`sipstatus sidecar`: a Watcher that pushes the pool's weights into the proxy.

It runs beside Kamailio or OpenSIPS on the proxy host: it subscribes to the
agents (configured, or the destinations of a dispatcher group), optionally
accepts their PUBLISH, and keeps the proxy in step with what the agents
report: Kamailio's htable and dispatcher states (and, in list-file mode,
the rewritten dispatcher.list) over JSON-RPC; OpenSIPS's load_balancer
capacities and destination states over MI (sipstatus.proxy.opensips). See
packaging/examples/sidecar.toml for every setting.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Callable, Mapping

from ..sidecar_config import PolicySection, SidecarConfig
from .agents import Agent
from .kamailio import (
    JsonRpcClient,
    KamailioRoomSink,
    KamailioSink,
    RpcError,
    agents_from_destinations,
)
from .nodetable import NodeView
from .opensips import MiClient, MiError, OpenSipsRoomSink, OpenSipsSink, PushResult
from .policy import WeightPolicy, make_policy
from .sinks import Sink, ViewSink
from .watcher import Watcher

log = logging.getLogger("sipstatus.sidecar")  # the name operators know

#: Discovery is tried again this often while Kamailio does not answer.
DISCOVERY_RETRY = 2.0


def build_policy(section: PolicySection) -> WeightPolicy:
    return make_policy(section.name, section.default_limit)


def kamailio_rpc(config: SidecarConfig) -> JsonRpcClient | None:
    k = config.kamailio
    if not k.rpc:
        return None
    return JsonRpcClient(k.rpc, timeout=k.timeout, reply_dir=k.fifo_reply_dir)


def kamailio_sink(config: SidecarConfig, rpc: JsonRpcClient) -> KamailioSink:
    k = config.kamailio
    return KamailioSink(rpc, group=k.group, htable=k.htable or None, list_file=k.list_file or None,
                        reload_interval=k.reload_interval)


class RefreshingOpenSips:
    """OpenSipsSink as a view sink, given the watcher's (damped) weights of
    the configured policy. Before every push it reads lb_list: the
    capacities pushed add back OpenSIPS's load as it is now (a load read
    earlier counts the calls placed since twice: sipstatus.proxy.opensips), and a
    resize lost to lb_reload or an OpenSIPS restart is found and pushed
    again. ds_list is read every `interval` seconds."""

    def __init__(self, sink: OpenSipsSink, interval: float, clock: Callable[[], float]) -> None:
        self.sink, self.interval, self.clock = sink, interval, clock
        self._read_at = float("-inf")

    def push(self, views: list[NodeView], weights: Mapping[str, int] | None = None) -> PushResult:
        now = self.clock()
        # MiError: the watcher logs it and tries again
        if now - self._read_at >= self.interval:
            self.sink.refresh()
            self._read_at = now
        else:
            self.sink.refresh_loads()
        result = self.sink.push(views, weights)
        if result.errors:
            raise MiError("push", None, "; ".join(map(str, result.errors)))
        return result


def opensips_sink(config: SidecarConfig, policy: WeightPolicy) -> ViewSink | None:
    """The OpenSIPS sink, sized by the watcher's `policy` (its free slots)."""
    o = config.opensips
    if not o.mi_url:
        return None
    sink = OpenSipsSink(MiClient(o.mi_url, timeout=o.timeout), lb_group=o.lb_group or None,
                        resource=o.resource, ds_set=o.ds_set or None, ds_partition=o.ds_partition,
                        default_limit=config.policy.default_limit, policy=policy)
    return RefreshingOpenSips(sink, o.refresh_interval, time.monotonic)


async def discover(config: SidecarConfig, rpc: JsonRpcClient, stop: asyncio.Event) -> list[Agent] | None:
    """The agents of the configured dispatcher group, asking until Kamailio
    answers (it may start after us); None if stopped first."""
    group = config.discover.dispatcher_group
    reader = KamailioSink(rpc, group=group, htable=None)
    while not stop.is_set():
        try:
            destinations = await asyncio.to_thread(reader.destinations)
        except RpcError as err:
            log.warning("cannot read dispatcher group %d yet: %s; trying again in %g s", group, err,
                        DISCOVERY_RETRY)
        else:
            if not destinations:
                raise ValueError(f"dispatcher group {group} has no destinations in Kamailio "
                                 f"(--discover-from-dispatcher / discover.dispatcher_group)")
            agents = agents_from_destinations(destinations, config.discover.agent_port)
            log.info("dispatcher group %d: %s", group,
                     ", ".join(f"{a.node}={a.uri}" for a in sorted(agents, key=lambda a: a.node)))
            return agents
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), DISCOVERY_RETRY)
    return None


async def run(config: SidecarConfig, *, stop: asyncio.Event | None = None,
              started: Callable[[Watcher], None] | None = None) -> int:
    """Run until `stop` is set (or SIGINT/SIGTERM); returns the exit status."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signum, stop.set)
    rpc = kamailio_rpc(config)
    sinks: list[Sink] = []
    if rpc is not None:
        sinks.append(kamailio_sink(config, rpc))
    agents = list(config.agents)
    if config.discover.dispatcher_group:
        assert rpc is not None  # SidecarConfig.check
        found = await discover(config, rpc, stop)
        if found is None:
            return 0
        known = {a.node for a in agents}
        agents += [a for a in found if a.node not in known]
    if not agents and not config.compositor.enabled and not config.compositor.auto_join:
        raise ValueError("nothing to follow: give agents (--agent [NODE=]URI, [agents], "
                         "--discover-from-dispatcher) or accept PUBLISH (--compositor, [compositor])")
    policy = build_policy(config.policy)
    views = [sink for sink in (opensips_sink(config, policy),) if sink is not None]
    rooms: list[Sink] = []
    if config.affinity.enabled and config.kamailio.rpc and config.kamailio.affinity_htable:
        room_rpc = kamailio_rpc(config)
        assert room_rpc is not None
        rooms.append(KamailioRoomSink(room_rpc, config.kamailio.affinity_htable))
    if config.affinity.enabled and config.opensips.mi_url and config.opensips.affinity_prefix:
        rooms.append(OpenSipsRoomSink(MiClient(config.opensips.mi_url, timeout=config.opensips.timeout),
                                      config.opensips.affinity_prefix))
    watcher = Watcher(agents, config=config.watcher_config(), policy=policy,
                      sinks=sinks, view_sinks=views, affinity_sinks=rooms, nodes=config.compositor.nodes)
    await watcher.start()
    where = ", ".join(f"{t.lower()}:{h}:{p}" for t, h, p in watcher.addresses)
    targets = [t for t in (config.kamailio.rpc, config.opensips.mi_url) if t]
    log.info("sidecar listening on %s, following %d agents, policy %s, pushing to %s", where,
             len(agents), watcher.policy.name, ", ".join(targets) or "nothing (no kamailio.rpc, no opensips.mi_url)")
    if started is not None:
        started(watcher)
    try:
        await stop.wait()
    finally:
        await watcher.close()
    return 0
