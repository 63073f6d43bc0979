"""What a UI shows of the pool: one `NodeRow` per node."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from .nodetable import NodeView


@dataclass(frozen=True, slots=True)
class NodeRow:
    """One node as an operator sees it.

    `state` is the node's state when its status is fresh, "stale" when its
    last status has outlived its validity (`reported` keeps what it said),
    and "unknown" when nothing is known (never heard from, or its
    publication ended). Metrics are None when unknown; `weight` is what the
    policy gives the node (None when unknown), `pushed` what the sinks were
    last given (the damped weight, None before the first push).
    """

    node: str
    state: str
    reported: str | None
    reason: str | None
    capacity: float | None
    weight: int | None
    pushed: int | None
    cpu: float | None
    channels: int | None
    calls: int | None
    limit: int | None  # Asterisk's maxcalls: a limit on calls
    mos: float | None
    p95: float | None
    age: float | None
    validity: int | None
    source: str | None  # "notify", "publish", or None
    link: str  # the subscription or publication, for operators

    @property
    def takes_calls(self) -> bool:
        return self.state == "active" and bool(self.weight)

    def to_json(self) -> dict[str, Any]:
        return {field.name: getattr(self, field.name) for field in dataclasses.fields(self)}


def node_row(view: NodeView, weight: int | None, pushed: int | None, now: float,
             source: str | None = None, link: str = "") -> NodeRow:
    status = view.status
    if status is None:
        return NodeRow(view.node, "unknown", None, None, None, None, pushed, None, None, None,
                       None, None, None, None, None, source, link)
    asterisk, cpu, quality, probe = status.asterisk, status.cpu, status.quality, status.probe
    age = view.age(now)
    return NodeRow(
        node=view.node,
        state=status.state.value if view.fresh else "stale",
        reported=status.state.value,
        reason=status.reason,
        capacity=status.capacity,
        weight=weight,
        pushed=pushed,
        cpu=cpu.usage if cpu else None,
        channels=asterisk.channels if asterisk else None,
        calls=asterisk.calls if asterisk else None,
        limit=asterisk.limit if asterisk else None,
        mos=quality.mos if quality else None,
        p95=probe.p95 if probe else None,
        age=None if age is None else max(0.0, age),
        validity=status.validity,
        source=source,
        link=link,
    )
