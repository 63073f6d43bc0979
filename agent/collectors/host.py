"""Host CPU, memory and load, and the Asterisk process's own CPU and memory
(psutil).

CPU usage and steal are deltas of the kernel's CPU time counters between two
`collect()` calls (the sampling window), not averages since boot. The first
`collect()` after `start()` measures from `start()`. Usage counts every
state but idle and iowait as busy, as psutil.cpu_percent does, so stolen time
(the hypervisor ran someone else) counts as unavailable; guest time is
already inside user and nice on Linux and is not counted twice.

The Asterisk process is found by name (`process_name`, "asterisk"), ignoring
remote consoles (`asterisk -r`, `-rx "..."`, `-R`: same binary, same name),
the oldest if several; its PID is cached and searched again when it dies
(at most every `search_interval` seconds while none runs). Its CPU is in
cores: CPU seconds used over wall seconds elapsed.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from typing import Any

import psutil

from sipstatus.status import Asterisk, Cpu, Memory

from ..config import HostConfig
from .interface import Reading

_REMOTE_CONSOLE = re.compile(r"-[A-Za-z]*[rR]")


class HostCollector:
    name = "host"

    def __init__(
        self,
        config: HostConfig,
        ps: Any = psutil,
        loadavg: Callable[[], tuple[float, float, float]] = os.getloadavg,
        search_interval: float = 5.0,
    ) -> None:
        self.config = config
        self.ps = ps
        self.loadavg = loadavg
        self.search_interval = search_interval
        self._cpu_before: tuple[float, float, float] | None = None  # total, idle, steal
        self._proc: Any = None
        self._proc_before: tuple[int, float, float] | None = None  # pid, cpu seconds, at
        self._last_search: float | None = None
        self._last_found: bool | None = None

    async def start(self) -> None:
        self._cpu_before = self._cpu_times()

    async def stop(self) -> None:
        self._proc = None

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
        now = self._cpu_times()
        before, self._cpu_before = self._cpu_before, now
        usage = steal = None
        if before is not None:
            total = now[0] - before[0]
            if total > 0:
                usage = _fraction((total - (now[1] - before[1])) / total)
                steal = _fraction((now[2] - before[2]) / total)
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


def _fraction(value: float) -> float:
    return min(1.0, max(0.0, value))
