"""The proxy's side of load-affinity: which node hosts which room.

Sans-I/O; the caller passes the time in (tests drive it with a fake clock).
An `AffinityTable` keeps, per node, the key set its agent announced (spec/
load-affinity.md section 5: full sets assembled from their pages, deltas
applied in order, a gap detected and reported so that the caller asks for a
full set), an index key -> nodes, and the proxy's own **placements**
(section 7.2): the node the proxy sent a room's first caller to, remembered
until the node's announcement confirms it, another node announces the room,
the node refuses the call, or the hold time passes.

`lookup(key, weights, now)` gives the node for a new call of that room, or
None: then the caller chooses by weight and calls `place(key, node, now)`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum

from .affinity import AffinityBody, Kind

#: Seconds a placement holds without the node's announcement (spec/load-affinity.md 7.2).
DEFAULT_HOLD = 10.0


class Applied(Enum):
    """What `AffinityTable.update` did with a body."""

    #: The node's set changed (a full set completed, or a delta applied).
    APPLIED = "applied"
    #: A page stored; the full set is not complete yet.
    PAGE = "page"
    #: Old (a duplicate, an overtaken delta or full set): ignored.
    OLD = "old"
    #: A delta that does not follow the applied version: the set is kept,
    #: and the caller asks for a full set (a subscriber refreshes, a
    #: compositor answers 412).
    GAP = "gap"


@dataclass(slots=True)
class _NodeSet:
    instance: str | None = None
    version: int = -1
    keys: frozenset[str] = frozenset()
    received: float = float("-inf")
    validity: int = 0
    #: (instance, seq, pages) of the full set being assembled, and its pages.
    assembling: tuple[str, int, int] | None = None
    pages: dict[int, tuple[str, ...]] = field(default_factory=dict)


@dataclass(slots=True)
class Placement:
    node: str
    until: float


class AffinityTable:
    """Announced key sets of the pool's nodes, and the proxy's placements."""

    def __init__(self, hold: float = DEFAULT_HOLD) -> None:
        self.hold = hold
        self._nodes: dict[str, _NodeSet] = {}
        self._index: dict[str, set[str]] = {}
        self._placed: dict[str, Placement] = {}

    # -- announcements ------------------------------------------------------------

    def update(self, body: AffinityBody, now: float) -> Applied:
        """A valid body from the node's agent, received at `now` (section 5)."""
        entry = self._nodes.setdefault(body.node, _NodeSet())
        if body.kind is Kind.FULL:
            return self._page(entry, body, now)
        if entry.instance == body.instance and body.seq <= entry.version:
            entry.received, entry.validity = now, body.validity
            return Applied.OLD
        if entry.instance != body.instance or body.base != entry.version or entry.assembling is not None:
            if entry.instance == body.instance:
                entry.received, entry.validity = now, body.validity
            return Applied.GAP
        keys = (entry.keys - set(body.remove)) | set(body.add)
        self._set(body.node, entry, body.instance, body.seq, keys, now, body.validity)
        return Applied.APPLIED

    def would_gap(self, body: AffinityBody) -> bool:
        """Whether `update(body)` would report a gap (a compositor answers
        such a PUBLISH 412 instead, spec/load-affinity.md section 2)."""
        if body.kind is Kind.FULL:
            return False
        entry = self._nodes.get(body.node)
        if entry is None:
            return True
        if entry.instance == body.instance and body.seq <= entry.version:
            return False
        return entry.instance != body.instance or body.base != entry.version or entry.assembling is not None

    def _page(self, entry: _NodeSet, body: AffinityBody, now: float) -> Applied:
        ident = (body.instance, body.seq, body.pages)
        if entry.assembling != ident:
            entry.assembling, entry.pages = ident, {}
        entry.pages[body.page] = body.keys
        if body.instance == entry.instance:
            entry.received, entry.validity = now, body.validity
        if len(entry.pages) < body.pages:
            return Applied.PAGE
        keys = frozenset(k for page in entry.pages.values() for k in page)
        entry.assembling, entry.pages = None, {}
        if entry.instance == body.instance and body.seq < entry.version:
            return Applied.OLD
        self._set(body.node, entry, body.instance, body.seq, keys, now, body.validity)
        return Applied.APPLIED

    def _set(self, node: str, entry: _NodeSet, instance: str, version: int, keys: frozenset[str],
             now: float, validity: int) -> None:
        for key in entry.keys - keys:
            self._unindex(key, node)
        for key in keys - entry.keys:
            self._index.setdefault(key, set()).add(node)
            placed = self._placed.get(key)
            if placed is not None:
                del self._placed[key]  # confirmed, or another node hosts it: the announcement rules
        entry.instance, entry.version, entry.keys = instance, version, keys
        entry.received, entry.validity = now, validity

    def _unindex(self, key: str, node: str) -> None:
        nodes = self._index.get(key)
        if nodes is not None:
            nodes.discard(node)
            if not nodes:
                del self._index[key]

    def forget(self, node: str) -> None:
        """The node's set is unknown from now on (its publication ended, it
        left the pool)."""
        entry = self._nodes.pop(node, None)
        if entry is not None:
            for key in entry.keys:
                self._unindex(key, node)
        for key in [k for k, p in self._placed.items() if p.node == node]:
            del self._placed[key]

    def expire(self, now: float) -> list[str]:
        """Forget the sets not renewed within their validity, and placements
        past their hold time; returns the nodes forgotten."""
        gone = [n for n, e in self._nodes.items() if e.instance is not None and now >= e.received + e.validity]
        for node in gone:
            self.forget(node)
        for key in [k for k, p in self._placed.items() if now >= p.until]:
            del self._placed[key]
        return gone

    def next_expiry(self) -> float | None:
        times = [e.received + e.validity for e in self._nodes.values() if e.instance is not None]
        times += [p.until for p in self._placed.values()]
        return min(times, default=None)

    # -- what a proxy asks --------------------------------------------------------

    def keys_of(self, node: str) -> frozenset[str]:
        entry = self._nodes.get(node)
        return entry.keys if entry is not None else frozenset()

    def nodes_of(self, key: str) -> frozenset[str]:
        """The nodes whose announced sets hold `key`."""
        return frozenset(self._index.get(key, ()))

    def placement(self, key: str, now: float) -> str | None:
        placed = self._placed.get(key)
        return placed.node if placed is not None and now < placed.until else None

    def lookup(self, key: str, weights: Mapping[str, int], now: float) -> str | None:
        """The node for a new call of room `key` (section 7.2): a node that
        announced it and takes calls (weight above 0; the highest weight
        when several did), else the node the proxy placed it on within the
        hold time if that node takes calls, else None (choose by weight,
        then `place`)."""
        hosts = [n for n in self._index.get(key, ()) if weights.get(n, 0) > 0]
        if hosts:
            return max(hosts, key=lambda n: (weights[n], n))
        node = self.placement(key, now)
        if node is not None and weights.get(node, 0) > 0:
            return node
        return None

    def place(self, key: str, node: str, now: float) -> None:
        """The proxy sent a new call of room `key` to `node`."""
        if node in self._index.get(key, ()):
            return  # announced there already: nothing to remember
        self._placed[key] = Placement(node, now + self.hold)

    def refused(self, key: str, node: str) -> None:
        """`node` refused a call of room `key` (5xx, 6xx, or no answer): the
        placement goes, so that the room follows the retry elsewhere."""
        placed = self._placed.get(key)
        if placed is not None and placed.node == node:
            del self._placed[key]

    def placements(self, now: float) -> dict[str, str]:
        """Key -> node of the placements still holding at `now`."""
        return {k: p.node for k, p in self._placed.items() if now < p.until}

    def assignments(self, weights: Mapping[str, int], now: float) -> dict[str, str]:
        """Key -> node for every room known, announced or placed, as
        `lookup` would answer (what a sidecar pushes into a proxy's table)."""
        out = {key: node for key in self._index if (node := self.lookup(key, weights, now)) is not None}
        for key in self._placed:
            if key not in out and (node := self.lookup(key, weights, now)) is not None:
                out[key] = node
        return out
