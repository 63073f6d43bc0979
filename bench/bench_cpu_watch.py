"""Benchmark: what the host collector's CPU watch (`cpu_watch_interval`)
costs the agent in CPU.

Runs the real HostCollector (agent/collectors/host.py) on this host's
/proc/stat in an asyncio loop for SECONDS seconds per setting -- the watch
off, then at each interval -- with one full `collect()` a second as the
agent's loop does, and reports the process's CPU time (user + system) per
second of wall time, the extra over the watch being off, the CPU per
short-window read, and how many jumps (`cpu_jump`, default) it saw on this
host meanwhile (each one is an extra rescore, and possibly a report).

    python bench/bench_cpu_watch.py [--seconds 20] [--intervals 0.1,0.05,0.02]

Prints the figures and writes them to bench/results/cpu_watch.txt. On a
busy shared host the figures carry that host's noise: compare the rows of
one run, not runs on different days.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from agent.collectors.host import HostCollector  # noqa: E402
from agent.config import HostConfig  # noqa: E402

RESULTS = REPO / "bench" / "results" / "cpu_watch.txt"


async def measure(interval: float, seconds: float) -> tuple[float, int, int]:
    """(CPU seconds used, short windows read, jumps seen) over `seconds`."""
    collector = HostCollector(HostConfig(cpu_watch_interval=interval), on_change=lambda what: None)
    await collector.start()
    cpu0 = time.process_time()
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    while loop.time() < end:
        await asyncio.sleep(1.0)
        collector.collect(loop.time())
    used = time.process_time() - cpu0
    await collector.stop()
    return used, collector.watch_reads, collector.jumps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--intervals", default="0.1,0.05,0.02")
    args = parser.parse_args()
    intervals = [0.0] + [float(x) for x in args.intervals.split(",")]
    rows = []
    for interval in intervals:
        used, reads, jumps = asyncio.run(measure(interval, args.seconds))
        rows.append((interval, used / args.seconds, reads, jumps))
    base = rows[0][1]
    load = os.getloadavg()
    lines = [
        f"# host collector CPU watch: {args.seconds:g} s per setting, one full collect() a second, "
        f"Python {platform.python_version()}, {os.cpu_count()} CPUs, load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}",
        f"# cpu_jump {HostConfig().cpu_jump:g} (default); 'extra' is over the watch being off",
        "",
        f"{'cpu_watch_interval':>18}  {'agent CPU (% of a core)':>23}  {'extra':>8}  {'per read (us)':>13}  {'reads':>6}  {'jumps':>5}",
    ]
    for interval, cpu, reads, jumps in rows:
        extra = cpu - base
        per_read = extra * args.seconds / reads * 1e6 if reads else float("nan")
        label = "off" if interval == 0 else f"{interval:g} s"
        lines.append(f"{label:>18}  {100 * cpu:>23.3f}  {100 * extra:>7.3f}%  {per_read:>13.1f}  {reads:>6}  {jumps:>5}")
    text = "\n".join(lines) + "\n"
    print(text, end="")
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(text)


if __name__ == "__main__":
    main()
