"""The proxy's view of its pool: the last good status of each node.

A `NodeTable` keeps, per node, the last status that passed validation, when
it was received, and whether it is still fresh. It enforces the ordering and
staleness rules of spec/load-status.md section 7:

- within one agent instance a body is accepted only if its `seq` is greater
  than the last accepted one (a reordered UDP NOTIFY never overwrites newer
  state); a body from a new instance replaces the old instance's state, and
  late bodies of the replaced instance are ignored for max(60 s, validity);
- a status is trusted for `validity` seconds after it was *received* (the
  sender's clock is not ours); after that the node is stale: unknown, and it
  gets no new calls.

It is sans-I/O: the caller passes the time in.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from enum import Enum

from ..status import LoadStatus


class Outcome(Enum):
    """What `NodeTable.update` did with a status."""

    ACCEPTED = "accepted"
    #: Same instance, seq not greater than the last accepted: out of order or a duplicate.
    OUT_OF_ORDER = "out-of-order"
    #: The node is not in the pool and auto-join is off (a compositor answers 403).
    UNKNOWN_NODE = "unknown-node"


@dataclass(frozen=True, slots=True)
class NodeView:
    """One node as the proxy sees it at a moment."""

    node: str
    status: LoadStatus | None  # None: never heard from, or forgotten
    received: float | None
    fresh: bool

    @property
    def accepts_calls(self) -> bool:
        return self.fresh and self.status is not None and self.status.accepts_calls

    def age(self, now: float) -> float | None:
        return None if self.received is None else now - self.received


#: Spec 7.1 rule 3: a replaced instance is remembered this long at least
#: (or the validity of the last accepted body, when longer).
REPLACED_MEMORY = 60.0


@dataclass(slots=True)
class _Entry:
    status: LoadStatus | None = None
    received: float | None = None
    configured: bool = False
    #: Instances replaced on this node, and until when their late bodies are ignored.
    replaced: dict[str, float] = field(default_factory=dict)


class NodeTable:
    """The last good status of each node of a pool (spec section 7).

    `nodes` are the configured members; with `auto_join`, a status from any
    other node adds it, and it is forgotten once its status has expired
    (elastic pools). Configured nodes stay in the table when stale, with no
    status trusted.
    """

    def __init__(self, nodes: Iterable[str] = (), *, auto_join: bool = False) -> None:
        self.auto_join = auto_join
        self._entries: dict[str, _Entry] = {n: _Entry(configured=True) for n in nodes}

    def __contains__(self, node: object) -> bool:
        return node in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def add(self, node: str) -> None:
        """Make `node` a configured member (an agent named by its first
        report); one that auto-joined stays, and becomes configured."""
        self._entries.setdefault(node, _Entry()).configured = True

    def update(self, status: LoadStatus, now: float) -> Outcome:
        """Take a decoded status received at `now`."""
        entry = self._entries.get(status.node)
        if entry is None:
            if not self.auto_join:
                return Outcome.UNKNOWN_NODE
            entry = self._entries[status.node] = _Entry()
        last = entry.status
        if last is not None and last.instance == status.instance:
            if status.seq <= last.seq:
                return Outcome.OUT_OF_ORDER  # rule 2
        elif entry.replaced.get(status.instance, float("-inf")) > now:
            return Outcome.OUT_OF_ORDER  # rule 3: a late body of a previous run
        elif last is not None:
            # Rule 4: the new instance replaces the old one, which is remembered.
            entry.replaced = {i: t for i, t in entry.replaced.items() if t > now}
            entry.replaced[last.instance] = now + max(REPLACED_MEMORY, last.validity)
        entry.status = status
        entry.received = now
        return Outcome.ACCEPTED

    def forget(self, node: str) -> None:
        """Drop what is known of `node` (its publication was removed, its
        subscription ended): it is unknown from now on. An auto-joined node
        leaves the table."""
        entry = self._entries.get(node)
        if entry is None:
            return
        if entry.configured:
            entry.status = entry.received = None
        else:
            del self._entries[node]

    def view(self, node: str, now: float) -> NodeView:
        entry = self._entries[node]
        return NodeView(node, entry.status, entry.received, self._fresh(entry, now))

    def views(self, now: float) -> Iterator[NodeView]:
        for node in self._entries:
            yield self.view(node, now)

    def expire(self, now: float) -> list[str]:
        """Forget auto-joined nodes whose status has expired; return the nodes
        (configured or not) that are stale at `now`."""
        stale = []
        for node, entry in list(self._entries.items()):
            if entry.status is not None and not self._fresh(entry, now):
                stale.append(node)
                if not entry.configured:
                    del self._entries[node]
        return stale

    def next_expiry(self, now: float) -> float | None:
        """When the next status that is fresh at `now` goes stale (for a timer), or None."""
        times = [e.received + e.status.validity for e in self._entries.values() if self._fresh(e, now)]
        return min(times, default=None)

    @staticmethod
    def _fresh(entry: _Entry, now: float) -> bool:
        return entry.status is not None and now < entry.received + entry.status.validity
