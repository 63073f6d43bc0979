"""The host collector: CPU over the window (not since boot), memory, load,
and the Asterisk process found by name."""

import asyncio
import os
import secrets
import shutil
import subprocess
from collections import namedtuple
from types import SimpleNamespace

import psutil
import pytest

from agent.collectors.host import HostCollector
from agent.config import HostConfig

Times = namedtuple("Times", "user nice system idle iowait irq softirq steal guest guest_nice")


class FakePs:
    """Just enough of psutil's API, with scripted CPU counters."""

    NoSuchProcess = psutil.NoSuchProcess

    def __init__(self, times, procs=()):
        self.times = list(times)
        self.procs = list(procs)

    def cpu_times(self):
        return self.times.pop(0)

    def cpu_count(self):
        return 8

    def virtual_memory(self):
        return SimpleNamespace(total=16 * 2**30, available=10 * 2**30, used=5 * 2**30)

    def process_iter(self, attrs):
        return list(self.procs)


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 20))


def test_cpu_usage_and_steal_are_deltas_over_the_window():
    boot = Times(1000, 0, 1000, 8000, 0, 0, 0, 0, 0, 0)  # 20 % busy since boot
    # next 100 s of CPU time: 60 user (incl. 10 guest), 10 system, 20 idle, 5 iowait, 5 steal
    later = Times(1060, 0, 1010, 8020, 5, 0, 0, 5, 10, 0)
    collector = HostCollector(HostConfig(), ps=FakePs([boot, later]), loadavg=lambda: (1.5, 1.0, 0.5))
    run(collector.start())
    reading = collector.collect(1.0)
    # total = 100 (guest is inside user, not counted twice); busy = 100 - 20 - 5
    assert reading.cpu.usage == pytest.approx(0.75)
    assert reading.cpu.steal == pytest.approx(0.05)
    assert reading.cpu.cores == 8 and reading.cpu.load == (1.5, 1.0, 0.5)
    assert reading.memory.total == 16 * 2**30 and reading.memory.available == 10 * 2**30
    assert reading.error is None


def test_no_elapsed_cpu_time_is_unknown_usage_not_zero():
    same = Times(1, 0, 1, 1, 0, 0, 0, 0, 0, 0)
    collector = HostCollector(HostConfig(), ps=FakePs([same, same]))
    run(collector.start())
    assert collector.collect(1.0).cpu.usage is None


def test_a_failing_source_marks_only_its_fields_unknown():
    class Broken(FakePs):
        def virtual_memory(self):
            raise OSError("no /proc/meminfo")

    t0, t1 = Times(1, 0, 1, 8, 0, 0, 0, 0, 0, 0), Times(2, 0, 2, 16, 0, 0, 0, 0, 0, 0)
    collector = HostCollector(HostConfig(), ps=Broken([t0, t1]))
    run(collector.start())
    reading = collector.collect(1.0)
    assert reading.memory is None and reading.cpu.usage == pytest.approx(0.2)
    assert "memory: no /proc/meminfo" in reading.error


def proc(pid, name, cmdline, created):
    return SimpleNamespace(pid=pid, info={"name": name, "cmdline": cmdline, "create_time": created})


def test_remote_consoles_are_not_the_asterisk_daemon():
    procs = [proc(30, "asterisk", ["asterisk", "-rx", "core show channels"], 5.0),
             proc(20, "asterisk", ["/usr/sbin/asterisk", "-f", "-U", "asterisk", "-vvvg"], 9.0),
             proc(40, "asterisk", ["asterisk", "-r"], 1.0),
             proc(10, "bash", ["bash"], 0.0)]
    collector = HostCollector(HostConfig(), ps=FakePs([], procs))
    assert collector._search().pid == 20


def test_real_host_readings_are_plausible():
    async def main():
        collector = HostCollector(HostConfig())
        await collector.start()
        sum(i * i for i in range(200_000))  # some CPU in the window
        await asyncio.sleep(0.2)
        return collector.collect(1.0)

    reading = run(main())
    assert 0.0 <= reading.cpu.usage <= 1.0 and 0.0 <= reading.cpu.steal <= 1.0
    assert reading.cpu.cores == os.cpu_count()
    assert len(reading.cpu.load) == 3
    assert 0 < reading.memory.available <= reading.memory.total


#: A name no other process on a shared test host has (other test suites run
#: their own fake "asterisk" processes).
NAME = "asterisk-" + secrets.token_hex(3)


@pytest.fixture
def fake_asterisk(tmp_path):
    """Start processes named NAME (a copy of sleep)."""
    binary = tmp_path / NAME
    shutil.copy(shutil.which("sleep"), binary)
    started = []

    def start():
        p = subprocess.Popen([str(binary), "30"])
        started.append(p)
        return p

    yield start
    for p in started:
        p.kill()
        p.wait()


def test_the_asterisk_process_is_found_followed_and_found_again_after_a_restart(fake_asterisk):
    first = fake_asterisk()

    async def main():
        collector = HostCollector(HostConfig(process_name=NAME), search_interval=0.0)
        await collector.start()
        one = collector.collect(1.0)
        two = collector.collect(2.0)
        pid_one = collector._proc.pid
        first.kill()
        first.wait()
        gone = collector.collect(3.0)
        second = fake_asterisk()
        back = collector.collect(4.0)
        return one, two, pid_one, gone, back, collector._proc.pid, second.pid

    one, two, pid_one, gone, back, pid_back, second_pid = run(main())
    assert pid_one == first.pid and one.asterisk_process is True
    assert one.asterisk.rss > 0 and one.asterisk.cpu is None  # no window yet: unknown
    assert two.asterisk.cpu is not None and 0.0 <= two.asterisk.cpu < 0.5  # sleep uses ~no CPU
    assert gone.asterisk is None and gone.asterisk_process is False
    assert back.asterisk_process is True and pid_back == second_pid


# -- the CPU watch between samples --


class Counters(FakePs):
    """CPU counters that a test moves on: `advance(seconds, busy)`."""

    def __init__(self):
        super().__init__([])
        self.busy = self.idle = 0.0

    def advance(self, seconds, busy_fraction):
        self.busy += seconds * busy_fraction
        self.idle += seconds * (1 - busy_fraction)

    def cpu_times(self):
        return Times(self.busy, 0, 0, self.idle, 0, 0, 0, 0, 0, 0)


async def _watch_until(collector, ps, changes, busy_fraction, deadline=10.0):
    """Keep the CPU at `busy_fraction` until the watch reports a change."""
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline
    while not changes and loop.time() < end:
        ps.advance(0.01, busy_fraction)
        await asyncio.sleep(0.01)


def test_a_cpu_jump_between_samples_is_reported_at_once_with_the_short_windows_figure():
    ps, changes = Counters(), []
    collector = HostCollector(HostConfig(cpu_watch_interval=0.02, cpu_jump=0.1), ps=ps, on_change=changes.append)

    async def scenario():
        await collector.start()
        ps.advance(1.0, 0.5)
        assert collector.collect(1.0).cpu.usage == pytest.approx(0.5)
        await _watch_until(collector, ps, changes, 1.0)
        reading = collector.collect(2.0)
        await collector.stop()
        return reading

    reading = run(scenario())
    assert changes and changes[0].startswith("cpu jumped to")
    # The short window's figure (all busy), not the mean since the last sample.
    assert reading.cpu.usage == pytest.approx(1.0)


def test_a_cpu_change_smaller_than_the_jump_waits_for_the_next_sample():
    ps, changes = Counters(), []
    collector = HostCollector(HostConfig(cpu_watch_interval=0.02, cpu_jump=0.1), ps=ps, on_change=changes.append)

    async def scenario():
        await collector.start()
        ps.advance(1.0, 0.5)
        collector.collect(1.0)
        await _watch_until(collector, ps, changes, 0.55, deadline=0.5)
        reads = collector.watch_reads
        await collector.stop()
        return reads

    assert run(scenario()) > 0
    assert changes == []


def test_the_watch_is_off_with_interval_zero_or_no_one_to_tell():
    async def started(collector):
        await collector.start()
        running = collector._watch_task is not None
        await collector.stop()
        return running

    off = HostCollector(HostConfig(cpu_watch_interval=0.0), ps=Counters(), on_change=lambda what: None)
    unheard = HostCollector(HostConfig(cpu_watch_interval=0.1), ps=Counters())
    assert (run(started(off)), run(started(unheard))) == (False, False)
