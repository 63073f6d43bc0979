"""Benchmark: the agent's CPU time per sample and its resident memory, with
every collector on and AMI connected to the fake Asterisk (tests/support/fake_ami.py,
in a separate process so its CPU is not counted) streaming the recorded
event_stream.txt in a loop, sped up; the probe goes to SIPp (if installed)
answering OPTIONS.

    python bench/bench_agent_sample.py [--seconds 30] [--speed 20]

Prints the figures and writes them to bench/results/agent_sample.txt.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import psutil  # noqa: E402

from agent.collectors.registry import build_collectors  # noqa: E402
from agent.config import from_dict  # noqa: E402
from agent.sampler import Sampler  # noqa: E402
from sipstatus import codec  # noqa: E402
from tests.support.ports import free_port  # noqa: E402

RESULTS = REPO / "bench" / "results" / "agent_sample.txt"


def serve(port_file: str, speed: float) -> None:
    """Child process: the fake AMI server, streaming event_stream.txt forever."""
    from tests.support.fake_ami import FakeAmi, Scenario

    async def main():
        scenario = Scenario(answers={"CoreShowChannels": "coreshowchannels"}, stream="event_stream",
                            stream_after="CoreShowChannels", speed=speed, repeat=10_000, max_calls=500)
        async with FakeAmi(scenario) as server:
            Path(port_file).write_text(str(server.port))
            await asyncio.Event().wait()

    asyncio.run(main())


def start_sipp() -> tuple[subprocess.Popen | None, int]:
    port = free_port()
    if shutil.which("sipp") is None:
        return None, port
    proc = subprocess.Popen(
        ["sipp", "-sf", str(REPO / "tests" / "sipp" / "options_uas.xml"), "-i", "127.0.0.1", "-p", str(port),
         "-cp", str(free_port()), "-ci", "127.0.0.1", "-nostdin", "-m", "10000000"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    return proc, port


async def measure(ami_port: int, probe_port: int, seconds: float, interval: float) -> dict:
    cfg = from_dict({
        "agent": {"interval": interval},
        "collectors": {
            "asterisk": {"port": ami_port, "secret": "secret", "auth": "md5", "reconcile_interval": 10.0},
            "probe": {"target": f"sip:127.0.0.1:{probe_port}", "interval": 1.0},
        },
    })
    sampler = Sampler(cfg, build_collectors(cfg, on_change=lambda what: None))
    me = psutil.Process()
    await sampler.start()
    sampler.measure()
    await asyncio.sleep(3.0)  # warm up: login, first list, streams flowing
    ami = next(c for c in sampler.collectors if c.name == "asterisk")
    events_before = ami.client.events_received
    cpu_before = me.cpu_times()
    wall_before = time.monotonic()
    sample_cpu = []
    sizes = []
    samples = 0
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while loop.time() < deadline:
        t0 = time.process_time()
        status = sampler.sample()
        body = codec.encode(status)
        sample_cpu.append(time.process_time() - t0)
        sizes.append(len(body))
        samples += 1
        await asyncio.sleep(interval)
    cpu_after = me.cpu_times()
    wall = time.monotonic() - wall_before
    events = ami.client.events_received - events_before
    rss = me.memory_info().rss
    last = status
    await sampler.stop()
    total_cpu = (cpu_after.user - cpu_before.user) + (cpu_after.system - cpu_before.system)
    sample_cpu.sort()
    return {
        "samples": samples,
        "wall_s": wall,
        "events": events,
        "events_per_s": events / wall,
        "cpu_total_s": total_cpu,
        "cpu_per_sample_ms": 1000 * total_cpu / samples,
        "cpu_share": total_cpu / wall,
        "sample_call_p50_ms": 1000 * sample_cpu[len(sample_cpu) // 2],
        "sample_call_max_ms": 1000 * sample_cpu[-1],
        "rss_mib": rss / 2**20,
        "maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "body_octets": max(sizes),
        "last": last,
        "errors": {k: v for k, v in sampler.errors.items() if v},
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--interval", type=float, default=1.0)
    parser.add_argument("--speed", type=float, default=20.0, help="replay speed of the recorded events")
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.speed)
        return
    port_file = REPO / "bench" / "results" / f".ami-port-{os.getpid()}.tmp"
    server = subprocess.Popen([sys.executable, __file__, "--serve", str(port_file), "--speed", str(args.speed)])
    sipp, probe_port = start_sipp()
    try:
        for _ in range(100):
            if port_file.exists() and port_file.read_text():
                break
            time.sleep(0.05)
        r = asyncio.run(measure(int(port_file.read_text()), probe_port, args.seconds, args.interval))
    finally:
        server.terminate()
        server.wait()
        if sipp is not None:
            sipp.send_signal(signal.SIGUSR1)
            try:
                sipp.wait(5)
            except subprocess.TimeoutExpired:
                sipp.kill()
        port_file.unlink(missing_ok=True)
    last = r["last"]
    lines = [
        "agent sample benchmark (bench/bench_agent_sample.py)",
        f"date: {time.strftime('%Y-%m-%d %H:%M:%S %z')}",
        f"host: {platform.node()} {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, psutil {psutil.__version__}",
        f"setup: collectors host+asterisk+probe+network, sample every {args.interval:g} s for {r['wall_s']:.1f} s;",
        f"       fake AMI (other process) replaying event_stream.txt at x{args.speed:g}; probe to {'SIPp' if sipp else 'a closed port'}",
        f"samples: {r['samples']}",
        f"AMI events handled: {r['events']} ({r['events_per_s']:.1f}/s)",
        f"agent CPU, all tasks (events, probe, sampling): {r['cpu_total_s']:.3f} s = {r['cpu_per_sample_ms']:.2f} ms per sample = {100 * r['cpu_share']:.2f} % of one core",
        f"sampler.sample() + encode alone: p50 {r['sample_call_p50_ms']:.2f} ms CPU, max {r['sample_call_max_ms']:.2f} ms",
        f"resident memory: {r['rss_mib']:.1f} MiB now, {r['maxrss_mib']:.1f} MiB peak",
        f"largest body: {r['body_octets']} octets",
        f"last state: {last.state.value} capacity {last.capacity:.2f} ({last.reason or 'no reason'}); channels {last.asterisk.channels if last.asterisk else None}; "
        f"probe p50 {last.probe.p50 if last.probe else None} ms",
        f"collector errors: {r['errors'] or 'none'}",
    ]
    text = "\n".join(lines) + "\n"
    print(text, end="")
    RESULTS.write_text(text)


if __name__ == "__main__":
    main()
