"""Benchmark: the agent's steady-state cost, 50 subscribers, default policy.

The real agent (`python -m agent run`, its own process) with every collector
on (host, asterisk, probe, network) and the default rates (sampling every
1 s, validity 5 s: a heartbeat every 1.67 s per subscription, ceiling
0.5 s). Its AMI peer is the fake Asterisk (tests/support/fake_ami.py) replaying the
recorded event_stream.txt in real time, over and over (5 calls coming and
going, RTCP reports); its SIP probe is answered by a UDP responder. 50
library `Subscriber` objects (one `SubscriberPool`, one socket, distinct
Event ids) subscribe from this process.

Measured over `--seconds` (the real figure is the 300 s run): the agent's
CPU as a percentage of one core, its RSS (first, last, highest of samples
every 5 s), the NOTIFYs received per second.

    python bench/bench_steady.py [--seconds 300] [--subscribers 50]

Prints the figures and writes them to bench/results/steady.txt (a run
shorter than 300 s is marked as such).
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

from sipstatus.sip.subscription import DEFAULT_MAX_RATE, NotificationReceived, Subscribed  # noqa: E402
from tests.support.agents import AgentProcess, OptionsResponder, subscriber_pool  # noqa: E402
from tests.support.fake_ami import FakeAmi, Scenario  # noqa: E402
from tests.support.ports import free_port  # noqa: E402

RESULTS = REPO / "bench" / "results" / "steady.txt"
FULL_RUN = 300.0


async def measure(seconds: float, subscribers: int) -> dict:
    loop = asyncio.get_running_loop()
    counts = {"notifies": 0, "states": {}}
    subscribed: set[int] = set()

    def on_event(event: object) -> None:
        if isinstance(event, Subscribed):
            subscribed.add(event.subscriber.key)
        elif isinstance(event, NotificationReceived) and event.value is not None:
            counts["notifies"] += 1
            state = event.value.state.value
            counts["states"][state] = counts["states"].get(state, 0) + 1

    responder = await OptionsResponder().open()
    scenario = Scenario(answers={"CoreShowChannels": "coreshowchannels_idle"}, stream="event_stream",
                        stream_after="CoreShowChannels", speed=1.0, repeat=1000, max_calls=50)
    try:
        async with FakeAmi(scenario) as ami:
            with tempfile.TemporaryDirectory(prefix="bench-steady-") as tmp:
                port = free_port()
                config = {
                    "agent": {"node": "ast-bench", "log_level": "warning"},
                    "collectors.asterisk": {"port": ami.port, "username": "agent", "secret": "secret",
                                            "auth": "md5",
                                            # the fake's CoreShowChannels is the idle list: no
                                            # correction in the middle of the recorded calls
                                            "reconcile_interval": 3600.0},
                    "collectors.probe": {"target": f"sip:127.0.0.1:{responder.port}"},
                    # all subscribers share one address: the per-source cap (16) would refuse most
                    "notifier": {"max_per_source": subscribers + 10},
                }
                async with AgentProcess(Path(tmp), config, "--listen", f"udp:127.0.0.1:{port}") as agent:
                    await agent.wait_measured()
                    process = agent.ps()
                    service, pool = await subscriber_pool(port, subscribers, on_event)
                    await asyncio.sleep(5.0)  # settle
                    if len(subscribed) != subscribers:
                        raise RuntimeError(f"only {len(subscribed)} of {subscribers} subscriptions accepted")
                    counts["states"].clear()
                    cpu0 = process.cpu_times()
                    t0, n0 = loop.time(), counts["notifies"]
                    rss = [process.memory_info().rss]
                    while loop.time() - t0 < seconds:
                        await asyncio.sleep(min(5.0, seconds - (loop.time() - t0)))
                        rss.append(process.memory_info().rss)
                    cpu1 = process.cpu_times()
                    t1, n1, states = loop.time(), counts["notifies"], dict(counts["states"])
                    threads = process.num_threads()
                    for subscriber in list(pool.subscribers):
                        service.submit(pool, pool.stop(subscriber, service.now()))
                    await asyncio.sleep(1.0)
                    await service.close()
                    events = ami.events_sent
    finally:
        responder.close()
    cpu = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)
    return {"wall": t1 - t0, "cpu": cpu, "user": cpu1.user - cpu0.user, "system": cpu1.system - cpu0.system,
            "rss": rss, "notifies": n1 - n0, "states": states, "threads": threads,
            "ami_events": events, "probes": len(responder.received)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=FULL_RUN)
    parser.add_argument("--subscribers", type=int, default=50)
    args = parser.parse_args()
    r = asyncio.run(measure(args.seconds, args.subscribers))
    mib = [x / 2**20 for x in r["rss"]]
    note = "" if args.seconds >= FULL_RUN else f"  (SHORT RUN: {args.seconds:g} s; the reference figure is the {FULL_RUN:g} s run)"
    lines = [
        "steady-state benchmark (bench/bench_steady.py): agent CPU and memory with subscribers" + note,
        f"date: {time.strftime('%Y-%m-%d %H:%M:%S %z')}",
        f"host: {platform.node()} {platform.machine()}, {os.cpu_count()} CPUs (shared with other work), Python {platform.python_version()}",
        "setup: real agent process, all collectors (host, asterisk, probe, network), default policy",
        f"       (interval 1 s, validity 5 s: heartbeat 1.67 s, ceiling {1 / DEFAULT_MAX_RATE:g} s); fake AMI replaying event_stream.txt",
        f"       in real time ({r['ami_events']} events written), probe answered ({r['probes']} OPTIONS);",
        f"       {args.subscribers} library Subscribers (one socket) in the bench process",
        f"measured: {r['wall']:.1f} s",
        f"agent CPU: {r['cpu']:.2f} s (user {r['user']:.2f}, system {r['system']:.2f}) = "
        f"{100 * r['cpu'] / r['wall']:.2f} % of one core",
        f"agent RSS MiB: first {mib[0]:.1f}, last {mib[-1]:.1f}, highest {max(mib):.1f} ({len(mib)} samples, every 5 s)",
        "agent RSS MiB every 30 s: " + " ".join(f"{x:.1f}" for x in mib[::6]),
        f"NOTIFYs received: {r['notifies']} = {r['notifies'] / r['wall']:.1f}/s "
        f"({r['notifies'] / r['wall'] / args.subscribers:.2f}/s per subscription); states {r['states']}",
        f"agent threads: {r['threads']}",
    ]
    text = "\n".join(lines) + "\n"
    print(text, end="")
    RESULTS.write_text(text)


if __name__ == "__main__":
    main()
