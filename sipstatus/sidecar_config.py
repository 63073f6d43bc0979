"""The sidecar's configuration: one small TOML file (packaging/examples/sidecar.toml).

`load()` checks everything at start and raises `ConfigError` naming the
dotted key and what was wrong with it (`kamailio.rpc: expected unix:PATH or
fifo:PATH, got "tcp:x"`). Unknown keys and sections are errors, so a typo
is not silently ignored. `sipstatus watch --config` reads the same file
(it uses the agents, sip, compositor and policy sections).

Command-line flags (`sipstatus sidecar --agent ... --kamailio-rpc ...`)
are applied over the file with `with_flags()`, so a quick start needs no
file at all.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .configkit import (
    NODE,
    ConfigError,
    boolean,
    choice,
    integer,
    number,
    option,
    parse_listen,
    show,
    strings,
    text,
)
from .proxy.agents import DEFAULT_AGENT_PORT, Agent, parse_agent
from .proxy.policy import DEFAULT_POLICY, POLICIES
from .proxy.pool import STARTUP_GRACE
from .proxy.watcher import WatcherConfig

# -- checks of this file's own values: each returns the cleaned value or raises ValueError(problem) --


def listen_address(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(f"must be a string such as \"udp:127.0.0.1:5080\", got {show(value)}")
    # The watcher listens on UDP and TCP; port 0 takes any free port.
    parse_listen(value, ("udp", "tcp"), port_zero=True)  # its ValueError names the address
    return value


def network(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(f"must be a network such as \"10.0.0.0/8\", got {show(value)}")
    try:
        ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise ValueError(f"{show(value)} is not an IP network (address/prefix)") from None
    return value


def rpc_address(value: object) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"(unix|fifo):\S+|", value):
        raise ValueError(f"expected unix:PATH or fifo:PATH (or \"\" for none), got {show(value)}")
    return value


_NODE_WHAT = "a node name of 1 to 64 of A-Z a-z 0-9 . _ : -"


# -- the sections ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class SidecarSection:
    log_level: str = option("info", choice("debug", "info", "warning", "error"))


@dataclass(frozen=True)
class SipSection:
    #: Where NOTIFY (and PUBLISH) come in: udp:HOST:PORT or tcp:HOST:PORT.
    listen: tuple[str, ...] = option(("udp:127.0.0.1:5080",), strings(listen_address, "listen addresses"))
    #: The address Contact and Via carry when listening on 0.0.0.0 or ::; "" = the listen address.
    advertise: str = option("", text(r"|[0-9A-Za-z.:_-]+", "a host name or IP address"))
    #: Subscription duration asked for, seconds (spec 4.4).
    expires: int = option(600, integer(60, 3600))
    #: RFC 6446 max-rate and min-rate sent in SUBSCRIBE, per second; 0 = not sent.
    max_rate: float = option(0.0, number(0.0, 10.0))
    min_rate: float = option(0.0, number(0.0, 10.0))


@dataclass(frozen=True)
class DiscoverSection:
    #: Dispatcher group whose destinations are the agents; 0 = no discovery.
    dispatcher_group: int = option(0, integer(0, 2**31 - 1))
    #: The agents' SIP port on each destination host.
    agent_port: int = option(DEFAULT_AGENT_PORT, integer(1, 65535))


@dataclass(frozen=True)
class CompositorSection:
    #: Accept PUBLISH from agents (spec section 5).
    enabled: bool = option(False, boolean)
    #: An initial PUBLISH for a node outside the pool adds it (spec 5.6).
    auto_join: bool = option(False, boolean)
    #: Nodes of the pool that publish (and are not subscribed to).
    nodes: tuple[str, ...] = option((), strings(text(NODE, _NODE_WHAT), "node names"))
    #: The Request-URI user part PUBLISH must carry; "" = any (else 404).
    resource: str = option("", text(r"[^\s@;]*", "a user part without spaces, @ or ;"))
    #: Source networks allowed to publish; [] = any source.
    trusted: tuple[str, ...] = option((), strings(network, "networks"))


@dataclass(frozen=True)
class AffinitySection:
    #: Follow each agent's rooms too (the load-affinity package,
    #: spec/load-affinity.md) and push room key -> node to the proxy.
    enabled: bool = option(False, boolean)
    #: Seconds a placement holds before the node announces the room.
    hold: float = option(10.0, number(0.0, 3600.0))


@dataclass(frozen=True)
class PolicySection:
    #: water-fill (equal utilisation across nodes), free-slots (capacity x
    #: channel limit) or headroom (the node's own hint).
    name: str = option(DEFAULT_POLICY, choice(*POLICIES))
    #: water-fill, free-slots: the channel limit assumed for a node that reports none.
    default_limit: int = option(100, integer(1, 999_999))
    #: A weight changes only by this many points, or to or from 0.
    damper_step: int = option(5, integer(1, 100))
    #: Seconds after start before nodes never heard from are pushed as 0.
    startup_grace: float = option(STARTUP_GRACE, number(0.0, 600.0))


@dataclass(frozen=True)
class KamailioSection:
    #: jsonrpcs address: unix:PATH (dgram_socket) or fifo:PATH; "" = no Kamailio.
    rpc: str = option("", rpc_address)
    #: The dispatcher group whose states (duid) are set.
    group: int = option(1, integer(0, 2**31 - 1))
    #: htable the weights go into ($sht(TABLE=>NODE)); "" = none.
    htable: str = option("sipstatus", text(r"[A-Za-z0-9_]*", "an htable name (A-Z a-z 0-9 _) or \"\""))
    #: dispatcher list file to rewrite with rweight and states; "" = no rewrite.
    list_file: str = option("", text(None, "a file path"))
    #: Seconds between dispatcher.reload calls at most (Kamailio's reload_delta).
    reload_interval: float = option(5.0, number(1.0, 3600.0))
    #: Seconds between full pushes of every node's weight and state (a
    #: restarted Kamailio has lost them; changes alone would not restore them); 0 = never.
    resync_interval: float = option(30.0, number(0.0, 86_400.0))
    #: Seconds to wait for one RPC answer.
    timeout: float = option(2.0, number(0.1, 60.0))
    #: jsonrpcs fifo_reply_dir (fifo: only).
    fifo_reply_dir: str = option("/tmp", text(r"\S+", "a directory"))
    #: htable room keys go into with [affinity] on ($sht(TABLE=>KEY) = NODE); "" = none.
    affinity_htable: str = option("affinity", text(r"[A-Za-z0-9_]*", "an htable name (A-Z a-z 0-9 _) or \"\""))


def mi_url(value: object) -> str:
    if not isinstance(value, str) or not (value == "" or re.fullmatch(r"https?://[^\s/]+(/\S*)?", value)):
        raise ValueError(f"expected the mi_http URL, e.g. \"http://127.0.0.1:8888/mi\", got {show(value)}")
    return value


@dataclass(frozen=True)
class OpenSipsSection:
    #: OpenSIPS MI over HTTP (mi_http), e.g. "http://127.0.0.1:8888/mi"; "" = no OpenSIPS.
    mi_url: str = option("", mi_url)
    #: load_balancer group whose destinations are the pool (lb_resize); 0 = none.
    lb_group: int = option(1, integer(0, 2**31 - 1))
    #: The load_balancer resource sized by lb_resize.
    resource: str = option("channels", text(r"[A-Za-z0-9_-]+", "a resource name"))
    #: Dispatcher set switched on and off by ds_set_state; 0 = none.
    ds_set: int = option(0, integer(0, 2**31 - 1))
    ds_partition: str = option("default", text(r"[A-Za-z0-9_-]+", "a partition name"))
    #: Seconds between readings of ds_list (lb_list is read before every push:
    #: the capacities add back OpenSIPS's current load, and a resize lost on
    #: lb_reload or an OpenSIPS restart is found and pushed again).
    refresh_interval: float = option(60.0, number(1.0, 86_400.0))
    #: Seconds to wait for one MI answer.
    timeout: float = option(2.0, number(0.1, 60.0))
    #: With [affinity] enabled: cachedb_local keys PREFIX<room key> = node
    #: (MI cache_store / cache_remove); "" = none.
    affinity_prefix: str = option("affinity_", text(r"[A-Za-z0-9_]*", "a key prefix (A-Z a-z 0-9 _) or \"\""))


@dataclass(frozen=True)
class SidecarConfig:
    sidecar: SidecarSection = field(default_factory=SidecarSection)
    sip: SipSection = field(default_factory=SipSection)
    #: node name -> agent SIP URI
    agents: tuple[Agent, ...] = ()
    discover: DiscoverSection = field(default_factory=DiscoverSection)
    compositor: CompositorSection = field(default_factory=CompositorSection)
    affinity: AffinitySection = field(default_factory=AffinitySection)
    policy: PolicySection = field(default_factory=PolicySection)
    kamailio: KamailioSection = field(default_factory=KamailioSection)
    opensips: OpenSipsSection = field(default_factory=OpenSipsSection)

    def watcher_config(self) -> WatcherConfig:
        sip, comp = self.sip, self.compositor
        return WatcherConfig(
            listen=sip.listen, advertise=sip.advertise or None, expires=sip.expires,
            max_rate=sip.max_rate or None, min_rate=sip.min_rate or None,
            compositor=comp.enabled or comp.auto_join, auto_join=comp.auto_join,
            resource=comp.resource or None, trusted=comp.trusted,
            damper_step=self.policy.damper_step, startup_grace=self.policy.startup_grace,
            sink_resync=self.kamailio.resync_interval or None,
            affinity=self.affinity.enabled, affinity_hold=self.affinity.hold)

    def check(self) -> SidecarConfig:
        """Rules across sections; raises ConfigError."""
        if self.discover.dispatcher_group and not self.kamailio.rpc:
            raise ConfigError("discover.dispatcher_group", "needs kamailio.rpc (where to read the dispatcher from)")
        if self.kamailio.list_file and not self.kamailio.rpc:
            raise ConfigError("kamailio.list_file", "needs kamailio.rpc (the reload goes over RPC)")
        if self.sip.min_rate and self.sip.max_rate and self.sip.min_rate > self.sip.max_rate:
            raise ConfigError("sip.min_rate", f"{self.sip.min_rate:g} is above sip.max_rate {self.sip.max_rate:g}")
        if self.opensips.mi_url and not (self.opensips.lb_group or self.opensips.ds_set):
            raise ConfigError("opensips.lb_group", "with opensips.mi_url, give an lb_group, a ds_set, or both")
        clash = set(self.compositor.nodes) & {a.node for a in self.agents if a.node}
        if clash:
            raise ConfigError("compositor.nodes", f"{', '.join(sorted(clash))} also listed in [agents]")
        return self


# -- reading -----------------------------------------------------------------------------------------

_SECTIONS = {f.name: f for f in dataclasses.fields(SidecarConfig)}


def load(path: str | Path) -> SidecarConfig:
    """Read and check a sidecar TOML file."""
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as err:
        raise ConfigError("", f"{path}: {err.strerror or err}") from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError("", f"{path}: not valid TOML: {err}") from None
    return from_mapping(data)


def from_mapping(data: Mapping[str, Any]) -> SidecarConfig:
    values: dict[str, Any] = {}
    for name, value in data.items():
        spec = _SECTIONS.get(name)
        if spec is None:
            raise ConfigError(name, f"unknown section (known: {', '.join(_SECTIONS)})")
        if not isinstance(value, dict):
            raise ConfigError(name, f"must be a table ([{name}]), got {show(value)}")
        if name == "agents":
            values[name] = _agents(value)
        else:
            values[name] = _section(name, spec.default_factory, value)  # type: ignore[misc]
    return SidecarConfig(**values).check()


def _section(prefix: str, model: type, data: Mapping[str, Any]) -> Any:
    fields = {f.name: f for f in dataclasses.fields(model)}
    values = {}
    for key, value in data.items():
        spec = fields.get(key)
        if spec is None:
            raise ConfigError(f"{prefix}.{key}", f"unknown key (known: {', '.join(fields)})")
        try:
            values[key] = spec.metadata["check"](value)
        except ValueError as err:
            raise ConfigError(f"{prefix}.{key}", str(err)) from None
    return model(**values)


def _agents(data: Mapping[str, Any]) -> tuple[Agent, ...]:
    agents = []
    for node, uri in data.items():
        if not isinstance(uri, str):
            raise ConfigError(f"agents.{node}", f"must be the agent's SIP URI, e.g. \"sip:192.0.2.21:5070\", got {show(uri)}")
        try:
            agents.append(Agent(node, uri))
        except ValueError as err:
            raise ConfigError(f"agents.{node}", str(err)) from None
    return tuple(agents)


def with_flags(config: SidecarConfig, *, agents: list[str] | None = None, listen: list[str] | None = None,
               kamailio_rpc: str | None = None, kamailio_list_file: str | None = None,
               policy: str | None = None, discover_group: int | None = None,
               compositor: bool = False, auto_join: bool = False,
               opensips_mi: str | None = None) -> SidecarConfig:
    """`config` with command-line flags applied (each raises ConfigError naming the flag)."""
    if agents:
        extra = []
        for text_ in agents:
            try:
                extra.append(parse_agent(text_))
            except ValueError as err:
                raise ConfigError("--agent", str(err)) from None
        known = {a.key for a in config.agents}
        for agent in extra:
            if agent.key in known:
                what = f"node {agent.node!r}" if agent.node else f"agent {agent.uri}"
                raise ConfigError("--agent", f"{what} is given twice")
            known.add(agent.key)
        config = dataclasses.replace(config, agents=config.agents + tuple(extra))
    if listen:
        for text_ in listen:
            try:
                listen_address(text_)
            except ValueError as err:
                raise ConfigError("--listen", str(err)) from None
        config = dataclasses.replace(config, sip=dataclasses.replace(config.sip, listen=tuple(listen)))
    kamailio = config.kamailio
    if kamailio_rpc is not None:
        try:
            rpc_address(kamailio_rpc)
        except ValueError as err:
            raise ConfigError("--kamailio-rpc", str(err)) from None
        kamailio = dataclasses.replace(kamailio, rpc=kamailio_rpc)
    if kamailio_list_file is not None:
        kamailio = dataclasses.replace(kamailio, list_file=kamailio_list_file)
    config = dataclasses.replace(config, kamailio=kamailio)
    if opensips_mi is not None:
        try:
            mi_url(opensips_mi)
        except ValueError as err:
            raise ConfigError("--opensips-mi", str(err)) from None
        config = dataclasses.replace(config, opensips=dataclasses.replace(config.opensips, mi_url=opensips_mi))
    if policy is not None:
        if policy not in POLICIES:
            raise ConfigError("--policy", f"must be one of {', '.join(POLICIES)}, got {show(policy)}")
        config = dataclasses.replace(config, policy=dataclasses.replace(config.policy, name=policy))
    if discover_group is not None:
        if discover_group < 1:
            raise ConfigError("--discover-from-dispatcher", f"must be a dispatcher group 1.., got {discover_group}")
        config = dataclasses.replace(config, discover=dataclasses.replace(config.discover, dispatcher_group=discover_group))
    if compositor or auto_join:
        config = dataclasses.replace(config, compositor=dataclasses.replace(
            config.compositor, enabled=True, auto_join=config.compositor.auto_join or auto_join))
    try:
        return config.check()
    except ConfigError as err:
        flag = {"discover.dispatcher_group": "--discover-from-dispatcher",
                "kamailio.list_file": "--kamailio-list-file"}.get(err.key)
        if flag is not None and ((flag == "--discover-from-dispatcher" and discover_group is not None)
                                 or (flag == "--kamailio-list-file" and kamailio_list_file is not None)):
            raise ConfigError(flag, "needs --kamailio-rpc (or kamailio.rpc in the config file)") from None
        raise
