"""Weight policies: from the pool's statuses to dispatch weights or choices.

A proxy spreads new calls over its Asterisk nodes. The aim is equal
*utilisation* across nodes, not equal headroom: a small node and a big node
at the same free fraction do not have the same room. Two shapes of policy:

- a `WeightPolicy` turns the pool into integer weights 0..100, for proxies
  that choose by weight (Kamailio dispatcher algorithm 11 `rweight`, the
  script-side weighted choice over an htable); OpenSIPS's load_balancer
  takes from them which nodes take calls, its sizes being the free slots
  (sipstatus/proxy/opensips.py says why). `WaterFillPolicy` is the default
  (`DEFAULT_POLICY`): it aims every node at the pool's utilisation level;
- a `Selector` chooses the node for each call, and can correct what it knows
  for the calls it has itself sent since the last report (the proxy knows
  about those before the agent reports them). `LeastUtilisedSelector` is
  water-filling one call at a time: each call goes to the node whose
  projected utilisation is lowest.

Every policy gives a node that does not accept calls (stale, draining,
overloaded, down, or weight hint 0) weight 0 and never chooses it.
Policies are interchangeable; bench/bench_dispatch.py compares them.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from .nodetable import NodeView

MAX_WEIGHT = 100


class WeightPolicy(Protocol):
    name: str

    def weights(self, views: Iterable[NodeView]) -> dict[str, int]:
        """Weight 0..100 per node; 0 means no new calls."""
        ...


class Selector(Protocol):
    name: str

    def choose(self, views: Iterable[NodeView]) -> str | None:
        """The node for the next call, or None when no node accepts calls."""
        ...

    def sent(self, node: str) -> None:
        """Record that a call was sent to `node`."""
        ...


@dataclass
class HeadroomPolicy:
    """Weight = the node's own hint, round(100 * capacity): the free fraction.

    Simple and what a script reading `weight` gets, but a node with half the
    slots gets as many calls as a big one at the same fraction free.
    """

    #: Not used for the weights; the call limit of a node that reports none
    #: where its free slots are counted (`free_slots`: OpenSIPS's sizes).
    default_limit: int = 100
    name: str = "headroom"

    def weights(self, views: Iterable[NodeView]) -> dict[str, int]:
        return {v.node: v.status.weight if v.accepts_calls else 0 for v in views}


@dataclass
class FreeSlotsPolicy:
    """Weight proportional to free call slots: capacity x channel limit,
    scaled so that the roomiest node gets 100.

    `default_limit` stands for a node whose limit is unknown (Asterisk runs
    with no maxcalls): it is then weighted as if it had that many slots.
    """

    default_limit: int = 100
    name: str = "free-slots"

    def weights(self, views: Iterable[NodeView]) -> dict[str, int]:
        views = list(views)
        free = {v.node: self._free_slots(v) for v in views}
        top = max(free.values(), default=0.0)
        if top <= 0:
            return {node: 0 for node in free}
        return {node: _scale(f, top) for node, f in free.items()}

    def _free_slots(self, view: NodeView) -> float:
        return free_slots(view, self)


@dataclass
class WaterFillPolicy:
    """Weights that bring every node to the pool's utilisation level
    (water-filling), for proxies that choose by weight.

    For each node that accepts calls: its utilisation u = 1 - capacity (the
    reported headroom, so external load, a CPU hog, counts), its size s
    (calls per unit of utilisation: the call limit, `default_limit` when
    unknown) and the calls it carries, c (`asterisk.calls`, else
    `asterisk.channels`, else u x s). The pool's level is where its present
    load would put every node, L = sum(s u) / sum(s), and node i's weight is

        w = max(0, c + gain x s x (L - u)) + floor x s x capacity

    The first term replaces the calls that end on the node (they end in
    proportion to c); the second sends a node below the level more than
    that, a node above it less, so the gap closes at `gain` / (mean holding
    time): at equal utilisation the weights are the calls each node carries,
    whatever its size or its hog. The gap a node is sent to close,
    s x (L - u), is never more than the room it reports, s x capacity,
    since L <= 1. The small last term (a `floor` fraction of the free
    slots) spreads the calls of an idle pool, where c and the gaps are all
    0. A node fuller than its calls make it (its CPU, not its call
    limit, is what fills it: a hog) has a measured room, and counts a
    safety margin near saturation (below). Scaled so that the largest is
    100 (rounding never turns a positive weight into 0).

    The margin of a measured node. A CPU figure is an average over the
    sampling window that moves from one window to the next, and the agent
    reports a move of less than 5 points of weight only on its heartbeat
    (spec section 8.3), where a call count is exact and the proxy's own
    calls move it. Near saturation that uncertainty is what puts calls on
    a full node; far from it, it cannot take the node to its limit, and a
    margin there only unbalances the pool. So a measured node's
    utilisation u counts `measured_margin` m more at u >= 1 - m, nothing
    at u <= 1 - 2m, and in between the part of u above 1 - 2m:

        u' = u + min(m, max(0, u - (1 - 2m)))

    Water-filling then aims it at the pool's level like any other node
    until the level nears saturation, where it holds it up to m lower
    (spec/scoring.md, "The weights: a margin near saturation only"). The
    margin shapes the preference only: the node still takes calls when
    the pool has nothing better. bench/bench_dispatch.py measures it
    against the others.
    """

    gain: float = 16.0
    floor: float = 0.1
    #: The most added to the utilisation of a node whose room is limited by
    #: something other than its calls (its CPU), near saturation only: the
    #: agent's significance step (5 points of weight, spec 8.3), the most a
    #: measured figure may move unreported.
    measured_margin: float = 0.05
    default_limit: int = 100
    name: str = "water-fill"

    def weights(self, views: Iterable[NodeView]) -> dict[str, int]:
        views = list(views)
        loads = {v.node: _load(v, self.default_limit, self.measured_margin) for v in views if v.accepts_calls}
        raw = {v.node: 0.0 for v in views}
        total_size = sum(size for _, size, _ in loads.values())
        if total_size > 0:
            level = sum(u * size for u, size, _ in loads.values()) / total_size
            for node, (u, size, calls) in loads.items():
                aim = max(0.0, calls + self.gain * size * (level - u))
                raw[node] = aim + self.floor * size * (1.0 - u)
        top = max(raw.values(), default=0.0)
        if top <= 0:
            return {node: 0 for node in raw}
        return {node: _scale(w, top) for node, w in raw.items()}


@dataclass
class LeastUtilisedSelector:
    """Chooses the node with the lowest estimated utilisation, where the
    estimate is the reported one plus the calls this proxy has sent the node
    since that report (each taking `channels_per_call` of its slots).

    `sent` counts are kept per node and reset when a newer report (another
    seq or instance) arrives, since the report now includes those calls.
    """

    default_limit: int = 100
    channels_per_call: int = 1
    name: str = "least-utilised"
    _since: dict[str, tuple[tuple[str, int], int]] = field(default_factory=dict, repr=False)

    def choose(self, views: Iterable[NodeView]) -> str | None:
        best: tuple[float, str] | None = None
        for v in views:
            if not v.accepts_calls:
                continue
            utilisation = 1.0 - v.status.capacity + self._sent_since(v) * self.channels_per_call / _limit(v, self.default_limit)
            if best is None or utilisation < best[0]:
                best = (utilisation, v.node)
        return None if best is None else best[1]

    def sent(self, node: str) -> None:
        report, count = self._since.get(node, (("", -1), 0))
        self._since[node] = (report, count + 1)

    def _sent_since(self, view: NodeView) -> int:
        report = (view.status.instance, view.status.seq)
        seen, count = self._since.get(view.node, (report, 0))
        if seen != report:
            # A newer report than the one the count was started against:
            # those calls are in it now. Calls sent before any report was
            # seen for the node are counted against the first one.
            if seen == ("", -1):
                self._since[view.node] = (report, count)
                return count
            self._since[view.node] = (report, 0)
            return 0
        return count


@dataclass
class WeightDamper:
    """Holds weights steady against noise: a node's weight changes only when
    it moves by at least `min_step`, or to or from 0 (a node that stops or
    starts taking calls always gets through at once).

    `apply()` returns the weights to push, or None when nothing changed
    enough, so the proxy is not re-configured for noise.
    """

    min_step: int = 5
    current: dict[str, int] = field(default_factory=dict)

    def apply(self, weights: Mapping[str, int]) -> dict[str, int] | None:
        changed = False
        out = {}
        for node, new in weights.items():
            old = self.current.get(node)
            if old is None or (new == 0) != (old == 0) or abs(new - old) >= self.min_step:
                out[node] = new
                changed = changed or new != old
            else:
                out[node] = old
        if set(self.current) - set(weights):
            changed = True
        self.current = out
        return dict(out) if changed else None


#: The weight policy a proxy uses unless told otherwise (bench/bench_dispatch.py).
DEFAULT_POLICY = "water-fill"

POLICIES: dict[str, type] = {
    "water-fill": WaterFillPolicy,
    "headroom": HeadroomPolicy,
    "free-slots": FreeSlotsPolicy,
}


def make_policy(name: str = DEFAULT_POLICY, default_limit: int = 100) -> WeightPolicy:
    """The policy called `name` (a key of POLICIES), with `default_limit` as
    the call limit of a node that reports none (for its weights where the
    policy uses one, and for its free slots)."""
    cls = POLICIES.get(name)
    if cls is None:
        raise ValueError(f"no weight policy named {name!r}; known: {', '.join(POLICIES)}")
    return cls(default_limit=default_limit)


def free_slots(view: NodeView, policy: WeightPolicy | None = None, *, default_limit: int = 100) -> float:
    """The calls a node has room for as `policy` counts them: capacity x its
    call limit (the policy's `default_limit` when the node reports none;
    `default_limit` for a policy without one); 0 for a node that takes no
    calls. FreeSlotsPolicy weighs by it; OpenSIPS's load_balancer is sized by
    it (proxy/opensips.py, `lb_capacity`)."""
    if not view.accepts_calls:
        return 0.0
    return view.status.capacity * _limit(view, getattr(policy, "default_limit", default_limit))


def _limit(view: NodeView, default: int) -> int:
    asterisk = view.status.asterisk
    limit = asterisk.limit if asterisk is not None else None
    return limit if limit is not None else default


def _load(view: NodeView, default_limit: int, measured_margin: float) -> tuple[float, float, float]:
    """A node's (utilisation, size, calls) for WaterFillPolicy."""
    status = view.status
    assert status is not None
    utilisation = 1.0 - status.capacity
    size = float(_limit(view, default_limit))
    asterisk = status.asterisk
    count = None
    if asterisk is not None:
        count = asterisk.calls if asterisk.calls is not None else asterisk.channels
    if count is None:
        return utilisation, size, utilisation * size
    if asterisk is not None and asterisk.limit and utilisation > count / asterisk.limit + 0.005:
        # The room is the CPU's (or another measured figure's): a margin near saturation.
        utilisation += min(measured_margin, max(0.0, utilisation - (1.0 - 2 * measured_margin)))
    return utilisation, size, float(count)


def _scale(value: float, top: float) -> int:
    """value/top as 0..100, rounded half up, at least 1 for any value > 0 so a
    node with a little room is not switched off by rounding."""
    if value <= 0:
        return 0
    return max(1, min(MAX_WEIGHT, math.floor(MAX_WEIGHT * value / top + 0.5)))
