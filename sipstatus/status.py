"""The status model: one `LoadStatus` value describes one node at one moment.

Collectors fill its parts, the scorer sets `state` and `capacity`, the codec
(`sipstatus.codec`) turns it into the `load-status` body and back, and the
proxy side turns it into a dispatch weight. The meaning, unit and range of
every field are defined in spec/load-status.md section 6; this module mirrors
that section and nothing else.

Unknown is not zero: a metric that could not be measured is `None`, and an
entire section that could not be measured is `None` too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import StrEnum

#: The body format version this module reads and writes (spec section 6.1).
FORMAT_VERSION = 1


class State(StrEnum):
    """What a proxy may do with a node (spec section 6.3)."""

    #: Accepting new calls in proportion to `capacity`.
    ACTIVE = "active"
    #: Taken out of rotation by its operator: no new calls, existing calls go on.
    DRAINING = "draining"
    #: Past a configured limit (CPU, channels, call quality): no new calls.
    OVERLOADED = "overloaded"
    #: Asterisk is not running or not answering: no new calls.
    DOWN = "down"


def weight_hint(state: State, capacity: float) -> int:
    """The integer weight hint of spec section 6.3: round-half-up(100 * capacity)
    for an active node, 0 for any other state.

    Proxy scripts have no floating point (Kamailio's jansson_get hands floats
    back as strings), so the body carries this integer beside `capacity`.
    """
    if state is not State.ACTIVE:
        return 0
    return int(math.floor(capacity * 100 + 0.5))


@dataclass(frozen=True, slots=True)
class Cpu:
    """Host CPU over the sampling window."""

    usage: float | None = None  # fraction 0..1 of all cores busy
    cores: int | None = None  # logical CPUs
    steal: float | None = None  # fraction 0..1 of time stolen by the hypervisor
    load: tuple[float, float, float] | None = None  # 1, 5, 15 minute load average


@dataclass(frozen=True, slots=True)
class Memory:
    """Host memory, in bytes."""

    total: int | None = None
    available: int | None = None
    used: int | None = None


@dataclass(frozen=True, slots=True)
class Asterisk:
    """Asterisk's channels and calls, as read over AMI."""

    channels: int | None = None  # active channels (CoreShowChannels)
    calls: int | None = None  # active calls (bridged channels count once)
    limit: int | None = None  # configured maxcalls (a limit on calls); None when unlimited or unknown
    cps: float | None = None  # new calls per second over the window
    cpu: float | None = None  # the Asterisk process's CPU, in cores
    rss: int | None = None  # the Asterisk process's resident memory, bytes


@dataclass(frozen=True, slots=True)
class Quality:
    """Call quality from RTCP over the streams active in the window."""

    mos: float | None = None  # E-model MOS estimate, 1..4.5
    loss: float | None = None  # fraction 0..1 of packets lost in the window
    jitter: float | None = None  # interarrival jitter, milliseconds
    rtt: float | None = None  # round-trip time, milliseconds
    streams: int | None = None  # RTP streams the figures are computed over
    mes: float | None = None  # Asterisk's Media Experience Score, 0..100


@dataclass(frozen=True, slots=True)
class Probe:
    """Round trips of SIP OPTIONS to the local Asterisk over the window."""

    p50: float | None = None  # milliseconds
    p95: float | None = None  # milliseconds
    max: float | None = None  # milliseconds
    samples: int | None = None  # probes answered in the window
    timeouts: int | None = None  # probes unanswered in the window


@dataclass(frozen=True, slots=True)
class Network:
    """Rates over the window, per second, summed over the configured interfaces."""

    rx_pps: float | None = None  # packets received per second
    tx_pps: float | None = None  # packets sent per second
    rx_bps: float | None = None  # bits received per second
    tx_bps: float | None = None  # bits sent per second
    errors: float | None = None  # receive and transmit errors per second
    dropped: float | None = None  # packets dropped (receive and transmit) per second


#: The metric sections of a status, in wire order (spec section 6.4), and
#: each one's type: the codec, the collectors' readings, the agent's and the
#: proxy side's renderings all go through this one list.
SECTIONS: dict[str, type] = {
    "cpu": Cpu,
    "memory": Memory,
    "asterisk": Asterisk,
    "quality": Quality,
    "probe": Probe,
    "network": Network,
}


@dataclass(frozen=True)
class LoadStatus:
    """The load status of one node at one moment (spec section 6)."""

    node: str
    instance: str
    seq: int
    validity: int
    state: State
    capacity: float
    time: float | None = None
    reason: str | None = None
    cpu: Cpu | None = None
    memory: Memory | None = None
    asterisk: Asterisk | None = None
    quality: Quality | None = None
    probe: Probe | None = None
    network: Network | None = None
    affinity: tuple[str, ...] | None = None
    #: Paths of members the decoder did not know and ignored (spec section 6.2);
    #: informative only, never encoded.
    ignored: tuple[str, ...] = field(default=(), compare=False, repr=False)

    @property
    def weight(self) -> int:
        """The integer weight hint carried on the wire (spec section 6.3)."""
        return weight_hint(self.state, self.capacity)

    @property
    def accepts_calls(self) -> bool:
        """True when a proxy may send this node new calls."""
        return self.state is State.ACTIVE and self.weight > 0
