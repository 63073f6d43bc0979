"""Where a pool's weights go: the sink shapes, their one error base, and the
room sink every proxy's load-affinity table is pushed with.

A sink applies what the pool decided to one proxy (`kamailio.KamailioSink`,
`opensips.OpenSipsSink` through the sidecar's adapter, the room sinks). Its
calls may block: the watcher makes them from a worker thread, one at a time
per sink; when and how often (newest first, retries, resyncs) is the pool's
`SinkSchedule`. A sink remembers what its proxy has (to send only changes,
and `forget` to send again in full); what the pool last decided is the
pool's (`ProxyPool.pushed`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Protocol

from .nodetable import NodeView


class SinkError(Exception):
    """A proxy refused a command or could not be reached (`kamailio.RpcError`,
    `opensips.MiError`): the watcher logs it and tries again later."""


def parse_attrs(text: str | None) -> dict[str, str]:
    """`name1=value1;name2=value2` as a dict: a destination's attributes, in
    Kamailio's dispatcher (README.dispatcher 6.1) and by our convention in
    OpenSIPS's opaque attrs."""
    attrs = {}
    for item in (text or "").split(";"):
        name, sep, value = item.partition("=")
        if sep and name.strip():
            attrs[name.strip()] = value.strip()
    return attrs


def uri_host(uri: str) -> str:
    """The host of a destination's SIP URI (an IPv6 reference without brackets)."""
    match = re.match(r"^sips?:(?:[^@;>]*@)?(\[[^\]]+\]|[^:;>]+)", uri)
    return match.group(1).strip("[]") if match else uri


class Sink(Protocol):
    """Something that applies a pool's weights to a proxy (`KamailioSink`,
    the OpenSIPS MI adapter). Calls may block: the watcher makes them from a
    worker thread, one at a time per sink, newest weights first."""

    def push(self, weights: Mapping[str, int], now: float) -> None:
        """Apply `weights` (every node of the pool, 0 = no new calls)."""
        ...

    def next_flush(self) -> float | None:
        """When `flush` has held-back work to do (a rate-limited reload), or None."""
        ...

    def flush(self, now: float) -> object:
        """Do the held-back work if it is due."""
        ...


class ViewSink(Protocol):
    """A sink that wants the nodes themselves as well as the weights (the
    OpenSIPS adapter sizes load_balancer destinations from capacity and
    limit, and switches off the nodes the policy gives weight 0). Called
    from a worker thread with every node at each change, and the damped
    weights the weight sinks got (departed nodes at 0)."""

    def push(self, views: Iterable[NodeView], weights: Mapping[str, int]) -> object:
        ...


class RoomSink:
    """Pushes room key -> node (spec/load-affinity.md 7.2) into a proxy's
    table: `store` for a new or moved room, `remove` for one that ended (or
    whose node no longer takes calls), only what changed since the last push.
    Subclasses say how (`KamailioRoomSink`, `OpenSipsRoomSink`)."""

    def __init__(self) -> None:
        self._pushed: dict[str, str] = {}

    def store(self, key: str, node: str) -> None:
        raise NotImplementedError

    def remove(self, key: str) -> None:
        raise NotImplementedError

    def push(self, assignments: Mapping[str, str], now: float) -> None:
        for key in [k for k in self._pushed if k not in assignments]:
            self.remove(key)
            del self._pushed[key]
        for key, node in assignments.items():
            if self._pushed.get(key) != node:
                self.store(key, node)
                self._pushed[key] = node

    def next_flush(self) -> float | None:
        return None

    def flush(self, now: float) -> bool:
        return False

    def forget(self, keys: Iterable[str]) -> None:
        for key in keys:
            self._pushed.pop(key, None)
