"""Host CPU, memory and load, and the Asterisk process's own CPU and memory
(psutil).

CPU usage and steal are deltas of the kernel's CPU time counters between two
`collect()` calls (the sampling window), not averages since boot. The first
`collect()` after `start()` measures from `start()`. Usage counts every
state but idle and iowait as busy, as psutil.cpu_percent does, so stolen time
(the hypervisor ran someone else) counts as unavailable; guest time is
already inside user and nice on Linux and is not counted twice.

Between samples, with `cpu_watch_interval` > 0 and someone to tell (the
agent's service passes `on_change`), a watch reads the same counters over
short windows of that length. When a short window's usage differs from the
figure in use by `cpu_jump` or more, it calls `on_change`, and the next
`collect()` reports that short window's figure (and starts its next window
there): a CPU hog shows in a tenth of a second, not at the next sample, so
a proxy stops sending calls before they pile onto a node that just lost its
room (bench/bench_dispatch.py; its cost is bench/bench_cpu_watch.py).

The Asterisk process is found by name (`process_name`, "asterisk"), ignoring
remote consoles (`asterisk -r`, `-rx "..."`, `-R`: same binary, same name),
the oldest if several; its PID is cached and searched again when it dies
(at most every `search_interval` seconds while none runs). Its CPU is in
cores: CPU seconds used over wall seconds elapsed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
from collections.abc import Callable
from typing import Any

import psutil

from sipstatus.status import Asterisk, Cpu, Memory

from ..config import HostConfig
from .interface import OnChange, Reading

_REMOTE_CONSOLE = re.compile(r"-[A-Za-z]*[rR]")


class HostCollector:
    name = "host"

    def __init__(
        self,
        config: HostConfig,
        ps: Any = psutil,
        loadavg: Callable[[], tuple[float, float, float]] = os.getloadavg,
        search_interval: float = 5.0,
        on_change: OnChange | None = None,
    ) -> None:
        self.config = config
        self.ps = ps
        self.loadavg = loadavg
        self.search_interval = search_interval
        self.on_change = on_change
        self._cpu_before: tuple[float, float, float] | None = None  # total, idle, steal
        #: The usage the last collect() reported (what a jump is measured from).
        self._usage_in_use: float | None = None
        #: A short window that jumped: its (usage, steal) and the counters at its end.
        self._jump: tuple[float | None, float | None, tuple[float, float, float]] | None = None
        self._watch_task: asyncio.Task[None] | None = None
        #: Short windows read, and jumps seen, since start.
        self.watch_reads = 0
        self.jumps = 0
        self._proc: Any = None
        self._proc_before: tuple[int, float, float] | None = None  # pid, cpu seconds, at
        self._last_search: float | None = None
        self._last_found: bool | None = None

    async def start(self) -> None:
        self._cpu_before = self._cpu_times()
        if self.on_change is not None and self.config.cpu_watch_interval > 0:
            self._watch_task = asyncio.get_running_loop().create_task(self._watch(), name="cpu watch")

    async def stop(self) -> None:
        self._proc = None
        if self._watch_task is not None:
            self._watch_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch_task
            self._watch_task = None

    async def _watch(self) -> None:
        interval = self.config.cpu_watch_interval
        before = self._cpu_times()
        while True:
            await asyncio.sleep(interval)
            try:
                now = self._cpu_times()
            except Exception:  # noqa: BLE001 - the sample reports CPU failures
                continue
            self.watch_reads += 1
            usage, steal = _window(before, now)
            before = now
            if self.watch_jumped(usage):
                self.jumps += 1
                self._jump = (usage, steal, now)
                assert self.on_change is not None
                self.on_change(f"cpu jumped to {usage:.0%}")

    def watch_jumped(self, usage: float | None) -> bool:
        """Whether a short window's `usage` is a jump from the figure in use."""
        if usage is None or self._usage_in_use is None:
            return False
        return abs(usage - self._usage_in_use) >= self.config.cpu_jump

    def collect(self, now: float) -> Reading:
        errors = []
        cpu = memory = asterisk = None
        found = None
        try:
            cpu = self._cpu()
        except Exception as exc:  # noqa: BLE001 - any psutil failure is "CPU unknown"
            errors.append(f"cpu: {exc}")
        try:
            vm = self.ps.virtual_memory()
            memory = Memory(total=int(vm.total), available=int(vm.available), used=int(vm.used))
        except Exception as exc:  # noqa: BLE001
            errors.append(f"memory: {exc}")
        try:
            asterisk, found = self._asterisk(now)
        except Exception as exc:  # noqa: BLE001
            errors.append(f"{self.config.process_name} process: {exc}")
        return Reading(
            cpu=cpu,
            memory=memory,
            asterisk=asterisk,
            asterisk_process=found,
            error="; ".join(errors) or None,
        )

    # -- CPU --

    def _cpu_times(self) -> tuple[float, float, float]:
        t = self.ps.cpu_times()
        total = sum(t) - getattr(t, "guest", 0.0) - getattr(t, "guest_nice", 0.0)
        idle = t.idle + getattr(t, "iowait", 0.0)
        return total, idle, getattr(t, "steal", 0.0)

    def _cpu(self) -> Cpu:
        if self._jump is not None:
            # The watch saw a jump: report that short window, and measure the
            # next window from its end.
            usage, steal, self._cpu_before = self._jump
            self._jump = None
        else:
            now = self._cpu_times()
            before, self._cpu_before = self._cpu_before, now
            usage = steal = None
            if before is not None:
                usage, steal = _window(before, now)
        self._usage_in_use = usage
        load: tuple[float, float, float] | None
        try:
            one, five, fifteen = self.loadavg()
            load = (float(one), float(five), float(fifteen))
        except OSError:
            load = None
        return Cpu(usage=usage, cores=self.ps.cpu_count() or None, steal=steal, load=load)

    # -- the Asterisk process --

    def _asterisk(self, now: float) -> tuple[Asterisk | None, bool | None]:
        if self._proc is None:
            if self._last_search is not None and now - self._last_search < self.search_interval:
                return None, self._last_found
            self._last_search = now
            self._proc = self._search()
            self._last_found = self._proc is not None
            if self._proc is None:
                return None, False
        try:
            with self._proc.oneshot():
                times = self._proc.cpu_times()
                rss = int(self._proc.memory_info().rss)
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            # It died (or was restarted): look for it again at once.
            self._proc = None
            self._proc_before = None
            self._last_search = None
            return self._asterisk(now)
        used = times.user + times.system
        cores = None
        before, self._proc_before = self._proc_before, (self._proc.pid, used, now)
        if before is not None and before[0] == self._proc.pid and now > before[2]:
            cores = max(0.0, (used - before[1]) / (now - before[2]))
        return Asterisk(cpu=cores, rss=rss), True

    def _search(self) -> Any:
        name = self.config.process_name
        candidates = []
        for proc in self.ps.process_iter(["name", "cmdline", "create_time"]):
            info = proc.info
            if info.get("name") != name:
                continue
            args = info.get("cmdline") or []
            if any(_REMOTE_CONSOLE.match(a) for a in args[1:]):
                continue  # `asterisk -r`: a console talking to the daemon
            candidates.append((info.get("create_time") or 0.0, proc.pid, proc))
        if not candidates:
            return None
        return min(candidates, key=lambda c: (c[0], c[1]))[2]


def _window(before: tuple[float, float, float], now: tuple[float, float, float]) -> tuple[float | None, float | None]:
    """(usage, steal) between two readings of the counters; None when no time passed."""
    total = now[0] - before[0]
    if total <= 0:
        return None, None
    return _fraction((total - (now[1] - before[1])) / total), _fraction((now[2] - before[2]) / total)


def _fraction(value: float) -> float:
    return min(1.0, max(0.0, value))
