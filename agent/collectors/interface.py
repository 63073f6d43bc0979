"""The one interface every collector implements, and the value it returns.

Modelled on node_exporter's `Collector.Update(ch) error`: a collector knows
its source and nothing else; what it could not measure stays `None` (unknown),
never zero. "No data" (a section present with `None` members, or no section at
all) is distinct from "error" (`Reading.error` set: the source failed).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol, runtime_checkable

from sipstatus.status import SECTIONS, Asterisk, Cpu, Memory, Network, Probe, Quality

#: Called by an event-driven collector when something changed that should
#: reach the proxies at once (a channel appeared or went away, Asterisk
#: announced its shutdown). The argument says what, for the log.
OnChange = Callable[[str], None]


class AsteriskLink(StrEnum):
    """What the AMI connection says about Asterisk itself."""

    #: Logged in; the event stream and actions work.
    UP = "up"
    #: No AMI session (refused, timed out, login rejected, dropped).
    UNREACHABLE = "unreachable"
    #: Asterisk is stopping and still runs: it answers actions "Asterisk is
    #: shutting down" (`core stop gracefully`: new calls are refused, the
    #: calls in progress go on; no event announces it).
    STOPPING = "stopping"
    #: Asterisk has stopped: a `Shutdown` event, or the AMI session of a
    #: stopping Asterisk ended; until it is reachable again.
    SHUTTING_DOWN = "shutting-down"


@dataclass(frozen=True, slots=True)
class Reading:
    """What one collector measured at one moment.

    The six sections mirror `LoadStatus`; a collector fills the ones (or the
    members of the ones) it knows and leaves the rest `None`. The last four
    fields are facts the scorer needs that are not part of the body.
    """

    cpu: Cpu | None = None
    memory: Memory | None = None
    asterisk: Asterisk | None = None
    quality: Quality | None = None
    probe: Probe | None = None
    network: Network | None = None
    #: Why the source failed, wholly or in part, in words naming it; None
    #: when it worked. The sections still carry whatever was measured.
    error: str | None = None
    #: AMI collector: the state of the AMI session.
    link: AsteriskLink | None = None
    #: AMI collector: Asterisk's own load-average ceiling (CoreMaxLoadAvg),
    #: None when it has none (0) or it is unknown.
    max_load: float | None = None
    #: Host collector: whether a process named `asterisk` runs.
    asterisk_process: bool | None = None
    #: Probe collector: unanswered probes since the last answered one.
    probe_failures_in_row: int | None = None


_FACTS = ("link", "max_load", "asterisk_process", "probe_failures_in_row")


def merge(readings: Iterable[Reading]) -> Reading:
    """One Reading from many: member by member, the first known value wins.

    Collectors fill disjoint members (the host collector fills `asterisk.cpu`
    and `asterisk.rss`, the AMI collector the rest of `asterisk`), so the
    order only matters if two collectors were misconfigured to overlap.
    Errors are not merged: the caller reports them per collector.
    """
    merged: dict[str, object] = {}
    for reading in readings:
        for name in SECTIONS:
            section = getattr(reading, name)
            if section is None:
                continue
            have = merged.get(name)
            merged[name] = section if have is None else _fill(have, section)
        for name in _FACTS:
            value = getattr(reading, name)
            if value is not None and merged.get(name) is None:
                merged[name] = value
    return Reading(**merged)  # type: ignore[arg-type]


def _fill(have: object, more: object) -> object:
    """`have` with its unknown members taken from `more` (same section type)."""
    changes = {}
    for f in dataclasses.fields(have):  # type: ignore[arg-type]
        if getattr(have, f.name) is None and getattr(more, f.name) is not None:
            changes[f.name] = getattr(more, f.name)
    return dataclasses.replace(have, **changes) if changes else have  # type: ignore[type-var]


@runtime_checkable
class Collector(Protocol):
    """One source of measurements.

    `collect()` is synchronous and cheap: it reads counters or summarises
    what a background task gathered; it never waits on the network. Event
    driven collectors take an `OnChange` callback in their constructor.
    """

    #: Short name used in config and logs: "host", "asterisk", "probe", "network".
    name: str

    async def start(self) -> None:
        """Open connections, start background tasks. Must not raise for an
        unreachable source: that is reported by `collect()`."""
        ...

    async def stop(self) -> None:
        """Close everything `start()` opened. Safe to call twice."""
        ...

    def collect(self, now: float) -> Reading:
        """The measurements at monotonic time `now` (seconds)."""
        ...
