"""The agent's configuration: one TOML file, dataclasses with defaults.

With no file at all the defaults work on any Linux host: every collector is
on, AMI is tried on 127.0.0.1:5038 (and reported unknown when nothing
answers), the SIP probe goes to sip:127.0.0.1:5060. Every key is documented,
with its default, in packaging/agent.toml.

`load()` validates everything at start and raises `ConfigError` with the
dotted key and what was wrong: `collectors.asterisk.port: must be an integer
1..65535, got "abc"`. Unknown keys are rejected the same way, so a typo is
not silently ignored.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
import socket
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sipstatus.configkit import (
    NODE,
    ConfigError,
    ListenError,
    boolean,
    choice,
    integer,
    names,
    number,
    option,
    parse_listen,
    show,
    text,
)
from sipstatus.sip import SipError, SipUri, parse_uri

COLLECTOR_NAMES = ("host", "asterisk", "probe", "network")


# -- the sections ------------------------------------------------------------

@dataclass(frozen=True)
class AgentConfig:
    #: The node name sent in every status; "" = this host's name.
    node: str = option("", text(f"(?:{NODE})?", "a host name or token of 1 to 64 characters (A-Z a-z 0-9 . _ : -)"))
    #: Seconds a proxy may trust one status (spec: validity, 1..3600).
    validity: int = option(15, integer(1, 3600))
    #: Seconds between samples of the service loop.
    interval: float = option(1.0, number(0.1, 60.0))
    #: Seconds between the two readings `sipstatus-agent sample` takes
    #: (CPU and network rates need two readings a window apart).
    sample_gap: float = option(1.0, number(0.1, 60.0))
    log_level: str = option("info", choice("debug", "info", "warning", "error"))


@dataclass(frozen=True)
class HostConfig:
    #: Name of the Asterisk process whose CPU and memory are reported.
    process_name: str = option("asterisk", text(r"[^\s/]{1,15}", "a process name (at most 15 characters, as in /proc/PID/comm)"))
    #: Between samples, the CPU is also read over windows this short
    #: (seconds; 0 = off): a jump shows within one or two of them, not at the
    #: next sample (bench/bench_dispatch.py: calls put on a node at its limit).
    cpu_watch_interval: float = option(0.05, number(0.0, 10.0))
    #: A short window whose CPU usage differs from the figure in use by this
    #: much (fraction of all cores) is taken at once, and the status rescored.
    cpu_jump: float = option(0.1, number(0.0, 1.0, lo_open=True))


@dataclass(frozen=True)
class AsteriskConfig:
    host: str = option("127.0.0.1", text(r"[^\s]+", "a host name or address"))
    port: int = option(5038, integer(1, 65535))
    username: str = option("agent", text(r"[^\s\r\n]+", "an AMI user name"))
    #: The AMI secret; "" with `manager_conf` set reads it from there.
    secret: str = option("", text(r"[^\r\n]*", "a string without line breaks"))
    #: Asterisk's manager.conf: the secret of [username] is read from it
    #: when `secret` is "".
    manager_conf: str = option("", text(None, "a file path"))
    #: "md5" logs in with Challenge/Key (the secret never crosses the
    #: socket); "plain" sends it.
    auth: str = option("md5", choice("md5", "plain"))
    #: The call limit used when Asterisk has none (CoreMaxCalls 0); 0 = none.
    max_calls: int = option(0, integer(0, 999_999))
    #: Seconds between CoreShowChannels checks of the event-built counts.
    reconcile_interval: float = option(30.0, number(1.0, 3600.0))
    #: Seconds of RTCP reports the quality figures are computed over.
    quality_window: float = option(10.0, number(1.0, 600.0))
    #: Seconds over which new calls per second are counted.
    cps_window: float = option(10.0, number(1.0, 600.0))
    #: RTP clock rate of the calls' codec, Hz (8000 for G.711).
    clock_rate: int = option(8000, integer(1000, 192_000))
    connect_timeout: float = option(3.0, number(0.1, 60.0))
    action_timeout: float = option(5.0, number(0.1, 120.0))
    backoff_initial: float = option(0.5, number(0.01, 60.0))
    backoff_max: float = option(30.0, number(0.01, 3600.0))
    #: Seconds between Pings while logged in (a graceful stop and a stalled
    #: session are noticed through them); 0 = no Pings.
    ping_interval: float = option(1.0, number(0.0, 60.0))
    #: Seconds a Ping may go unanswered before the session is reopened.
    ping_timeout: float = option(2.5, number(0.1, 60.0))
    #: Follow the ConfBridge rooms and announce them (load-affinity package).
    rooms: bool = option(True, boolean)
    #: Seconds a proxy may keep the node's rooms (3..86400); the full set
    #: goes to each subscriber every rooms_validity / 3.
    rooms_validity: int = option(900, integer(3, 86_400))
    #: Channel variable whose value prefixes a room's key string
    #: ("<value>/<conference>"), for tenants reusing room names; it must be
    #: in manager.conf's channelvars. "" = the conference name alone.
    room_key_variable: str = option("", text(r"[A-Za-z0-9_]*", "a channel variable name (letters, digits, _)"))


@dataclass(frozen=True)
class ProbeConfig:
    #: Where OPTIONS go: sip:HOST[:PORT] over UDP.
    target: str = option("sip:127.0.0.1:5060", text(r"sip:[^\s;?]+", "a sip: URI (sip:host[:port])"))
    #: Seconds between probes.
    interval: float = option(1.0, number(0.05, 60.0))
    #: Seconds after which an unanswered probe counts as a timeout.
    timeout: float = option(1.0, number(0.01, 30.0))
    #: Seconds of probes the percentiles are computed over.
    window: float = option(10.0, number(1.0, 600.0))


@dataclass(frozen=True)
class NetworkConfig:
    #: Interfaces summed; [] = every interface that is up, except loopback.
    interfaces: tuple[str, ...] = option((), names(None, "interface names"))


@dataclass(frozen=True)
class CollectorsConfig:
    enabled: tuple[str, ...] = option(COLLECTOR_NAMES, names(COLLECTOR_NAMES, "collector names"))
    host: HostConfig = field(default_factory=HostConfig)
    asterisk: AsteriskConfig = field(default_factory=AsteriskConfig)
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    network: NetworkConfig = field(default_factory=NetworkConfig)


@dataclass(frozen=True)
class ScoringConfig:
    """Thresholds of agent.scoring (formulas in spec/scoring.md)."""

    #: CPU usage (fraction of all cores) at which the node takes no new
    #: calls (state overloaded: stop sending calls). Below it, the CPU
    #: headroom (cpu_max - usage) / cpu_max is what makes proxies prefer
    #: other nodes. Saturation by default; the evidence is in spec/scoring.md.
    cpu_max: float = option(1.0, number(0.0, 1.0, lo_open=True))
    #: Overloaded by CPU ends only below cpu_max - cpu_margin.
    cpu_margin: float = option(0.05, number(0.0, 0.5))
    #: What Asterisk's call limit counts: "calls" (what maxcalls is compared
    #: with in Asterisk's pbx.c) or "channels".
    limit_applies_to: str = option("calls", choice("calls", "channels"))
    #: Overloaded at the limit ends below limit - max(1, limit_margin * limit).
    limit_margin: float = option(0.01, number(0.0, 0.5))
    #: New calls per second the node takes at most; 0 = no limit.
    cps_max: float = option(0.0, number(0.0, 99_999.0))
    cps_margin: float = option(0.1, number(0.0, 0.5))
    #: Mean MOS below which the node is overloaded, if at least
    #: mos_min_streams streams were measured; 0 = never.
    mos_min: float = option(3.0, number(0.0, 4.5))
    mos_margin: float = option(0.2, number(0.0, 1.0))
    mos_min_streams: int = option(3, integer(1, 999_999))
    #: Overloaded when available memory falls below this fraction of total.
    memory_min_available: float = option(0.05, number(0.0, 0.5))
    memory_margin: float = option(0.02, number(0.0, 0.5))
    #: Overloaded by load average (vs Asterisk's CoreMaxLoadAvg) ends below
    #: the ceiling minus this, in load units.
    load_margin: float = option(0.5, number(0.0, 100.0))
    #: Unanswered probes in a row after which the node is down.
    probe_down_after: int = option(3, integer(1, 1000))
    #: The most capacity a node may claim while a limited resource is unknown.
    unknown_capacity: float = option(0.5, number(0.0, 1.0))


def listen_addresses(value: object) -> tuple[str, ...]:
    """`udp:HOST:PORT`, `tcp:[IPv6]:PORT`, `tls:HOST:PORT` (see parse_listen)."""
    if not isinstance(value, list | tuple):
        raise ValueError(f"must be a list of addresses like \"udp:0.0.0.0:5070\", got {show(value)}")
    for item in value:
        if not isinstance(item, str):
            raise ValueError(f"must be a list of strings, got {show(item)}")
        try:
            parse_listen(item)
        except ListenError as exc:
            raise ValueError(f"{show(exc.address)}: {exc.problem}") from None
    return tuple(value)


def networks(value: object) -> tuple[str, ...]:
    if not isinstance(value, list | tuple):
        raise ValueError(f"must be a list of networks like \"192.0.2.0/24\", got {show(value)}")
    for item in value:
        try:
            ipaddress.ip_network(item, strict=False)
        except (TypeError, ValueError):
            raise ValueError(f"{show(item)} is not an IP network (CIDR, e.g. 192.0.2.0/24 or 2001:db8::/32)") from None
    return tuple(value)


def sip_uris(value: object) -> tuple[str, ...]:
    if not isinstance(value, list | tuple):
        raise ValueError(f"must be a list of SIP URIs, got {show(value)}")
    for item in value:
        try:
            uri = parse_uri(item) if isinstance(item, str) else None
        except SipError as exc:
            raise ValueError(f"{show(item)} is not a SIP URI: {exc.reason}") from None
        if not isinstance(uri, SipUri):
            raise ValueError(f"{show(item)} is not a sip: or sips: URI")
    return tuple(value)


def credentials(value: object) -> tuple[tuple[str, str], ...]:
    """A table of user name = "password", kept as sorted pairs (frozen)."""
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) and k and v for k, v in value.items()):
        raise ValueError(f"must be a table of user name = \"password\", got {show(value)}")
    return tuple(sorted(value.items()))


@dataclass(frozen=True)
class NotifierConfig:
    """The notifier: proxies SUBSCRIBE here for load-status (spec section 4)."""

    #: Where SUBSCRIBEs are received (udp:, tcp:, tls: HOST:PORT); 5070 is
    #: clear of Asterisk's 5060/5061. [] = no notifier.
    listen: tuple[str, ...] = option(("udp:0.0.0.0:5070", "tcp:0.0.0.0:5070"), listen_addresses)
    #: Sources allowed to subscribe without credentials (CIDR networks).
    trust: tuple[str, ...] = option(("127.0.0.0/8", "::1/128"), networks)
    #: Digest users allowed to subscribe from anywhere (name = password);
    #: empty = no digest (untrusted sources get 403).
    users: tuple[tuple[str, str], ...] = option((), credentials)
    #: Digest realm; "" = the node name.
    realm: str = option("", text(r"[^\"\r\n]*", "a realm without quotes"))
    #: TLS listener: certificate and key (PEM files).
    tls_certificate: str = option("", text(None, "a file path"))
    tls_key: str = option("", text(None, "a file path"))
    #: CA (PEM) that signs the proxies' client certificates; a proxy with a
    #: certificate verified against it may subscribe over TLS. "" = none.
    tls_client_ca: str = option("", text(None, "a file path"))
    #: Digest algorithms offered, strongest first (spec 4.6.2: SHA-256 is a
    #: MUST; MD5 only for peers, such as SIPp, that have nothing else).
    digest_algorithms: tuple[str, ...] = option(("SHA-256", "MD5"), names(("SHA-256", "MD5"), "digest algorithms"))
    #: Wrong digest credentials from one source address within
    #: auth_failure_window seconds before that source gets 403 for
    #: auth_lockout seconds (spec 4.6.2); 0 = never.
    auth_failure_limit: int = option(5, integer(0, 1_000_000))
    auth_failure_window: float = option(600.0, number(1.0, 86_400.0))
    auth_lockout: float = option(60.0, number(1.0, 86_400.0))
    #: Caps (spec 4.6.2): beyond them a new subscription gets 503 + Retry-After.
    max_subscriptions: int = option(256, integer(1, 100_000))
    max_per_source: int = option(16, integer(1, 100_000))
    #: TCP and TLS connections proxies open to the agent, held at once in all
    #: and per source address; one beyond is closed at once. The unit's
    #: LimitNOFILE= leaves room for them (the cap is lowered to fit the limit).
    max_connections: int = option(512, integer(1, 1_000_000))
    max_connections_per_source: int = option(32, integer(1, 1_000_000))
    #: Seconds before a TCP/TLS connection with no traffic either way is closed.
    idle_timeout: float = option(120.0, number(1.0, 86_400.0))
    #: Seconds a SIP message may take to arrive whole over TCP/TLS.
    message_timeout: float = option(10.0, number(0.1, 3600.0))
    #: Seconds a TLS client has to complete its handshake.
    tls_handshake_timeout: float = option(10.0, number(0.1, 3600.0))
    #: Receive buffer asked for each UDP socket, octets (the kernel caps it
    #: at net.core.rmem_max unless the agent runs as root); 0 = the kernel's default.
    udp_receive_buffer: int = option(4 * 1024 * 1024, integer(0, 1 << 30))
    #: NOTIFYs per second per subscription at most (spec 8: default 5, absolute 10).
    max_rate: float = option(5.0, number(0.0, 10.0, lo_open=True))
    #: Seconds between NOTIFYs without a change at most; 0 = validity / 3.
    heartbeat: float = option(0.0, number(0.0, 3600.0))
    default_expires: int = option(600, integer(60, 86_400))
    max_expires: int = option(3600, integer(60, 86_400))
    #: Seconds a proxy is told to wait before re-subscribing when the agent
    #: stops (Subscription-State: terminated;reason=probation;retry-after):
    #: the agent's downtime in a restart, a few seconds (spec 4.7.4).
    restart_retry_after: int = option(2, integer(0, 86_400))


@dataclass(frozen=True)
class PublisherConfig:
    """The publisher: the agent PUBLISHes load-status to these proxies (spec section 5)."""

    #: Compositors to publish to (SIP URIs, resolved per RFC 3263); [] = none.
    targets: tuple[str, ...] = option((), sip_uris)
    #: Requested publication lifetime, seconds (spec 5.3: default 600, minimum 60).
    expires: int = option(600, integer(60, 86_400))
    #: PUBLISHes per second per target at most (spec 8.7: default 5, absolute 10).
    max_rate: float = option(5.0, number(0.0, 10.0, lo_open=True))
    #: Digest credentials, when a compositor challenges.
    username: str = option("", text(r"[^\s]*", "a user name without spaces"))
    password: str = option("", text(r"[^\r\n]*", "a string without line breaks"))


@dataclass(frozen=True)
class Config:
    agent: AgentConfig = field(default_factory=AgentConfig)
    collectors: CollectorsConfig = field(default_factory=CollectorsConfig)
    scoring: ScoringConfig = field(default_factory=ScoringConfig)
    notifier: NotifierConfig = field(default_factory=NotifierConfig)
    publisher: PublisherConfig = field(default_factory=PublisherConfig)

    @property
    def node(self) -> str:
        """The node name: agent.node, else this host's name made valid."""
        return self.agent.node or host_node_name()


# -- loading -----------------------------------------------------------------


def load(path: str | Path | None) -> Config:
    """The configuration in `path` (None: the defaults). Raises ConfigError."""
    if path is None:
        return Config()
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError("", f"{path}: cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError("", f"{path}: not UTF-8 (bad octet at offset {exc.start})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("", f"{path}: not valid TOML: {exc}") from None
    return from_dict(raw)


def from_dict(raw: dict[str, Any]) -> Config:
    """A Config from parsed TOML. Raises ConfigError naming the key."""
    config = _build(Config, raw, "")
    _check_relations(config)
    return config


def _build(cls: type, raw: object, prefix: str) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(prefix.rstrip("."), f"must be a table, got {show(raw)}")
    known = {f.name: f for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in known:
            listed = ", ".join(known) if known else "none yet"
            raise ConfigError(f"{prefix}{key}", f"unknown key (known keys here: {listed})")
    values = {}
    for name, f in known.items():
        if name not in raw:
            continue
        value = raw[name]
        key = f"{prefix}{name}"
        section = _SECTIONS.get(f.type if isinstance(f.type, str) else getattr(f.type, "__name__", ""))
        if section is not None:
            values[name] = _build(section, value, key + ".")
            continue
        try:
            values[name] = f.metadata["check"](value)
        except ValueError as exc:
            raise ConfigError(key, str(exc)) from None
    return cls(**values)


_SECTIONS: dict[str, type] = {
    c.__name__: c
    for c in (AgentConfig, HostConfig, AsteriskConfig, ProbeConfig, NetworkConfig, CollectorsConfig,
              ScoringConfig, NotifierConfig, PublisherConfig)
}


def _check_relations(config: Config) -> None:
    a = config.collectors.asterisk
    if a.backoff_max < a.backoff_initial:
        raise ConfigError("collectors.asterisk.backoff_max", f"must be at least backoff_initial ({a.backoff_initial:g}), got {a.backoff_max:g}")
    p = config.collectors.probe
    if p.window < p.interval:
        raise ConfigError("collectors.probe.window", f"must be at least the probe interval ({p.interval:g} s), got {p.window:g}")
    n = config.notifier
    if n.max_expires < n.default_expires:
        raise ConfigError("notifier.max_expires", f"must be at least default_expires ({n.default_expires}), got {n.max_expires}")
    if n.heartbeat and n.heartbeat < 1 / n.max_rate:
        raise ConfigError("notifier.heartbeat", f"must be at least 1/max_rate ({1 / n.max_rate:g} s), got {n.heartbeat:g}")
    # Spec 7.2 and 8.2: a heartbeat at least every validity/3 seconds, so that
    # one lost heartbeat does not make the node stale; the heartbeat cannot be
    # shorter than the interval the rate ceiling allows.
    third = config.agent.validity / 3
    if n.heartbeat > third:
        raise ConfigError("notifier.heartbeat", f"must be at most agent.validity / 3 ({third:g} s), got {n.heartbeat:g}")
    for key, rate in (("notifier.max_rate", n.max_rate), ("publisher.max_rate", config.publisher.max_rate)):
        if 1 / rate > third * (1 + 1e-9):
            raise ConfigError(key, f"must be at least 3 / agent.validity ({3 / config.agent.validity:g}/s) "
                                   f"for a heartbeat every validity / 3 s, got {rate:g}")
    if "SHA-256" not in n.digest_algorithms:
        raise ConfigError("notifier.digest_algorithms", f"must offer SHA-256 (spec 4.6.2), got {show(list(n.digest_algorithms))}")
    if n.max_connections_per_source > n.max_connections:
        raise ConfigError("notifier.max_connections_per_source", f"must be at most max_connections ({n.max_connections}), got {n.max_connections_per_source}")
    tls = [a for a in n.listen if a.lower().startswith("tls:")]
    if tls and not (n.tls_certificate and n.tls_key):
        raise ConfigError("notifier.tls_certificate", f"a TLS listener ({tls[0]}) needs tls_certificate and tls_key")
    if bool(config.publisher.username) != bool(config.publisher.password):
        raise ConfigError("publisher.password", "username and password go together")
    if a.manager_conf and not a.secret:
        # Read now, so that a wrong path or user is an error at start.
        manager_secret(a.manager_conf, a.username)


def ami_secret(config: AsteriskConfig) -> str:
    """The AMI secret: `secret`, else the user's from `manager_conf`, else ""."""
    if config.secret or not config.manager_conf:
        return config.secret
    return manager_secret(config.manager_conf, config.username)


def manager_secret(path: str | Path, username: str) -> str:
    """The `secret` of user `[username]` in Asterisk's manager.conf.

    The format is Asterisk's config format: `[section]` headers (optionally
    followed by template marks such as `(!)` or `(+)`), `key = value` or
    `key => value` lines, `;` comments (`\\;` is a literal semicolon).
    Raises ConfigError naming the file and what is missing.
    """
    key = "collectors.asterisk.manager_conf"
    try:
        lines = Path(path).read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError as exc:
        raise ConfigError(key, f"cannot read {path}: {exc.strerror or exc}") from None
    section = None
    found_user = False
    for line in lines:
        line = re.sub(r"(?<!\\);.*", "", line).replace("\\;", ";").strip()
        if not line:
            continue
        header = re.fullmatch(r"\[([^\]]+)\](?:\([^)]*\))?", line)
        if header:
            section = header.group(1).strip()
            found_user = found_user or section == username
            continue
        name, sep, value = line.partition("=")
        if sep and section == username and name.strip() == "secret":
            return value.removeprefix(">").strip()
    if not found_user:
        raise ConfigError(key, f"{path} has no [{username}] section (collectors.asterisk.username)")
    raise ConfigError(key, f"{path}: section [{username}] has no secret")


def host_node_name() -> str:
    """This host's name as a valid node name (spec section 6: 1..64 of
    A-Z a-z 0-9 . _ : -, alphanumeric at both ends)."""
    name = re.sub(r"[^A-Za-z0-9._:-]", "-", socket.gethostname())[:64].strip("._:-")
    return name or "localhost"
