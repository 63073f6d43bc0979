"""State and capacity from the measurements (spec/scoring.md gives the same
rules as formulas; this module is their implementation).

Pure: `Scorer.score(reading, draining)` looks at one merged `Reading` and
the scorer's memory of which overload triggers are on (for hysteresis), and
returns a `Score`. No clock, no I/O.

Rules, in order of precedence:
  1. down: Asterisk has stopped (a Shutdown event, or the AMI session of a
     stopping Asterisk ended); or `probe_down_after` SIP probes in a row went
     unanswered (whatever AMI says: a node whose SIP stack does not answer
     cannot take calls); or AMI is unreachable AND no process named
     `asterisk` runs. AMI unreachable alone is not down: Asterisk's figures
     are unknown, which caps the capacity (rule 4), nothing more.
  2. draining: the operator drains the node, or Asterisk is stopping
     gracefully (it answers actions "Asterisk is shutting down": new calls
     are refused with 503, the calls in progress go on).
  3. overloaded: any hard threshold is past (CPU, calls at the limit, new
     calls per second, MOS below its floor over enough streams, available
     memory, load average at Asterisk's own CoreMaxLoadAvg, at which
     Asterisk itself refuses calls: pbx.c increase_call_count). A trigger,
     once on, goes off only below its threshold minus a margin.
  4. active, with capacity = the smallest headroom of the limited resources
     whose figures are known, capped at `unknown_capacity` when the figures
     of a limited resource are unknown (unknown is never counted as idle).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field

from sipstatus.status import State

from .collectors.interface import AsteriskLink, Reading
from .config import ScoringConfig

#: Spec rule for `reason`: printable ASCII without `"` or `\`, at most 48.
REASON_MAX = 48
_NOT_IN_REASON = re.compile(r'[^ !#-\[\]-~]')


def reason_text(text: str) -> str:
    """`text` made a valid reason: other characters become `?`, cut to 48."""
    text = _NOT_IN_REASON.sub("?", text)
    return text if len(text) <= REASON_MAX else text[: REASON_MAX - 3] + "..."


#: (name, value or None when unknown, enter(value), leave(value))
_Trigger = tuple[str, float | None, Callable[[float], bool], Callable[[float], bool]]


@dataclass(frozen=True, slots=True)
class Score:
    state: State
    capacity: float
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class Headroom:
    """One limited resource: its free fraction 0..1, or None when unknown."""

    resource: str
    free: float | None


@dataclass
class Scorer:
    config: ScoringConfig
    #: Overload triggers currently on, by name ("cpu", "calls", ...).
    on: set[str] = field(default_factory=set)

    def score(self, r: Reading, draining: bool = False) -> Score:
        down = self.down_reason(r)
        self._update_triggers(r)
        if down is not None:
            return Score(State.DOWN, 0.0, reason_text(down))
        rooms = self.headrooms(r)
        capacity, capped_by = combine(rooms, self.config.unknown_capacity)
        if draining:
            return Score(State.DRAINING, capacity, "draining")
        if r.link is AsteriskLink.STOPPING:
            return Score(State.DRAINING, capacity, "asterisk stopping gracefully")
        if self.on:
            return Score(State.OVERLOADED, capacity, reason_text("overloaded: " + ", ".join(self._describe(r))))
        reason = None
        if capped_by:
            reason = reason_text("unknown: " + ", ".join(capped_by))
        return Score(State.ACTIVE, capacity, reason)

    # -- rule 1 --

    def down_reason(self, r: Reading) -> str | None:
        if r.link is AsteriskLink.SHUTTING_DOWN:
            return "asterisk is shutting down"
        failures = r.probe_failures_in_row
        if failures is not None and failures >= self.config.probe_down_after:
            return f"sip probe: {failures} unanswered in a row"
        if r.link is AsteriskLink.UNREACHABLE and r.asterisk_process is False:
            return "asterisk not running (no process, no ami)"
        return None

    # -- rule 3: overload triggers with hysteresis --

    def _update_triggers(self, r: Reading) -> None:
        c = self.config
        for name, value, enter, leave in self._triggers(r):
            if value is None:
                continue  # unknown: no news, the trigger keeps its state
            if name in self.on:
                if leave(value):
                    self.on.discard(name)
            elif enter(value):
                self.on.add(name)
        # MOS with too few streams is no evidence either way: clear it.
        q = r.quality
        if "mos" in self.on and q is not None and (q.streams or 0) < c.mos_min_streams:
            self.on.discard("mos")

    def _triggers(self, r: Reading) -> list[_Trigger]:
        c = self.config
        out: list[_Trigger] = []
        usage = r.cpu.usage if r.cpu else None
        out.append(("cpu", usage, lambda v: v >= c.cpu_max, lambda v: v < c.cpu_max - c.cpu_margin))
        limit, count = self._limit_and_count(r)
        if limit is not None:
            margin = max(1, math.ceil(c.limit_margin * limit))
            out.append((c.limit_applies_to, count, lambda v: v >= limit, lambda v: v < limit - margin))
        if c.cps_max > 0:
            cps = r.asterisk.cps if r.asterisk else None
            out.append(("cps", cps, lambda v: v >= c.cps_max, lambda v: v < c.cps_max * (1 - c.cps_margin)))
        q = r.quality
        if c.mos_min > 0 and q is not None and q.mos is not None and (q.streams or 0) >= c.mos_min_streams:
            out.append(("mos", q.mos, lambda v: v < c.mos_min, lambda v: v >= c.mos_min + c.mos_margin))
        m = r.memory
        if m is not None and m.available is not None and m.total:
            free = m.available / m.total
            out.append(("memory", free, lambda v: v < c.memory_min_available, lambda v: v >= c.memory_min_available + c.memory_margin))
        load = r.cpu.load[0] if r.cpu and r.cpu.load else None
        if r.max_load is not None:
            ceiling = r.max_load
            out.append(("load", load, lambda v: v >= ceiling, lambda v: v < ceiling - c.load_margin))
        return out

    def _limit_and_count(self, r: Reading) -> tuple[int | None, int | None]:
        a = r.asterisk
        if a is None or a.limit is None:
            return None, None
        return a.limit, a.calls if self.config.limit_applies_to == "calls" else a.channels

    def _describe(self, r: Reading) -> list[str]:
        limit, count = self._limit_and_count(r)
        words = {
            "cpu": f"cpu {_pct(r.cpu.usage if r.cpu else None)}",
            "calls": f"calls {count}/{limit}",
            "channels": f"channels {count}/{limit}",
            "cps": f"cps {_num(r.asterisk.cps if r.asterisk else None)}",
            "mos": f"mos {_num(r.quality.mos if r.quality else None)}",
            "memory": "memory low",
            "load": f"load {_num(r.cpu.load[0] if r.cpu and r.cpu.load else None)}",
        }
        return [text for name, text in words.items() if name in self.on]

    # -- rule 4: capacity --

    def headrooms(self, r: Reading) -> list[Headroom]:
        """The free fraction of each limited resource (None: unknown)."""
        c = self.config
        rooms = []
        usage = r.cpu.usage if r.cpu else None
        rooms.append(Headroom("cpu", None if usage is None else (c.cpu_max - usage) / c.cpu_max))
        limit, count = self._limit_and_count(r)
        if limit is not None:
            rooms.append(Headroom(c.limit_applies_to, None if count is None else (limit - count) / limit))
        elif r.link is AsteriskLink.UNREACHABLE or (r.link is AsteriskLink.UP and not _counted(r)):
            # AMI is configured but says nothing: whether there is a limit,
            # and how close to it the node is, are unknown.
            rooms.append(Headroom("asterisk", None))
        if c.cps_max > 0:
            cps = r.asterisk.cps if r.asterisk else None
            rooms.append(Headroom("cps", None if cps is None else (c.cps_max - cps) / c.cps_max))
        if r.max_load is not None:
            load = r.cpu.load[0] if r.cpu and r.cpu.load else None
            rooms.append(Headroom("load", None if load is None else (r.max_load - load) / r.max_load))
        return rooms


def combine(rooms: list[Headroom], unknown_capacity: float) -> tuple[float, list[str]]:
    """Capacity from headrooms: the smallest known one, clamped to 0..1,
    capped at `unknown_capacity` if any is unknown (1.0 if there are no
    known ones and no unknown ones). Also returns the unknown resources."""
    known = [min(1.0, max(0.0, h.free)) for h in rooms if h.free is not None]
    unknown = [h.resource for h in rooms if h.free is None]
    capacity = min(known) if known else 1.0
    if unknown:
        capacity = min(capacity, unknown_capacity)
    return capacity, unknown


def _counted(r: Reading) -> bool:
    return r.asterisk is not None and r.asterisk.channels is not None


def _pct(v: float | None) -> str:
    return "?" if v is None else f"{100 * v:.0f}%"


def _num(v: float | None) -> str:
    return "?" if v is None else f"{v:.2f}"
