"""Benchmark: one agent holding 1,000 subscriptions; one change to all of them.

The real agent (`python -m agent run`, its own process) is connected to the
fake AMI server in this process. Also in this process: 1,000 `Subscriber`
objects of the library in one `SubscriberPool` on one UDP socket (each with
its own `id` event parameter, spec 4.2.1, so that none replaces another).
The notifier's caps are raised to hold them; its rates are the defaults
(validity 5 s: a heartbeat every 1.67 s per subscription; ceiling 1 / DEFAULT_MAX_RATE).

Measured:
- the agent's RSS before the subscriptions and while holding them;
- the agent's CPU while holding them with nothing changing (heartbeats only);
- for each of `--changes` changes (a recorded Newchannel or Hangup written to
  the AMI socket): the time from the write until the first subscriber, half
  of them, and the last of them has a NOTIFY carrying the new call count.
  The ceiling is part of that figure: a subscription that had a heartbeat
  less than 0.5 s before the change waits for the rest of the 0.5 s (spec
  8.4), as it would in production. The subscribers' side (parsing and
  answering 1,000 NOTIFYs in Python, on the same 2 shared cores) is in it too.

    python bench/bench_fanout.py [--subscribers 1000] [--changes 20] [--hold 20]

Prints the figures and writes them to bench/results/fanout.txt.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import psutil  # noqa: E402

from agent.collectors.probe import nearest_rank  # noqa: E402
from sipstatus.sip.subscription import DEFAULT_MAX_RATE, NotificationReceived, Subscribed  # noqa: E402
from tests.support.agents import (  # noqa: E402
    AgentProcess,
    ChannelEvents,
    agent_config,
    fake_asterisk,
    subscriber_pool,
)
from tests.support.ports import free_port  # noqa: E402

RESULTS = REPO / "bench" / "results" / "fanout.txt"
RCVBUF = 4 * 2**20  # net.core.rmem_max here


def cpu_of(times: psutil._common.pcputimes) -> float:
    return times.user + times.system


async def measure(subscribers: int, changes: int, hold: float) -> dict:
    channel = ChannelEvents.recorded()
    loop = asyncio.get_running_loop()
    subscribed: set[int] = set()
    calls_seen: dict[int, int] = {}  # subscriber -> call count of its latest NOTIFY
    arrivals: list[tuple[float, int, int]] = []  # (time, subscriber, calls)
    counts = {"notifies": 0}

    def on_event(event: object) -> None:
        if isinstance(event, Subscribed):
            subscribed.add(event.subscriber.key)
        elif isinstance(event, NotificationReceived) and event.value is not None:
            counts["notifies"] += 1
            calls = event.value.asterisk.calls
            key = event.subscriber.key
            if calls_seen.get(key) != calls:
                calls_seen[key] = calls
                arrivals.append((loop.time(), key, calls))

    with tempfile.TemporaryDirectory(prefix="bench-fanout-") as tmp:
        async with fake_asterisk() as ami:
            port = free_port()
            config = agent_config(ami.port, agent={"log_level": "warning"},
                                  notifier={"max_subscriptions": subscribers + 10, "max_per_source": subscribers + 10},
                                  scoring={"unknown_capacity": 1.0})
            async with AgentProcess(Path(tmp), config, "--listen", f"udp:127.0.0.1:{port}") as agent:
                await agent.wait_measured()
                process = agent.ps()
                await asyncio.sleep(2.0)
                rss_before = process.memory_info().rss
                started = loop.time()
                # One socket for 1,000 subscriptions takes 1,000 NOTIFYs in a burst:
                # a proxy watching that many nodes gives its socket room for them.
                service, pool = await subscriber_pool(port, subscribers, on_event, rcvbuf=RCVBUF)
                while len(calls_seen) < subscribers:
                    if loop.time() - started > 120:
                        raise RuntimeError(f"only {len(calls_seen)} of {subscribers} subscriptions got a NOTIFY")
                    await asyncio.sleep(0.1)
                all_subscribed = loop.time() - started
                await asyncio.sleep(3.0)
                me = psutil.Process()
                n0, cpu0, mine0, t0 = counts["notifies"], cpu_of(process.cpu_times()), cpu_of(me.cpu_times()), loop.time()
                await asyncio.sleep(hold)
                n1, cpu1, mine1, t1 = counts["notifies"], cpu_of(process.cpu_times()), cpu_of(me.cpu_times()), loop.time()
                rss_holding = process.memory_info().rss
                results = []
                calls = 0
                for _ in range(changes):
                    calls = 1 - calls
                    mark = len(arrivals)
                    sent = loop.time()
                    await ami.emit(channel.newchannel if calls else channel.hangup)
                    deadline = sent + 30
                    while sum(1 for _, _, c in arrivals[mark:] if c == calls) < subscribers and loop.time() < deadline:
                        await asyncio.sleep(0.01)
                    times = sorted(t - sent for t, _, c in arrivals[mark:] if c == calls)
                    results.append(times)
                    await asyncio.sleep(2.0)
                rss_after = process.memory_info().rss
                for subscriber in list(pool.subscribers):
                    service.submit(pool, pool.stop(subscriber, service.now()))
                await asyncio.sleep(2.0)
                await service.close()
    return {
        "rss_before": rss_before, "rss_holding": rss_holding, "rss_after": rss_after,
        "subscribe_all": all_subscribed, "hold_wall": t1 - t0, "hold_cpu": cpu1 - cpu0,
        "hold_notifies": n1 - n0, "my_cpu": mine1 - mine0, "changes": results, "subscribers": subscribers,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--subscribers", type=int, default=1000)
    parser.add_argument("--changes", type=int, default=20)
    parser.add_argument("--hold", type=float, default=20.0, help="seconds of holding with no change")
    args = parser.parse_args()
    r = asyncio.run(measure(args.subscribers, args.changes, args.hold))
    n = r["subscribers"]
    complete = [t for t in r["changes"] if len(t) == n]
    firsts = sorted(1000 * t[0] for t in complete)
    halves = sorted(1000 * t[n // 2 - 1] for t in complete)
    lasts = sorted(1000 * t[-1] for t in complete)
    per_notify = sorted(1000 * x for t in complete for x in t)
    lines = [
        "fan-out benchmark (bench/bench_fanout.py): one agent, many subscriptions, one change",
        f"date: {time.strftime('%Y-%m-%d %H:%M:%S %z')}",
        f"host: {platform.node()} {platform.machine()}, {os.cpu_count()} CPUs (shared), Python {platform.python_version()}",
        f"setup: real agent process (UDP 127.0.0.1, collectors: asterisk only, fake AMI); {n} library Subscribers",
        "       (SubscriberPool, one UDP socket, distinct Event id) in the bench process; default rates:",
        f"       validity 5 s (heartbeat 1.67 s per subscription), ceiling {1 / DEFAULT_MAX_RATE:g} s",
        f"all {n} subscribed and notified in {r['subscribe_all']:.2f} s",
        f"agent RSS: {r['rss_before'] / 2**20:.1f} MiB before, {r['rss_holding'] / 2**20:.1f} MiB holding {n} "
        f"({(r['rss_holding'] - r['rss_before']) / n / 1024:.1f} KiB each), {r['rss_after'] / 2**20:.1f} MiB after the changes",
        f"holding, no change, {r['hold_wall']:.1f} s: {r['hold_notifies'] / r['hold_wall']:.0f} NOTIFY/s (heartbeats); "
        f"agent CPU {100 * r['hold_cpu'] / r['hold_wall']:.1f} % of one core "
        f"({1000 * r['hold_cpu'] / max(1, r['hold_notifies']):.3f} ms per NOTIFY); "
        f"subscribers' process {100 * r['my_cpu'] / r['hold_wall']:.1f} %",
        f"changes: {len(r['changes'])}, complete (all {n} notified within 30 s): {len(complete)}",
    ]
    if complete:
        lines += [
            "time from the AMI event until ... (ms, over the changes: p50 / max)",
            f"  the first subscriber has it:  {nearest_rank(firsts, 50):8.1f} / {firsts[-1]:8.1f}",
            f"  half of them have it:         {nearest_rank(halves, 50):8.1f} / {halves[-1]:8.1f}",
            f"  all {n} have it:            {nearest_rank(lasts, 50):8.1f} / {lasts[-1]:8.1f}",
            f"per NOTIFY, all changes pooled: p50 {nearest_rank(per_notify, 50):.1f} ms, p99 {nearest_rank(per_notify, 99):.1f} ms",
        ]
    text = "\n".join(lines) + "\n"
    print(text, end="")
    RESULTS.write_text(text)


if __name__ == "__main__":
    main()
