"""Benchmark: from an Asterisk channel event to the NOTIFY at a subscriber.

The real agent (`python -m agent run`, its own process) is connected to the
fake AMI server (tests/support/fake_ami.py, the recorded Asterisk bytes) in this
process; a raw UDP watcher here subscribes. Each change is one recorded
Newchannel or Hangup written to the AMI socket; the time is taken just
before the write and when the NOTIFY carrying the new call count is read
off the watcher's socket (both on this process's monotonic clock).

No rate ceiling is measured: notifier.max_rate = 10 (the absolute maximum,
spec 8.1) and each change is made at least 120 ms (plus 0-50 ms of random
jitter) after the previous NOTIFY arrived, so the 100 ms ceiling has always
passed. Heartbeats (validity 60: every 20 s) and sampling ticks (every 30 s)
rarely fall between an event and its NOTIFY; such NOTIFYs are still the
first to carry the change and are counted as they are.

    python bench/bench_reaction.py [--changes 1000]

Prints the figures and writes them to bench/results/reaction.txt.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import random
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


from agent.collectors.probe import nearest_rank  # noqa: E402
from tests.support.agents import AgentProcess, ChannelEvents, Watcher, agent_config, fake_asterisk  # noqa: E402
from tests.support.ports import free_port  # noqa: E402

RESULTS = REPO / "bench" / "results" / "reaction.txt"


async def measure(changes: int) -> dict:
    channel = ChannelEvents.recorded()
    rng = random.Random(1)
    with tempfile.TemporaryDirectory(prefix="bench-reaction-") as tmp:
        async with fake_asterisk() as ami:
            port = free_port()
            config = agent_config(ami.port, agent={"interval": 30.0, "validity": 60, "log_level": "info"},
                                  notifier={"max_rate": 10.0}, scoring={"unknown_capacity": 1.0})
            async with AgentProcess(Path(tmp), config, "--listen", f"udp:127.0.0.1:{port}") as agent:
                await agent.wait_measured()
                watcher = await Watcher(("127.0.0.1", port)).open()
                request = watcher.subscribe()
                await watcher.notify(request.call_id, timeout=10)
                await asyncio.sleep(0.2)  # the first change too comes after the ceiling
                process = agent.ps()
                loop = asyncio.get_running_loop()
                cpu0, wall0 = process.cpu_times(), loop.time()
                latencies = []
                lost = 0
                calls = 0
                for i in range(changes):
                    calls = 1 - calls
                    event = channel.newchannel if calls else channel.hangup
                    seen = len(watcher.notifies(request.call_id))
                    sent = loop.time()
                    await ami.emit(event)

                    def arrived(expected=calls, seen=seen):
                        for r in watcher.notifies(request.call_id)[seen:]:
                            if r.status.asterisk.calls == expected:
                                return r
                        return None

                    try:
                        got = await watcher.wait_for(arrived, 10.0, f"change {i}")
                    except AssertionError:
                        lost += 1
                        continue
                    latencies.append(got.at - sent)
                    await asyncio.sleep(0.12 + 0.05 * rng.random())
                cpu1, wall1 = process.cpu_times(), loop.time()
                rss = process.memory_info().rss
                notifies = len(watcher.notifies(request.call_id))
                watcher.close()
    cpu = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)
    latencies.sort()
    return {"latencies": latencies, "lost": lost, "wall": wall1 - wall0, "cpu": cpu, "rss": rss,
            "notifies": notifies}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--changes", type=int, default=1000)
    args = parser.parse_args()
    r = asyncio.run(measure(args.changes))
    ms = [1000 * x for x in r["latencies"]]
    lines = [
        "reaction benchmark (bench/bench_reaction.py): AMI channel event -> NOTIFY at a subscriber",
        f"date: {time.strftime('%Y-%m-%d %H:%M:%S %z')}",
        f"host: {platform.node()} {platform.machine()}, {os.cpu_count()} CPUs (shared), Python {platform.python_version()}",
        "setup: real agent process (UDP 127.0.0.1), fake AMI + raw UDP watcher in the bench process;",
        "       notifier.max_rate 10, validity 60 (heartbeat 20 s), interval 30 s; next change >= 120 ms after the NOTIFY",
        f"changes: {args.changes} (alternating Newchannel / Hangup from event_stream.txt), measured {len(ms)}, lost {r['lost']}",
        f"latency ms: p50 {nearest_rank(ms, 50):.2f}  p90 {nearest_rank(ms, 90):.2f}  p99 {nearest_rank(ms, 99):.2f}  "
        f"min {ms[0]:.2f}  max {ms[-1]:.2f}",
        f"NOTIFYs received: {r['notifies']} over {r['wall']:.1f} s",
        f"agent CPU during the run: {r['cpu']:.2f} s = {100 * r['cpu'] / r['wall']:.1f} % of one core "
        f"({1000 * r['cpu'] / max(1, len(ms)):.2f} ms per change, AMI event to NOTIFY sent and answered)",
        f"agent RSS at the end: {r['rss'] / 2**20:.1f} MiB",
    ]
    text = "\n".join(lines) + "\n"
    print(text, end="")
    RESULTS.write_text(text)


if __name__ == "__main__":
    main()
