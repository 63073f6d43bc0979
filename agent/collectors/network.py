"""Network rates from the kernel's link counters (netlink, via pyroute2).

Per second over the sampling window (two `collect()` calls), summed over the
configured interfaces, or over every interface that is up except loopback
when none are configured: packets and bits (octets * 8) received and sent,
errors (rx + tx) and drops (rx + tx). A counter that went backwards (an
interface re-created, a driver reset; the 64-bit counters do not wrap in
practice) makes that metric unknown for the window rather than wrong.

pyroute2's synchronous `IPRoute` is used from one worker thread of the
collector, never from the agent's event loop: from 0.8 on it runs an asyncio
loop of its own inside every call, which cannot start in a thread where a
loop already runs ("This event loop is already running"). In the worker
thread the same code works with 0.7 (plain sockets) and 0.8/0.9 (asyncio).
The IPRoute is created, used and closed in that thread. A netlink dump takes
well under a millisecond, so `collect()` simply waits for it.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from sipstatus.status import Network

from ..config import NetworkConfig
from .interface import Reading

IFF_UP = 0x1  # linux/if.h
IFF_LOOPBACK = 0x8
#: How long collect() waits for the netlink thread before it reports an error.
NETLINK_TIMEOUT = 5.0

#: IFLA_STATS64 members summed into each Network member.
_SUMS = {
    "rx_pps": ("rx_packets",),
    "tx_pps": ("tx_packets",),
    "rx_bps": ("rx_bytes",),
    "tx_bps": ("tx_bytes",),
    "errors": ("rx_errors", "tx_errors"),
    "dropped": ("rx_dropped", "tx_dropped"),
}
_BITS = {"rx_bps", "tx_bps"}


@dataclass(frozen=True, slots=True)
class LinkCounters:
    name: str
    up: bool
    loopback: bool
    counters: dict[str, int]


def _default_ipr() -> Any:
    from pyroute2 import IPRoute

    return IPRoute()


class NetworkCollector:
    name = "network"

    def __init__(self, config: NetworkConfig, ipr_factory: Callable[[], Any] = _default_ipr) -> None:
        self.config = config
        self._factory = ipr_factory
        self._ipr: Any = None  # used in the worker thread only
        self._worker: ThreadPoolExecutor | None = None
        self._before: tuple[float, dict[str, LinkCounters]] | None = None

    async def start(self) -> None:
        self._in_worker(self._open)

    async def stop(self) -> None:
        worker, self._worker = self._worker, None
        if worker is not None:
            worker.submit(self._close).result(NETLINK_TIMEOUT)
            worker.shutdown(wait=False)

    def links(self) -> dict[str, LinkCounters]:
        """Every link's counters now."""
        return self._in_worker(self._dump)

    def _in_worker(self, call: Callable[[], Any]) -> Any:
        if self._worker is None:
            self._worker = ThreadPoolExecutor(1, thread_name_prefix="sipstatus-netlink")
        return self._worker.submit(call).result(NETLINK_TIMEOUT)

    # -- run in the worker thread only --

    def _open(self) -> Any:
        if self._ipr is None:
            self._ipr = self._factory()
        return self._ipr

    def _close(self) -> None:
        ipr, self._ipr = self._ipr, None
        if ipr is not None:
            ipr.close()

    def _dump(self) -> dict[str, LinkCounters]:
        out = {}
        for msg in self._open().get_links():
            name = msg.get_attr("IFLA_IFNAME")
            stats = msg.get_attr("IFLA_STATS64") or msg.get_attr("IFLA_STATS")
            if name is None or stats is None:
                continue
            counters = {k: int(stats[k]) for members in _SUMS.values() for k in members}
            flags = int(msg["flags"])
            out[name] = LinkCounters(name, bool(flags & IFF_UP), bool(flags & IFF_LOOPBACK), counters)
        return out

    def collect(self, now: float) -> Reading:
        links = self.links()
        selected = self._select(links)
        if isinstance(selected, str):
            self._before = None
            return Reading(error=selected)
        before, self._before = self._before, (now, links)
        if before is None or now <= before[0]:
            return Reading(network=Network())  # no window yet: every rate unknown
        return Reading(network=rates(before[1], links, selected, now - before[0]))

    def _select(self, links: dict[str, LinkCounters]) -> list[str] | str:
        if self.config.interfaces:
            missing = [n for n in self.config.interfaces if n not in links]
            if missing:
                return f"network: interface {', '.join(missing)} not found (collectors.network.interfaces)"
            return list(self.config.interfaces)
        return [n for n, link in links.items() if link.up and not link.loopback]


def rates(before: dict[str, LinkCounters], after: dict[str, LinkCounters], names: list[str], seconds: float) -> Network:
    """The Network section for interfaces `names` between two readings.

    An interface missing from either reading is left out of the sums (it
    appeared or went away within the window); a negative delta makes that
    member unknown."""
    values: dict[str, float | None] = {}
    common = [n for n in names if n in before and n in after]
    for member, keys in _SUMS.items():
        total = 0
        for name in common:
            for key in keys:
                delta = after[name].counters[key] - before[name].counters[key]
                if delta < 0:
                    total = -1
                    break
                total += delta
            if total < 0:
                break
        if total < 0:
            values[member] = None
        else:
            values[member] = (total * 8 if member in _BITS else total) / seconds
    return Network(**values)
