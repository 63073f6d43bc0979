"""The pool's decisions, sans-I/O: what to push, when, and whom to follow afresh.

A `ProxyPool` holds the `NodeTable`, the weight policy and the damper, and
decides everything the proxy side decides over time:

- coalescing: a change asks for a computation, made at most every
  RECOMPUTE_INTERVAL s (hundreds of agents at up to 5/s each);
- start-up grace: nothing is pushed until every configured node has been
  heard from, or STARTUP_GRACE s have passed, so that starting the sidecar
  does not switch a working pool off before the agents had a chance to
  answer (unknown is not zero; after the grace an unknown node gets weight
  0: no new calls, spec section 5.6);
- damping: weights move only by a step, or to or from 0 (`WeightDamper`);
- departures: a node that left the pool is pushed weight 0 once (spec 5.6),
  then forgotten;
- staleness: a followed node whose status went stale while its
  subscription looked alive is to be subscribed to afresh, once per
  staleness;
- the rooms (load-affinity) pushed when their assignments change;
- per sink (`SinkSchedule`): newest payload first, retries with backoff,
  held-back flushes, and a full resync every `sink_resync` s.

It reads no clock and starts no task: the caller passes `now`, asks
`next_timer()` and calls `handle_timer(now)` then, like the SIP core
(`sipstatus.sip`); `proxy.watcher.Watcher` is that caller under asyncio.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field
from typing import Any

from ..affinity_table import AffinityTable
from ..status import LoadStatus
from .nodetable import NodeTable, NodeView, Outcome
from .policy import WeightDamper, WeightPolicy

log = logging.getLogger("sipstatus.watcher")  # the name operators know from the sidecar's log

#: Seconds after start during which nothing is pushed to the sinks until
#: every configured node has been heard from (see the module docstring).
STARTUP_GRACE = 5.0
#: Weights are recomputed at most this often; reports arriving closer
#: together are taken in one computation (hundreds of agents at up to 5/s each).
RECOMPUTE_INTERVAL = 0.02
#: A sink that failed is tried again after SINK_RETRY_FIRST s, doubling up to this.
SINK_RETRY_MAX = 30.0
SINK_RETRY_FIRST = 0.5


# -- one sink's timing -----------------------------------------------------------------


@dataclass(frozen=True)
class SinkJob:
    """What a sink is to do now: "push" the payload, "resync" it (`forget`
    then `push`), or "flush" held-back work."""

    action: str
    payload: Any = None


class SinkSchedule:
    """When one sink is called, and with what: the newest payload (older
    ones it missed are never sent), held-back flushes when the sink says
    (`next_flush`), a failed call tried again after 0.5 s doubling up to
    SINK_RETRY_MAX (the proxy may be restarting; the watcher goes on), and,
    every `resync` s, the last payload again in full for a sink that can
    `forget`: a proxy that restarted has lost what it was told and only
    changes would reach it."""

    def __init__(self, *, resync: float | None = None) -> None:
        self.resync = resync
        self.latest: Any = None  # the newest payload not taken yet
        self.last: Any = None  # the last payload the sink took
        self.failures = 0
        self.last_error: str | None = None
        self.pushes = 0
        self.resyncs = 0
        self.resync_at: float | None = None
        self.retry_at: float | None = None

    def want(self, payload: Any) -> None:
        self.latest = payload

    def next_timer(self, flush_at: float | None) -> float | None:
        """When `take` may have something to do without a new payload
        (`flush_at`: the sink's `next_flush()`)."""
        if self.retry_at is not None:
            return self.retry_at
        times = [t for t in (flush_at, self.resync_at) if t is not None]
        return min(times) if times else None

    def take(self, now: float, flush_at: float | None) -> SinkJob | None:
        """The job due at `now`, or None; a payload taken is no longer `latest`."""
        if self.retry_at is not None:
            if now < self.retry_at:
                return None
            self.retry_at = None
        payload, self.latest = self.latest, None
        if self.resync_at is not None and now >= self.resync_at:
            return SinkJob("resync", self.last if payload is None else payload)
        if payload is not None:
            return SinkJob("push", payload)
        if flush_at is not None and now >= flush_at:
            return SinkJob("flush")
        return None

    def done(self, job: SinkJob, now: float) -> None:
        """The sink did `job` (taken at `now`)."""
        if job.action == "resync":
            self.resyncs += 1
            self.last = job.payload
        elif job.action == "push":
            self.pushes += 1
            self.last = job.payload
        if self.resync is not None and self.last is not None and (
                self.resync_at is None or job.action == "resync"):
            self.resync_at = now + self.resync
        self.failures = 0

    def failed(self, job: SinkJob, now: float, error: str) -> float:
        """The sink raised on `job`: the seconds until it is tried again
        (its payload with it, unless a newer one came meanwhile)."""
        self.failures += 1
        self.last_error = error
        wait = min(SINK_RETRY_MAX, SINK_RETRY_FIRST * 2 ** (self.failures - 1))
        if job.payload is not None and self.latest is None:
            self.latest = job.payload
        self.retry_at = now + wait
        return wait


# -- the pool ------------------------------------------------------------------------


@dataclass
class Tick:
    """What `handle_timer` did: `computed` (the rows changed: tell the UI),
    `resubscribe` (nodes to subscribe to afresh, see `handle_timer`)."""

    computed: bool = False
    resubscribe: list[str] = field(default_factory=list)


class ProxyPool:
    """The pool's state and every decision over time (see the module docstring).

    `expected()` gives the keys of the agents followed: the start-up grace
    ends early once each is a node with a status. Sinks are added with
    `add_sink(kind)`, kind "weights" (damped weights), "views" (the nodes
    and the damped weights) or "rooms" (room key -> node); each gets a
    `SinkSchedule` the caller runs.
    """

    def __init__(self, table: NodeTable, policy: WeightPolicy, *, damper_step: int = 5,
                 startup_grace: float = STARTUP_GRACE, affinity: AffinityTable | None = None,
                 expected: Callable[[], Iterable[str]] = tuple, sink_resync: float | None = None) -> None:
        self.table = table
        self.policy = policy
        #: Its `current` is what was last pushed: the one record of it.
        self.damper = WeightDamper(min_step=damper_step)
        self.startup_grace = startup_grace
        self.affinity = affinity if affinity is not None else AffinityTable()
        self.expected = expected
        self.sink_resync = sink_resync
        self.sinks: dict[str, list[SinkSchedule]] = {"weights": [], "views": [], "rooms": []}
        self.weights: dict[str, int] = {}
        self.started_at = 0.0
        self._pushed_once = False
        self._rooms_pushed: dict[str, str] | None = None
        self._revived: set[str] = set()  # stale nodes subscribed to afresh (once per staleness)
        self._last_compute = -math.inf  # never: weights_at asks the policy
        self._compute_at: float | None = None  # a computation asked for (coalesced)
        self._due_at: float | None = None  # staleness, rooms' expiry, the end of the grace

    def add_sink(self, kind: str, *, can_forget: bool = False) -> SinkSchedule:
        schedule = SinkSchedule(resync=self.sink_resync if can_forget and self.sink_resync else None)
        self.sinks[kind].append(schedule)
        return schedule

    # -- events -------------------------------------------------------------------------

    def start(self, now: float) -> None:
        self.started_at = now
        self.changed(now)
        self._due_at = self._next_due(now)

    def changed(self, now: float) -> None:
        """What is known changed: compute, at most every RECOMPUTE_INTERVAL s."""
        if self._compute_at is None:
            self._compute_at = max(now, self._last_compute + RECOMPUTE_INTERVAL)

    def report(self, status: LoadStatus, now: float) -> Outcome:
        """A status received (spec section 7: ordering, staleness)."""
        outcome = self.table.update(status, now)
        if outcome is Outcome.ACCEPTED:
            self._revived.discard(status.node)
        return outcome

    # -- time ---------------------------------------------------------------------------

    @property
    def compute_at(self) -> float | None:
        """When the computation asked for by a change is due (None: none asked for)."""
        return self._compute_at

    def next_timer(self) -> float | None:
        """When `handle_timer` is to be called next, or None."""
        times = [t for t in (self._compute_at, self._due_at) if t is not None]
        return min(times) if times else None

    def handle_timer(self, now: float, subscribed: Collection[str] = ()) -> Tick:
        """Do what is due at `now`. `subscribed`: the nodes whose status
        subscription is up or being made. Those whose status went stale
        are returned to be subscribed to afresh: their heartbeats stopped
        although our subscription looked alive (an agent killed and
        restarted has no dialog with us, and says nothing). At once rather
        than at the next refresh (up to expires x 4/5 later), once per
        staleness: after that the new subscription's own backoff applies."""
        tick = Tick()
        if self._due_at is not None and now >= self._due_at:
            self._due_at = None
            self.affinity.expire(now)
            tick.resubscribe = self._stale(now, subscribed)
        elif self._compute_at is None or now < self._compute_at:
            return tick
        self._compute(now)
        tick.computed = True
        return tick

    def _stale(self, now: float, subscribed: Collection[str]) -> list[str]:
        stale = []
        for node in subscribed:
            if node in self._revived or node not in self.table:
                continue
            view = self.table.view(node, now)
            if view.status is None or view.fresh:
                continue
            self._revived.add(node)
            stale.append(node)
        return stale

    def _next_due(self, now: float) -> float | None:
        times = []
        expiry = self.table.next_expiry(now)
        if expiry is not None:
            times.append(expiry)
        rooms = self.affinity.next_expiry()
        if rooms is not None:
            times.append(rooms)
        if self._in_grace_mode():
            grace = self.started_at + self.startup_grace
            if grace > now:
                times.append(grace)
        return min(times) if times else None

    # -- computing and pushing ----------------------------------------------------------

    def _compute(self, now: float) -> None:
        self._compute_at = None
        self._last_compute = now
        views = list(self.table.views(now))
        self.weights = self.policy.weights(views)
        self._push(now, views)
        self._push_rooms(now)
        self._due_at = self._next_due(now)

    def weights_at(self, now: float) -> dict[str, int]:
        """The policy's weights for the pool at `now`: those of the last
        computation while nothing changed since, so the policy runs once per
        change however many readers there are."""
        if self._compute_at is None and (self._due_at is None or now < self._due_at) \
                and -math.inf < self._last_compute <= now:
            return dict(self.weights)
        return self.policy.weights(self.table.views(now))

    @property
    def pushed(self) -> dict[str, int] | None:
        """The damped weights last handed to the sinks (None before the first push)."""
        return dict(self.damper.current) if self._pushed_once else None

    def _in_grace_mode(self) -> bool:
        return not self._pushed_once and bool(self.sinks["weights"] or self.sinks["views"])

    def _push(self, now: float, views: list[NodeView]) -> None:
        weight_sinks, view_sinks = self.sinks["weights"], self.sinks["views"]
        if not weight_sinks and not view_sinks:
            return
        if not self._pushed_once and now < self.started_at + self.startup_grace \
                and not all(n in self.table and self.table.view(n, now).status is not None
                            for n in self.expected()):
            return  # start-up grace: see the module docstring
        before = dict(self.damper.current)
        departed_views = [NodeView(n, None, None, False) for n in before if n not in self.table]
        weights = dict(self.weights)
        departed = [n for n in before if n not in weights]
        for node in departed:
            weights[node] = 0  # left the pool (spec 5.6): no new calls, said once
        damped = self.damper.apply(weights)
        for node in departed:
            self.damper.current.pop(node, None)
        # View sinks get every change of the nodes (a size follows the
        # capacity), with the damped weights: the policy says which nodes
        # take calls there too.
        given = {**self.damper.current, **{node: 0 for node in departed}}
        for schedule in view_sinks:
            schedule.want((views + departed_views, given))
        if damped is None and self._pushed_once:
            return
        self._pushed_once = True
        pushed = dict(self.damper.current) if damped is None else damped
        changed = " ".join(f"{n}={w}" for n, w in sorted(pushed.items()) if before.get(n) != w)
        if changed:
            log.info("weights: %s", changed)
        for schedule in weight_sinks:
            schedule.want(dict(pushed))

    def _push_rooms(self, now: float) -> None:
        """Room key -> node, for every room whose node takes calls, to the
        affinity sinks (only when it changed; after the start-up grace)."""
        if not self.sinks["rooms"] or self._in_grace_mode():
            return
        assignments = self.affinity.assignments(self.weights, now)
        if assignments != self._rooms_pushed:
            self._rooms_pushed = assignments
            for schedule in self.sinks["rooms"]:
                schedule.want(assignments)
